"""Guards on the shipped models, scored on real cells they never saw (``../shared/datasets``).

Where the datasets are absent the tests skip and say so; CI has them, so there a retrain that
makes the shipped tree worse fails here. Floors are the figures in docs/classification.md minus
a small margin (two or three points: 630 test cells move by about one point per six cells).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("DATASETS", ROOT.parent / "shared" / "datasets"))
SHIPPED = ROOT / "models" / "classifier" / "default"
PBC_CLASSES = ["EBO", "LYT", "MYI", "NEU", "BAS", "EOS", "MON", "PLT"]  # PBC's own eight: ig = MYI

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATASETS / "pbc").is_dir() or not (DATASETS / "matek").is_dir(),
                       reason=f"{DATASETS} with pbc/ and matek/ is not here: the shipped models' scores are "
                              "guarded where the shared datasets are (CI)"),
]

# What the shipped tree must keep on its recorded test split (docs/classification.md).
FLOORS = {"pbc_8_accuracy": 0.96, "pbc_8_macro_f1": 0.96, "matek_accuracy": 0.80, "leaf_accuracy": 0.86,
          "unflagged_accuracy": 0.96, "flagged_at_most": 0.36,
          # measured 0.78 on PBC, 0.90 on Matek (the cell covers 0.13 and 0.45 of the image); #11 asks 0.6
          "gradcam_inside_cell_pbc": 0.75, "gradcam_inside_cell_matek": 0.85, "gradcam_over_chance": 0.1}


@pytest.fixture(scope="module")
def evaluation():
    from bloodcells.evaluate import evaluate

    return evaluate([DATASETS / "pbc", DATASETS / "matek"], SHIPPED, at=PBC_CLASSES, log=lambda _text: None)


def test_the_test_split_is_the_recorded_one(evaluation):
    recorded = json.loads((SHIPPED / "split.json").read_text())["test"]
    assert evaluation.cells == len(recorded) and evaluation.skipped_seen > 10 * evaluation.cells // 2


def test_shipped_tree_keeps_its_accuracy(evaluation):
    pbc, matek = evaluation.merged["pbc"], evaluation.by_source["matek"]
    assert pbc.accuracy >= FLOORS["pbc_8_accuracy"], pbc.per_class
    assert pbc.macro_f1 >= FLOORS["pbc_8_macro_f1"], pbc.per_class
    assert matek.accuracy >= FLOORS["matek_accuracy"], matek.per_class
    assert evaluation.tree.accuracy >= FLOORS["leaf_accuracy"], evaluation.tree.per_class


def test_cells_not_flagged_for_review_are_right(evaluation):
    assert evaluation.unflagged_accuracy >= FLOORS["unflagged_accuracy"]
    assert evaluation.flagged <= FLOORS["flagged_at_most"]


@pytest.mark.parametrize("source", ["pbc", "matek"])
def test_gradcam_looks_at_the_cell(evaluation, source):
    """On 40 unseen cells of each source, the share of the root's Grad-CAM mass on the stained cell
    (``background.stained_cell_mask``), against the share of the image the cell covers (a Matek
    cell fills much of its frame, so there the margin over chance is what says most)."""
    from PIL import Image

    from bloodcells.background import stained_cell_mask
    from bloodcells.classify import load_classifier
    from bloodcells.explain import explain
    from bloodcells.store import sha256_hex

    classifier = load_classifier(SHIPPED)
    recorded = set(json.loads((SHIPPED / "split.json").read_text())["test"])
    files = [p for p in sorted((DATASETS / source).rglob("*.jpg")) if sha256_hex(p.read_bytes()) in recorded]
    picked = files[:: max(1, len(files) // 40)][:40]
    inside, area = [], []
    for path in picked:
        [explanation] = explain(path, classifier, method="gradcam", node=classifier.tree.root.code)
        size = explanation.attribution.shape
        mask = stained_cell_mask(np.asarray(Image.open(path).convert("RGB").resize(size[::-1])))
        mass = np.clip(explanation.attribution, 0, None)
        if mass.sum() > 0 and mask.any():
            inside.append(float(mass[mask].sum() / mass.sum()))
            area.append(float(mask.mean()))
    print(f"{source}: Grad-CAM mass inside the stained cell: {np.mean(inside):.3f} over {len(inside)} unseen "
          f"cells; the cell covers {np.mean(area):.3f} of the image")
    assert len(inside) >= 30
    assert np.mean(inside) >= FLOORS[f"gradcam_inside_cell_{source}"]
    assert np.mean(inside) > np.mean(area) + FLOORS["gradcam_over_chance"]
