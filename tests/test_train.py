"""Training the tree: files and metadata, registration, early stopping, pretrained weights offline."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TREE_CELLS, tiny_train_config

from bloodcells.backbones import PretrainedWeightsError, create_model
from bloodcells.store import Model
from bloodcells.synthetic import write_cell_folders


def test_models_and_metadata_on_disk(trained_models_dir):
    manifest = json.loads((trained_models_dir / "classifier.json").read_text())
    assert manifest["nodes"] == ["ALL", "MYM", "NEU"]
    assert manifest["passthrough"] == {"LYM": "LYT", "MYE": "MYM"}
    assert 0.0 < manifest["review_threshold"] <= 1.0
    assert "ALL/MYE/MYM/NEU  -> 48 per child" in manifest["count_table"]
    split = json.loads((trained_models_dir / "split.json").read_text())
    assert len(split["test"]) + len(split["seen"]) == sum(TINY_TREE_CELLS.values())
    for code in manifest["nodes"]:
        meta = json.loads((trained_models_dir / f"{code}.json").read_text())
        assert meta["architecture"] == "test_efficientnet" and meta["input_size"] == 32
        assert len(meta["mean"]) == 3 and len(meta["std"]) == 3
        assert meta["data_fingerprint"] == manifest["data_fingerprint"]
        history = meta["metrics"]["history"]
        assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
        assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy"} <= set(history[0])
        best = min(history, key=lambda h: h["val_loss"])
        assert meta["metrics"]["best_epoch"] == best["epoch"]
    assert json.loads((trained_models_dir / "NEU.json").read_text())["classes"] == ["NGB", "NGS"]
    # a node learns the cell types below its children: ALL tells LYM from MYE by learning LYT, EOS, NGB, NGS
    root = json.loads((trained_models_dir / "ALL.json").read_text())
    assert root["classes"] == ["LYM", "MYE"]
    assert root["outputs"] == {"LYT": "LYM", "EOS": "MYE", "NGB": "MYE", "NGS": "MYE"}


def test_node_network_sums_the_fine_labels_of_each_child():
    import torch

    from bloodcells.backbones import node_network

    backbone = create_model("test_efficientnet", 4).eval()
    network = node_network(backbone, [0, 1, 1, 1], 2).eval()  # fine labels 1-3 lie under child 1
    images = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        fine = torch.softmax(backbone(images), dim=1)
        children = torch.softmax(network(images), dim=1)
    assert torch.allclose(children[:, 0], fine[:, 0], atol=1e-5)
    assert torch.allclose(children[:, 1], fine[:, 1:].sum(1), atol=1e-5)
    features = network.forward_head(network.forward_features(images), pre_logits=True)
    assert features.shape == (5, backbone.num_features)


def test_training_registers_models_and_reports_progress(store, tmp_path):
    from bloodcells.train import train_tree

    write_cell_folders(tmp_path / "cells", {"LYT": 12, "EOS": 12, "MON": 12}, size=24)
    steps, lines = [], []
    report = train_tree([tmp_path / "cells"], tmp_path / "models", store=store, log=lines.append,
                        config=tiny_train_config(epochs=2, per_class=8, input_size=24),
                        progress=lambda done, total, text: steps.append((done, total, text)))
    assert set(report.nodes) == {"ALL", "MYM"}
    assert steps[-1][:2] == (4, 4) and "MYM" in steps[-1][2]
    assert any("EOS" in line and "eosinophil" in line for line in lines)  # the count table
    # four validation cells cannot show 97% accuracy with 90% certainty: every cell goes to review
    assert report.review_threshold == 1.0 and "every cell will be flagged for review" in lines[-1]
    registered = {m.node_code: m for m in store.list_models(kind="classifier")}
    assert set(registered) == {"ALL", "MYM"}
    meta = json.loads((tmp_path / "models" / "MYM.json").read_text())
    assert registered["MYM"].sha256 == meta["sha256"] and registered["MYM"].tree == "default"
    assert store.count_rows(Model) == 2


@pytest.mark.parametrize("shared_trunk", [False, True], ids=["network per node", "shared trunk"])
def test_on_epoch_gets_every_epoch_of_every_network(tmp_path, shared_trunk):
    from bloodcells.train import train_tree

    write_cell_folders(tmp_path / "cells", {"LYT": 12, "EOS": 12, "MON": 12}, size=24)
    epochs: dict[str, list[dict]] = {}
    report = train_tree([tmp_path / "cells"], tmp_path / "models", log=lambda _text: None,
                        on_epoch=lambda network, record: epochs.setdefault(network, []).append(record),
                        config=tiny_train_config(epochs=2, per_class=8, input_size=24, shared_trunk=shared_trunk))
    trained = {"trunk": report.trunk} if shared_trunk else report.nodes  # what trains epoch by epoch
    assert epochs == {network: metrics["history"] for network, metrics in trained.items()}


@pytest.mark.parametrize("shared_trunk", [False, True], ids=["network per node", "shared trunk"])
def test_a_cancel_acts_between_batches_not_only_at_the_end_of_an_epoch(tmp_path, monkeypatch, shared_trunk):
    """Cancel acted at the next progress call, once an epoch (minutes on a CPU) was over: the cancelled run went
    on that long, beside the run started next."""
    from bloodcells.train import network, train_tree

    class Cancelled(Exception):
        pass

    monkeypatch.setattr(network, "TICK_SECONDS", 0.0)
    write_cell_folders(tmp_path / "cells", {"LYT": 12, "EOS": 12, "MON": 12}, size=24)
    epochs, calls = [], []

    def progress(done, total, text):
        calls.append(text)
        if text.endswith("running") or text.endswith("training"):  # between two batches of the first epoch
            raise Cancelled("cancelled by the user")

    with pytest.raises(Cancelled):
        train_tree([tmp_path / "cells"], tmp_path / "models", log=lambda _text: None, progress=progress,
                   on_epoch=lambda network, record: epochs.append(record),
                   config=tiny_train_config(epochs=2, per_class=8, input_size=24, batch_size=4,
                                            shared_trunk=shared_trunk))
    assert epochs == [] and len(calls) == 1 and not (tmp_path / "models").exists()


def test_plain_background_reaches_the_trunk_and_the_heads(tmp_path, monkeypatch):
    """``--plain-background``: the trunk's augmented images and the heads' augmented views both
    pass through the augmentation, and the tree's configuration records the share."""
    from bloodcells.background import PlainBackground
    from bloodcells.train import train_tree

    seen = []
    original = PlainBackground.apply
    monkeypatch.setattr(PlainBackground, "apply", lambda self, img, **params: seen.append(img.shape) or
                        original(self, img, **params))
    write_cell_folders(tmp_path / "cells", {"LYT": 12, "EOS": 12, "MON": 12}, size=24)
    train_tree([tmp_path / "cells"], tmp_path / "models", log=lambda _text: None,
               config=tiny_train_config(epochs=1, per_class=8, input_size=24, shared_trunk=True, head_views=2,
                                        mode="scratch+aug", plain_background=1.0))
    manifest = json.loads((tmp_path / "models" / "classifier.json").read_text())
    trunk_epoch = 3 * 8  # one epoch of the trunk, every image augmented
    assert len(seen) >= trunk_epoch + 25  # and the heads' second view of each of the ~28 training cells (8/1/1)
    assert manifest["config"]["plain_background"] == 1.0


