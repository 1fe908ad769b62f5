"""The storage suite: runs on SQLite, and on MySQL/MariaDB when BLOODCELLS_TEST_MYSQL_URL is set."""

import contextlib
import re
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import event, inspect, select, text

from bloodcells.store import (
    Analysis,
    AnalysisLocked,
    Blob,
    BlobChunk,
    CellType,
    Detection,
    DetectionRow,
    Explanation,
    NotFound,
    Prediction,
    PredictionRow,
    Store,
    StoreError,
    record_analysis,
    schema,
    sha256_file,
    sha256_hex,
)
from bloodcells.store.schema import CHUNK_SIZE
from bloodcells.taxonomy import default_tree


def test_schema_created_by_migrations(store):
    tables = set(inspect(store.engine).get_table_names())
    assert {"cell_types", "blobs", "blob_chunks", "model_types", "models", "model_cell_types",
            "analyses", "predictions", "reviews", "detections", "explanations", "alembic_version"} <= tables
    assert store.current_revision() is not None
    store.upgrade()  # idempotent


def _insert_at_revision_0001(store: Store) -> None:
    """One analysis with a stored cell, a review and a detection, written as 0001's schema accepts
    them (with a row in ``cells`` and a detection's ``blob_id``, which 0002 drops)."""
    statements = [
        "INSERT INTO analyses (id, name, kind, status, created_at, model_versions, summary) "
        "VALUES (1, 'old.zip', 'classification', 'done', :now, '{\"ALL\": \"abc\"}', '{}')",
        "INSERT INTO blobs (id, sha256, size, media_type) VALUES (1, :sha256, 9, 'image')",
        "INSERT INTO blob_chunks (blob_id, seq, data) VALUES (1, 0, :content)",
        "INSERT INTO predictions (id, analysis_id, blob_id, filename, code, path, confidence, level_confidences, "
        "needs_review, reviewed_code) VALUES (1, 1, 1, 'cell.png', 'NGS', 'ALL/MYE/MYM/NEU/NGS', 0.9, '{}', 1, 'NGB')",
        "INSERT INTO reviews (prediction_id, old_code, new_code, reviewer, created_at) "
        "VALUES (1, 'NGS', 'NGB', 'dr.a', :now)",
        "INSERT INTO detections (analysis_id, blob_id, filename, class_code, score, x1, y1, x2, y2) "
        "VALUES (1, 1, 'field.jpg', 'WBC', 0.8, 1, 2, 30, 40)",
        "INSERT INTO cells (blob_id, label, source, filename, created_at) VALUES (1, 'NGS', 'lab', 'cell.png', :now)",
    ]
    values = {"now": datetime(2026, 11, 1, 12, 0), "sha256": sha256_hex(b"old image"), "content": b"old image"}
    with store.engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement), values)


def _unused_schema(store: Store) -> tuple[bool, bool]:
    """Whether the ``cells`` table and the ``detections.blob_id`` column exist."""
    schema = inspect(store.engine)
    return "cells" in schema.get_table_names(), "blob_id" in {c["name"] for c in schema.get_columns("detections")}


def head_revision(store: Store) -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(store._alembic_config()).get_current_head()


def test_migration_0002_keeps_the_data_and_drops_the_unused_schema(database_url):
    from alembic import command

    store = Store(database_url)
    store.upgrade("0001")
    _insert_at_revision_0001(store)
    store.upgrade()
    assert store.current_revision() == head_revision(store)
    assert _unused_schema(store) == (False, False)
    analysis = store.get_analysis(1)
    assert (analysis.name, analysis.status, analysis.model_versions) == ("old.zip", "done", {"ALL": "abc"})
    assert [(p.filename, p.final_code, p.needs_review) for p in analysis.predictions] == [("cell.png", "NGB", True)]
    assert [(r.old_code, r.new_code) for r in analysis.predictions[0].reviews] == [("NGS", "NGB")]
    assert [(d.class_code, d.x2) for d in analysis.detections] == [("WBC", 30.0)]
    assert store.read_blob(blob_id=analysis.predictions[0].blob_id) == b"old image"
    command.downgrade(store._alembic_config(), "0001")  # recreates them (empty) and upgrades again
    assert _unused_schema(store) == (True, True)
    store.upgrade()
    assert _unused_schema(store) == (False, False) and len(store.get_analysis(1).detections) == 1
    store.engine.dispose()


def _store_one_of_everything(store: Store) -> int:
    """An analysis with cells (shared images), a review, a sign-off and a reopening amendment, a
    detection analysis, a cached explanation map, a registered model and a model version."""
    cells = store.start_analysis("cells.zip", "classification", {"ALL": "abc"})
    store.finish_analysis(cells, predictions=_rows(4), summary={"NGS": 4})
    first = store.get_analysis(cells).predictions[0]
    store.review(first.id, "NGB", "dr.a")
    store.sign_off(cells, "dr.a")
    store.reopen(cells, "dr.b", "typo")
    store.review(first.id, "NIF", "dr.b")
    boxes = store.start_analysis("field.jpg", "detection")
    store.finish_analysis(boxes, detections=[DetectionRow("field.jpg", "RBC", 0.8, (0, 0, 9, 9))])
    store.put_explanation(b"map", **EXPLANATION_KEY)
    store.register_model(kind="classifier", architecture="tf_efficientnet_lite0", weights_path="a.pt",
                         sha256="1" * 64, metrics={}, tree="default", node_code="ALL", class_codes=["LYM"])
    store.record_model_version(tree="default", kind="adapted", folder="candidate", base={"ALL": "1" * 64}, cells=4,
                               analyses=[cells], figures={}, started_by="dr.a")
    return cells


def _row_counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as connection:
        return {table: connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()
                for table in inspect(store.engine).get_table_names() if table != "alembic_version"}


def _ids_after_deleting_the_newest(store: Store) -> tuple[int, int]:
    deleted = store.start_analysis("deleted.zip", "classification")
    store.finish_analysis(deleted, predictions=_cells(["deleted"]))
    store.delete_analysis(deleted)
    return deleted, store.start_analysis("next.zip", "classification")


