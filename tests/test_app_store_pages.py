"""AppTests of the pages that work from the database alone: Home, History, Review; the password gate
and the database-down message."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from bloodcells.store import DetectionRow, PredictionRow
from bloodcells.synthetic import cell_image, encode

ROOT = Path(__file__).resolve().parents[1]


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    if page:
        at.switch_page(f"pages/{page}.py")
    return at


def classified(store, codes, needs_review=(), name="cells.zip"):
    analysis_id = store.start_analysis(name, "classification", {"ALL": "0123456789abcdef"})
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"{code}_{n}.png", code, "/".join(["ALL", code]), 0.5 if n in needs_review else 0.95, {},
                      n in needs_review, encode(cell_image(code, n, 32)))
        for n, code in enumerate(codes)])
    return analysis_id


def test_home_lists_the_modes_database_and_compute(app_store):
    at = app().run()
    assert not at.exception
    labels = [link.label for link in at.get("page_link")]
    assert any("Detection" in label for label in labels)
    assert any("Classification" in label for label in labels)
    assert any("Explanation" in label for label in labels)
    text = " ".join(m.value for m in at.markdown)
    assert "app.db" in text and "sqlite" in text
    assert "Compute" in text


def test_database_down_is_a_message_not_a_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOODCELLS_DATABASE_URL", "mysql+pymysql://nobody@127.0.0.1:1/none")
    at = app("5_History").run()
    assert not at.exception
    assert any("database is not available" in e.value for e in at.error)


def test_password_gate_on_every_page(app_store, monkeypatch):
    monkeypatch.setenv("BLOODCELLS_PASSWORD", "s3cret")
    classified(app_store, ["NGS"])
    at = app("5_History").run()
    assert not at.dataframe and at.text_input[0].label == "Password"
    at.text_input[0].input("wrong")
    at.button[0].click().run()
    assert any("Wrong password" in e.value for e in at.error) and not at.dataframe
    at.text_input[0].input("s3cret")
    at.button[0].click().run()
    assert not at.exception and at.dataframe  # History's table is shown once let in
    monkeypatch.setenv("BLOODCELLS_PASSWORD", "   ")  # blanks are unset, as the README says of every variable
    at = app("5_History").run()
    assert not at.exception and at.dataframe  # it asked for a password of three spaces


def test_history_lists_opens_and_deletes_with_confirmation(app_store):
    first = classified(app_store, ["NGS", "NGS", "EBO", "MYB"], needs_review=[2])
    detection = app_store.start_analysis("field.png", "detection", {"detector": "feedbeef"})
    app_store.finish_analysis(detection, detections=[
        DetectionRow("field.png", "WBC", 0.9, (1, 2, 30, 40), "NGS", "ALL/MYE/MYM/NEU/NGS", 0.8),
        DetectionRow("field.png", "RBC", 0.8, (50, 50, 70, 70))])
    at = app("5_History").run()
    assert not at.exception
    overview = at.dataframe[0].value
    assert list(overview["id"]) == [detection, first]
    assert list(overview["count"]) == [2, 4] and list(overview["needs review"]) == [0, 1]

    at.selectbox(key="history_open").select(first).run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Cells"] == "4" and metrics["Needs review"] == "1"
    assert metrics["Myeloid : erythroid"] == "3.00 : 1"
    assert any(b.label == "Download CSV" for b in at.get("download_button"))
    assert at.get("plotly_chart")

    at.button(key="delete").click().run()
    assert any("cannot be undone" in w.value for w in at.warning)
    at.button(key="delete_cancelled").click().run()
    assert len(app_store.list_analyses()) == 2
    at.button(key="delete").click().run()
    at.button(key="delete_confirmed").click().run()
    assert not at.exception
    assert [a.id for a in app_store.list_analyses()] == [detection]
    assert list(at.dataframe[0].value["id"]) == [detection]
    assert not [i.value for i in at.info if "deleted meanwhile" in i.value]  # it was this user who deleted it
    assert {m.label: m.value for m in at.metric}["WBC"] == "1"  # the detection opens now
    # and the box says so, set to it (forgotten, the browser's box kept naming the deleted analysis)
    assert at.session_state["history_open"] == detection and at.selectbox(key="history_open").value == detection
    assert any(f"Analysis #{first} deleted." in t.value for t in at.toast)


def test_history_offers_no_delete_for_an_analysis_still_running(app_store):
    running = app_store.start_analysis("being classified.zip", "classification")
    at = app("5_History").run()
    assert at.button(key="delete").disabled and "Still running" in at.button(key="delete").help
    app_store.finish_analysis(running)
    at.run()
    assert not at.button(key="delete").disabled


def test_a_delete_the_database_refuses_is_a_message_and_keeps_the_analysis(app_store, monkeypatch):
    """On a full disk, History showed the StoreError's traceback."""
    from bloodcells.store import Store, StoreError

    kept = classified(app_store, ["NGS", "LYT"])

    def full(_store, _analysis_id):
        raise StoreError("the database at sqlite:///x.db is full: the disk it is on has no space left")

    monkeypatch.setattr(Store, "delete_analysis", full)
    at = app("5_History").run()
    at.button(key="delete").click().run()
    at.button(key="delete_confirmed").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Not deleted: the database at sqlite:///x.db is full: the disk it is on "
                                           "has no space left."]
    assert [a.id for a in app_store.list_analyses()] == [kept]
    # the page drawn again, the analysis with it (it stopped, showing only a live "Yes, delete #N")
    assert not any(b.key == "delete_confirmed" for b in at.button) and not at.button(key="delete").disabled
    assert any(m.label == "Cells" and m.value == "2" for m in at.metric)


