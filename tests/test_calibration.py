"""Calibrating a trained tree: each node's temperature, and refitting an existing tree's."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from bloodcells.classify import TreeClassifier
from bloodcells.cli import main
from bloodcells.data import load_dataset, split_indices
from bloodcells.synthetic import cell_image, write_cell_folders
from bloodcells.train.files import fit_temperatures


def _copy(models_dir, tmp_path):
    return shutil.copytree(models_dir, tmp_path / "models")


def _set_temperatures(models_dir, value: float | None) -> None:
    for code in json.loads((models_dir / "classifier.json").read_text())["nodes"]:
        metadata = json.loads((models_dir / f"{code}.json").read_text())
        metadata.pop("temperature", None)
        if value is not None:
            metadata["temperature"] = value
        (models_dir / f"{code}.json").write_text(json.dumps(metadata))


def _validation(models_dir, trained_from):
    """The validation cells of the fixture tree ``trained_from`` (its generated cells lie beside it)."""
    classifier = TreeClassifier.load(models_dir)
    cells = load_dataset([trained_from.parent / "cells"], classifier.tree, classifier.input_size)
    return cells.subset(split_indices(cells.labels, cells.groups, seed=0)["val"])


@pytest.mark.parametrize("fixture", ["trained_models_dir", "shared_trunk_models_dir"])
def test_a_temperature_sharpens_the_probabilities_and_keeps_the_answers(fixture, request, tmp_path):
    models = _copy(request.getfixturevalue(fixture), tmp_path)
    images = [cell_image(code, 500 + n, 32) for n, code in enumerate(["LYT", "EOS", "NGB", "NGS"] * 3)]
    _set_temperatures(models, None)  # a tree from before temperatures: 1.0
    plain = TreeClassifier.load(models).classify_images(images)
    _set_temperatures(models, 0.5)
    sharp = TreeClassifier.load(models).classify_images(images)
    assert [r.code for r in sharp] == [r.code for r in plain]
    for before, after in zip(plain, sharp, strict=True):
        assert before.probabilities.keys() == after.probabilities.keys()
        for node, probabilities in before.probabilities.items():
            children = list(probabilities)
            expected = softmax(2 * np.log([probabilities[c] for c in children]))
            assert np.allclose([after.probabilities[node][c] for c in children], expected, atol=1e-4)
        assert after.confidence >= before.confidence - 1e-6  # sharper at every level it chose


def test_the_fitted_temperature_minimises_the_validation_loss(shared_trunk_models_dir, tmp_path):
    models = _copy(shared_trunk_models_dir, tmp_path)
    validation = _validation(models, shared_trunk_models_dir)
    fitted = fit_temperatures(TreeClassifier.load(models), validation)
    classifier = TreeClassifier.load(models)
    logits = classifier.node_logits(validation.images)
    for code, node in classifier.nodes.items():
        assert node.temperature == pytest.approx(fitted[code], abs=1e-3)  # written into the node's metadata
        tree = classifier.tree
        pairs = [(n, k) for n, label in enumerate(validation.labels)
                 for k, child in enumerate(node.classes) if tree.is_ancestor(tree[child], tree[label])]
        if len(pairs) < 10:
            assert fitted[code] == 1.0
            continue
        rows, truth = map(np.array, zip(*pairs, strict=True))

        def loss(temperature, rows=rows, truth=truth, code=code):
            return -log_softmax(logits[code][rows] / temperature, axis=1)[np.arange(len(rows)), truth].mean()

        best = loss(fitted[code])
        for other in (1.0, fitted[code] * 1.3, fitted[code] / 1.3):
            assert best <= loss(other) + 1e-6, (code, fitted[code], other)


def test_too_few_cells_keep_the_temperature_at_one(shared_trunk_models_dir, tmp_path):
    models = _copy(shared_trunk_models_dir, tmp_path)
    few = _validation(models, shared_trunk_models_dir).subset(np.arange(5))
    assert set(fit_temperatures(TreeClassifier.load(models), few).values()) == {1.0}


def test_training_fits_the_temperatures(trained_models_dir):
    for code in json.loads((trained_models_dir / "classifier.json").read_text())["nodes"]:
        assert json.loads((trained_models_dir / f"{code}.json").read_text())["temperature"] > 0


def test_calibrate_refits_an_older_tree_from_its_sources(trained_models_dir, tmp_path, capsys):
    models = _copy(trained_models_dir, tmp_path)
    shutil.copytree(trained_models_dir.parent / "cells", tmp_path / "cells")
    _set_temperatures(models, None)
    manifest = json.loads((models / "classifier.json").read_text())
    (models / "classifier.json").write_text(json.dumps({**manifest, "review_threshold": 0.0}))

    assert main(["calibrate", "--data", str(tmp_path / "cells"), "--models", str(models)]) == 0
    assert "review threshold" in capsys.readouterr().out
    # the same validation cells as training's: the same temperatures and threshold as training set
    trained, refitted = TreeClassifier.load(trained_models_dir), TreeClassifier.load(models)
    assert {code: node.temperature for code, node in refitted.nodes.items()} == pytest.approx(
        {code: node.temperature for code, node in trained.nodes.items()}, abs=2e-4)
    assert refitted.review_threshold == pytest.approx(trained.review_threshold, abs=1e-6)


def test_calibrate_refuses_other_cells_and_changes_nothing(trained_models_dir, tmp_path, capsys):
    models = _copy(trained_models_dir, tmp_path)
    write_cell_folders(tmp_path / "other", {"LYT": 30, "EOS": 30}, size=32)
    before = {path.name: path.read_bytes() for path in models.iterdir()}
    assert main(["calibrate", "--data", str(tmp_path / "other"), "--models", str(models)]) == 2
    assert "not the cells" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in models.iterdir()} == before


def test_calibrate_never_changes_a_promoted_version(trained_models_dir, tmp_path, monkeypatch, capsys):
    from bloodcells.versions import versions_dir

    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(tmp_path / "models-root"))
    promoted = shutil.copytree(trained_models_dir, versions_dir() / "20261205T000000Z-abc")
    before = {path.name: path.read_bytes() for path in promoted.iterdir()}
    assert main(["calibrate", "--data", str(trained_models_dir.parent / "cells"), "--models", str(promoted)]) == 2
    assert "promoted version is never changed" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in promoted.iterdir()} == before