def test_outside_cell_share_is_the_class_activation_off_the_cell():
    import torch

    from bloodcells.train.network import outside_cell_share

    feature_map = torch.zeros(3, 2, 4, 4)
    feature_map[0, 0, :2, :2] = 1.0  # label 0's evidence on the top-left quadrant
    feature_map[1, 0, 2:, 2:] = 1.0  # on the bottom-right one
    feature_map[2, 0] = 1.0
    feature_map[:, 1] = 5.0  # a channel label 0's weights ignore; label 1's evidence is everywhere
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cells = torch.zeros(3, 1, 16, 16)
    cells[:2, :, :8, :8] = 1  # the cell is the top-left quadrant; image 2 has no cell found
    assert float(outside_cell_share(feature_map, weights, torch.tensor([0, 0, 0]), cells)) == pytest.approx(0.5)
    assert float(outside_cell_share(feature_map[:1], weights, torch.tensor([1]), cells[:1])) == pytest.approx(0.75)


def test_cell_focus_adds_the_cam_off_the_cell_to_the_trunks_loss(tmp_path, monkeypatch):
    """``--cell-focus``: each batch of the trunk adds the share of its class activation map off the
    cell, from the map the network pools and each cell's mask augmented with its image; a network
    that pools before its head convolution (MobileNetV3) is refused, with the reason."""
    import bloodcells.train.network as network
    from bloodcells.train import train_tree

    calls = []
    original = network.outside_cell_share

    def recorded(feature_map, weights, targets, cells):
        calls.append((feature_map.shape, weights.shape, cells.shape, cells.flatten(1).mean(1)))
        return original(feature_map, weights, targets, cells)

    monkeypatch.setattr(network, "outside_cell_share", recorded)
    write_cell_folders(tmp_path / "cells", {"LYT": 12, "EOS": 12, "MON": 12}, size=32)
    train_tree([tmp_path / "cells"], tmp_path / "models", log=lambda _text: None,
               config=tiny_train_config(epochs=1, per_class=8, shared_trunk=True, mode="scratch+aug",
                                        plain_background=0.5, cell_focus=1.0))
    assert len(calls) == 2  # 3 labels x 8 cells, batches of 16
    feature_map, weights, cells, cell_shares = calls[0]
    assert weights == (3, feature_map[1]) and cells[-2:] == (32, 32) and cells[0] == feature_map[0]
    # the colour threshold finds most generated cells (their nuclei are not all purple), kept whole
    # through the rotations and scaling; where it finds none the mask is empty and the image not counted
    from bloodcells.background import MAX_CELL_SHARE

    found = cell_shares[cell_shares > 0]
    assert len(found) >= len(cell_shares) // 2 and float(found.min()) > 0.1 and float(found.max()) < MAX_CELL_SHARE
    assert json.loads((tmp_path / "models" / "classifier.json").read_text())["config"]["cell_focus"] == 1.0
    for architecture in ("mobilenetv3_small_050", "test_vit"):  # a ViT's global_pool is a string: was AttributeError
        with pytest.raises(ValueError, match="cell focus needs a network whose linear classifier reads"):
            train_tree([tmp_path / "cells"], tmp_path / architecture, log=lambda _text: None,
                       config=tiny_train_config(architecture=architecture, epochs=1, per_class=8, cell_focus=1.0))
        assert not list(tmp_path.glob(f"{architecture}*"))  # nothing half-built left