def test_a_signed_off_analysis_is_deleted_only_after_reopening(app_store):
    from bloodcells.store import AnalysisLocked

    signed = classified(app_store, ["NGS", "LYT"])
    at = app("5_History").run()
    at.button(key="delete").click().run()  # asked before it was signed
    app_store.sign_off(signed, "Dr A", category="peripheral blood")  # in another tab, meanwhile
    at.button(key="delete_confirmed").click().run()
    assert not at.exception
    assert any("Not deleted: analysis #" in e.value and "reopen it to delete it" in e.value for e in at.error)
    assert [a.id for a in app_store.list_analyses()] == [signed]
    at.run()
    assert at.button(key="delete").disabled  # the record stays until someone reopens it
    with pytest.raises(AnalysisLocked, match="signed off by Dr A"):
        app_store.delete_analysis(signed)
    app_store.reopen(signed, "Dr A", reason="entered twice")
    app_store.delete_analysis(signed)
    assert app_store.list_analyses() == []


def test_analyses_older_than_the_newest_listed_are_found_by_name_or_number(app_store):
    from ui.common import LISTED

    oldest = classified(app_store, ["NGS", "LYT"], name="march smear.zip")
    for n in range(LISTED):
        app_store.start_analysis(f"later {n}.zip", "classification")  # a lab's next weeks
    at = app("5_History").run()
    assert oldest not in list(at.dataframe[0].value["id"]) and len(at.dataframe[0].value) == LISTED
    assert any(f"newest {LISTED} are listed" in c.value for c in at.caption)
    at.text_input(key="history_search").input(f"#{oldest}").run()
    assert list(at.dataframe[0].value["id"]) == [oldest]
    assert {m.label: m.value for m in at.metric}["Cells"] == "2"  # it opens
    at.text_input(key="history_search").input("no such smear").run()
    assert not at.exception and any("No analysis matches" in i.value for i in at.info)

    review = app("4_Review").run()
    review.text_input(key="review_search").input("MARCH").run()  # any case, any part of the name
    assert not review.exception
    assert review.selectbox(key="review_analysis").value == oldest


def test_history_with_nothing_stored_says_what_to_do(app_store):
    at = app("5_History").run()
    assert not at.exception
    assert any("No analyses yet" in i.value for i in at.info)


