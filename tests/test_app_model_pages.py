"""AppTests of the pages that need trained models: Classification, Explanation, Training (Detection
in test_app_detection.py), and their messages when no model is trained yet."""

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from bloodcells.classify import default_models_dir
from bloodcells.signout import clinical_rows
from bloodcells.store import Explanation, PredictionRow, sha256_hex
from bloodcells.synthetic import cell_image, encode, write_cell_zip

ROOT = Path(__file__).resolve().parents[1]


def app(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page(f"pages/{page}.py")
    return at


@pytest.fixture
def models_root(tmp_path, monkeypatch, trained_models_dir):
    """A models folder laid out as the app expects, holding the tiny trained tree."""
    root = tmp_path / "models"
    (root / "classifier").mkdir(parents=True)
    (root / "classifier" / "default").symlink_to(trained_models_dir, target_is_directory=True)
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(root))
    return root


def test_a_version_put_in_use_from_the_command_line_reaches_the_running_app(models_root, app_store, tmp_path,
                                                                           shared_trunk_models_dir):
    """`bloodcells versions promote` while the app ran: Training said the new version was in use, every
    other page went on with the tree it had loaded (and recorded "tree version shipped") until restarted."""
    from bloodcells import versions

    home = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    before = home.dataframe[0].value["sha256"].tolist()
    promoted = versions.promote(shared_trunk_models_dir, "default", by="ana")  # what the CLI does: the app is not told
    home.run()
    assert not home.exception
    assert any(f"version `{promoted.name}`" in m.value for m in home.markdown)
    assert home.dataframe[0].value["sha256"].tolist() != before
    at = app("2_Classification").run()
    upload = write_cell_zip(tmp_path / "cells.zip", {"LYT": 2, "EOS": 2}, size=32)
    at.file_uploader[0].set_value(("cells.zip", upload.read_bytes(), "application/zip")).run()
    at.button(key="classify").click().run()
    assert not at.exception and not at.error
    [analysis] = app_store.list_analyses()
    assert analysis.model_versions["tree version"] == promoted.name


@pytest.mark.parametrize("page", ["1_Detection", "2_Classification", "3_Explanation"])
def test_pages_say_when_no_model_is_trained(page, tmp_path, monkeypatch, app_store):
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(tmp_path / "empty-models"))
    at = app(page).run()
    assert not at.exception
    assert any("No classifier is available" in w.value or "No detector is available" in w.value for w in at.warning)
    assert not at.file_uploader  # nothing to upload into until a model exists


def test_home_lists_the_loaded_tree(models_root, app_store):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    nodes = at.dataframe[0].value
    assert set(nodes["node"]) == {"ALL", "MYM", "NEU"}
    assert nodes["val accuracy"].between(0, 1).all() and nodes["trained"].str.match(r"\d{4}-\d\d-\d\d").all()
    assert any("No detector is available" in w.value for w in at.warning)


def test_a_full_server_disk_is_said_in_words(models_root, app_store, tmp_path, monkeypatch):
    """The upload's scratch copy on a full disk: "Classification failed: [Errno 28] No space left on device"."""
    import errno
    from pathlib import Path

    def full_disk(_path, _content):
        raise OSError(errno.ENOSPC, "No space left on device")

    upload = write_cell_zip(tmp_path / "cells.zip", {"LYT": 2}, size=32)
    at = app("2_Classification").run()
    at.file_uploader[0].set_value(("cells.zip", upload.read_bytes(), "application/zip")).run()
    monkeypatch.setattr(Path, "write_bytes", full_disk)
    at.button(key="classify").click().run()
    assert not at.exception
    [message] = [e.value for e in at.error]
    assert message.startswith("Classification failed: the server's disk is full (the data folder is ")
    assert "ask whoever runs the server to free space" in message and "Errno" not in message
    assert app_store.list_analyses() == []