def test_cell_masks_are_found_once_per_image_and_kept_exact(monkeypatch):
    """Cell focus needs each training image's mask every epoch: it is found once and kept
    bit-packed, and what comes back is the mask itself (all zero where no cell was found)."""
    import bloodcells.background as background
    from bloodcells.train.views import CellMasks

    yy, xx = np.mgrid[:48, :48]
    images = np.zeros((4, 48, 48, 3), np.uint8) + np.array((238, 222, 212), np.uint8)
    for image, radius in zip(images, (6, 9, 12), strict=False):  # a purple cell on a pale field
        image[(yy - 24) ** 2 + (xx - 22) ** 2 < radius ** 2] = (110, 60, 165)
    images[3] = (110, 60, 165)  # all purple: no single cell
    found = []
    monkeypatch.setattr(background, "centred_cell_mask",
                        lambda image: found.append(1) or background.stained_cell_mask(image, 1 / 16) > 0)
    masks = CellMasks(images)
    first = [masks[i] for i in range(4)] + [masks[i] for i in range(4)]
    assert len(found) == 4
    for index in range(3):
        expected = background.stained_cell_mask(images[index], 1 / 16)
        assert first[index].dtype == np.uint8 and np.array_equal(first[index], expected)
        assert np.array_equal(first[index + 4], expected) and 0 < expected.mean() < 1
    monkeypatch.undo()
    assert not CellMasks(images[3:])[0].any()


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    from bloodcells.synthetic import cell_image
    from bloodcells.train import train_tree

    # Labels that are pure noise: both folders hold lymphocytes, so what the network learns of the
    # training cells' labels does not carry over and the validation loss cannot keep falling.
    for folder, first_seed in (("LYT", 0), ("EOS", 1000)):
        (tmp_path / "cells" / folder).mkdir(parents=True)
        for n in range(20):
            cell_image("LYT", first_seed + n, 24).save(tmp_path / "cells" / folder / f"{n}.png")
    epochs, patience = 12, 2
    report = train_tree([tmp_path / "cells"], tmp_path / "models", log=lambda _text: None,
                        config=tiny_train_config(epochs=epochs, patience=patience, per_class=8, input_size=24))
    metrics = report.nodes["ALL"]
    best = min(metrics["history"], key=lambda record: record["val_loss"])
    assert len(metrics["history"]) == best["epoch"] + patience < epochs  # stopped, patience epochs after the best
    assert (metrics["best_epoch"], metrics["val_loss"]) == (best["epoch"], best["val_loss"])