def test_review_reclassifies_with_one_click_and_counts_follow(app_store):
    analysis_id = classified(app_store, ["NGS", "NGS", "LYT"], needs_review=[0])
    at = app("4_Review").run()
    assert not at.exception
    assert any("Enter your name" in w.value for w in at.warning)
    at.sidebar.text_input[0].input("Dr Who").run()
    prediction = app_store.get_analysis(analysis_id).predictions[0]
    at.button(key=f"set_{prediction.id}_NGB").click().run()  # the sibling is a one-click choice
    assert not at.exception
    counts = at.dataframe[0].value.set_index("code")
    assert counts.loc["NGS", "predicted"] == 2 and counts.loc["NGS", "now"] == 1
    assert counts.loc["NGB", "now"] == 1 and counts.loc["NGB", "change"] == 1
    assert {m.label: m.value for m in at.metric}["Reviewed"] == "1 of 3"

    at.segmented_control(key=f"review_filter-{analysis_id}").set_value("all").run()
    lymphocyte = app_store.get_analysis(analysis_id).predictions[2]
    at.button(key=f"set_{lymphocyte.id}_NIF").click().run()  # "unidentified"
    at.button(key=f"open_other_{prediction.id}").click().run()
    at.selectbox(key=f"other_{prediction.id}").select("NEU").run()  # any node, from the full list
    reviews = [(r.old_code, r.new_code, r.reviewer) for p in app_store.get_analysis(analysis_id).predictions
               for r in p.reviews]
    assert sorted(reviews) == [("LYT", "NIF", "Dr Who"), ("NGB", "NEU", "Dr Who"), ("NGS", "NGB", "Dr Who")]
    counts = at.dataframe[0].value.set_index("code")
    assert counts.loc["NIF", "now"] == 1 and counts.loc["LYT", "now"] == 0 and counts.loc["NEU", "now"] == 1


def test_the_other_type_box_can_pick_the_same_type_again_after_a_one_click_change(app_store):
    analysis_id = classified(app_store, ["NGS", "LYT"], needs_review=[0, 1])
    at = app("4_Review").run()
    at.sidebar.text_input[0].input("Dr Who").run()
    cell = app_store.get_analysis(analysis_id).predictions[0]
    assert not [box for box in at.selectbox if box.key.startswith("other_")]  # opened for one cell, when asked
    at.button(key=f"open_other_{cell.id}").click().run()
    at.selectbox(key=f"other_{cell.id}").select("EOS").run()
    assert not [box for box in at.selectbox if box.key.startswith("other_")]  # closed once a type is picked
    at.button(key=f"set_{cell.id}_NGS").click().run()
    at.button(key=f"open_other_{cell.id}").click().run()
    assert at.selectbox(key=f"other_{cell.id}").value is None  # "other…" again, not a stale EOS
    at.selectbox(key=f"other_{cell.id}").select("EOS").run()
    assert [r.new_code for r in app_store.get_analysis(analysis_id).predictions[0].reviews] == ["EOS", "NGS", "EOS"]


def test_each_analysis_opens_in_its_own_default_view(app_store):
    """Chosen after one with flagged cells, an analysis with none showed no cell ("No cell left")."""
    unflagged = classified(app_store, ["LYT", "LYT"], name="nothing flagged.zip")
    flagged = classified(app_store, ["NGS", "LYT"], needs_review=[0], name="one flagged.zip")
    at = app("4_Review").run()
    at.sidebar.text_input[0].input("Dr Who").run()
    assert at.selectbox(key="review_analysis").value == flagged
    assert at.segmented_control(key=f"review_filter-{flagged}").value == "flagged"
    at.selectbox(key="review_analysis").select(unflagged).run()
    assert at.segmented_control(key=f"review_filter-{unflagged}").value == "all"
    assert not at.success and len([b for b in at.button if b.key.startswith("open_other_")]) == 2  # its two cells


def test_the_chosen_view_clicked_again_stays_chosen(app_store):
    """Streamlit lets the chosen option of a segmented control be clicked off: "flagged" clicked again showed
    every cell with no view lit, "keyboard" clicked again went back to the mouse."""
    analysis_id = classified(app_store, ["NGS", "LYT", "EOS"], needs_review=[0])
    at = app("4_Review").run()
    at.sidebar.text_input[0].input("Dr Who").run()
    cards = len([b for b in at.button if b.key.startswith("open_other_")])
    assert cards == 1  # the flagged one
    at.segmented_control(key=f"review_filter-{analysis_id}").set_value(None).run()  # "flagged" clicked again
    assert not at.exception and at.segmented_control(key=f"review_filter-{analysis_id}").value == "flagged"
    assert len([b for b in at.button if b.key.startswith("open_other_")]) == cards
    at.segmented_control(key="review_mode").set_value("keyboard").run()
    at.segmented_control(key="review_mode").set_value(None).run()
    assert at.segmented_control(key="review_mode").value == "keyboard"
    history = app("5_History").run()
    history.segmented_control(key="history_view").set_value(None).run()
    assert history.segmented_control(key="history_view").value == "analyses"