def test_classification_of_a_zip_is_counted_and_saved(models_root, app_store, tmp_path):
    cells = {"LYT": 3, "EOS": 2, "NGS": 3}
    upload = write_cell_zip(tmp_path / "cells.zip", cells, size=32)
    at = app("2_Classification").run()
    assert at.button(key="classify").disabled
    at.file_uploader[0].set_value(("cells.zip", upload.read_bytes(), "application/zip")).run()
    at.button(key="classify").click().run()
    assert not at.exception and not at.error
    [analysis] = app_store.list_analyses()
    assert analysis.status == "done" and analysis.name == "cells.zip"
    assert any(f"analysis #{analysis.id}" in s.value for s in at.success)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Cells"] == "8"
    stored = app_store.get_analysis(analysis.id).predictions
    assert metrics["Needs review"] == str(sum(p.needs_review for p in stored))
    differential = at.dataframe[0].value  # the report's rows, counted as the report counts them
    rows, apart, counted = clinical_rows([p.code for p in stored])
    assert dict(zip(differential["cell type"], differential["count"], strict=True)) == {r.label: r.count for r in rows}
    assert counted + sum(r.count for r in apart) == 8
    at.toggle(key=f"percent-{analysis.id}").set_value(True).run()
    assert at.dataframe[0].value["%"].sum() == pytest.approx(100, abs=0.5)
    cells_table = at.dataframe[-1].value
    assert len(cells_table) == 8 and cells_table["image"].str.startswith("data:image/png;base64,").all()
    assert any(b.label == "Download CSV" for b in at.get("download_button"))
    assert at.get("plotly_chart")  # the sunburst

    app_store.delete_analysis(analysis.id)  # in History, then another user classifies
    assert app_store.start_analysis("another user's cells.zip", "classification") != analysis.id
    at.run()
    assert [i.value for i in at.info] == [f"Analysis #{analysis.id} was deleted in History: classify again to see "
                                          "its cells."]
    assert not at.metric


def test_classification_of_several_images_and_bad_uploads(models_root, app_store, tmp_path):
    images = [(f"cell{n}.png", encode(cell_image("NGS", n, 32)), "image/png") for n in range(3)]
    at = app("2_Classification").run()
    at.file_uploader[0].set_value([*images, ("broken.png", b"not an image", "image/png"),
                                   ("Thumbs.db", b"\xd0\xcf", "application/octet-stream"),
                                   ("notes.txt", b"slide 7", "text/plain")]).run()
    at.button(key="classify").click().run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Cells"] == "3"
    skipped = " ".join(e.value for e in at.get("expander")[0].markdown)
    assert "broken.png" in skipped and "notes.txt" in skipped and "Thumbs.db" not in skipped  # said, or noise
    assert app_store.list_analyses()[0].name.startswith("5 files (cell0.png, cell1.png, cell2.png")  # no Thumbs.db

    empty = write_cell_zip(tmp_path / "empty.zip", {})
    at.file_uploader[0].set_value(("empty.zip", empty.read_bytes(), "application/zip")).run()
    at.button(key="classify").click().run()
    assert not at.exception
    assert any("empty.zip" in e.value for e in at.error)  # the reason, naming the file
    assert [a.status for a in app_store.list_analyses()] == ["failed", "done"]  # nothing half-stored
    # the error stood over the last run's "Saved as analysis #1" and its counts, as if they were its own
    assert not at.success and not at.metric

    at.file_uploader[0].set_value([("cells.zip", empty.read_bytes(), "application/zip"), images[0]]).run()
    at.button(key="classify").click().run()
    assert any("drop one .zip on its own" in e.value for e in at.error)

    at.file_uploader[0].set_value(("notes.txt", b"not cells", "text/plain")).run()  # wrong file type
    at.button(key="classify").click().run()
    assert not at.exception
    assert any("notes.txt: not an image or a .zip" in e.value for e in at.error)
    assert len(app_store.list_analyses()) == 2  # nothing started