def test_pretrained_without_downloads_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.delenv("BLOODCELLS_ALLOW_DOWNLOADS", raising=False)
    started = time.perf_counter()
    with pytest.raises(PretrainedWeightsError, match="downloads are off") as error:
        create_model("resnext50_32x4d", 3, pretrained=True)
    assert time.perf_counter() - started < 1.0
    assert "--pretrained" in str(error.value) and "BLOODCELLS_ALLOW_DOWNLOADS=1" in str(error.value)
    with pytest.raises(PretrainedWeightsError, match="nope.pth"):
        create_model("test_efficientnet", 3, pretrained=tmp_path / "nope.pth")


def test_pretrained_from_a_local_checkpoint_replaces_the_head(tmp_path):
    import torch

    source = create_model("test_efficientnet", 10)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    model = create_model("test_efficientnet", 3, pretrained=tmp_path / "weights.pth")
    assert model.get_classifier().out_features == 3
    stem = next(name for name, _ in source.named_parameters() if "conv_stem" in name)
    assert torch.equal(dict(model.named_parameters())[stem], dict(source.named_parameters())[stem])


def test_backbones_by_name_and_fixed_input_sizes():
    import torch

    with pytest.raises(ValueError, match="unknown backbone 'mobilenetv9'"):
        create_model("mobilenetv9", 2)
    vit = create_model("test_vit", 2, img_size=32)  # a fixed-size attention model gets img_size
    assert vit(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    cnn = create_model("test_efficientnet", 4, img_size=32)  # ignored where the model takes any size
    assert cnn(torch.zeros(1, 3, 40, 40)).shape == (1, 4)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mode"):
        tiny_train_config(mode="fine-tuned")


# `bloodcells train` defaults to the shipped recipe (45 epochs of EfficientNet-Lite0 at 144 px): the
# tests train a tiny network for one epoch, each option that shapes the run given.
TINY_TRAINING = ["--backbone", "test_efficientnet", "--size", "24", "--epochs", "1", "--per-class", "8", "--mode",
                 "scratch", "--batch-size", "8", "--no-shared-trunk", "--stain-norm", "--plain-background", "0",
                 "--cell-focus", "0"]


def test_cli_train_classify_round_trip(tmp_path, monkeypatch, capsys):
    from bloodcells.cli import main
    from bloodcells.synthetic import write_cell_zip

    write_cell_folders(tmp_path / "cells", {"LYT": 10, "MON": 10}, size=24)
    assert main(["train", "--data", str(tmp_path / "cells"), "--out", str(tmp_path / "models"), *TINY_TRAINING]) == 0
    assert f"written {tmp_path / 'models'}: `bloodcells versions promote" in capsys.readouterr().out
    upload = write_cell_zip(tmp_path / "in.zip", {"LYT": 2, "MON": 2}, size=24)
    assert main(["classify", str(upload), "--models", str(tmp_path / "models"),
                 "--out", str(tmp_path / "out.csv")]) == 0
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 5
    assert main(["train", "--data", str(tmp_path / "cells"), *TINY_TRAINING, "--mode", "pretrained",
                 "--out", str(tmp_path / "m2")]) == 2


def test_cli_train_defaults_are_the_shipped_recipe():
    """`bloodcells train --data X --out Y` trained an old recipe (MobileNetV3 at 64 px from scratch, a
    network per node, no plain background nor cell focus): a far worse tree than the shipped one."""
    from bloodcells.cli import _load_commands, build_parser
    from bloodcells.cli.classification import _config
    from bloodcells.train import SHIPPED_RECIPE

    _load_commands()
    args = build_parser().parse_args(["train", "--data", "cells", "--out", "tree"])
    assert _config(args) == SHIPPED_RECIPE
    assert (SHIPPED_RECIPE.architecture, SHIPPED_RECIPE.input_size, SHIPPED_RECIPE.mode, SHIPPED_RECIPE.shared_trunk,
            SHIPPED_RECIPE.stain_norm, SHIPPED_RECIPE.plain_background, SHIPPED_RECIPE.cell_focus) == \
        ("efficientnet_lite0", 144, "pretrained+aug", True, False, 0.5, 1.0)
    # each can be turned off, the shared trunk and the colour standardisation too
    args = build_parser().parse_args(["train", "--data", "cells", "--out", "tree", "--no-shared-trunk",
                                      "--stain-norm", "--cell-focus", "0", "--per-class", "0"])
    assert _config(args) == replace(SHIPPED_RECIPE, shared_trunk=False, stain_norm=True, cell_focus=0.0,
                                    per_class=None)  # --min-per-class balances


def test_cli_train_never_deletes_a_folder_of_other_files(tmp_path, capsys):
    """``--out`` is replaced whole: pointed at the training images themselves (or any folder of other
    files) it deleted them, and the run exited 0."""
    from bloodcells.cli import main

    write_cell_folders(tmp_path / "cells", {"LYT": 10, "MON": 10}, size=24)
    before = sorted(p.name for p in (tmp_path / "cells").rglob("*"))
    assert main(["train", "--data", str(tmp_path / "cells"), "--out", str(tmp_path / "cells"), *TINY_TRAINING]) == 2
    assert "holds files that are not a trained tree" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "cells").rglob("*")) == before
    assert not list(tmp_path.glob("*.training"))  # nothing half-built left beside it
    assert main(["train", "--data", str(tmp_path / "cells"), "--out", str(tmp_path / "tree"), *TINY_TRAINING]) == 0
    assert main(["train", "--data", str(tmp_path / "cells"), "--out", str(tmp_path / "tree"), *TINY_TRAINING]) == 0  # a tree


