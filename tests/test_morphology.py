"""Morphology attributes: an attribute head trained on the tiny tree's features of generated cells."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bloodcells.morphology import (
    AttributeDataError,
    AttributeHeadError,
    describe,
    load_attribute_head,
    predict_attributes,
    train_attribute_head,
    train_own_backbone,
)

# Attributes set by the cell type, as WBCAtt's are by the biology (one is constant, as WBCAtt's
# "cytoplasm_vacuole" nearly is); names and values follow WBCAtt's table.
ATTRIBUTES = {
    "LYT": {"nucleus_shape": "unsegmented-round", "granularity": "no", "cytoplasm_vacuole": "no"},
    "EOS": {"nucleus_shape": "segmented-bilobed", "granularity": "yes", "cytoplasm_vacuole": "no"},
    "NGB": {"nucleus_shape": "unsegmented-band", "granularity": "yes", "cytoplasm_vacuole": "no"},
    "NGS": {"nucleus_shape": "segmented-multilobed", "granularity": "yes", "cytoplasm_vacuole": "no"},
}


def write_attribute_table(root: Path, per_type: int = 24, start_seed: int = 1000) -> Path:
    """``root/wbcatt/attributes.csv`` naming generated cells under ``root/pbc/<code>/``, like WBCAtt's."""
    from bloodcells.synthetic import cell_image

    table = root / "wbcatt" / "attributes.csv"
    table.parent.mkdir(parents=True)
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["img_name", "label", *ATTRIBUTES["LYT"], "path"])
        for code, values in ATTRIBUTES.items():
            (root / "pbc" / code).mkdir(parents=True)
            for n in range(per_type):
                relative = f"pbc/{code}/{code}_{n}.png"
                cell_image(code, start_seed + n, 32).save(root / relative)
                writer.writerow([f"{code}_{n}.png", code, *values.values(), relative])
    return table


@pytest.fixture(scope="module")
def classifier(trained_models_dir):
    from bloodcells.classify import TreeClassifier

    return TreeClassifier.load(trained_models_dir)


@pytest.fixture(scope="module")
def head_dir(classifier, tmp_path_factory):
    root = tmp_path_factory.mktemp("attributes")
    train_attribute_head(write_attribute_table(root / "data"), classifier, out_dir=root / "head", test_fraction=0.25)
    return root / "head"


def test_head_learns_attributes_from_the_classifier_features(head_dir):
    head = load_attribute_head(head_dir)
    metrics = head.metrics["attributes"]
    assert head.metrics["test_images"] == 24 and head.metrics["train_images"] == 72
    assert "random 25%" in head.metrics["split"]
    for name in ("nucleus_shape", "granularity"):
        assert metrics[name]["test_images"] == 24
        assert metrics[name]["accuracy"] >= 0.8 > metrics[name]["majority"], (name, metrics[name])
    assert metrics["cytoplasm_vacuole"]["accuracy"] == 1.0 and head.attributes["cytoplasm_vacuole"] == ["no"]
    assert head.nodes == list(head.node_sha256) and (head_dir / "attributes.npz").stat().st_size < 200_000


def test_predict_attributes_for_unseen_cells(head_dir, classifier):
    from bloodcells.synthetic import cell_image, encode

    right = 0
    for seed in range(5000, 5006):
        predicted = predict_attributes(encode(cell_image("NGS", seed, 32)), classifier, head_dir)
        assert set(predicted) == set(ATTRIBUTES["NGS"])
        right += predicted == ATTRIBUTES["NGS"]
    assert right >= 5
    lymphocyte = predict_attributes(cell_image("LYT", 5000, 32), classifier, head_dir)
    assert lymphocyte["granularity"] == "no"
    assert describe(lymphocyte).startswith("unsegmented-round nucleus, granular: no")


def test_head_refuses_other_classifier_weights(head_dir, classifier, tmp_path):
    from bloodcells.synthetic import cell_image

    meta = json.loads((head_dir / "attributes.json").read_text())
    meta["node_sha256"]["ALL"] = "0" * 64
    altered = tmp_path / "altered"
    altered.mkdir()
    (altered / "attributes.json").write_text(json.dumps(meta))
    (altered / "attributes.npz").write_bytes((head_dir / "attributes.npz").read_bytes())
    with pytest.raises(AttributeHeadError, match="trained on classifier node ALL with sha256 000000000000"):
        predict_attributes(cell_image("NGS", 1, 32), classifier, altered)
    with pytest.raises(AttributeHeadError, match="no attribute head here"):
        predict_attributes(cell_image("NGS", 1, 32), classifier, tmp_path / "nothing")


def test_the_page_says_in_words_that_the_attributes_belong_to_other_models(head_dir, classifier, monkeypatch):
    """Explanation showed "No attributes in words: /srv/.../attributes.json: trained on classifier node ALL with
    sha256 56d8ee5ceecc..." for every version accepted since the shipped one."""
    from bloodcells import morphology
    from bloodcells.synthetic import cell_image
    from ui.models import predicted_attributes

    def other_models(*_args, **_kwargs):
        raise morphology.AttributesForOtherModels("/srv/models/attributes/default/attributes.json: trained on ...")

    monkeypatch.setattr(morphology, "predict_attributes", other_models)
    attributes, said = predicted_attributes(cell_image("NGS", 1, 32), classifier)
    assert attributes == {} and said.startswith("the morphology model was trained with other models than version ")
    assert "/srv" not in said and "sha256" not in said


