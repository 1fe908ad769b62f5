"""AppTests of "adapt the models to this lab" on the Training page: reviewed cells of another lab's look
make a candidate with its lineage; accepting it puts it in use everywhere; rollback returns; a
discarded candidate leaves nothing in use."""

import json
from pathlib import Path

import pytest
from conftest import TINY_TREE_CELLS
from streamlit.testing.v1 import AppTest

from bloodcells import versions
from bloodcells.classify import TreeClassifier, classify
from bloodcells.settings import settings
from bloodcells.synthetic import other_lab, write_cell_folders
from ui.adaptation import SHIPPED_LABEL

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def lab_analysis(tmp_path, monkeypatch, shared_trunk_models_dir, app_store):
    """The shared-trunk tree shipped; a classified and fully reviewed analysis of another lab's cells."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(shared_trunk_models_dir, root / "classifier" / "default")
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(root))
    monkeypatch.setenv("BLOODCELLS_DATA_DIR", str(tmp_path / "data"))
    files = write_cell_folders(tmp_path / "lab", {code: 12 for code in TINY_TREE_CELLS}, size=32, start_seed=7000,
                               look=other_lab)
    outcome = classify(tmp_path / "lab", classifier=TreeClassifier.load(), store=app_store)
    truth = {file.name: file.parent.name for file in files}
    for prediction in app_store.get_analysis(outcome.analysis_id).predictions:
        app_store.review(prediction.id, truth[Path(prediction.filename).name], "dr.lab")
    return outcome.analysis_id


def training_page(task: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.switch_page("pages/6_Training.py")
    at.session_state["reviewer"] = "dr.lab"
    at.run()
    at.segmented_control(key="training_task").set_value(task).run()
    return at


def test_adapt_accept_rollback_with_lineage(lab_analysis, app_store):
    at = training_page("adapt to this lab")
    assert not at.exception
    assert at.multiselect(key="adapt_analyses").value == [lab_analysis]
    at.slider(key="adapt_hold_out").set_value(0.25)
    at.button(key="adapt").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert versions.current_version("default") is None  # a candidate: nothing in use changed

    (row,) = app_store.list_model_versions("default")
    assert (row.status, row.kind, row.started_by, row.analyses, row.cells) == \
        ("candidate", "adapted", "dr.lab", [lab_analysis], 12 * len(TINY_TREE_CELLS))
    shipped = versions.shipped_dir("default")
    assert row.base == {"trunk": json.loads((shipped / "trunk.json").read_text())["sha256"],
                        **TreeClassifier.load(shipped).versions()}
    lab = {when: row.figures[when]["lab"]["accuracy"] for when in ("before", "after")}
    assert lab["after"] > lab["before"]
    (figures,) = [frame.value for frame in at.dataframe if "models" in frame.value.columns]
    assert list(figures["models"]) == ["before", "after", "before", "after"]

    at.button(key=f"accept_{row.id}").click().run()
    assert not at.exception
    accepted = app_store.get_model_version(row.id)
    assert accepted.status == "accepted" and accepted.decided_by == "dr.lab"
    assert not Path(row.folder).exists()  # promoted as a copy: the candidate does not stay on disk
    assert versions.current_version("default") == accepted.version
    assert any(accepted.version in s.value for s in at.success)
    assert TreeClassifier.load().tree_version == accepted.version  # every page loads it now

    at.button(key="rollback").click().run()
    assert not at.exception and versions.current_version("default") is None
    assert at.button(key="rollback").disabled  # the shipped tree: nothing was in use before it
    assert versions.list_versions("default") == [accepted.version]  # kept, for switching back
    at.selectbox(key="use_version-").select(accepted.version).run()
    at.button(key="use_version_button").click().run()
    assert versions.current_version("default") == accepted.version
    at.button(key="rollback").click().run()  # the choice follows the version in use: it kept the old one,
    assert at.selectbox(key="use_version-").value is None  # one click from switching back by mistake
    assert not any(b.key == "use_version_button" for b in at.button)
    (log,) = [frame.value for frame in at.dataframe if "how" in frame.value.columns]  # who switched, newest first
    assert list(log["how"]) == ["rolled back", "put in use", "rolled back", "accepted"]
    assert set(log["by"]) == {"dr.lab"} and list(log["version"]) == [SHIPPED_LABEL, accepted.version,
                                                                      SHIPPED_LABEL, accepted.version]


def test_without_the_training_cells_on_the_server_the_lab_adapts_on_its_own_cells(lab_analysis, app_store,
                                                                                tmp_path):
    """A tree trained on the Training page records an upload that is gone afterwards, and a lab's server
    has no ../shared: adapting warns and learns from the lab's cells alone instead of failing."""
    shipped = versions.shipped_dir("default")
    manifest = json.loads((shipped / "classifier.json").read_text())
    scratch = settings().data_dir / "uploads" / "tmpsal1c65u" / "labelled.zip"  # the Training page's copy
    manifest["sources"] = [str(tmp_path / "upload-removed"), str(scratch)]
    (shipped / "classifier.json").write_text(json.dumps(manifest))
    at = training_page("adapt to this lab")
    assert any(f"{tmp_path / 'upload-removed'}, the upload labelled.zip it was trained from (removed after "
               "training) are not here" in w.value for w in at.warning)
    at.button(key="adapt").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (row,) = app_store.list_model_versions("default")
    assert row.status == "candidate" and row.figures["after"]["lab"]["accuracy"] > \
        row.figures["before"]["lab"]["accuracy"]
    assert row.figures["after"].get("original") is None  # nothing to score the original sources on


