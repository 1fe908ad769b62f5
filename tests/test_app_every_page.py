"""Every page renders, with models, on a database that holds analyses of every kind: a
classification with every cell type of the tree predicted (leaves and an inner node), reviewed
cells, a detection, a failed, a cancelled and a still-running analysis. Guards against widget keys
built from values that can coincide (issue #12: "✓ NIF" and "unidentified" shared a key)."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from bloodcells.store import DetectionRow, PredictionRow
from bloodcells.synthetic import cell_image, encode
from bloodcells.taxonomy import default_tree

ROOT = Path(__file__).resolve().parents[1]
PAGES = [None, "1_Detection", "2_Classification", "3_Explanation", "4_Review", "5_History", "6_Training"]


@pytest.fixture
def models_root(tmp_path, monkeypatch, trained_models_dir, trained_detector):
    root = tmp_path / "models"
    (root / "classifier").mkdir(parents=True)
    (root / "classifier" / "default").symlink_to(trained_models_dir, target_is_directory=True)
    (root / "detector").symlink_to(trained_detector.parent, target_is_directory=True)
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(root))
    return root


@pytest.fixture
def every_kind(app_store):
    """Analyses of every kind and state; returns {label: analysis id}."""
    tree = default_tree()
    app_store.sync_cell_types(tree)
    codes = [leaf.code for leaf in tree.leaves()] + ["NEU", "NIF"]  # an inner node, and NIF twice
    every_type = app_store.start_analysis("every-type.zip", "classification", {"ALL": "0123456789abcdef"})
    app_store.finish_analysis(every_type, predictions=[
        PredictionRow(f"{code}_{n}.png", code, tree.path_codes(code), 0.4 if n % 2 else 0.97, {}, bool(n % 2),
                      encode(cell_image(code if tree[code].is_leaf else "NGS", n, 24)))
        for n, code in enumerate(codes)])
    predictions = app_store.get_analysis(every_type).predictions
    for prediction, new_code in zip(predictions[:3], ["NIF", "LYT", "NGS"], strict=True):
        app_store.review(prediction.id, new_code, "Dr Who")
    app_store.review(predictions[0].id, predictions[0].code, "Dr Who")  # changed back: two reviews
    detection = app_store.start_analysis("field.png", "detection", {"detector": "feedbeef"})
    app_store.finish_analysis(detection, detections=[
        DetectionRow("field.png", "WBC", 0.9, (1, 2, 30, 40), "NIF", "ALL/NIF", 0.3),
        DetectionRow("field.png", "WBC", 0.8, (40, 2, 70, 40), "NGS", "ALL/MYE/MYM/NEU/NGS", 0.8),
        DetectionRow("field.png", "RBC", 0.8, (50, 50, 70, 70)),
        DetectionRow("field.png", "Platelets", 0.7, (80, 80, 84, 84))])
    failed = app_store.start_analysis("broken.zip", "classification", {})
    app_store.fail_analysis(failed, "InputError: broken.zip: not a zip file")
    cancelled = app_store.start_analysis("long.zip", "classification", {})
    app_store.fail_analysis(cancelled, "Cancelled: cancelled by the user")
    running = app_store.start_analysis("busy.png", "detection", {})
    return {"every type": every_type, "detection": detection, "failed": failed, "cancelled": cancelled,
            "running": running}


def app(page: str | None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    if page:
        at.switch_page(f"pages/{page}.py")
    return at


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p or "Home")
def test_every_page_renders_on_every_kind_of_analysis(page, models_root, every_kind):
    at = app(page).run()
    assert not at.exception, at.exception
    if at.sidebar.text_input:  # the reviewer's name enables the review buttons
        at.sidebar.text_input[0].input("Dr Who").run()
        assert not at.exception, at.exception


def test_review_shows_every_cell_type_at_once(models_root, every_kind, app_store):
    at = app("4_Review")
    at.run()
    at.sidebar.text_input[0].input("Dr Who").run()
    at.segmented_control(key=f"review_filter-{every_kind['every type']}").set_value("all").run()
    assert not at.exception, at.exception
    predictions = app_store.get_analysis(every_kind["every type"]).predictions
    confirm = {b.key for b in at.button if b.label.startswith("✓ ")}
    assert {f"set_{p.id}_{p.code}" for p in predictions} == confirm  # every cell shown, one "✓" each


def test_history_opens_every_analysis(models_root, every_kind):
    at = app("5_History").run()
    for analysis_id in every_kind.values():
        at.selectbox(key="history_open").select(analysis_id).run()
        assert not at.exception, (analysis_id, at.exception)
        assert any(f"#{analysis_id} " in h.value for h in at.subheader)


def test_explanation_lists_every_stored_cell(models_root, every_kind):
    at = app("3_Explanation").run()
    at.segmented_control(key="explain_source").set_value("a cell from an analysis").run()
    assert not at.exception, at.exception
    assert len(at.selectbox(key="explain_cell").options) == len(default_tree().leaves()) + 2