def test_an_id_is_never_given_again_after_its_row_is_deleted(store):
    """An id a user or a cache held (an analysis open in another tab) must not come to name another
    analysis: SQLite without AUTOINCREMENT gives the newest deleted id to the next row."""
    deleted, following = _ids_after_deleting_the_newest(store)
    assert following > deleted
    later = store.start_analysis("later.zip", "classification")
    store.finish_analysis(later, predictions=_cells(["later"]))
    with store.session() as session:  # nor a deleted cell's or image's id
        assert min(session.scalars(select(Prediction.id).where(Prediction.analysis_id == later))) > 1
        assert session.scalar(select(Blob.id).join(Prediction, Prediction.blob_id == Blob.id)
                              .where(Prediction.analysis_id == later)) > 1


def test_migration_0005_keeps_every_row_and_its_links(database_url):
    """Rebuilding SQLite's tables (for AUTOINCREMENT) with foreign keys enforced would have deleted
    every row referring to a rebuilt table; every row stays, with its links and cascades."""
    from alembic import command

    store = Store(database_url)
    store.upgrade()
    store.sync_cell_types(default_tree())
    cells = _store_one_of_everything(store)  # written by today's code, then taken back to 0004
    command.downgrade(store._alembic_config(), "0004")
    before = _row_counts(store)
    store.upgrade()
    assert _row_counts(store) == before and min(before.values()) > 0
    analysis = store.get_analysis(cells)
    assert [r.new_code for r in analysis.predictions[0].reviews] == ["NGB", "NIF"]
    assert analysis.predictions[0].reviews[1].reopening_id == analysis.signoffs[1].id
    assert store.read_blob(analysis.predictions[1].blob_id) == b"image-1"
    with store.session() as session:
        assert session.scalar(select(CellType).where(CellType.code == "NGB")).parent.code == "NEU"
    deleted, following = _ids_after_deleting_the_newest(store)
    assert following > deleted
    with store.engine.begin() as connection:  # the database's own cascades still hold
        connection.execute(text("DELETE FROM analyses WHERE id = :id"), {"id": cells})
    assert store.count_rows(Prediction) == 0
    command.downgrade(store._alembic_config(), "0004")
    assert store.count_rows(Analysis) == 2
    store.engine.dispose()


def test_cell_types_mirror_the_tree(store, tree):
    with store.session() as session:
        rows = {c.code: c for c in session.scalars(select(CellType))}
        assert set(rows) == set(tree.nodes)
        assert rows["NGB"].parent.code == "NEU"
        assert rows["ALL"].parent is None
    store.sync_cell_types(tree)  # idempotent
    assert store.count_rows(CellType) == len(tree.nodes)