def test_a_discarded_candidate_is_recorded_and_removed(lab_analysis, app_store):
    at = training_page("adapt to this lab")
    at.number_input(key="adapt_epochs").set_value(0)
    at.button(key="adapt").click().run()
    (row,) = app_store.list_model_versions()
    assert Path(row.folder).is_dir()
    at.button(key=f"discard_{row.id}").click().run()
    assert not at.exception
    row = app_store.get_model_version(row.id)
    assert (row.status, row.decided_by) == ("discarded", "dr.lab") and not Path(row.folder).exists()
    assert versions.current_version("default") is None


def test_adapting_needs_a_name_and_reviewed_cells(tmp_path, monkeypatch, shared_trunk_models_dir, app_store):
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(tmp_path / "models"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page("pages/6_Training.py").run()
    at.segmented_control(key="training_task").set_value("adapt to this lab").run()
    assert not at.exception
    assert any("No analysis has reviewed cells yet" in i.value for i in at.info)


def test_reviewed_analyses_are_offered_past_newer_unreviewed_ones_and_found_by_name(tmp_path, monkeypatch,
                                                                                  app_store):
    """A lab classifies more than a list shows; the reviewed analysis it learns from stays offered."""
    from bloodcells.store import PredictionRow
    from ui.common import LISTED

    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(tmp_path / "models"))
    reviewed = app_store.start_analysis("march smear.zip", "classification")
    app_store.finish_analysis(reviewed, predictions=[
        PredictionRow(f"cell_{n}.png", "NGS", "ALL/MYE/MYM/NEU/NGS", 0.9, {}, False, f"cell {n}".encode())
        for n in range(3)])
    app_store.review(app_store.get_analysis(reviewed).predictions[0].id, "LYT", "dr.lab")
    for n in range(LISTED):
        app_store.start_analysis(f"later {n}.zip", "classification")  # a lab's next weeks, not reviewed
    at = training_page("adapt to this lab")
    assert not at.exception
    assert at.multiselect(key="adapt_analyses").value == [reviewed]
    at.text_input(key="adapt_search").input("no such smear").run()
    assert not at.exception and any("No analysis matches" in i.value for i in at.info)
    assert len(at.multiselect) == 0  # nothing to choose, no button to press
    at.text_input(key="adapt_search").input("MARCH").run()
    assert at.multiselect(key="adapt_analyses").value == [reviewed]


