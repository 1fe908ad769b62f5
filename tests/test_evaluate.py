"""Evaluation: per node and whole tree, unseen cells only, files, comparison and cross-site tables."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import TINY_TREE_CELLS, tiny_train_config

from bloodcells.evaluate import Scores, compare, cross_site, evaluate, format_comparison, format_cross_site
from bloodcells.synthetic import write_cell_folders


def test_scores_of_hand_counted_answers():
    truth = ["A", "A", "A", "A", "B", "B", "C", "C", "C"]
    predicted = ["A", "A", "A", "B", "B", "B", "C", "A", "D"]  # D: predicted, never true
    scores = Scores.of("toy", truth, predicted, order=["D", "C", "B", "A", "E"])
    assert scores.labels == ["D", "C", "B", "A"]  # in the given order, those that occur
    assert scores.accuracy == pytest.approx(6 / 9)
    # recall: A 3/4, B 2/2, C 1/3; precision: A 3/4, B 2/3, C 1/1; D (never true) is no class of the mean
    assert scores.per_class == pytest.approx({"C": 1 / 3, "B": 1.0, "A": 0.75})
    assert list(scores.per_class) == ["C", "B", "A"]
    f1 = {"A": 0.75, "B": 2 * (2 / 3) / (2 / 3 + 1), "C": 2 * (1 / 3) / (1 / 3 + 1)}
    assert scores.macro_f1 == pytest.approx(sum(f1.values()) / 3)
    np.testing.assert_array_equal(scores.matrix, [[0, 0, 0, 0],   # true D
                                                  [1, 1, 0, 1],   # true C: predicted D, C, A
                                                  [0, 0, 2, 0],   # true B
                                                  [0, 0, 1, 3]])  # true A: once B
    empty = Scores.of("none", [], [], order=["A"])
    assert (empty.accuracy, empty.macro_f1, empty.per_class, empty.matrix) == (0.0, 0.0, {}, None)


@pytest.mark.parametrize(("right", "cells"), [(6, 9), (275, 329), (40, 40), (0, 12)])
def test_accuracy_comes_with_its_95_percent_wilson_interval(right, cells):
    truth = ["A"] * cells
    predicted = ["A"] * right + ["B"] * (cells - right)
    scores = Scores.of("toy", truth, predicted, order=["A", "B"])
    # Wilson's score interval, written out: centre and half-width at z = 1.96
    p, z = right / cells, 1.959964
    centre = (p + z * z / (2 * cells)) / (1 + z * z / cells)
    half = z / (1 + z * z / cells) * np.sqrt(p * (1 - p) / cells + z * z / (4 * cells * cells))
    assert scores.accuracy_interval == pytest.approx((centre - half, centre + half), abs=1e-6)
    low, high = scores.accuracy_interval
    assert 0 <= low <= scores.accuracy <= high <= 1
    assert f"(95% CI {low:.3f}-{high:.3f})" in scores.summary()


def test_scores_per_node_tree_and_source_with_files(trained_models_dir, tmp_path):
    write_cell_folders(tmp_path / "fresh", TINY_TREE_CELLS | {"LYT": 8}, size=32, start_seed=900)
    lines = []
    result = evaluate([tmp_path / "fresh"], trained_models_dir, out_dir=tmp_path / "report", log=lines.append)
    assert result.cells == sum(TINY_TREE_CELLS.values()) - 40 + 8 and result.skipped_seen == 0
    assert set(result.nodes) == {"ALL", "MYM", "NEU"}
    neu = result.nodes["NEU"]
    assert set(neu.truth) == {"NGB", "NGS"} and len(neu.truth) == 80 and neu.matrix.sum() == 80
    tree = result.tree
    assert len(tree.truth) == result.cells
    assert tree.accuracy > 0.5  # far above chance (1/4) on a learnable toy problem
    assert set(result.by_source) == {"fresh"} and result.by_source["fresh"].accuracy == tree.accuracy
    assert "precision" in tree.report and any("macro-F1" in line for line in lines)
    rows = list(csv.reader((tmp_path / "report" / "confusion_tree.csv").open(encoding="utf-8-sig")))
    assert rows[0][1:] == tree.labels
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == result.cells
    for name in ("confusion_tree.png", "confusion_NEU.png", "training_curves.png"):
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG"


def test_scores_with_cell_types_merged_up_the_tree(trained_models_dir, tmp_path):
    write_cell_folders(tmp_path / "fresh", TINY_TREE_CELLS, size=32, start_seed=700)
    result = evaluate([tmp_path / "fresh"], trained_models_dir, at=["NEU", "LYT"], log=lambda _text: None)
    leaf, merged = result.by_source["fresh"], result.merged["fresh"]
    assert set(merged.truth) == {"NEU", "LYT", "EOS"}  # NGB and NGS become NEU; EOS is under no code given
    assert merged.truth.count("NEU") == leaf.truth.count("NGB") + leaf.truth.count("NGS")
    band_as_segmented = sum(t == "NGB" and p == "NGS" for t, p in zip(leaf.truth, leaf.predicted, strict=True))
    wrong = sum(t != p for t, p in zip(leaf.truth, leaf.predicted, strict=True))
    assert round(merged.accuracy * len(merged.truth)) == len(leaf.truth) - wrong + band_as_segmented \
        + sum(t == "NGS" and p == "NGB" for t, p in zip(leaf.truth, leaf.predicted, strict=True))
    with pytest.raises(ValueError, match="XYZ not in tree"):
        evaluate([tmp_path / "fresh"], trained_models_dir, at=["XYZ"], log=lambda _text: None)


def test_cells_used_in_training_are_left_out(trained_models_dir):
    import json

    cells = trained_models_dir.parent / "cells"
    said = []
    result = evaluate([cells], trained_models_dir, log=said.append)
    split = json.loads((trained_models_dir / "split.json").read_text())
    assert result.skipped_seen == len(split["seen"])
    assert result.cells == len(split["test"])
    assert said[0] == f"{result.cells} unseen cells ({result.skipped_seen} used in training left out)"
    said.clear()
    everything = evaluate([cells], trained_models_dir, unseen_only=False, log=said.append)
    assert everything.cells == sum(TINY_TREE_CELLS.values())
    # every cell, those training used too: it said "unseen" of them
    assert said[0] == f"{everything.cells} cells, those training used among them"
    assert Scores.of("none", [], [], []).summary().endswith("no cell to score")  # "accuracy 0.000" said of none


@pytest.mark.slow
def test_comparison_and_cross_site_tables(tmp_path):
    write_cell_folders(tmp_path / "site_a", {"LYT": 12, "EOS": 12, "MON": 12}, size=24)
    write_cell_folders(tmp_path / "site_b", {"LYT": 12, "EOS": 12, "BLA": 12}, size=24, start_seed=50)
    config = tiny_train_config(epochs=1, per_class=8, input_size=24)
    rows = compare([tmp_path / "site_a"], ["test_efficientnet"], ["scratch", "pretrained"], config,
                   log=lambda _text: None)
    assert [(r.backbone, r.mode) for r in rows] == [("test_efficientnet", "scratch"),
                                                     ("test_efficientnet", "pretrained")]
    assert set(rows[0].node_accuracy) == {"ALL", "MYM"} and rows[1].error
    table = format_comparison(rows)
    assert "test_efficientnet" in table and "ALL" in table.splitlines()[0]
    results = cross_site(tmp_path / "site_a", tmp_path / "site_b", config, log=lambda _text: None)
    assert [(r.trained_on, r.tested_on) for r in results] == [("site_a", "site_b"), ("site_b", "site_a")]
    assert results[0].shared == ["EOS", "LYT"]
    away = results[0].away.tree
    assert set(away.truth) == {"EOS", "LYT"} and len(away.truth) == 24  # all of site b's shared cells
    assert "other site" in format_cross_site(results[0])


def test_review_line_says_in_words_when_every_cell_is_flagged(trained_models_dir, tmp_path):
    """With every cell flagged there is no accuracy of the unflagged ones: it printed "nan% correct"."""
    from bloodcells.classify import TreeClassifier

    write_cell_folders(tmp_path / "fresh", {"LYT": 3, "EOS": 3}, size=32, start_seed=800)
    classifier = TreeClassifier.load(trained_models_dir)
    lines = []
    evaluate([tmp_path / "fresh"], classifier=classifier, log=lines.append)
    assert any("cells not flagged are" in line and "% correct" in line for line in lines)
    classifier.review_threshold = 1.01  # above any confidence: every cell flagged
    lines.clear()
    evaluate([tmp_path / "fresh"], classifier=classifier, log=lines.append)
    assert "  review: every cell flagged (none left unflagged to score)" in lines
    assert not any("nan" in line for line in lines)