@pytest.mark.parametrize(("command", "option", "value"), [
    ("train", "--epochs", "0"), ("train", "--batch-size", "0"), ("train", "--lr", "-1"),
    ("train", "--review-accuracy", "1.5"), ("train", "--patience", "-3"),
    # the library's messages named its own names (plain_background...), not the option typed
    ("train", "--plain-background", "1.5"), ("train", "--cell-focus", "-1"), ("train", "--review-certainty", "1"),
    ("train", "--ema", "1"), ("train", "--workers", "-1"), ("train-detector", "--workers", "-3"),
    ("adapt", "--lr", "-1"), ("detect", "--conf", "2"), ("detect", "--tile-size", "0"),
    ("explain", "--steps", "0"), ("classify", "--batch-size", "-5")])
def test_cli_numbers_out_of_range_are_refused_before_anything_runs(command, option, value, capsys):
    """They ended in tracebacks (ZeroDivisionError, captum's AssertionError) or ran on (a tree trained
    with a negative learning rate was written)."""
    from bloodcells.cli import main

    with pytest.raises(SystemExit) as stopped:
        main([command, "x", option, value] if command in ("detect", "classify", "explain")
             else [command, "--data", "x", "--out", "y", option, value])
    assert stopped.value.code == 2
    assert f"argument {option}: {value}: give a" in capsys.readouterr().err


# MobileNetV3 pools before its head convolution: its pooled width (1024) is not num_features (576)
@pytest.mark.parametrize("architecture", ["test_efficientnet", "mobilenetv3_small_050"])
def test_shared_trunk_heads_per_node_classify_in_one_pass(architecture, tmp_path):
    """One trunk learns every cell type; each node's head is its own classifier on the trunk's
    features. The one-pass descent (on the trunk frozen by TorchScript) gives the same answers as
    each node's full eager network, and a changed trunk file is refused."""
    import numpy as np

    from bloodcells.classify import ModelFileError, TreeClassifier
    from bloodcells.synthetic import cell_image
    from bloodcells.train import train_tree

    write_cell_folders(tmp_path / "cells", TINY_TREE_CELLS, size=32)
    report = train_tree([tmp_path / "cells"], tmp_path / "models", log=lambda _text: None,
                        config=tiny_train_config(architecture=architecture, shared_trunk=True, head_views=2))
    assert report.trunk["classes"] == ["EOS", "LYT", "NGB", "NGS"] and set(report.nodes) == {"ALL", "MYM", "NEU"}
    classifier = TreeClassifier.load(tmp_path / "models")
    trunks = {id(node.trunk) for node in classifier.nodes.values()}
    assert len(trunks) == 1 and None not in trunks
    assert len(set(classifier.versions().values())) == 3  # each node its own version

    codes = [code for code, n in TINY_TREE_CELLS.items() for _ in range(6)]
    images = [cell_image(code, 1000 + k, 32) for k, code in enumerate(codes)]
    results = classifier.classify_images(images)
    for code, node in classifier.nodes.items():  # the fast path == the node's own network
        reached = [k for k, r in enumerate(results) if code in r.probabilities]
        whole = node.probabilities([images[k] for k in reached])
        fast = np.array([[results[k].probabilities[code][c] for c in node.classes] for k in reached])
        np.testing.assert_allclose(fast, whole, atol=1e-4)
    import torch

    # the one pass ran on the frozen TorchScript copy (batch norms folded), which agreed above
    assert isinstance(classifier._frozen_trunk, torch.jit.ScriptModule)
    assert np.mean([r.code == code for r, code in zip(results, codes, strict=True)]) >= 0.75

    trunk_file = tmp_path / "models" / "trunk.safetensors"
    trunk_file.write_bytes(trunk_file.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelFileError, match="trunk.safetensors: sha256 does not match"):
        TreeClassifier.load(tmp_path / "models")