def test_explanation_shows_a_heatmap_per_level(models_root, app_store):
    at = app("3_Explanation").run()
    assert not at.exception
    at.file_uploader[0].set_value(("eos.png", encode(cell_image("EOS", 7, 32)), "image/png")).run()
    at.button(key="explain").click().run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Time"].endswith(" s") and 0 <= float(metrics["Confidence"]) <= 1
    levels = [image for image in at.image if "→" in (image.proto.imgs[0].caption or "")]
    path = next(m.value for m in at.markdown if m.value.startswith("**")).split("`")[1].split("/")
    trained = [code for code in path if code in {"ALL", "MYM", "NEU"}]
    assert len(levels) == len(trained) >= 1  # one heatmap per level with a model on the predicted path

    at.selectbox(key="explain_node").select("NEU").run()
    assert at.selectbox(key="explain_target").value == "the predicted child"  # it showed "Choose an option"
    at.selectbox(key="explain_target").select("NGB").run()
    at.selectbox(key="explain_method").select("occlusion").run()
    at.button(key="explain").click().run()
    assert not at.exception
    [level] = [image for image in at.image if "→" in (image.proto.imgs[0].caption or "")]
    assert level.proto.imgs[0].caption == "neutrophil → band neutrophil"


def test_explanations_of_the_tree_in_use_before_are_not_shown_as_current(models_root, app_store, monkeypatch,
                                                                          shared_trunk_models_dir):
    """Another tree put in use (accepted on the Training page) kept showing the old tree's maps and
    answer, with classes the tree in use no longer has."""
    at = app("3_Explanation").run()
    at.file_uploader[0].set_value(("eos.png", encode(cell_image("EOS", 7, 32)), "image/png")).run()
    at.button(key="explain").click().run()
    assert [image for image in at.image if "→" in (image.proto.imgs[0].caption or "")]
    (models_root / "classifier" / "default").unlink()  # another tree in use
    (models_root / "classifier" / "default").symlink_to(shared_trunk_models_dir, target_is_directory=True)
    from ui.models import reload_models

    reload_models()
    at.run()
    assert not at.exception
    assert not [image for image in at.image if "→" in (image.proto.imgs[0].caption or "")]
    assert any("Click Explain" in c.value for c in at.caption)


def test_explanation_of_a_stored_cell_and_of_a_bad_file(models_root, app_store):
    analysis_id = app_store.start_analysis("stored.zip", "classification")
    app_store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"NGB_{n}.png", "NGB", "ALL/MYE/MYM/NEU/NGB", 0.9, {}, False, encode(cell_image("NGB", n, 32)))
        for n in range(2)])
    at = app("3_Explanation").run()
    at.file_uploader[0].set_value(("cell.png", b"not a picture", "image/png")).run()
    assert not at.exception
    assert any(e.value.startswith("cell.png: not") for e in at.error)  # the file and the reason
    app_store.review(app_store.get_analysis(analysis_id).predictions[1].id, "MYB", "Dr A")
    at.segmented_control(key="explain_source").set_value("a cell from an analysis").run()
    cell = app_store.get_analysis(analysis_id).predictions[1]
    at.selectbox(key="explain_cell").set_value(cell)
    at.selectbox(key="explain_method").select("saliency").run()
    at.button(key="explain").click().run()
    assert not at.exception and not at.error
    assert any(image.proto.imgs[0].caption == "NGB_1.png" for image in at.image)  # the stored cell is shown
    assert any("Reviewed as myelocyte (MYB); the model said band neutrophil (NGB) at 0.90" in c.value
               for c in at.caption)  # the maps explain the model's answer, not the reviewer's
    assert [image for image in at.image if "→" in (image.proto.imgs[0].caption or "")]

    at.selectbox(key="explain_cell").set_value(app_store.get_analysis(analysis_id).predictions[0]).run()
    assert [image.proto.imgs[0].caption for image in at.image] == ["NGB_0.png"]  # not the other cell's maps
    assert not at.metric and any("Click Explain" in c.value for c in at.caption)
    # its maps are kept under the file's sha256, as the command line and the store key images: they went
    # unshared with the CLI and stayed in the database after the analysis and its images were deleted
    with app_store.session() as session:
        assert set(session.scalars(select(Explanation.image_sha256))) == {sha256_hex(app_store.read_blob(cell.blob_id))}
    app_store.delete_analysis(analysis_id)
    assert app_store.count_rows(Explanation) == 0