def test_blobs_are_deduplicated_and_chunked(store):
    large = bytes(range(256)) * (CHUNK_SIZE // 256 * 2 + 100)  # > 2 chunks
    with store.session() as session:
        first = store.put_blob(session, large)
        again = store.put_blob(session, large)
        assert first.id == again.id
    assert store.read_blob(sha256=sha256_hex(large)) == large
    assert store.count_rows(BlobChunk) == 3


def test_blob_larger_than_mysql_packet_round_trips(store):
    content = b"\x89PNG" + bytes(20 * 1024 * 1024)  # 20 MB: over MySQL's default 16 MB packet
    with store.session() as session:
        blob_id = store.put_blob(session, content).id
    assert store.read_blob(blob_id=blob_id) == content


def _rows(n):
    return [PredictionRow(filename=f"cell_{i}.png", code="NGS", path="ALL/MYE/MYM/NEU/NGS",
                          confidence=0.9, level_confidences={"ALL": 0.99, "MYE": 0.95},
                          needs_review=i % 2 == 0, content=f"image-{i % 3}".encode()) for i in range(n)]


def test_analysis_is_stored_whole_with_deduplicated_images(store):
    analysis_id = store.start_analysis("upload.zip", "classification", {"ALL": "abc"})
    store.finish_analysis(analysis_id, predictions=_rows(6), summary={"NGS": 6})
    analysis = store.get_analysis(analysis_id)
    assert analysis.status == "done" and analysis.summary == {"NGS": 6}
    assert len(analysis.predictions) == 6
    assert analysis.predictions[0].level_confidences == {"ALL": 0.99, "MYE": 0.95}
    with store.session() as session:
        assert len(session.scalars(select(Prediction.blob_id).distinct()).all()) == 3


def test_a_failed_write_leaves_nothing_half_stored(store):
    analysis_id = store.start_analysis("bad.zip", "classification")
    rows = _rows(4)
    rows[3] = PredictionRow(filename="cell_3.png", code=None, path="p", confidence=1.0,  # NOT NULL violated
                            level_confidences={}, needs_review=False)
    with pytest.raises(StoreError):
        store.finish_analysis(analysis_id, predictions=rows)
    assert store.count_rows(Prediction) == 0  # the first three rows were rolled back with the fourth
    assert store.get_analysis(analysis_id).status == "running"
    store.fail_analysis(analysis_id, "could not store")
    analysis = store.get_analysis(analysis_id)
    assert analysis.status == "failed" and analysis.error == "could not store"
    assert analysis.predictions == []


def test_an_analysis_block_stores_what_its_run_finishes_with(store):
    with store.analysis("field.jpg", "detection", {"detector": "abc"}) as run:
        assert store.get_analysis(run.id).status == "running"
        run.detections = [DetectionRow("field.jpg", "WBC", 0.9, (1, 2, 30, 40), code="LYT", path="ALL/LYM/LYT")]
        run.predictions = iter(_rows(4))  # a stream, read once
        run.summary = {"counts": {"WBC": 1}}
    analysis = store.get_analysis(run.id)
    assert (analysis.name, analysis.kind, analysis.status) == ("field.jpg", "detection", "done")
    assert analysis.model_versions == {"detector": "abc"} and analysis.summary == {"counts": {"WBC": 1}}
    assert [(d.class_code, d.code) for d in analysis.detections] == [("WBC", "LYT")]
    assert len(analysis.predictions) == 4 and analysis.finished_at is not None


class _Stopped(BaseException):
    """Like Streamlit's stop and rerun exceptions: not an ``Exception``."""


@pytest.mark.parametrize(("error", "said"), [
    (RuntimeError("the model crashed on cell 41"), "RuntimeError: the model crashed on cell 41"),
    (KeyboardInterrupt("Ctrl-C"), "KeyboardInterrupt: Ctrl-C"),
    (KeyboardInterrupt(), "KeyboardInterrupt: stopped before it finished"),  # it read "KeyboardInterrupt: "
    (_Stopped("the page was stopped"), "_Stopped: the page was stopped")],
    ids=["exception", "ctrl-c", "ctrl-c-without-words", "base-exception"])
def test_an_analysis_block_that_raises_is_marked_failed_and_the_error_re_raised(store, error, said):
    with pytest.raises(type(error)) as raised, store.analysis("upload.zip", "classification") as run:
        run.predictions = _rows(3)
        raise error
    assert raised.value is error
    analysis = store.get_analysis(run.id)
    assert analysis.status == "failed" and analysis.error == said
    assert analysis.predictions == [] and analysis.finished_at is not None
    assert store.count_rows(Prediction) == 0


def test_an_analysis_whose_results_cannot_be_stored_is_marked_failed(store):
    rows = _rows(3) + [PredictionRow(filename="cell_3.png", code=None, path="p", confidence=1.0,  # NOT NULL
                                     level_confidences={}, needs_review=False)]
    with pytest.raises(StoreError), store.analysis("bad.zip", "classification") as run:
        run.predictions = rows
    analysis = store.get_analysis(run.id)
    assert analysis.status == "failed" and analysis.error.startswith("StoreError: ")
    assert store.count_rows(Prediction) == 0


def test_without_a_store_an_analysis_run_records_nothing():
    with record_analysis(None, "upload.zip", "classification", {"ALL": "abc"}) as run:
        run.predictions = _rows(2)
    assert run.id is None


def test_a_files_sha256_is_that_of_its_content(tmp_path):
    content = bytes(range(256)) * 5000
    (tmp_path / "weights.pt").write_bytes(content)
    assert sha256_file(tmp_path / "weights.pt") == sha256_hex(content)


def test_reviews_keep_old_and_new_label_who_and_when(store):
    analysis_id = store.start_analysis("a.zip", "classification")
    store.finish_analysis(analysis_id, predictions=_rows(2))
    prediction = store.get_analysis(analysis_id).predictions[0]
    store.review(prediction.id, "NGB", "dr.a")
    store.review(prediction.id, "NIF", "dr.b")
    updated = store.get_analysis(analysis_id).predictions[0]
    assert updated.final_code == "NIF"
    assert [(r.old_code, r.new_code, r.reviewer) for r in updated.reviews] == [("NGS", "NGB", "dr.a"),
                                                                              ("NGB", "NIF", "dr.b")]
    assert all(r.created_at is not None for r in updated.reviews)


def test_detections_and_delete(store):
    analysis_id = store.start_analysis("field.jpg", "detection")
    store.finish_analysis(analysis_id, detections=[
        DetectionRow("field.jpg", "WBC", 0.9, (1, 2, 30, 40), code="LYT", path="ALL/LYM/LYT", sub_confidence=0.8),
        DetectionRow("field.jpg", "RBC", 0.8, (50, 50, 70, 70))])
    assert [d.class_code for d in store.get_analysis(analysis_id).detections] == ["WBC", "RBC"]
    store.delete_analysis(analysis_id)
    assert store.count_rows(Detection) == 0 and store.count_rows(Analysis) == 0


def test_an_analysis_still_running_is_not_deleted_but_one_its_process_left_is(store):
    """Deleted while running, its run failed at the end ("deleted meanwhile?") and left its images."""
    running = store.start_analysis("big.zip", "classification")
    with pytest.raises(AnalysisLocked, match=f"#{running} is still running .* once it has finished"):
        store.delete_analysis(running)
    store.finish_analysis(running, predictions=_rows(2))
    assert store.get_analysis(running).status == "done"
    left = store.start_analysis("server restarted.zip", "classification")
    with store.session() as session:  # its process fell silent six minutes ago
        session.get(Analysis, left).heartbeat_at -= timedelta(minutes=6)
    store.delete_analysis(left)
    assert [a.id for a in store.list_analyses()] == [running]


def test_an_analysis_whose_process_fell_silent_is_marked_interrupted_once_listed(store):
    """A killed app server left its analysis "running" for a day: shown as running, undeletable."""
    recent = store.start_analysis("being stored.zip", "classification")
    silent = store.start_analysis("server killed.zip", "classification")
    old_style = store.start_analysis("stored by an older bloodcells.zip", "classification")
    with store.session() as session:
        session.get(Analysis, silent).heartbeat_at -= timedelta(minutes=6)
        # no heartbeat (stored before them): the rule of a day still holds, either side of it
        session.get(Analysis, old_style).heartbeat_at = None
        session.get(Analysis, old_style).created_at -= timedelta(hours=23)
    assert [store.get_analysis(i).being_stored for i in (recent, silent, old_style)] == [True, False, True]
    listed = {a.id: a for a in store.list_analyses()}
    assert [listed[i].status for i in (recent, silent, old_style)] == ["running", "failed", "running"]
    assert listed[silent].error.startswith("interrupted: the process storing it stopped (its last sign of life: ")
    with store.session() as session:
        session.get(Analysis, old_style).created_at -= timedelta(hours=2)
    assert {a.id: a.status for a in store.list_analyses()}[old_style] == "failed"
    store.finish_analysis(recent, predictions=_rows(1))  # a live run is never touched
    assert store.get_analysis(recent).status == "done"


def test_a_paused_run_marked_interrupted_meanwhile_stays_failed_when_it_resumes(store):
    """A process paused (SIGSTOP, a suspended VM) for longer than the silence allowed is marked interrupted;
    resumed, it stored its cells under "done (interrupted: ...)", or failed on images deleted meanwhile."""
    interrupted = "was marked failed meanwhile \\(interrupted: the process storing it stopped"
    with pytest.raises(StoreError, match=interrupted), store.analysis("paused.zip", "classification") as run:
        with store.session() as session:
            session.get(Analysis, run.id).heartbeat_at -= timedelta(minutes=6)
        store.list_analyses()  # another page lists analyses while it is paused
        run.predictions = _rows(3)
    analysis = store.get_analysis(run.id)
    assert analysis.status == "failed" and analysis.error.startswith("interrupted: the process storing it stopped")
    assert analysis.predictions == [] and store.count_rows(Blob) == 0


def test_a_paused_run_not_listed_meanwhile_is_not_brought_back_by_its_next_beat(store, monkeypatch):
    """Resumed, its beat revived it, while another analysis's finish had deleted the images it had stored:
    it failed at the end on "FOREIGN KEY constraint failed"."""
    monkeypatch.setattr(schema, "HEARTBEAT", timedelta(seconds=0.05))
    interrupted = "gave no sign of life for .* and counts as interrupted"
    with pytest.raises(StoreError, match=interrupted), store.analysis("paused.zip", "classification") as run:
        with store.session() as session:
            session.get(Analysis, run.id).heartbeat_at -= timedelta(minutes=6)
        time.sleep(0.3)  # resumed: several beats
        assert not store.get_analysis(run.id).being_stored
        run.predictions = _rows(3)
    assert store.get_analysis(run.id).predictions == []


def test_a_beat_that_fails_in_any_way_leaves_the_heartbeat_going(store, monkeypatch):
    """A pool out of connections (sqlalchemy's TimeoutError) killed the thread: the live run then counted as
    interrupted and was lost."""
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    monkeypatch.setattr(schema, "HEARTBEAT", timedelta(seconds=0.05))
    original, failures = store._sessions, []

    def flaky():
        if not failures and threading.current_thread().name.endswith("heartbeat"):
            failures.append(1)
            raise PoolTimeout("QueuePool limit reached")
        return original()

    monkeypatch.setattr(store, "_sessions", flaky)
    with store.analysis("long.zip", "classification") as run:
        first = store.get_analysis(run.id).heartbeat_at
        deadline = time.monotonic() + 10
        while store.get_analysis(run.id).heartbeat_at == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert failures and store.get_analysis(run.id).heartbeat_at > first  # beats after the failed one
        run.predictions = _rows(1)
    assert store.get_analysis(run.id).status == "done"


def test_a_running_analysis_gives_a_sign_of_life_until_it_ends(store, monkeypatch):
    monkeypatch.setattr(schema, "HEARTBEAT", timedelta(seconds=0.05))
    with store.analysis("slow.zip", "classification") as run:
        first = store.get_analysis(run.id).heartbeat_at
        deadline = time.monotonic() + 10
        while store.get_analysis(run.id).heartbeat_at == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.get_analysis(run.id).heartbeat_at > first
        run.predictions = _rows(1)
    assert store.get_analysis(run.id).status == "done"
    assert not [t for t in threading.enumerate() if t.name.endswith("heartbeat")]


def test_an_analysis_of_a_killed_process_is_interrupted_once_it_falls_silent(database_url, monkeypatch, tmp_path):
    """SIGKILL (the OOM killer, `docker kill`, a power cut) runs no Python: only the silence tells."""
    Store(database_url).upgrade()
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from datetime import timedelta
        from bloodcells.store import Store, schema
        schema.HEARTBEAT = timedelta(seconds=0.1)
        with Store({database_url!r}).analysis("killed.zip", "classification") as run:
            print(run.id, flush=True)
            time.sleep(600)
    """))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        analysis_id = int(child.stdout.readline())
        # 3 s: MySQL's DATETIME keeps whole seconds, and a loaded machine may delay a beat
        monkeypatch.setattr(schema, "SILENT_AFTER", timedelta(seconds=3))
        store = Store(database_url)
        time.sleep(4)  # longer than SILENT_AFTER: only its beats keep it running
        assert store.get_analysis(analysis_id).being_stored
        assert store.list_analyses()[0].status == "running"
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 15
    while store.get_analysis(analysis_id).being_stored and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not store.get_analysis(analysis_id).being_stored
    assert store.list_analyses()[0].status == "failed"
    store.delete_analysis(analysis_id)
    store.engine.dispose()


def test_names_longer_than_their_columns_are_shortened_in_the_middle_not_refused(store):
    """MariaDB refused them ("Data too long"), failing a whole upload for one deep zip path."""
    upload = "Ausstrich " * 60 + "März.zip"
    analysis_id = store.start_analysis(upload, "classification")
    deep = "/".join(["folder"] * 100) + "/NGS_cell.png"
    store.finish_analysis(analysis_id, predictions=[replace(_rows(1)[0], filename=deep)],
                          detections=[DetectionRow(deep, "RBC", 0.8, (0, 0, 9, 9))])
    analysis = store.get_analysis(analysis_id)
    assert len(analysis.name) == 512 and analysis.name.startswith("Ausstrich") and analysis.name.endswith("März.zip")
    for stored in (analysis.predictions[0].filename, analysis.detections[0].filename):
        assert len(stored) == 512 and stored.startswith("folder/") and stored.endswith("/NGS_cell.png") and "…" in stored
    assert store.list_analyses(search="März")[0].id == analysis_id


def test_a_sign_off_comment_too_long_for_the_database_is_refused_in_words(store):
    from bloodcells.store import COMMENT_LENGTH, ReviewError

    analysis_id = store.start_analysis("a.zip", "classification")
    store.finish_analysis(analysis_id, predictions=_rows(1))
    with pytest.raises(ReviewError, match="the comment is longer than 10,000 characters"):
        store.sign_off(analysis_id, "Dr A", comment="é" * (COMMENT_LENGTH + 1))
    store.sign_off(analysis_id, "Dr A", comment="é" * COMMENT_LENGTH)  # 20,000 bytes: fits MySQL's TEXT
    assert store.get_analysis(analysis_id).signed_off.comment == "é" * COMMENT_LENGTH
    with pytest.raises(ReviewError, match="the reason for reopening is longer"):
        store.reopen(analysis_id, "Dr A", "x" * (COMMENT_LENGTH + 1))


def test_models_are_registered_once_and_newest_is_active(store):
    first = store.register_model(kind="classifier", architecture="mobilenetv3_small_100", weights_path="a.pt",
                                 sha256="1" * 64, metrics={"test_accuracy": 0.9}, tree="default",
                                 node_code="ALL", class_codes=["ERY", "LYM"])
    assert store.register_model(kind="classifier", architecture="mobilenetv3_small_100", weights_path="a.pt",
                                sha256="1" * 64, metrics={}, tree="default", node_code="ALL") == first
    store.register_model(kind="classifier", architecture="mobilenetv3_small_100", weights_path="b.pt",
                         sha256="2" * 64, metrics={}, tree="default", node_code="ALL")
    active = store.list_models("classifier")
    assert [m.weights_path for m in active] == ["b.pt"]
    assert active[0].model_type.architecture == "mobilenetv3_small_100"


def test_result_counts_per_analysis(store):
    cells = store.start_analysis("a.zip", "classification")
    store.finish_analysis(cells, predictions=_rows(5))  # cells 0, 2 and 4 need review
    first, second = store.get_analysis(cells).predictions[:2]
    store.review(first.id, "NGB", "dr.a")
    store.review(first.id, "NIF", "dr.b")  # a cell reviewed twice counts once
    store.review(second.id, "NGS", "dr.a")
    boxes = store.start_analysis("field.jpg", "detection")
    store.finish_analysis(boxes, detections=[DetectionRow("field.jpg", "RBC", 0.8, (0, 0, 9, 9))] * 3)
    empty = store.start_analysis("empty.zip", "classification")
    counts = store.result_counts([cells, boxes, empty])
    assert (counts[cells].cells, counts[cells].needs_review, counts[cells].reviewed) == (5, 2, 2)  # 0 reviewed
    assert (counts[boxes].boxes, counts[boxes].cells) == (3, 0)
    assert vars(counts[empty]) == {"cells": 0, "needs_review": 0, "reviewed": 0, "amendments": 0, "boxes": 0}
    assert store.result_counts([]) == {}


EXPLANATION_KEY = {"model_sha256": "a" * 64, "image_sha256": "b" * 64, "method": "gradcam",
                   "settings_key": "target=NGS;layer=None"}


def test_explanations_are_cached_by_key(store):
    assert store.get_explanation(**EXPLANATION_KEY) is None
    store.put_explanation(b"map", **EXPLANATION_KEY)
    assert store.get_explanation(**EXPLANATION_KEY) == b"map"
    assert store.get_explanation(**{**EXPLANATION_KEY, "method": "saliency"}) is None
    store.put_explanation(b"another map", **EXPLANATION_KEY)  # the map stored first is kept
    assert store.get_explanation(**EXPLANATION_KEY) == b"map" and store.count_rows(Explanation) == 1


@pytest.mark.parametrize("second_map", [b"the same map", b"a map computed apart"])
def test_two_writers_caching_the_same_explanation_both_succeed(database_url, second_map):
    """Two processes explain the same cell at once: both missed the cache, both save; neither fails."""
    first, second = Store(database_url), Store(database_url)
    first.upgrade()
    first_writing, second_done = threading.Event(), threading.Event()

    def hold_first_writer(_conn, _cursor, statement, *_):
        # The first writer found no map and is about to write its own: the second writes meanwhile.
        if statement.lstrip().upper().startswith("INSERT") and not first_writing.is_set():
            first_writing.set()
            second_done.wait(30)

    event.listen(first.engine, "before_cursor_execute", hold_first_writer)
    errors = []

    def write_first():
        try:
            first.put_explanation(b"the same map", **EXPLANATION_KEY)
        except StoreError as error:
            errors.append(error)

    writer = threading.Thread(target=write_first)
    writer.start()
    try:
        assert first_writing.wait(30)
        second.put_explanation(second_map, **EXPLANATION_KEY)
    finally:
        second_done.set()
        writer.join()
    assert errors == []
    assert first.count_rows(Explanation) == 1
    assert first.get_explanation(**EXPLANATION_KEY) == second_map  # the map committed first is kept
    first.engine.dispose()
    second.engine.dispose()


def test_unreachable_database_gives_a_clear_error():
    store = Store("mysql+pymysql://root@127.0.0.1:1/nothing")  # a closed port
    with pytest.raises(StoreError, match="cannot be reached"):
        store.ping()


def test_analyses_are_found_by_part_of_their_name_or_their_number(store):
    ids = [store.start_analysis(name, "classification") for name in ("Smear 100%_a.zip", "marrow.zip", "smear b.zip")]
    assert [a.id for a in store.list_analyses(search="SMEAR")] == [ids[2], ids[0]]  # any case, newest first
    assert [a.id for a in store.list_analyses(search="100%_")] == [ids[0]]  # % and _ are plain characters
    assert [a.id for a in store.list_analyses(search="%")] == [ids[0]]
    assert [a.id for a in store.list_analyses(search=f" #{ids[1]} ")] == [ids[1]]
    assert [a.id for a in store.list_analyses(search="marrow", kind="detection")] == []
    assert len(store.list_analyses(limit=2)) == 2


def test_search_ignores_case_and_accents_alike_on_both_backends(store):
    """SQLite found "müller" but not "MÜLLER", "muller" or a name typed with a combining accent, where
    MariaDB found them all; a 20-digit specimen number pasted as the search was a traceback."""
    names = ("Müller Probe.zip", "ÉCHANTILLON josé.zip", "Mu\u0308ller decomposed.zip", "100200300400500600700.zip")
    ids = [store.start_analysis(name, "classification") for name in names]
    for search in ("MÜLLER", "muller", "Mu\u0308LLER", "müller probe"):
        assert {a.id for a in store.list_analyses(search=search)} >= {ids[0]}, search
    assert {a.id for a in store.list_analyses(search="muller")} == {ids[0], ids[2]}
    assert [a.id for a in store.list_analyses(search="echantillon JOSE")] == [ids[1]]
    assert store.get_analysis(ids[2]).name == "Müller decomposed.zip"  # one form of its characters
    for search in ("100200300400500600700", "#99999999999999999999", "#²"):
        found = [a.id for a in store.list_analyses(search=search)]
        assert found == ([ids[3]] if search.startswith("1") else []), search
        assert store.count_analyses(search=search) == len(found)


def test_analyses_with_reviewed_cells_are_listed_past_newer_unreviewed_ones(store):
    """Adaptation lists reviewed analyses: a lab's newer unreviewed ones must not push them out."""
    reviewed = store.start_analysis("reviewed.zip", "classification")
    store.finish_analysis(reviewed, predictions=_rows(2))
    store.review(store.get_analysis(reviewed).predictions[0].id, "LYT", "Dr A")
    unreviewed = store.start_analysis("later.zip", "classification")
    store.finish_analysis(unreviewed, predictions=_rows(2))
    assert [a.id for a in store.list_analyses(limit=1)] == [unreviewed]
    assert [a.id for a in store.list_analyses(limit=1, reviewed=True)] == [reviewed]
    assert store.list_analyses(reviewed=True, search="later") == []
    cell = store.get_analysis(reviewed).predictions[0]
    store.undo_review(cell.id, None, "Dr A", cell.last_review_id)
    assert store.list_analyses(reviewed=True) == []  # an undone review leaves nothing learnt from


def _cells(names: list[str]) -> list[PredictionRow]:
    return [PredictionRow(filename=f"{name}.png", code="NGS", path="ALL/MYE/MYM/NEU/NGS", confidence=0.9,
                          level_confidences={}, needs_review=False, content=f"image of {name}".encode())
            for name in names]


def test_deleting_an_analysis_deletes_its_images_that_nothing_else_uses(store):
    """A lab deleting an analysis expects its cells' images gone from the database, not only its rows."""
    kept = store.start_analysis("kept.zip", "classification")
    store.finish_analysis(kept, predictions=_cells(["shared", "kept"]))
    deleted = store.start_analysis("deleted.zip", "classification")
    store.finish_analysis(deleted, predictions=_cells(["shared", "only here", "only here"]))
    only_here = sha256_hex(b"image of only here")
    store.put_explanation(b"map of only here", **{**EXPLANATION_KEY, "image_sha256": only_here})
    store.put_explanation(b"map of kept", **{**EXPLANATION_KEY, "image_sha256": sha256_hex(b"image of kept")})
    assert store.count_rows(Blob) == 5
    store.delete_analysis(deleted)
    assert store.count_rows(Blob) == 3 and store.count_rows(BlobChunk) == 3  # shared, kept, map of kept
    with pytest.raises(NotFound, match=f"^no stored content {only_here}$"):  # its own words, not KeyError's quotes
        store.read_blob(sha256=only_here)
    with pytest.raises(NotFound, match=f"^no analysis {deleted}$"):
        store.get_analysis(deleted)
    assert store.get_explanation(**{**EXPLANATION_KEY, "image_sha256": only_here}) is None
    assert [store.read_blob(p.blob_id) for p in store.get_analysis(kept).predictions] == [
        b"image of shared", b"image of kept"]
    assert store.get_explanation(**{**EXPLANATION_KEY, "image_sha256": sha256_hex(b"image of kept")}) == b"map of kept"


def test_images_stay_while_another_analysis_is_being_stored(store):
    """The same zip classified again while the first analysis is deleted: the second run has stored
    the images and is about to refer to them; they must still be there when it does."""
    first = store.start_analysis("smear.zip", "classification")
    store.finish_analysis(first, predictions=_cells(["a", "b"]))
    again = store.start_analysis("smear.zip", "classification")
    store.put_blobs({sha256_hex(b"image of a"): b"image of a"})  # what finish_analysis does first
    store.delete_analysis(first)
    store.finish_analysis(again, predictions=_cells(["a", "b"]))
    assert [store.read_blob(p.blob_id) for p in store.get_analysis(again).predictions] == [b"image of a",
                                                                                         b"image of b"]
    with store.session() as session:  # a run left "running" by a process that fell silent long ago
        session.get(Analysis, store.start_analysis("stale.zip", "classification")).heartbeat_at = datetime(2000, 1, 1)
    store.delete_analysis(again)
    assert store.count_rows(Blob) == 0


def test_a_run_started_while_an_analysis_is_deleted_keeps_the_images_it_found(store, monkeypatch):
    """MySQL: the same zip classified again while its old analysis was being deleted: the delete counted the
    analyses being stored in its snapshot, taken before the new run started, so it deleted the images the new
    run had found stored, and the new run failed on its foreign key ("Cannot add or update a child row")."""
    if store.engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer: a run cannot start while a delete is under way")
    old = store.start_analysis("smear.zip", "classification")
    store.finish_analysis(old, predictions=_cells(["a"]))
    at_cleanup, run_started = threading.Event(), threading.Event()
    cleanup = store._delete_unreferenced_images

    def paused_cleanup(session):  # the delete has read and deleted the old cells when the new run starts
        at_cleanup.set()
        assert run_started.wait(30)
        cleanup(session)

    monkeypatch.setattr(store, "_delete_unreferenced_images", paused_cleanup)
    deleting = threading.Thread(target=store.delete_analysis, args=(old,))
    deleting.start()
    assert at_cleanup.wait(30)
    put_blobs = store.put_blobs

    def images_found_then_the_delete_ends(contents):  # finish_analysis stores its images, then its rows
        found = put_blobs(contents)
        run_started.set()
        deleting.join(30)
        monkeypatch.setattr(store, "_delete_unreferenced_images", cleanup)
        return found

    monkeypatch.setattr(store, "put_blobs", images_found_then_the_delete_ends)
    again = store.start_analysis("smear.zip", "classification")
    store.finish_analysis(again, predictions=_cells(["a"]))
    assert [store.read_blob(p.blob_id) for p in store.get_analysis(again).predictions] == [b"image of a"]
    with pytest.raises(KeyError):
        store.get_analysis(old)


@pytest.mark.parametrize("other", ["finish", "delete"])
def test_two_analyses_ending_at_once_both_end(store, monkeypatch, other):
    """The images' collection inside the transaction that finished (or deleted) an analysis, which holds its
    row, took a locking read of every analysis: two at once deadlocked (MariaDB 1213), and the run that lost
    was marked failed with all its cells."""
    old = store.start_analysis("old.zip", "classification")
    store.finish_analysis(old, predictions=_cells(["old"]))
    first, second = (store.start_analysis(f"{name}.zip", "classification") for name in ("first", "second"))
    both_collecting = threading.Barrier(2)
    collect = store._delete_unreferenced_images

    def together(session):  # each reaches the collection before either has gone on
        with contextlib.suppress(threading.BrokenBarrierError):
            both_collecting.wait(5)
        collect(session)

    monkeypatch.setattr(store, "_delete_unreferenced_images", together)
    errors = []

    def run(action):
        try:
            action()
        except Exception as error:  # noqa: BLE001 - said by the assertion below
            errors.append(error)

    actions = [lambda: store.finish_analysis(first, predictions=_cells(["a"])),
               (lambda: store.finish_analysis(second, predictions=_cells(["b"]))) if other == "finish"
               else (lambda: store.delete_analysis(old))]
    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert store.get_analysis(first).status == "done"
    if other == "finish":
        assert store.get_analysis(second).status == "done"
    else:
        with pytest.raises(KeyError):
            store.get_analysis(old)


def test_images_left_while_another_analysis_ran_are_collected_once_it_ends(store):
    """Deleting an analysis while a colleague's is being stored keeps its images (they might be the
    ones the other run is about to refer to); they stayed in the database for good."""
    deleted = store.start_analysis("wrong patient.zip", "classification")
    store.finish_analysis(deleted, predictions=_cells(["x", "y"]))
    store.put_explanation(b"map of x", **{**EXPLANATION_KEY, "image_sha256": sha256_hex(b"image of x")})
    running = store.start_analysis("colleague.zip", "classification")
    store.delete_analysis(deleted)
    assert store.count_rows(Blob) == 3  # kept while the colleague's run is being stored
    store.finish_analysis(running, predictions=_cells(["y", "z"]))
    assert store.count_rows(Blob) == 2  # y (now the colleague's) and z; x and its map are gone
    with pytest.raises(KeyError):
        store.read_blob(sha256=sha256_hex(b"image of x"))
    assert [store.read_blob(p.blob_id) for p in store.get_analysis(running).predictions] == [b"image of y",
                                                                                           b"image of z"]


def test_a_failed_analysis_leaves_no_images_behind(store):
    """Its images are stored before its rows; a failure after that kept them with nothing referring to them."""
    kept = store.start_analysis("kept.zip", "classification")
    store.finish_analysis(kept, predictions=_cells(["kept"]))
    failing = store.start_analysis("failing.zip", "classification")
    store.put_blobs({sha256_hex(b"image of kept"): b"image of kept", sha256_hex(b"image of a"): b"image of a"})
    store.fail_analysis(failing, "RuntimeError: out of memory")
    assert store.count_rows(Blob) == 1 and store.read_blob(sha256=sha256_hex(b"image of kept")) == b"image of kept"


@pytest.mark.parametrize(("url", "message"), [
    ("garbage:secret", "is not a URL"),  # not echoed: a URL may hold a password
    ("sqlite:/relative.db", "is not a URL"),
    ("postgresql://lab@db/bloodcells", "names 'postgresql': bloodcells stores in SQLite or MySQL/MariaDB"),
    ("mysql+nosuchdriver://lab@db/bloodcells", "cannot be used: Can't load plugin"),
    # an unencoded @ and : in the password: the port was read as 'Secret99' and shown in a ValueError
    ("mysql+pymysql://lab:Tr0ub@dor:Secret99/x@127.0.0.1:3306/lab", "is not a URL (a password with @"),
    # an unencoded @ alone: "Can't connect to MySQL server on 'cret@127.0.0.1'" showed the rest of it
    ("mysql+pymysql://lab:se@cret@127.0.0.1:3306/lab", "holds more than one @"),
    ("mysql+pymysql://lab:secret@127.0.0.1:3306/", "names no database: give"),  # was an AssertionError
    ("mysql+pymysql://lab:secret@127.0.0.1/lab?sslmode=require", "PyMySQL) takes no option sslmode"),
    ("mysql+pymysql://lab:secret@127.0.0.1/lab?charset=utf-8", "knows no charset 'utf-8'"),
    ("mysql+pymysql://lab:secret@127.0.0.1/lab?connect_timeout=abc", "cannot be used: "),
    ("sqlite://", "names no database file"),  # in memory: gone with its connection, "ready" all the same
    ("sqlite:///:memory:", "names no database file"),
])
def test_a_database_url_that_cannot_be_used_is_named_not_a_traceback(url, message):
    with pytest.raises(StoreError, match=re.escape(message)) as raised:
        Store(url)
    assert "secret" not in str(raised.value) and "Secret99" not in str(raised.value) and "cret" not in str(raised.value)


def test_a_schema_upgrade_that_cannot_run_is_said_in_words(tmp_path):
    """A database of a newer bloodcells (revision 0099), or one whose migration check fails, ended `db
    upgrade` (and every page) in an alembic traceback."""
    store = Store(f"sqlite:///{tmp_path / 'newer.db'}")
    store.upgrade()
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(StoreError, match=r"schema cannot be upgraded: .*0099.*newer version of bloodcells"):
        store.upgrade()
    store.engine.dispose()

    store = Store(f"sqlite:///{tmp_path / 'orphan.db'}")
    store.upgrade("0004")
    with store.engine.begin() as connection:  # a row its foreign key does not hold (SQLite let it in)
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.execute(text("INSERT INTO predictions (analysis_id, filename, code, path, confidence, "
                                "level_confidences, needs_review) VALUES (999, 'c.png', 'NGS', 'ALL', 0.9, '{}', 0)"))
    with pytest.raises(StoreError, match="upgrade was rolled back, nothing changed: the migration left rows"):
        store.upgrade()
    assert store.current_revision() == "0004"
    store.engine.dispose()


def test_two_servers_upgrading_one_database_at_once_both_succeed(database_url, tmp_path):
    """Two app servers restarted together after an update both migrate on their first page: one failed
    with "duplicate column name: heartbeat_at" (both had read the old revision)."""
    from alembic import command

    script = tmp_path / "upgrade.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from bloodcells.store import Store
        store = Store({database_url!r})
        print("ready", flush=True)
        while not Path({str(tmp_path / "go")!r}).exists():
            time.sleep(0.001)
        store.upgrade()
    """))
    first = Store(database_url)
    first.upgrade()
    for _ in range(3):
        command.downgrade(first._alembic_config(), "0005")
        (tmp_path / "go").unlink(missing_ok=True)
        servers = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for _ in range(2)]
        assert [server.stdout.readline() for server in servers] == ["ready\n"] * 2
        (tmp_path / "go").touch()  # both upgrade at once
        failures = [server.communicate(timeout=120)[1] for server in servers]
        assert [server.returncode for server in servers] == [0, 0], failures
        assert first.current_revision() == head_revision(first)
    first.engine.dispose()


def test_a_mysql_database_that_would_fail_later_is_refused_in_words(monkeypatch):
    """A latin1 database said "Database ready", then "Incorrect string value" at the first "Łukasz"; a small
    max_allowed_packet said "MySQL server has gone away" at every image over 1 MB, for ever."""
    from conftest import MYSQL_URL, mysql_database

    from bloodcells.store import database

    if not MYSQL_URL:
        pytest.skip("BLOODCELLS_TEST_MYSQL_URL is not set")
    with mysql_database("latin1") as url:
        store = Store(url)
        name = store.engine.url.database
        with pytest.raises(StoreError, match=f"the database {name} uses the character set latin1, which cannot hold"):
            store.upgrade()
        assert store.current_revision() is None  # no table made in it
        with store.engine.begin() as connection:
            connection.execute(text(f"ALTER DATABASE `{name}` CHARACTER SET utf8mb4"))
        store.engine.dispose()  # a connection reads the database's character set when it opens
        monkeypatch.setattr(database, "MIN_PACKET_BYTES", 2**40)  # a server whose packet is smaller than needed
        with pytest.raises(StoreError, match="max_allowed_packet is .* KiB: images are stored in 1 MiB pieces"):
            store.upgrade()
        monkeypatch.undo()
        store.upgrade()
        store.engine.dispose()


def test_a_database_holding_another_programs_table_of_one_of_its_names_is_refused_untouched(database_url):
    """A MySQL database shared with a program that has a `reviews` table: the first upgrade made eleven
    tables in it, then failed with "cannot be reached or refused the operation: Table 'reviews' already
    exists" (MySQL cannot roll DDL back)."""
    store = Store(database_url)
    with store.engine.begin() as connection:
        connection.execute(text("CREATE TABLE reviews (id INTEGER PRIMARY KEY, body TEXT)"))
        connection.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY)"))
        connection.execute(text("INSERT INTO reviews (id, body) VALUES (1, 'theirs')"))
    with pytest.raises(StoreError, match="nothing changed: the database already holds tables that bloodcells did "
                                         "not make but would: reviews; give bloodcells a database of its own"):
        store.upgrade()
    assert set(inspect(store.engine).get_table_names()) == {"reviews", "users"}
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT body FROM reviews")).scalar_one() == "theirs"
    store.engine.dispose()