def test_review_threshold_keeps_the_asked_accuracy_above_it_with_the_asked_certainty():
    """The lowest confidence whose cells at or above it show the target accuracy: not on the count
    itself, whose dips pick a lucky threshold, but on its one-sided Clopper-Pearson lower bound
    (scipy's exact binomial interval, computed apart here)."""
    from scipy.stats import binomtest

    from bloodcells.data import CellDataset
    from bloodcells.train import TrainConfig, TrainReport, review_threshold
    from bloodcells.train.files import calibrate_review_threshold

    with pytest.raises(ValueError, match="review_certainty is a probability from 0.5"):
        TrainConfig(review_certainty=0.3)
    rng = np.random.default_rng(0)
    confidences = rng.uniform(0.3, 1.0, 600)
    correct = rng.uniform(size=600) < confidences ** 0.25  # surer answers are right more often
    threshold = review_threshold(confidences, correct, 0.9, 0.9)

    def lower_bound(at: float) -> float:
        above = confidences >= at
        return binomtest(int(correct[above].sum()), int(above.sum())).proportion_ci(0.8, "exact").low

    assert lower_bound(threshold) >= 0.9 - 1e-9
    assert all(lower_bound(at) < 0.9 for at in confidences[confidences < threshold])
    assert 0.3 < threshold < 1.0 and threshold > review_threshold(confidences, correct, 0.9, 0.5)
    order = np.argsort(confidences)  # the cells' order does not matter
    assert review_threshold(confidences[order], correct[order], 0.9, 0.9) == threshold
    # ten right answers cannot show 97% with 90% certainty (0.1 ** (1 / 10) = 0.79): review all
    assert review_threshold(np.linspace(0.9, 0.99, 10), [True] * 10, 0.97, 0.9) == 1.0
    assert review_threshold(np.linspace(0.9, 0.99, 100), [True] * 100, 0.97, 0.9) == 0.9
    no_cells = CellDataset([], [], [], [], [], np.zeros((0, 32, 32, 3), np.uint8), 32)
    assert calibrate_review_threshold(Path("not read"), no_cells, 0.97, 0.9) == 1.0  # nothing shown: review all
    report = TrainReport(out_dir=Path("models"), review_threshold=0.8156)
    assert report.review_summary(TrainConfig(review_accuracy=0.97, review_certainty=0.9)) == ("review threshold 0.816 (the validation cells above it show 97% accuracy "
                                       "with 90% certainty)")


def test_test_time_flips_make_the_answer_the_same_for_a_flipped_cell(tmp_path):
    """With ``flips`` a cell and its mirror images get the same probabilities at every node (the
    average runs over the same four views), for heads on a trunk and for networks per node."""
    import numpy as np

    from bloodcells.classify import TreeClassifier
    from bloodcells.synthetic import cell_image
    from bloodcells.train import train_tree

    write_cell_folders(tmp_path / "cells", TINY_TREE_CELLS, size=32)
    for shared in (True, False):
        train_tree([tmp_path / "cells"], tmp_path / f"models-{shared}", log=lambda _text: None,
                   config=tiny_train_config(shared_trunk=shared, epochs=3, head_views=1))
        classifier = TreeClassifier.load(tmp_path / f"models-{shared}")
        cell = np.asarray(cell_image("EOS", 7, 32))
        mirrors = [cell, cell[:, ::-1], cell[::-1], cell[::-1, ::-1]]
        averaged = classifier.classify_arrays(np.stack(mirrors), flips=True)
        for result in averaged[1:]:
            assert result.code == averaged[0].code
            for node, probabilities in averaged[0].probabilities.items():
                np.testing.assert_allclose(list(result.probabilities[node].values()),
                                           list(probabilities.values()), atol=1e-4)


