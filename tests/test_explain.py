"""Explanations: the method registry on plain torch/timm modules, faithfulness, and the tree classifier."""

from __future__ import annotations

import copy
import io
import threading

import numpy as np
import pytest
import torch
from torch import nn

from bloodcells.explain import (
    METHODS,
    ExplanationError,
    attribute,
    explain,
    feature_layer,
)

# The class of a generated image is set by one region: a blue square at rows/columns 4-11, i.e. inside
# the top-left quadrant (a quarter of the image). Grey noise and grey squares elsewhere carry nothing.
QUADRANT = (slice(0, 16), slice(0, 16))


def region_images(count: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 1, 32, 32, generator=generator).repeat(1, 3, 1, 1) * 0.5
    labels = torch.randint(0, 2, (count,), generator=generator)
    for i in range(count):
        if labels[i]:
            images[i, :, 4:12, 4:12] = torch.tensor([0.1, 0.1, 0.9]).view(3, 1, 1)
        for row, column in ((4, 20), (20, 4), (20, 20)):
            images[i, :, row:row + 8, column:column + 8] = torch.rand(1, generator=generator)
    return images, labels


def tiny_cnn(classes: int = 2) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, classes))


@pytest.fixture(scope="module")
def region_model():
    """A tiny CNN trained (seconds) to tell images with the blue square from those without."""
    torch.manual_seed(0)
    model = tiny_cnn()
    images, labels = region_images(256, seed=0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _epoch in range(8):
        for start in range(0, len(images), 32):
            loss = nn.functional.cross_entropy(model(images[start:start + 32]), labels[start:start + 32])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    test_images, test_labels = region_images(64, seed=1)
    with torch.no_grad():
        accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
    assert accuracy > 0.95, f"the region model did not learn ({accuracy:.2f})"
    return model, test_images[test_labels == 1][:6]


def quadrant_share(attribution: np.ndarray) -> float:
    evidence = np.clip(attribution, 0, None)
    return float(evidence[QUADRANT].sum() / evidence.sum())


@pytest.mark.slow
@pytest.mark.parametrize(("method", "least"), [("gradcam", 0.75), ("integrated-gradients", 0.75),
                                               ("occlusion", 0.75), ("saliency", 0.33)])
def test_attribution_mass_falls_in_the_deciding_region(region_model, method, least):
    model, images = region_model
    shares = [quadrant_share(attribute(model, image[None], 1, method)) for image in images]
    # The quadrant is a quarter of the image: a map that ignored the region would put ~25% there. Plain
    # gradients (saliency) of a saturated model spread most, hence its lower bar.
    assert np.mean(shares) > least, shares


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_randomised_weights_change_the_map(region_model, method):
    from scipy.stats import spearmanr

    model, images = region_model
    randomised = copy.deepcopy(model)
    torch.manual_seed(1)
    for layer in randomised.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    trained_map = attribute(model, images[:1], 1, method)
    random_map = attribute(randomised, images[:1], 1, method)
    assert trained_map.shape == random_map.shape == (32, 32)
    assert np.ptp(trained_map) > 0
    # A randomised model's Grad-CAM can be all zero (no positive evidence at all): nothing left in common.
    shared = 0.0 if np.ptp(random_map) == 0 else spearmanr(trained_map.ravel(), random_map.ravel()).statistic
    assert shared < 0.5


def test_feature_layer_is_the_map_the_network_pools():
    import timm

    from bloodcells.backbones import node_network
    from bloodcells.heads import pooled_width, trunk_with_head

    resnet = timm.create_model("resnet10t", num_classes=3).eval()
    mobilenet = timm.create_model("mobilenetv3_small_050", num_classes=0).eval()
    efficientnet = timm.create_model("efficientnet_lite0", num_classes=0).eval()
    inputs = torch.rand(1, 3, 64, 64)
    assert feature_layer(resnet, inputs) == "layer4"
    assert feature_layer(resnet, torch.rand(1, 3, 128, 128)) == "layer4"  # 4x4
    # EfficientNet: the head conv's activation (what is pooled), not the last stage feature_info lists
    assert feature_layer(efficientnet, torch.rand(1, 3, 144, 144)) == "bn2"
    # the stages' container, whose output is blocks.5's; not conv_head, which runs after pooling
    assert feature_layer(mobilenet, inputs) == "blocks"
    # where the last stages are 1x1, the last map larger: the expansion before the last stride-2 conv
    # (per input size: the first answer is not reused)
    assert feature_layer(mobilenet, inputs[..., :32, :32]) == "blocks.4.0.bn1"
    # a node's network around a shared trunk: named within the network
    node = node_network(trunk_with_head(efficientnet, nn.Linear(pooled_width(efficientnet), 3)), [0, 1, 1], 2).eval()
    assert feature_layer(node, torch.rand(1, 3, 96, 96)) == "backbone.trunk.bn2"
    assert node.get_submodule("backbone.trunk.bn2") is efficientnet.bn2
    # plain torch modules
    assert feature_layer(tiny_cnn().eval(), inputs[..., :32, :32]) == "5"  # the ReLU after the last conv
    with pytest.raises(ExplanationError, match="no convolutional feature map"):
        feature_layer(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)), torch.rand(1, 3, 4, 4))