def test_a_detected_cells_corners_read_back_as_found_and_its_review_reaches_the_csv(database_url):
    """MySQL's single-precision FLOAT read a corner of 1235.4971 back as 1235.5: the cell stored as "f.jpg · white
    cell at (1235, 80)" was looked for as "(1236, 80)", and its reviewed type was missing from the detection CSV.
    Migration 0008 makes the corners DOUBLE; the corners stored before keep their float32 values exactly."""
    from bloodcells import report
    from bloodcells.detection import white_cell_name
    from bloodcells.store import DetectionRow, PredictionRow

    store = Store(database_url)
    store.upgrade("0007")
    corners = (1235.4971, 80.2, 1302.25, 151.75)
    old = store.start_analysis("before.jpg", "detection")
    store.finish_analysis(old, detections=[DetectionRow("f.jpg", "WBC", 0.9, corners, "MON", "ALL/MYE/MYM/MON", 0.6)])
    store.upgrade()
    assert store.get_analysis(old).detections[0].x1 == pytest.approx(1235.4971, abs=1e-4)  # as float32 kept it
    store.sync_cell_types(default_tree())
    new = store.start_analysis("field.jpg", "detection")
    store.finish_analysis(new, detections=[DetectionRow("f.jpg", "WBC", 0.9, corners, "MON", "ALL/MYE/MYM/MON", 0.6)],
                          predictions=[PredictionRow(white_cell_name("f.jpg", *corners[:2]), "MON", "ALL/MYE/MYM/MON",
                                                     0.6, {}, True)])
    stored = store.get_analysis(new)
    assert (stored.detections[0].x1, stored.detections[0].y2) == (1235.4971, 151.75)
    store.review(stored.predictions[0].id, "NGS", "dr.a", seen=None)
    [row] = report.detection_records(store.get_analysis(new))
    assert (row["code"], row["reviewed_code"]) == ("MON", "NGS")
    store.engine.dispose()