def test_needs_review_counts_the_same_cells_on_every_page(app_store):
    """Flagged and not reviewed yet, as on Review and in the report: History said 2 where Review said 0."""
    analysis_id = classified(app_store, ["NGS", "LYT", "LYT"], needs_review=[0, 1])
    app_store.review(app_store.get_analysis(analysis_id).predictions[0].id, "NGS", "Dr Who")
    review = app("4_Review").run()
    history = app("5_History").run()
    assert {m.label: m.value for m in review.metric}["Needs review"] == "1"
    assert list(history.dataframe[0].value["needs review"]) == [1]
    assert {m.label: m.value for m in history.metric}["Needs review"] == "1"
    assert any(e.label.startswith("Needs review: 1 cell under") for e in history.expander)


def test_review_without_analyses_points_to_classification(app_store):
    at = app("4_Review").run()
    assert not at.exception
    assert any("nothing to review" in i.value for i in at.info)


def test_review_of_not_identifiable_cells_renders_and_stores_a_reclassification(app_store):
    """Regression: a cell predicted NIF gave two buttons keyed ``set_<id>_NIF`` ("✓ NIF" and
    "unidentified") and the whole Review page stopped with StreamlitDuplicateElementKey."""
    analysis_id = classified(app_store, ["NIF", "NIF", "NGS"], needs_review=[0, 1])
    at = app("4_Review").run()
    assert not at.exception
    at.sidebar.text_input[0].input("Dr Who").run()
    assert not at.exception
    unidentified = app_store.get_analysis(analysis_id).predictions[0]
    buttons = [b for b in at.button if b.key and b.key.startswith(f"set_{unidentified.id}_")]
    assert [b.label for b in buttons].count("✓ NIF") == 1 and "unidentified" not in [b.label for b in buttons]
    alternative = next(b for b in buttons if b.label != "✓ NIF")
    alternative.click().run()
    assert not at.exception
    [stored] = app_store.get_analysis(analysis_id).predictions[0].reviews
    assert (stored.old_code, stored.new_code, stored.reviewer) == ("NIF", alternative.label.split(" · ")[0], "Dr Who")
    assert at.dataframe[0].value.set_index("code").loc["NIF", "now"] == 1


def test_history_and_review_offer_the_report_to_sign(app_store):
    classified(app_store, ["NGS", "EBO", "LYT"], needs_review=[1])
    for page in ("5_History", "4_Review"):
        at = app(page).run()
        assert not at.exception
        assert any(b.label == "Download report (PDF)" for b in at.get("download_button")), page
        assert at.selectbox(key=f"report-target-{app_store.list_analyses()[0].id}").value == 200


def test_a_deleted_cells_thumbnail_is_never_shown_for_the_next_cell_stored(app_store):
    """Thumbnails are cached by content, and a deleted image's id is not given to the next one."""
    from bloodcells.inputs import thumbnail_png
    from ui.results import cell_image_bytes

    first = classified(app_store, ["NGS"], name="first.zip")
    [old] = app_store.get_analysis(first).predictions
    old_thumbnail = cell_image_bytes(app_store, old, 48)
    app_store.delete_analysis(first)
    [new] = app_store.get_analysis(classified(app_store, ["EOS"], name="second.zip")).predictions
    assert new.blob_id != old.blob_id and new.image_sha256 != old.image_sha256
    assert cell_image_bytes(app_store, new, 48) == thumbnail_png(app_store.read_blob(new.blob_id), "", 48)
    assert cell_image_bytes(app_store, new, 48) != old_thumbnail


def test_a_cell_deleted_while_shown_has_its_image_again_once_stored_again(app_store):
    """A thumbnail asked for while its analysis was being deleted (another tab) was cached as "no image": the
    same zip classified again showed its cells without images until the server restarted."""
    from ui.results import cell_image_bytes

    first = classified(app_store, ["NGS"], name="cells.zip")
    [cell] = app_store.get_analysis(first).predictions
    app_store.delete_analysis(first)
    assert cell_image_bytes(app_store, cell, 48) is None  # drawn from the page as it was before the delete
    [again] = app_store.get_analysis(classified(app_store, ["NGS"], name="cells.zip")).predictions
    assert again.image_sha256 == cell.image_sha256
    assert cell_image_bytes(app_store, again, 48) is not None


def test_a_database_url_that_cannot_be_used_is_a_message_on_every_page(monkeypatch):
    monkeypatch.setenv("BLOODCELLS_DATABASE_URL", "postgresql://lab@db/bloodcells")
    for page in ("5_History", "4_Review"):
        at = app(page).run()
        assert not at.exception
        assert any("bloodcells stores in SQLite or MySQL/MariaDB" in e.value for e in at.error)