def test_a_seed_gives_the_same_models_whatever_ran_before(tmp_path):
    """Regression: augmentation drew from the process's global random state, so a tree's quality
    depended on which tests (or trainings) had run before it in the process."""
    import random

    import numpy as np

    from bloodcells.classify import TreeClassifier
    from bloodcells.train import train_tree

    write_cell_folders(tmp_path / "cells", {"LYT": 10, "NGS": 6}, size=24)  # NGS oversampled: augmented
    config = tiny_train_config(input_size=24, epochs=2, per_class=12, cross_site=True)
    versions = []
    for run, state in enumerate((1, 2)):
        random.seed(state)
        np.random.seed(state)
        train_tree([tmp_path / "cells"], tmp_path / f"models{run}", config=config, log=lambda _text: None)
        versions.append(TreeClassifier.load(tmp_path / f"models{run}").versions())
    assert versions[0] == versions[1]


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_ema_keeps_an_average_of_the_steps_weights(tmp_path, monkeypatch, ema):
    """``--ema``: what is validated and kept is a moving average of the weights after each
    optimiser step (a convex mix of them, not the last step's); without it, the last step's."""
    import torch

    import bloodcells.train.tree as tree_module
    from bloodcells.train import TrainConfig, train_tree

    with pytest.raises(ValueError, match="ema is a decay per step"):
        TrainConfig(ema=1.0)
    steps, kept = [], {}

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            result = super().step(closure)
            steps.append([p.detach().clone() for group in self.param_groups for p in group["params"]])
            return result

    def save_node(staging, code, state, *rest):
        kept[code] = state
        return original_save(staging, code, state, *rest)

    original_save = tree_module.save_node
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    monkeypatch.setattr(tree_module, "save_node", save_node)
    write_cell_folders(tmp_path / "cells", {"LYT": 12, "EOS": 12}, size=32)
    train_tree([tmp_path / "cells"], tmp_path / "models", log=lambda _text: None,
               config=tiny_train_config(epochs=1, per_class=24, ema=ema))
    assert list(kept) == ["ALL"] and len(steps) == 3  # 2 labels x 24 cells, batches of 16
    names = [name for name, _ in create_model("test_efficientnet", 2).named_parameters()]
    weights = [kept["ALL"][name] for name in names]
    last = steps[-1]
    if not ema:
        assert all(torch.equal(w, s) for w, s in zip(weights, last, strict=True))
        return
    stacked = [torch.stack([step[n] for step in steps]) for n in range(len(names))]
    assert all(bool((w >= s.amin(0) - 1e-6).all() and (w <= s.amax(0) + 1e-6).all())
               for w, s in zip(weights, stacked, strict=True))
    assert max(float((w - s).abs().max()) for w, s in zip(weights, last, strict=True)) > 1e-4


@pytest.mark.timeout(180)
def test_augmenting_workers_make_the_same_batches_as_the_training_process(monkeypatch):
    """``workers`` only moves augmentation beside the network: each batch's draws are seeded by
    its key, so the workers give, batch for batch, the cells one process gives; images not
    marked for augmentation come back as they are, and masks come back augmented with them.

    Regression: workers forked from a process whose OpenCV threads had run (here: the in-process
    views first) hung at their first OpenCV call, and training with them never ended. Less shared
    memory free than the decoded cells need is refused with the figures (not killed by SIGBUS)."""
    from bloodcells.synthetic import cell_image
    from bloodcells.train.views import BatchRequest, CellViews

    images = np.stack([np.asarray(cell_image(code, n, 48)) for n, code in enumerate(["LYT", "EOS", "NGS", "MON"] * 3)])
    flags = np.array([True, False, True, True, False, True, True, True, False, True, True, True])
    requests = [BatchRequest((epoch, start), np.arange(start, start + 4), flags[start:start + 4], masks=True)
                for epoch in (1, 2) for start in (0, 4, 8)]
    options = dict(seed=3, cross_site=True, plain_background=0.5, with_masks=True)
    with CellViews(images, **options) as alone:
        in_turn = list(alone.map(requests))
    with CellViews(images, workers=2, **options) as beside:
        ahead = list(beside.map(requests))
        assert beside._pool is not None
    assert beside._pool is None and beside._shared is None  # workers and shared images gone with the block
    for (images_a, masks_a), (images_b, masks_b), request in zip(in_turn, ahead, requests, strict=True):
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_array_equal(masks_a, masks_b)
        assert masks_a.shape == (4, 48, 48) and masks_a.any()
        kept = ~request.augment
        np.testing.assert_array_equal(images_a[kept], images[request.indices[kept]])
        assert not np.array_equal(images_a[~kept], images[request.indices[~kept]])
    # the same cells in another epoch get other draws
    assert not np.array_equal(in_turn[0][0], in_turn[3][0])
    free = type("Usage", (), {"free": images.nbytes - 1})
    monkeypatch.setattr("shutil.disk_usage", lambda _folder: free)
    monkeypatch.setattr("os.path.isdir", lambda _folder: True)
    with pytest.raises(ValueError, match=r"share the 0.1 MB of decoded cells through /dev/shm, which has 0.1 MB free"):
        CellViews(images, workers=1, **options)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="cell masks were asked for"):
        CellViews(images, seed=0, cross_site=False, plain_background=0, with_masks=False)(
            BatchRequest((0,), np.arange(2), masks=True))