def test_explanation_finds_cells_of_analyses_older_than_the_list(models_root, app_store):
    """A supervisor explains a cell of last month's analysis: it is past the newest analyses listed."""
    from ui.common import LISTED

    oldest = app_store.start_analysis("march smear.zip", "classification")
    app_store.finish_analysis(oldest, predictions=[
        PredictionRow("NGB_0.png", "NGB", "ALL/MYE/MYM/NEU/NGB", 0.9, {}, False, encode(cell_image("NGB", 0, 32)))])
    for n in range(LISTED):  # newer classifications, none finished: they do not hide it
        app_store.fail_analysis(app_store.start_analysis(f"failed {n}.zip", "classification"), "not a zip")
    app_store.start_analysis("still running.zip", "classification")
    at = app("3_Explanation").run()
    at.segmented_control(key="explain_source").set_value("a cell from an analysis").run()
    assert not at.exception
    [listed] = at.selectbox(key="explain_analysis").options
    assert listed.startswith(f"#{oldest} · ") and listed.endswith("march smear.zip")
    assert at.selectbox(key="explain_cell").options == ["NGB_0.png · NGB (0.90)"]
    app_store.review(app_store.get_analysis(oldest).predictions[0].id, "MON", "Dr A")
    at.run()  # the model's type beside its confidence, the reviewer's apart (MON (0.90) read as the model's)
    assert at.selectbox(key="explain_cell").options == ["NGB_0.png · NGB (0.90) · reviewed MON"]
    at.text_input(key="explain_search").input("failed 1").run()
    assert [i.value for i in at.info] == ["No finished analysis with cells matches “failed 1”."]
    for n in range(LISTED):  # past the newest LISTED finished ones, it is found by name
        app_store.finish_analysis(app_store.start_analysis(f"later {n}.zip", "classification"), predictions=[
            PredictionRow("LYT_0.png", "LYT", "ALL/LYM/LYT", 0.9, {}, False, b"not read here")])
    at.text_input(key="explain_search").input("").run()
    options = at.selectbox(key="explain_analysis").options  # the newest LISTED, and the one open, last
    assert len(options) == LISTED + 1 and options[-1].endswith("march smear.zip")
    assert at.selectbox(key="explain_analysis").value == oldest
    assert any(f"The newest {LISTED} are listed" in c.value for c in at.caption)
    at.text_input(key="explain_search").input("march").run()
    assert at.selectbox(key="explain_analysis").value == oldest


def training_form(tmp_path, cells: dict[str, int], epochs: int, per_class: int | None = None,
                  person: str = "Dr Admin") -> AppTest:
    """The Training page with ``person`` named in the sidebar, a zip of generated ``cells`` uploaded and a
    tiny scratch network chosen (not run yet: a test sets more options, then runs it)."""
    upload = write_cell_zip(tmp_path / "labelled.zip", cells, size=32)
    at = app("6_Training").run()
    at.sidebar.text_input[0].input(person)
    at.file_uploader[0].set_value(("labelled.zip", upload.read_bytes(), "application/zip"))
    at.selectbox(key="training_backbone").select("other timm model…").run()
    at.text_input(key="training_timm_name").input("test_efficientnet")
    at.number_input(key="training_size").set_value(32)
    at.number_input(key="training_epochs").set_value(epochs)
    if per_class is not None:
        at.number_input(key="training_per_class").set_value(per_class)
    at.selectbox(key="training_mode").select("scratch")
    return at


def test_training_on_one_cell_type_is_refused_and_nothing_can_be_accepted(tmp_path, monkeypatch, app_store):
    """It trained no node and offered Accept: every cell would then be that type, sure of it, never flagged."""
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(tmp_path / "models"))
    at = training_form(tmp_path, {"neutrophil": 12}, epochs=1).run()
    at.button(key="train").click().run()
    assert not at.exception
    assert any("nothing to train" in e.value and "give at least two" in e.value for e in at.error)
    assert "accept_models" not in [b.key for b in at.button]