def test_a_trained_versions_figures_say_which_cells_they_were_measured_on():
    """They read "this lab's held-back cells" for a tree scored on the uploaded cells it never saw."""
    from ui.adaptation import figures_table

    scores = {"accuracy": 0.9, "macro_f1": 0.8, "cells": 10, "per_class": {"LYT": 1.0}}
    assert [row["cells"] for row in figures_table({"after": {"lab": scores}}, "trained")] == ["uploaded cells it never saw"]
    assert [row["cells"] for row in figures_table({"before": {"lab": scores}, "after": {"lab": scores}})] == [
        "this lab's held-back cells"] * 2


def test_a_decision_clicked_in_a_page_drawn_before_anothers_is_said_not_lost(tmp_path, monkeypatch,
                                                                            shared_trunk_models_dir, app_store):
    """Tab B showed a candidate that tab A then accepted; B's Discard did nothing and said nothing (its
    button was gone from the page that reran)."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(shared_trunk_models_dir, root / "classifier" / "default")
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(root))
    candidate = tmp_path / "data" / "training" / "candidate"
    shutil.copytree(shared_trunk_models_dir, candidate)
    row_id = app_store.record_model_version(tree="default", kind="adapted", folder=str(candidate), base={},
                                            cells=10, analyses=[], figures={}, started_by="dr.lab")
    first, second = training_page("versions"), training_page("versions")
    first.button(key=f"accept_{row_id}").click().run()
    assert not first.exception and app_store.get_model_version(row_id).status == "accepted"
    assert any("is in use" in s.value for s in first.success)
    second.button(key=f"discard_{row_id}").click().run()  # drawn before the acceptance
    assert not second.exception
    assert any("was already accepted by dr.lab" in e.value for e in second.error)
    assert app_store.get_model_version(row_id).status == "accepted"


def test_a_detections_reviewed_white_cells_are_offered_to_adapt_from(lab_analysis, app_store, tmp_path):
    """Only classifications were listed: the white cells a lab reviewed on its own smear fields (their crops)
    could not teach the models its camera."""
    from bloodcells.adapt import reviewed_cells_zip
    from bloodcells.data import load_dataset
    from bloodcells.store import PredictionRow
    from bloodcells.synthetic import cell_image, encode
    from bloodcells.taxonomy import default_tree

    field = app_store.start_analysis("fields.zip", "detection")
    app_store.finish_analysis(field, predictions=[
        PredictionRow(f"f{n}.jpg · white cell at ({n}, 0)", "LYT", "ALL/LYM/LYT", 0.5, {}, True,
                      encode(cell_image("LYT", n, 32))) for n in range(3)])
    for cell in app_store.get_analysis(field).predictions:
        app_store.review(cell.id, "LYT", "dr.lab")
    at = training_page("adapt to this lab")
    assert not at.exception
    options = at.multiselect(key="adapt_analyses").options
    assert any(o.startswith(f"#{field} · ") and o.endswith("(3 reviewed white cells of smear fields)") for o in options)
    content, counts = reviewed_cells_zip(app_store, [field])  # what adapting reads: three labelled crops
    (tmp_path / "reviewed.zip").write_bytes(content)
    assert counts == {"LYT": 3} and load_dataset([tmp_path / "reviewed.zip"], default_tree(), 32).labels == ["LYT"] * 3


@pytest.mark.parametrize("late", ["scoring the adapted tree", "recording the candidate"])
def test_a_cancel_while_the_adapted_tree_is_scored_offers_no_candidate(lab_analysis, app_store, tmp_path, late):
    """Cancelled while the adapted tree was scored (no progress call there), the page said "cancelled, the models
    in use were not touched" and candidate #9 appeared under Versions 40 s later."""
    from bloodcells.adapt import AdaptConfig, adapt_from_reviews
    from bloodcells.versions import candidate_dir

    class Cancelled(Exception):
        pass

    def progress(_done, _total, text=""):
        if text == late:  # the user's Cancel, acting at this call
            raise Cancelled("cancelled by the user")

    out = candidate_dir()
    with pytest.raises(Cancelled):
        adapt_from_reviews(app_store, [lab_analysis], "dr.lab", out, progress=progress,
                           config=AdaptConfig(epochs=0), log=lambda _line: None)
    assert app_store.list_model_versions("default") == [] and not out.exists()