def test_a_tree_trained_with_augmenting_workers_is_the_one_trained_without(tmp_path):
    from bloodcells.classify import TreeClassifier
    from bloodcells.train import TrainConfig, train_tree

    with pytest.raises(ValueError, match="workers is a number of processes"):
        TrainConfig(workers=-1)
    write_cell_folders(tmp_path / "cells", {"LYT": 10, "NGS": 6}, size=24)
    versions = []
    for workers in (0, 2):
        config = tiny_train_config(input_size=24, epochs=2, per_class=12, cross_site=True, mode="scratch+aug",
                                   plain_background=0.5, shared_trunk=True, head_views=2, workers=workers)
        train_tree([tmp_path / "cells"], tmp_path / f"models{workers}", config=config, log=lambda _text: None)
        versions.append(TreeClassifier.load(tmp_path / f"models{workers}").versions())
    assert versions[0] == versions[1]


@pytest.mark.timeout(300)
def test_the_train_command_runs_with_augmenting_workers(tmp_path):
    """``python -m bloodcells train --workers 1`` from the shell: the workers are fresh Python
    processes (spawned, not forked); the command trains once and writes its models; a negative
    number of workers is refused before anything is written."""
    import subprocess
    import sys

    write_cell_folders(tmp_path / "cells", {"LYT": 8, "MON": 8}, size=24)
    command = [sys.executable, "-m", "bloodcells", "train", "--data", str(tmp_path / "cells"), "--no-register",
               *TINY_TRAINING, "--mode", "scratch+aug", "--out"]
    done = subprocess.run([*command, str(tmp_path / "models"), "--workers", "1"], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "models" / "ALL.json").exists() and done.stdout.count("models written to") == 1
    refused = subprocess.run([*command, str(tmp_path / "m2"), "--workers", "-1"], capture_output=True, text=True,
                             timeout=240)
    assert refused.returncode == 2 and "argument --workers: -1: give a whole number from 0 up" in refused.stderr
    assert not (tmp_path / "m2").exists()


def test_one_cell_type_trains_nothing_and_says_so(tmp_path, trained_models_dir):
    """A tree of pass-throughs would call every cell that type at confidence 1.0, never flagged."""
    import shutil

    from bloodcells.classify import ModelFileError, TreeClassifier
    from bloodcells.inputs import InputError
    from bloodcells.train import train_tree

    write_cell_folders(tmp_path / "cells", {"NGS": 12}, size=24)
    with pytest.raises(InputError, match=r"nothing to train: no node has training images of two cell types .*NGS"):
        train_tree([tmp_path / "cells"], tmp_path / "models", log=lambda _text: None,
                   config=tiny_train_config(epochs=1, input_size=24))
    assert not (tmp_path / "models").exists()
    write_cell_folders(tmp_path / "one each", {"NGS": 1, "LYT": 1}, size=24)  # both went to validation/test
    with pytest.raises(InputError, match=r"types with training images: none\); give at least two \(LYT, NGS: so few "
                                         r"images that all went to the validation and test cells"):
        train_tree([tmp_path / "one each"], tmp_path / "models", log=lambda _text: None,
                   config=tiny_train_config(epochs=1, input_size=24))
    with pytest.raises(InputError, match=r"none of the nodes asked for \(NEU\)"):
        train_tree([tmp_path / "cells"], tmp_path / "models",
                   log=lambda _text: None, config=tiny_train_config(epochs=1, input_size=24, nodes=["NEU"]))
    empty = tmp_path / "empty tree"  # one accepted before this check: refused when loaded
    shutil.copytree(trained_models_dir, empty)
    manifest = json.loads((empty / "classifier.json").read_text())
    (empty / "classifier.json").write_text(json.dumps({**manifest, "nodes": []}))
    with pytest.raises(ModelFileError, match="a tree without a trained node"):
        TreeClassifier.load(empty)


@pytest.mark.parametrize("command", [["train", "--data", "cells"], ["train-detector", "--data", "fields"],
                                     ["train-attributes", "--csv", "table.csv"]])
def test_training_commands_never_replace_the_shipped_models_unless_told(command, tmp_path, monkeypatch, capsys):
    """Without --out, `bloodcells train --data my-cells` replaced the shipped tree in place (and
    train-detector / train-attributes the shipped detector and morphology head)."""
    from bloodcells.cli import main

    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(SystemExit) as stopped:
        main(command)
    assert stopped.value.code == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()