def test_training_again_without_accepting_removes_the_first_candidate(tmp_path, monkeypatch, app_store):
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(tmp_path / "models"))
    at = training_form(tmp_path, {"neutrophil": 10, "lymphocyte": 10}, epochs=1, per_class=4).run()
    at.button(key="train").click().run()
    first = at.session_state["training"]["report"].out_dir
    assert first.is_dir()
    # a second run that fails keeps the first on offer (it was deleted before the run began)
    at.text_input(key="training_timm_name").input("efficientnet_b99").run()
    at.button(key="train").click().run()
    assert not at.exception and at.error
    assert at.session_state["training"]["report"].out_dir == first and first.is_dir()
    assert not list(first.parent.glob("*.training"))  # nor did it leave a half-built folder
    at.text_input(key="training_timm_name").input("test_efficientnet").run()
    at.button(key="train").click().run()
    assert not at.exception and not first.exists()
    assert at.session_state["training"]["report"].out_dir.is_dir()
    assert [v.status for v in app_store.list_model_versions()] == ["candidate", "discarded"]  # newest first


def test_a_trained_tree_nobody_decided_on_is_offered_to_every_session(tmp_path, monkeypatch, app_store):
    """Held only by the page that trained it, a tree was lost with its tab (its folder left on disk): it is a
    candidate under Versions, which another session accepts or discards; training needs a name to record."""
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(tmp_path / "models"))
    at = training_form(tmp_path, {"neutrophil": 10, "lymphocyte": 10}, epochs=1, per_class=4, person="").run()
    assert at.button(key="train").disabled and any("Enter your name" in c.value for c in at.caption)
    at.sidebar.text_input[0].input("Dr Gone").run()
    at.button(key="train").click().run()
    folder = at.session_state["training"]["report"].out_dir
    [row] = app_store.list_model_versions()
    assert (row.kind, row.status, row.started_by, row.folder) == ("trained", "candidate", "Dr Gone", str(folder))
    other = app("6_Training").run()  # another session: the tab that trained it was closed
    other.sidebar.text_input[0].input("Dr Next").run()
    other.segmented_control(key="training_task").set_value("versions").run()
    other.button(key=f"discard_{row.id}").click().run()
    assert not other.exception and app_store.get_model_version(row.id).status == "discarded"
    assert not folder.exists()
    at.button(key="accept_models").click().run()  # the first tab, later: told, not a traceback
    assert not at.exception and any("were discarded by Dr Next" in i.value for i in at.info)
    assert not any(b.key in ("accept_models", "discard_models") for b in at.button)  # nothing left to decide