def differential_table(at):
    [table] = [frame.value for frame in at.dataframe if "cell type" in frame.value.columns]
    return table


def test_the_page_shows_the_differential_the_report_prints(app_store):
    """The page counted platelets (and unidentifiable cells, smudge cells, artefacts) in the denominator:
    segmented neutrophils 50%, platelets 25% where the PDF said segmented neutrophils 67%."""
    from bloodcells.signout import build_report

    analysis_id = classified(app_store, ["NGS", "NGS", "LYT", "PLT", "MON"])
    at = app("5_History").run()
    at.toggle(key=f"percent-{analysis_id}").set_value(True).run()
    assert not at.exception
    shown = differential_table(at).set_index("cell type")["%"]
    printed = {row.label: row.percent for row in build_report(app_store, analysis_id).rows}
    assert shown.to_dict() == printed and "Platelets" not in shown
    assert (shown["Segmented neutrophils"], shown["Lymphocytes"], shown["Monocytes"]) == (50, 25, 25)
    assert any("Cells counted: 4. Not in the count: Platelets: 1." in c.value for c in at.caption)

    platelets = classified(app_store, ["PLT", "PLT"], name="platelets.zip")
    at.run()
    at.selectbox(key="history_open").select(platelets).run()
    assert not at.exception
    assert differential_table(at)["count"].sum() == 0  # the PDF's "Cells counted 0"
    assert any("Cells counted: 0. Not in the count: Platelets: 2." in c.value for c in at.caption)


def test_the_cells_table_shows_the_reviewed_type_beside_the_models(app_store):
    """A blast reviewed to NIF was listed as type=blast, code=NIF, path=ALL/MYE/MYI/BLA."""
    analysis_id = classified(app_store, ["BLA", "LYT"])
    app_store.review(app_store.get_analysis(analysis_id).predictions[0].id, "NIF", "Dr Who")
    at = app("5_History").run()
    assert not at.exception
    [cells] = [frame.value for frame in at.dataframe if "model's type" in frame.value.columns]
    reviewed, lymphocyte = cells.to_dict("records")
    assert (reviewed["type"], reviewed["code"], reviewed["path"], reviewed["model's type"], reviewed["reviewed"]) == \
        ("not identifiable", "NIF", "ALL/ABN/NIF", "blast", "NIF")
    assert (lymphocyte["type"], lymphocyte["code"], lymphocyte["path"], lymphocyte["model's type"]) == \
        ("lymphocyte", "LYT", "ALL/LYM/LYT", "lymphocyte")


def test_a_long_list_of_skipped_files_is_cut_short():
    """An upload of 100,000 unreadable files put every name into one 14 MB block of text."""
    def page():
        from ui.common import skipped_files

        skipped_files([f"broken{n}.png: not an image" for n in range(250)])

    at = AppTest.from_function(page, default_timeout=60).run()
    assert [e.label for e in at.expander] == ["250 files were skipped"]
    [listing] = [m.value for m in at.markdown if "broken0.png" in m.value]
    assert "broken199.png" in listing and "broken200.png" not in listing and listing.endswith("... and 50 more")


def test_an_analysis_with_more_skipped_files_than_it_keeps_says_how_many(app_store, trained_models_dir):
    """An analysis keeps the first 200 problems: 5,000 unreadable files were said as "200 files were skipped"."""
    import io
    import zipfile

    from bloodcells.classify import classify, load_classifier
    from bloodcells.signout import build_report
    from bloodcells.synthetic import cell_image, encode

    upload = io.BytesIO()
    with zipfile.ZipFile(upload, "w") as archive:
        archive.writestr("cell.png", encode(cell_image("NGS", 1, 32)))
        for n in range(230):
            archive.writestr(f"broken{n}.png", b"not an image")
    analysis_id = classify(upload.getvalue(), classifier=load_classifier(trained_models_dir), store=app_store,
                           name="cells.zip").analysis_id
    at = app("5_History").run()
    assert not at.exception and [e.label for e in at.expander if "skipped" in e.label] == ["230 files were skipped"]
    assert any(m.value.endswith("... and 30 more") for m in at.markdown)
    assert build_report(app_store, analysis_id).notes == [
        "230 files of the upload not used (unreadable, blank, too small or not an image): History lists them"]