def test_gradcam_of_a_network_pooled_into_a_linear_classifier_is_its_class_activation_map():
    """Grad-CAM at the layer found is, for EfficientNet, exactly the CAM: the classifier's weights
    for the class over the pooled map, ReLU (upsampled); so the map is what the class score sums."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", num_classes=4).eval()
    with torch.no_grad():  # mixed-sign weights for class 2, mostly positive: a map with evidence for it
        model.get_classifier().weight[2] += model.get_classifier().weight[2].abs().mean() * 2
    inputs = torch.rand(1, 3, 64, 64)
    grid = model.forward_features(inputs)[0]
    cam = torch.relu(torch.einsum("chw,c->hw", grid, model.get_classifier().weight[2])).detach()
    expected = nn.functional.interpolate(cam[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
    gradcam = torch.as_tensor(attribute(model, inputs, target=2, method="gradcam"))
    assert expected.max() > 0
    # Grad-CAM weighs each channel by its mean gradient: the classifier's weight over the grid's cells
    assert torch.allclose(gradcam, expected / (grid.shape[-1] * grid.shape[-2]), rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_maps_a_timm_model_at_input_size(method):
    import timm

    model = timm.create_model("mobilenetv3_small_050", num_classes=3).eval()
    model.requires_grad_(False)
    inputs = torch.rand(1, 3, 48, 48)
    attribution = attribute(model, inputs, 2, method)
    assert attribution.shape == (48, 48)
    assert np.isfinite(attribution).all() and np.abs(attribution).sum() > 0


def test_unknown_method_and_setting_are_named():
    model = tiny_cnn().eval()
    with pytest.raises(ExplanationError, match="unknown explanation method 'lime'.*gradcam"):
        attribute(model, torch.rand(1, 3, 32, 32), 0, "lime")
    with pytest.raises(ExplanationError, match="occlusion has no setting n_steps"):
        attribute(model, torch.rand(1, 3, 32, 32), 0, "occlusion", n_steps=3)


def test_settings_change_the_integration():
    model = tiny_cnn().eval()
    inputs = torch.rand(1, 3, 32, 32)
    few = attribute(model, inputs, 1, "integrated-gradients", n_steps=2)
    many = attribute(model, inputs, 1, "integrated-gradients", n_steps=48, internal_batch_size=16)
    with torch.no_grad():
        gap = (model(inputs) - model(torch.zeros_like(inputs)))[0, 1].item()
    # Completeness: with enough steps the attributions add up to the output's change from the baseline.
    assert abs(many.sum() - gap) < 0.05 * abs(gap) + 1e-4
    assert not np.allclose(few, many)


# -- the tree classifier ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier(trained_models_dir):
    from bloodcells.classify import TreeClassifier

    return TreeClassifier.load(trained_models_dir)


def neutrophil():
    from bloodcells.synthetic import cell_image

    return cell_image("NGS", seed=901, size=32)


@pytest.mark.parametrize("method", list(METHODS))
def test_one_map_per_level_of_the_predicted_path(classifier, method):
    image = neutrophil()
    path = classifier.classify_images([image])[0].path.split("/")
    levels = explain(image, classifier, method=method)
    expected = [(parent, child) for parent, child in zip(path, path[1:], strict=False) if parent in classifier.nodes]
    assert [(e.node, e.target) for e in levels] == expected
    for level in levels:
        node_model = classifier.nodes[level.node]
        assert level.attribution.shape == (node_model.input_size, node_model.input_size)
        assert level.overlay.width >= 256 and level.overlay.height > level.overlay.width  # caption strip below
        assert level.png()[:8] == b"\x89PNG\r\n\x1a\n"
        assert METHODS[method].title in level.caption and level.node in level.caption
        assert level.target in level.caption and f"{level.seconds:.2f} s" in level.caption
        # named as the pages name it: the map of a band neutrophil at MYE said "myeloid_mature"
        assert f"{level.target} {classifier.tree[level.target].title} (p=" in level.caption
        assert 0 < level.probability <= 1


def test_node_and_target_pick_the_level_and_class(classifier):
    image = neutrophil()
    only = explain(image, classifier, method="saliency", node="ALL")
    assert [e.node for e in only] == ["ALL"]
    chosen = explain(image, classifier, method="gradcam", node="ALL", target="EOS")
    assert (chosen[0].node, chosen[0].target) == ("ALL", "MYE")
    towards = explain(image, classifier, method="gradcam", target="NGB")
    assert [(e.node, e.target) for e in towards] == [("ALL", "MYE"), ("MYM", "NEU"), ("NEU", "NGB")]
    other = explain(image, classifier, method="gradcam", node="NEU", target="NGS")
    assert not np.allclose(towards[-1].attribution, other[0].attribution)  # a different class, a different map


def test_bad_node_or_target_is_named(classifier):
    with pytest.raises(ExplanationError, match="node 'EOS' has no model"):
        explain(neutrophil(), classifier, node="EOS")
    with pytest.raises(ExplanationError, match="'LYT' is not below node 'MYM'"):
        explain(neutrophil(), classifier, node="MYM", target="LYT")


def test_maps_are_cached_in_the_store_by_model_image_method_and_settings(classifier, store):
    from bloodcells.store import Explanation as ExplanationRow
    from bloodcells.synthetic import encode

    content = encode(neutrophil())
    first = explain(content, classifier, method="occlusion", store=store)
    assert not any(e.cached for e in first)
    again = explain(content, classifier, method="occlusion", store=store)
    assert all(e.cached for e in again)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.attribution, b.attribution)
        assert "(cached)" in b.caption
    assert store.count_rows(ExplanationRow) == len(first)
    coarser = explain(content, classifier, method="occlusion", store=store, window=16, stride=16)
    assert not any(e.cached for e in coarser)
    assert store.count_rows(ExplanationRow) == 2 * len(first)


def test_explaining_does_not_disturb_concurrent_classification(classifier):
    from bloodcells.synthetic import cell_image

    cells = [cell_image(code, seed, 32) for code in ("NGS", "NGB", "EOS", "LYT") for seed in range(4)]
    expected = [(r.code, r.probabilities) for r in classifier.classify_images(cells)]
    seen, errors = [], []

    def classify_repeatedly():
        try:
            for _ in range(6):
                seen.append([(r.code, r.probabilities) for r in classifier.classify_images(cells)])
        except Exception as error:
            errors.append(error)

    def explain_repeatedly():
        try:
            for method in ("gradcam", "integrated-gradients", "gradcam", "occlusion"):
                explain(cells[0], classifier, method=method)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=classify_repeatedly), threading.Thread(target=explain_repeatedly),
               threading.Thread(target=explain_repeatedly)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(seen) == 6 and all(run == expected for run in seen)
    for node_model in classifier.nodes.values():  # captum left no hooks on the shared modules
        assert not any(m._forward_hooks or m._backward_hooks for m in node_model.module.modules())


def test_explain_command_writes_the_overlays_and_prints_the_time(trained_models_dir, tmp_path, capsys):
    from PIL import Image

    from bloodcells.cli import main

    image = tmp_path / "cell.png"
    neutrophil().save(image)
    out = tmp_path / "maps" / "cell_ig.png"
    status = main(["explain", str(image), "--method", "integrated-gradients", "--steps", "8",
                   "--models", str(trained_models_dir), "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "integrated-gradients:" in printed and "explained in" in printed and " s " in printed
    levels = [line for line in printed.splitlines() if " -> " in line]
    assert levels and levels[0].startswith("ALL -> ")
    with Image.open(out) as sheet:
        assert sheet.width >= 256 * len(levels)
    one = tmp_path / "one.png"
    assert main(["explain", str(image), "--method", "occlusion", "--node", "NEU", "--target", "NGB", "--window", "8",
                 "--models", str(trained_models_dir), "--out", str(one)]) == 0
    assert "NEU -> NGB" in capsys.readouterr().out


@pytest.mark.parametrize(("arguments", "message"), [
    (["missing.png", "--out", "x.png"], "missing.png: no such image"),
    (["{image}", "--out", "x.jpg"], "x.jpg: the output must be a .png file"),
    (["{image}", "--out", "x.png", "--method", "gradcam", "--steps", "4"], "gradcam does not use --steps"),
    (["{image}", "--out", "x.png", "--node", "LYT"], "node 'LYT' has no model"),
    (["{image}", "--out", "x.png", "--target", "nonsense-cell"], "nonsense-cell"),
    (["{image}", "--out", "x.png", "--target", "ALL"], "'ALL' is not a choice of any model of the tree"),  # a traceback
    (["{zip}", "--out", "x.png"], "cells.zip: a zip; explain takes one image"),  # "not an image (... Pillow ...)"
])
def test_explain_command_names_bad_input(trained_models_dir, tmp_path, capsys, arguments, message):
    import zipfile

    from bloodcells.cli import main

    image = tmp_path / "cell.png"
    neutrophil().save(image)
    with zipfile.ZipFile(tmp_path / "cells.zip", "w") as archive:
        archive.write(image, "cell.png")
    arguments = [a.format(image=image, zip=tmp_path / "cells.zip") for a in arguments]
    assert main(["explain", *arguments, "--models", str(trained_models_dir)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("bloodcells explain: error:") and message in error


def test_a_jpeg_is_explained_as_classification_decoded_it():
    """Classification decodes a JPEG at the scale the network needs (Pillow's draft), Explanation decoded it
    at full size: a stored band neutrophil was explained as a segmented one, at another confidence. The
    shipped tree (in the repository), whose 144 px input sees the difference."""
    from bloodcells.classify import TreeClassifier
    from bloodcells.inputs import open_image
    from bloodcells.synthetic import cell_image

    classifier = TreeClassifier.load()
    jpeg = io.BytesIO()
    cell_image("EOS", 3, 360).save(jpeg, format="JPEG", quality=95)
    content = jpeg.getvalue()
    as_classified, at_full_size = classifier.classify_images(
        [open_image(content, "cell.jpg", at_least=classifier.input_size), open_image(content, "cell.jpg")])
    assert abs(as_classified.level_confidences["ALL"] - at_full_size.level_confidences["ALL"]) > 1e-4
    [level] = explain(content, classifier, node="ALL")
    assert level.probability == pytest.approx(as_classified.level_confidences["ALL"], abs=1e-4)