@pytest.mark.slow
@pytest.mark.parametrize("shared_trunk", [False, True], ids=["network per node", "shared trunk"])
def test_training_trains_shows_metrics_and_accepts(shared_trunk, tmp_path, monkeypatch, app_store):
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(tmp_path / "models"))
    at = training_form(tmp_path, {"neutrophil": 12, "lymphocyte": 12}, epochs=2, per_class=8)
    at.checkbox(key="training_cross_site").uncheck()
    at.slider(key="training_plain_background").set_value(0.25)
    at.number_input(key="training_cell_focus").set_value(0.5)
    at.checkbox(key="training_shared_trunk").check() if shared_trunk else at.checkbox(key="training_shared_trunk").uncheck()
    at.run()
    at.button(key="train").click().run()
    assert not at.exception and not at.error
    # a few generated cells cannot show 97% accuracy: the user is told every cell will be flagged
    assert any("every cell will be flagged for review" in w.value.lower() for w in at.warning)
    nodes = at.dataframe[0].value
    assert list(nodes["node"]) == ["ALL"] and nodes.loc[0, "children"] == "LYM, MYE"
    assert ("best epoch of its head" if shared_trunk else "best epoch") in nodes.columns  # not the trunk's 2
    charts = {chart.key: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}
    assert {"final_loss", "final_accuracy"} <= set(charts)  # the live view made way for the finished curves
    assert not any(key.startswith("live") for key in charts)
    matrix = charts["confusion_matrix"]["data"][0]
    assert matrix["type"] == "heatmap" and sum(map(sum, matrix["z"])) >= 1  # held-out cells were scored
    network = "trunk" if shared_trunk else "ALL"  # what trained epoch by epoch
    for chart in (charts["final_loss"], charts["final_accuracy"]):
        assert {trace["name"]: trace["x"] for trace in chart["data"]} == {f"{network} train": [1, 2],
                                                                            f"{network} val": [1, 2]}
    assert not (tmp_path / "models" / "classifier" / "default").exists()  # not in use before it is accepted

    candidate = at.session_state["training"]["report"].out_dir
    at.button(key="accept_models").click().run()
    assert not at.exception and not candidate.exists()  # promoted as a copy
    in_use = default_models_dir()  # a new version, beside the (here absent) shipped folder
    [version] = app_store.list_model_versions()
    assert (version.kind, version.status, version.started_by, version.decided_by, version.version) == (
        "trained", "accepted", "Dr Admin", "Dr Admin", in_use.name)
    assert version.figures["after"]["lab"]["cells"] >= 1  # the uploaded cells it never trained on
    assert in_use.parent == tmp_path / "models" / "classifier" / "versions" and (in_use / "classifier.json").is_file()
    config = json.loads((in_use / "classifier.json").read_text())["config"]
    assert (config["plain_background"], config["cell_focus"]) == (0.25, 0.5)
    assert any("new models are in use" in s.value and in_use.name in s.value for s in at.success)
    assert {m.node_code for m in app_store.list_models(kind="classifier")} == {"ALL"}
    at.switch_page("pages/2_Classification.py").run()  # the other pages use them at once
    assert not at.exception and not at.warning and at.file_uploader


def test_a_cell_is_explained_by_the_models_that_made_its_analysis(models_root, app_store, trained_models_dir, tmp_path):
    """Another version accepted since: the maps and the answer shown were the version in use's ("monocyte,
    0.61") under a caption of the model's stored answer ("blast at 0.51")."""
    import json
    import shutil

    from bloodcells import versions

    made_then = app_store.start_analysis("then.zip", "classification", {"tree version": "shipped"})
    gone = app_store.start_analysis("gone.zip", "classification", {"tree version": "20260101T000000Z-deadbeef"})
    for analysis_id in (made_then, gone):
        app_store.finish_analysis(analysis_id, predictions=[
            PredictionRow("NGB_0.png", "NGB", "ALL/MYE/MYM/NEU/NGB", 0.9, {}, False, encode(cell_image("NGB", 0, 32)))])
    newer = tmp_path / "newer"
    shutil.copytree(trained_models_dir, newer)
    manifest = json.loads((newer / "classifier.json").read_text())
    (newer / "classifier.json").write_text(json.dumps({**manifest, "trained_at": "later"}))
    in_use = versions.promote(newer, "default", by="Dr A").name
    at = app("3_Explanation").run()
    at.segmented_control(key="explain_source").set_value("a cell from an analysis").run()
    at.selectbox(key="explain_analysis").set_value(made_then).run()
    assert not at.exception
    assert any(c.value.startswith("Explained with the models that made this analysis (version shipped)")
               for c in at.caption)
    at.button(key="explain").click().run()
    assert not at.exception and not at.error and [i for i in at.image if "→" in (i.proto.imgs[0].caption or "")]
    at.selectbox(key="explain_analysis").set_value(gone).run()
    assert [w.value for w in at.warning] == [
        "The models that made this analysis (version 20260101T000000Z-deadbeef) are no longer on this server: the "
        "maps are of the version in use, which may answer otherwise than the cell's stored answer."]
    assert versions.current_version("default") == in_use