def test_a_secrets_file_that_cannot_be_read_locks_every_page(app_store, tmp_path, monkeypatch):
    """A secrets.toml with a typo (`password = "abc`, quote unclosed) opened every page to anyone; an
    unquoted `password = 1234` was an AttributeError at the login."""
    import streamlit as st
    from streamlit import config
    from streamlit.runtime.secrets import Secrets

    from ui.common import PasswordSettingsError, _expected_password

    secrets = tmp_path / "secrets.toml"
    monkeypatch.delenv("BLOODCELLS_PASSWORD", raising=False)
    default_files = config.get_option("secrets.files")
    config.set_option("secrets.files", [str(secrets)])
    try:
        secrets.write_text('password = "abc\n')
        monkeypatch.setattr(st, "secrets", Secrets())
        with pytest.raises(PasswordSettingsError, match="Error parsing secrets file"):
            _expected_password()
        secrets.write_text("password = 1234\n")
        monkeypatch.setattr(st, "secrets", Secrets())
        assert _expected_password() == "1234"
        secrets.unlink()
        monkeypatch.setattr(st, "secrets", Secrets())
        assert _expected_password() is None  # no secrets file: no password asked
    finally:
        config.set_option("secrets.files", default_files)

    def broken(*_args):
        raise PasswordSettingsError("Error parsing secrets file at x")

    monkeypatch.setattr("ui.common._expected_password", broken)
    classified(app_store, ["NGS"])
    at = app("5_History").run()
    assert not at.exception and not at.dataframe
    assert any("password setting cannot be read" in e.value for e in at.error)


def test_a_users_mistake_is_said_without_a_traceback_in_the_log_a_bug_keeps_its_traceback(caplog):
    """Adapting with too few cells, or accepting a version decided already, put six tracebacks in the server's
    log for mistakes the page had said in words."""
    def page():
        import streamlit as st

        from bloodcells.adapt import AdaptError
        from bloodcells.versions import VersionError
        from ui.work import run_safely

        for what, error in (("Adapting", AdaptError("LYT: 2 cells, at least 5 needed")),
                            ("Accepting", VersionError("already accepted")),
                            ("Drawing", ValueError("a bug of ours"))):
            with run_safely(what):
                raise error
        st.write("drawn")

    with caplog.at_level("ERROR", logger="bloodcells.app"):
        at = AppTest.from_function(page, default_timeout=60).run()
    assert [e.value for e in at.error] == ["Adapting failed: LYT: 2 cells, at least 5 needed",
                                           "Accepting failed: already accepted", "Drawing failed: a bug of ours"]
    assert [r.getMessage() for r in caplog.records if r.exc_info] == ["Drawing failed"]


def test_a_storage_error_that_is_no_outage_is_not_said_as_one():
    """Every StoreError read "The database is not available ... try again when it is back", also for an
    analysis marked failed meanwhile or a value the server refused: staff waited for a database that was up."""
    def page():
        from bloodcells.store import DatabaseUnavailable, StoreError
        from ui.work import run_safely

        for what, error in (("Classification", StoreError("analysis #5 was marked failed meanwhile; run it again")),
                            ("Classification", DatabaseUnavailable("the database at db cannot be reached"))):
            with run_safely(what):
                raise error

    at = AppTest.from_function(page, default_timeout=60).run()
    assert [e.value for e in at.error] == [
        "Classification failed: analysis #5 was marked failed meanwhile; run it again. Nothing was half-stored.",
        "The database is not available: the database at db cannot be reached. Nothing was half-stored; try again "
        "when it is back."]


def test_history_says_the_files_an_upload_left_out_and_why_its_counts_are_doubtful(app_store):
    """Said only on the page that ran it: whoever opened the analysis in History to sign it off never learnt
    that a field was greyscale or that two files were skipped."""
    from test_app_detection import DrawnCells
    from test_inputs_paths import zip_of

    from bloodcells.detection import detect
    from bloodcells.synthetic import encode, smear_field

    image, truth = smear_field(320, 240, n_wbc=1, n_rbc=6, n_platelets=2, seed=4)
    upload = {"grey.png": encode(image.convert("L").convert("RGB")), "notimage.jpg": b"text",
              "tiny.png": encode(image.resize((20, 15)))}
    result = detect(zip_of(upload), detector=DrawnCells({"grey.png": truth}), type_white_cells=False,
                    store=app_store, name="fields.zip")
    at = app("5_History").run()
    assert not at.exception
    assert [w.value for w in at.warning if "grey" in w.value] == result.warnings
    assert any(e.label == "2 files were skipped" for e in at.expander)