def models_with_a_damaged_head(root: Path, trained_models_dir: Path, head_dir: Path, damage) -> Path:
    """``root/models``, holding the tiny tree and the head, its ``attributes.npz`` damaged by ``damage``
    (its content -> the damaged content); returns that file."""
    import shutil

    shutil.copytree(trained_models_dir, root / "models" / "classifier" / "default")
    shutil.copytree(head_dir, root / "models" / "attributes" / "default")
    weights = root / "models" / "attributes" / "default" / "attributes.npz"
    weights.write_bytes(damage(weights.read_bytes()))
    return weights


@pytest.mark.parametrize("damage", [
    lambda content: b"PK\x03\x04" + bytes(range(256)),  # numpy's zip reader: BadZipFile
    lambda content: content[:len(content) // 2],  # truncated: BadZipFile
    lambda content: b"",  # EOFError
    lambda content: b"not an npz at all",  # numpy's own ValueError
], ids=["garbage", "truncated", "empty", "text"])
def test_a_damaged_head_is_named(damage, head_dir, trained_models_dir, tmp_path):
    """Loading it raised zipfile.BadZipFile ("File is not a zip file") or EOFError, naming no file."""
    weights = models_with_a_damaged_head(tmp_path, trained_models_dir, head_dir, damage)
    with pytest.raises(AttributeHeadError) as raised:
        load_attribute_head(weights.parent)
    assert str(raised.value).startswith(f"{weights}: unreadable attribute head weights (")


def test_the_explanation_of_a_cell_keeps_its_heatmaps_when_the_head_is_damaged(head_dir, trained_models_dir, app_store,
                                                                              tmp_path, monkeypatch, capsys):
    """`bloodcells explain` ended in a zipfile.BadZipFile traceback; the app said only "Explanation failed:
    File is not a zip file", naming no file, and showed no heatmap either."""
    from streamlit.testing.v1 import AppTest

    from bloodcells.cli import main
    from bloodcells.synthetic import cell_image

    weights = models_with_a_damaged_head(tmp_path, trained_models_dir, head_dir, lambda content: b"PK\x03\x04")
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(tmp_path / "models"))
    problem = f"{weights}: unreadable attribute head weights (File is not a zip file)"
    cell = tmp_path / "cell.png"
    cell_image("NGS", 1, 32).save(cell)
    assert main(["explain", str(cell), "--out", str(tmp_path / "map.png")]) == 0
    assert f"(no morphology: {problem})" in capsys.readouterr().out and (tmp_path / "map.png").is_file()

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.switch_page("pages/3_Explanation.py")
    at.run()
    at.file_uploader[0].set_value(("cell.png", cell.read_bytes(), "image/png")).run()
    at.button(key="explain").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [image for image in at.image if "→" in (image.proto.imgs[0].caption or "")]  # the heatmaps
    assert f"No attributes in words: {problem}" in [c.value for c in at.caption]


def test_bad_tables_are_named(classifier, tmp_path):
    table = write_attribute_table(tmp_path / "data", per_type=1)
    lines = table.read_text().splitlines()
    no_label = tmp_path / "no_label.csv"
    no_label.write_text("\n".join(line.split(",", 2)[0] + "," + line.split(",", 2)[2] for line in lines))
    with pytest.raises(AttributeDataError, match=r"no_label.csv: needs columns .*missing: label"):
        train_attribute_head(no_label, classifier, images_root=tmp_path / "data", out_dir=tmp_path / "out")
    (tmp_path / "data" / "pbc" / "EOS" / "EOS_0.png").unlink()
    with pytest.raises(AttributeDataError, match=r"attributes.csv: 1 image not found .*pbc/EOS/EOS_0.png"):
        train_attribute_head(table, classifier, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_train_attributes_command(trained_models_dir, tmp_path, capsys):
    from bloodcells.cli import main

    table = write_attribute_table(tmp_path / "data", per_type=8)
    status = main(["train-attributes", "--csv", str(table), "--models", str(trained_models_dir),
                   "--out", str(tmp_path / "head"), "--test-fraction", "0.25"])
    printed = capsys.readouterr().out
    assert status == 0 and "nucleus_shape" in printed and "mean accuracy" in printed
    assert (tmp_path / "head" / "attributes.json").is_file()
    assert main(["train-attributes", "--csv", str(tmp_path / "none.csv"), "--models", str(trained_models_dir),
                 "--out", str(tmp_path / "head2")]) == 2
    assert "none.csv: cannot read" in capsys.readouterr().err


@pytest.mark.slow
def test_head_with_its_own_backbone(tmp_path, classifier):
    from bloodcells.synthetic import cell_image
    from bloodcells.train import TrainConfig

    table = write_attribute_table(tmp_path / "data", per_type=20)
    tiny = TrainConfig(architecture="test_efficientnet", input_size=32, mode="scratch", cross_site=False,
                       stain_norm=False, epochs=3, per_class=24, batch_size=16, patience=3, learning_rate=3e-3)
    head = train_own_backbone(table, tmp_path / "head", config=tiny)
    assert (tmp_path / "head" / "backbone" / "classifier.json").is_file() and head.backbone == "backbone"
    # Its test cells are the backbone's own held-out ones: neither part trained on them.
    assert head.metrics["split"].startswith("the classifier's held-out") and head.metrics["test_images"] >= 8
    # The caller's classifier is not used: the head reads its own backbone's features.
    predicted = predict_attributes(cell_image("EOS", 7000, 32), classifier, tmp_path / "head")
    assert set(predicted) == set(ATTRIBUTES["EOS"])
