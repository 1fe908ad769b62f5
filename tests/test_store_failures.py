"""Storage under failure: an analysis is stored whole or marked failed, never half; a database that
is unreachable or lost mid-run gives StoreError and the store recovers when it is back; model files
that are missing or corrupt are named, and the rest of the app keeps working.

MySQL/MariaDB outages are made without touching the shared server: the store reaches it through a
local TCP forwarder that the test cuts and restores, or the test KILLs the store's own connection
from a second connection.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import threading
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import make_url

from bloodcells.store import (
    Blob,
    BlobChunk,
    DatabaseUnavailable,
    Prediction,
    PredictionRow,
    Store,
    StoreError,
    open_store,
)

MYSQL_ONLY = [pytest.param("mysql", marks=pytest.mark.mysql)]


def _rows(n: int, tag: str = "") -> list[PredictionRow]:
    return [PredictionRow(filename=f"cell_{i}.png", code="NGS", path="ALL/MYE/MYM/NEU/NGS", confidence=0.8,
                          level_confidences={"ALL": 0.9}, needs_review=False,
                          content=f"{tag}image-{i}".encode() * 50) for i in range(n)]


def _predictions_of(store: Store, analysis_id: int) -> int:
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(Prediction)
                              .where(Prediction.analysis_id == analysis_id))


def _blobs_are_whole(store: Store) -> bool:
    """Every stored blob has all its bytes (a blob row never exists without its chunks)."""
    with store.session() as session:
        sizes = dict(session.execute(select(Blob.id, Blob.size)).all())
        stored = dict(session.execute(select(BlobChunk.blob_id, func.sum(func.length(BlobChunk.data)))
                                      .group_by(BlobChunk.blob_id)).all())
    return all(int(stored.get(blob_id, 0)) == size for blob_id, size in sizes.items())


# -- whole or failed -------------------------------------------------------------------------------
def test_results_breaking_midway_store_nothing_and_the_analysis_is_marked_failed(store):
    analysis_id = store.start_analysis("broken.zip", "classification")

    def results():
        yield from _rows(40)
        raise RuntimeError("the model crashed on cell 41")

    with pytest.raises(RuntimeError, match="cell 41"):
        store.finish_analysis(analysis_id, predictions=results())
    assert _predictions_of(store, analysis_id) == 0
    store.fail_analysis(analysis_id, "RuntimeError: the model crashed on cell 41")
    analysis = store.get_analysis(analysis_id)
    assert (analysis.status, analysis.error, analysis.predictions) == (
        "failed", "RuntimeError: the model crashed on cell 41", [])


def test_a_row_the_database_refuses_stores_none_of_the_analysis(store):
    analysis_id = store.start_analysis("refused.zip", "classification")
    rows = _rows(10)
    rows[7].filename = None  # NOT NULL: the database refuses the eighth row
    with pytest.raises(StoreError):
        store.finish_analysis(analysis_id, predictions=rows)
    assert _predictions_of(store, analysis_id) == 0
    assert store.get_analysis(analysis_id).status == "running"
    store.finish_analysis(analysis_id, predictions=_rows(10))  # the same store goes on
    assert _predictions_of(store, analysis_id) == 10


def test_concurrent_analyses_storing_the_same_images_all_succeed(store):
    """Two labs uploading the same cells at once: each blob is written once, no analysis fails."""
    errors, ids = [], []
    barrier = threading.Barrier(8)

    def work(k: int):
        analysis_id = store.start_analysis(f"upload-{k}.zip", "classification")
        ids.append(analysis_id)
        rows = _rows(40)
        rows = rows[k * 3:] + rows[:k * 3]  # the same images in a different order in each session
        barrier.wait()
        try:
            store.finish_analysis(analysis_id, predictions=rows)
        except StoreError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count_rows(Blob) == 40 and _blobs_are_whole(store)
    expected = {row.filename: row.content for row in _rows(40)}
    for analysis_id in ids:
        analysis = store.get_analysis(analysis_id)
        assert analysis.status == "done" and len(analysis.predictions) == 40
        for prediction in analysis.predictions[::13]:
            assert store.read_blob(blob_id=prediction.blob_id) == expected[prediction.filename]


def test_a_deadlock_storing_images_is_retried(store, monkeypatch):
    """MySQL may pick a blob transaction as a deadlock victim (1213): it is short, so it is run again."""
    from sqlalchemy.exc import OperationalError

    original, calls = store.put_blob, []

    def deadlocked_once(session, content, media_type="image"):
        calls.append(content)
        if len(calls) == 2:
            raise OperationalError("INSERT INTO blobs", {}, Exception(1213, "Deadlock found when trying to get lock"))
        return original(session, content, media_type)

    monkeypatch.setattr(store, "put_blob", deadlocked_once)
    analysis_id = store.start_analysis("deadlock.zip", "classification")
    store.finish_analysis(analysis_id, predictions=_rows(5))
    assert len(calls) == 5 + 2  # the batch ran again from its start
    assert _predictions_of(store, analysis_id) == 5 and store.count_rows(Blob) == 5 and _blobs_are_whole(store)


def test_other_database_errors_are_not_retried(store, monkeypatch):
    from sqlalchemy.exc import OperationalError

    calls = []

    def refused(session, content, media_type="image"):
        calls.append(content)
        raise OperationalError("INSERT INTO blobs", {}, Exception(1045, "Access denied"))

    monkeypatch.setattr(store, "put_blob", refused)
    analysis_id = store.start_analysis("refused.zip", "classification")
    with pytest.raises(StoreError, match="Access denied"):
        store.finish_analysis(analysis_id, predictions=_rows(3))
    assert len(calls) == 1 and _predictions_of(store, analysis_id) == 0


# -- connection lost mid-run -------------------------------------------------------------------------
@contextmanager
def _connection_lost_at(store: Store, statement: str, occurrence: int = 1):
    """Cut the store's connection just before the ``occurrence``-th statement starting with ``statement``.

    MySQL: KILL the connection from a second one. SQLite: close the connection under the driver.
    """
    seen = []

    def cut(conn, cursor, sql, parameters, context, executemany):
        if not sql.lstrip().upper().startswith(statement.upper()):
            return
        seen.append(sql)
        if len(seen) != occurrence:
            return
        dbapi = conn.connection.dbapi_connection
        if store.backend == "sqlite":
            dbapi.close()
        else:
            admin = create_engine(make_url(store.url), isolation_level="AUTOCOMMIT")
            with admin.connect() as other:
                other.execute(text(f"KILL {dbapi.thread_id()}"))
            admin.dispose()

    event.listen(store.engine, "before_cursor_execute", cut)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", cut)


def test_connection_lost_while_storing_predictions(store):
    analysis_id = store.start_analysis("lost.zip", "classification")
    with _connection_lost_at(store, "INSERT INTO predictions") as seen, pytest.raises(StoreError) as raised:
        store.finish_analysis(analysis_id, predictions=_rows(20))
    assert seen, "the cut never happened"
    assert "database" in str(raised.value)
    # Nothing half-written, and the same Store works again (the dead connection is replaced).
    assert _predictions_of(store, analysis_id) == 0
    assert store.get_analysis(analysis_id).status == "running"
    store.fail_analysis(analysis_id, str(raised.value))
    assert store.get_analysis(analysis_id).status == "failed"
    again = store.start_analysis("lost.zip (again)", "classification")
    store.finish_analysis(again, predictions=_rows(20))
    assert _predictions_of(store, again) == 20


def test_failure_that_cannot_be_recorded_is_recorded_when_the_database_is_back(store):
    """Lost again while marking the analysis failed: the next transaction records it, never 'running' for ever."""
    analysis_id = store.start_analysis("lost-twice.zip", "classification")
    with _connection_lost_at(store, "INSERT INTO predictions"), pytest.raises(StoreError):
        store.finish_analysis(analysis_id, predictions=_rows(5))
    with _connection_lost_at(store, "DELETE FROM predictions"), pytest.raises(StoreError):
        store.fail_analysis(analysis_id, "StoreError: the database was lost")
    done = store.start_analysis("finished-elsewhere.zip", "classification")
    with _connection_lost_at(store, "DELETE FROM predictions"), pytest.raises(StoreError):
        store.fail_analysis(done, "a stale failure")
    other_process = Store(store.url)
    other_process.finish_analysis(done, predictions=_rows(2))
    other_process.engine.dispose()
    analysis = store.get_analysis(analysis_id)  # this transaction first records the failures
    assert (analysis.status, analysis.error, analysis.predictions) == ("failed", "StoreError: the database was lost", [])
    finished = store.get_analysis(done)  # a failure recorded late never overrides a finished analysis
    assert (finished.status, finished.error, len(finished.predictions)) == ("done", None, 2)


def test_connection_lost_while_storing_images(store):
    """Cut in the second batch of images: the first batch stays whole, no prediction is stored."""
    analysis_id = store.start_analysis("lost-images.zip", "classification")
    with _connection_lost_at(store, "INSERT INTO blob_chunks", occurrence=40), pytest.raises(StoreError):
        store.finish_analysis(analysis_id, predictions=_rows(48))
    assert _predictions_of(store, analysis_id) == 0
    assert store.count_rows(Blob) < 48 and _blobs_are_whole(store)
    store.finish_analysis(analysis_id, predictions=_rows(48))  # retried once the database is back
    assert _predictions_of(store, analysis_id) == 48
    assert store.count_rows(Blob) == 48 and _blobs_are_whole(store)


@pytest.mark.parametrize("database_url", MYSQL_ONLY, indirect=True)
def test_idle_connections_killed_are_replaced_by_pre_ping(store):
    """A server restart kills every pooled connection; pool_pre_ping replaces them on the next use."""
    store.ping()
    with store.engine.connect() as connection:
        own = connection.execute(text("SELECT CONNECTION_ID()")).scalar()
    admin = create_engine(make_url(store.url), isolation_level="AUTOCOMMIT")
    with admin.connect() as other:
        other.execute(text(f"KILL {own}"))
    admin.dispose()
    store.ping()
    analysis_id = store.start_analysis("after-restart.zip", "classification")
    store.finish_analysis(analysis_id, predictions=_rows(3))
    assert _predictions_of(store, analysis_id) == 3


# -- unreachable, then back ------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_server_gives_store_error_naming_it():
    port = _closed_port()
    url = f"mysql+pymysql://bloodcells:secret@127.0.0.1:{port}/bloodcells"
    store = Store(url, connect_args={"connect_timeout": 3})
    for operation in (store.ping, store.upgrade, lambda: store.start_analysis("x.zip", "classification"),
                      store.list_analyses):
        with pytest.raises(StoreError) as raised:
            operation()
        message = str(raised.value)
        assert f"127.0.0.1:{port}" in message and "cannot be reached" in message
        assert isinstance(raised.value, DatabaseUnavailable)  # said as an outage on the pages
        assert "secret" not in message  # the password is never shown
    with pytest.raises(StoreError, match="cannot be reached"):
        open_store(url)


def test_sqlite_folder_that_cannot_be_created_gives_store_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the database folder should be")
    with pytest.raises(StoreError, match="database folder .*not-a-folder.* cannot be created"):
        Store(f"sqlite:///{blocker}/db/bloodcells.db")


def test_sqlite_locked_by_another_program_then_released(tmp_path):
    path = tmp_path / "locked.db"
    store = open_store(f"sqlite:///{path}")
    quick = Store(store.url, connect_args={"timeout": 0.3, "check_same_thread": False})
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            quick.start_analysis("x.zip", "classification")
    finally:
        other.execute("ROLLBACK")
        other.close()
    analysis_id = quick.start_analysis("x.zip", "classification")
    quick.finish_analysis(analysis_id, predictions=_rows(2))
    assert _predictions_of(quick, analysis_id) == 2
    quick.engine.dispose()
    store.engine.dispose()


class Outage:
    """A TCP forwarder from 127.0.0.1:<port> to the test MySQL server, cut and restored at will."""

    def __init__(self, server_url: str):
        server = make_url(server_url)
        self._unix = server.query.get("unix_socket")
        self._target = (server.host or "127.0.0.1", server.port or 3306)
        self.port = _closed_port()
        self._sockets: list[socket.socket] = []
        self._listening: socket.socket | None = None
        self._lock = threading.Lock()

    def url_for(self, database_url: str) -> str:
        url = make_url(database_url)
        return url.set(host="127.0.0.1", port=self.port,
                       query={k: v for k, v in url.query.items() if k != "unix_socket"}
                       ).render_as_string(hide_password=False)

    def restore(self) -> None:
        listening = socket.socket()
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(("127.0.0.1", self.port))
        listening.listen(16)
        listening.settimeout(0.1)
        self._listening = listening
        threading.Thread(target=self._accept, args=(listening,), daemon=True).start()

    def cut(self) -> None:
        listening, self._listening = self._listening, None
        if listening:
            listening.close()
        with self._lock:
            for sock in self._sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listening: socket.socket) -> None:
        while self._listening is listening:
            try:
                client, _ = listening.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX) if self._unix else socket.socket()
            upstream.connect(self._unix or self._target)
            with self._lock:
                self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def outage(database_url):
    forwarder = Outage(database_url)
    yield forwarder
    forwarder.cut()


@pytest.mark.parametrize("database_url", MYSQL_ONLY, indirect=True)
def test_database_down_then_back(database_url, outage):
    store = Store(outage.url_for(database_url), connect_args={"connect_timeout": 3})
    with pytest.raises(StoreError, match="cannot be reached"):
        store.upgrade()  # the server is down when the app starts
    outage.restore()
    store.upgrade()
    analysis_id = store.start_analysis("during-outage.zip", "classification")
    outage.cut()  # lost between start and finish of the analysis
    with pytest.raises(StoreError, match="cannot be reached"):
        store.finish_analysis(analysis_id, predictions=_rows(10))
    with pytest.raises(StoreError):
        store.fail_analysis(analysis_id, "StoreError: lost")
    outage.restore()
    analysis = store.get_analysis(analysis_id)  # the same Store recovers, and records the failure first
    assert (analysis.status, analysis.error, analysis.predictions) == ("failed", "StoreError: lost", [])
    again = store.start_analysis("after-outage.zip", "classification")
    store.finish_analysis(again, predictions=_rows(10))
    assert store.get_analysis(again).status == "done" and _predictions_of(store, again) == 10
    store.engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("database_url", MYSQL_ONLY, indirect=True)
def test_app_says_the_database_is_down_and_recovers(database_url, outage, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BLOODCELLS_DATABASE_URL", outage.url_for(database_url))
    app = AppTest.from_file(str(Path(__file__).parents[1] / "app.py"), default_timeout=60)
    app.run()
    assert not app.exception
    assert any("database is not available" in error.value for error in app.error)
    outage.restore()
    app.run()
    assert not app.exception and not app.error
    assert any(f"127.0.0.1:{outage.port}" in text.value for text in app.markdown)


# -- model files -------------------------------------------------------------------------------------
@pytest.fixture
def models_copy(trained_models_dir, tmp_path):
    """A private copy of the tiny trained tree, laid out as BLOODCELLS_MODELS_DIR expects."""
    target = tmp_path / "models" / "classifier" / "default"
    shutil.copytree(trained_models_dir, target)
    return target


def _weights(models_dir: Path) -> list[Path]:
    return sorted(models_dir.glob("*.safetensors"))


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped", "truncated", "missing", "metadata", "manifest"])
def test_damaged_model_file_is_named(models_copy, damage):
    from bloodcells.classify import ModelFileError, TreeClassifier

    weights = _weights(models_copy)[-1]
    named = {"flipped": weights, "truncated": weights, "missing": weights,
             "metadata": weights.with_suffix(".json"), "manifest": models_copy / "classifier.json"}[damage]
    if damage == "flipped":
        _flip_a_byte(weights)
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "missing":
        weights.unlink()
    else:
        named.write_text("{ not json")
    with pytest.raises(ModelFileError) as raised:
        TreeClassifier.load(models_copy)
    assert str(named) in str(raised.value)


def test_weights_that_match_their_hash_but_do_not_load_are_named(models_copy):
    """sha256 updated by hand to match garbage: the load itself still names the file."""
    import json

    from bloodcells.classify import ModelFileError, TreeClassifier
    from bloodcells.store import sha256_hex

    weights = _weights(models_copy)[0]
    weights.write_bytes(b"not a safetensors file")
    metadata_file = weights.with_suffix(".json")
    metadata = json.loads(metadata_file.read_text())
    metadata["sha256"] = sha256_hex(weights.read_bytes())
    metadata_file.write_text(json.dumps(metadata))
    with pytest.raises(ModelFileError, match=str(weights)):
        TreeClassifier.load(models_copy)


def test_model_cache_does_not_keep_a_broken_tree_and_recovers(models_copy):
    from bloodcells.classify import ModelFileError, load_classifier

    weights = _weights(models_copy)[0]
    good = weights.read_bytes()
    _flip_a_byte(weights)
    with pytest.raises(ModelFileError, match=weights.name):
        load_classifier(models_copy)
    weights.write_bytes(good)
    assert load_classifier(models_copy).versions()


def test_cli_names_a_corrupt_model_file_in_one_line(models_copy, tmp_path, capsys):
    from bloodcells.cli import main
    from bloodcells.synthetic import cell_image

    weights = _weights(models_copy)[0]
    _flip_a_byte(weights)
    image = tmp_path / "cell.png"
    cell_image("NGS", 0, 32).save(image)
    assert main(["classify", str(image), "--models", str(models_copy), "--no-store"]) == 2
    error = capsys.readouterr().err
    assert str(weights) in error and "Traceback" not in error and len(error.strip().splitlines()) == 1


@pytest.mark.slow
def test_pages_keep_working_with_a_corrupt_classifier(models_copy, monkeypatch):
    """The Classification page names the corrupt file; Home and History still run."""
    from streamlit.testing.v1 import AppTest

    weights = _weights(models_copy)[0]
    _flip_a_byte(weights)
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(models_copy.parents[1]))
    def page(path: str | None = None) -> AppTest:
        app = AppTest.from_file(str(Path(__file__).parents[1] / "app.py"), default_timeout=60)
        if path:
            app.switch_page(path)
        return app.run()

    classification = page("pages/2_Classification.py")
    assert not classification.exception
    assert any(weights.name in warning.value for warning in classification.warning)
    for other in (page(), page("pages/5_History.py")):
        assert not other.exception and not other.error


def test_a_full_database_is_said_in_words_and_keeps_what_was_stored(tmp_path):
    """SQLite on a full disk said the database "cannot be reached or refused the operation"."""
    from bloodcells.store import PredictionRow, StoreError, open_store

    store = open_store(f"sqlite:///{tmp_path / 'full.db'}")
    kept = store.start_analysis("kept.zip", "classification")
    store.finish_analysis(kept, predictions=[PredictionRow("c.png", "LYT", "ALL/LYM/LYT", 0.9, {}, False, b"cell")])
    pages = store.engine.connect().exec_driver_sql("PRAGMA page_count").scalar()
    store.engine.dispose()
    # SQLite's own size limit answers as a full disk does (SQLITE_FULL)
    event.listen(store.engine, "connect", lambda connection, _record: connection.execute(
        f"PRAGMA max_page_count = {pages + 2}"))
    big = store.start_analysis("big.zip", "classification")
    with pytest.raises(StoreError, match=r"is full: the disk it is on has no space left \(database or disk is full\); "
                                         "free space there. Nothing stored before was lost"):
        store.finish_analysis(big, predictions=[PredictionRow(f"c{n}.png", "LYT", "ALL/LYM/LYT", 0.9, {}, False,
                                                              bytes([n]) * 100_000) for n in range(20)])
    assert [p.filename for p in store.get_analysis(kept).predictions] == ["c.png"]
    store.engine.dispose()


@pytest.mark.parametrize(("code", "outage"), [(1213, False), (1205, False), (2003, True), (2013, True)])
def test_a_deadlock_or_lock_timeout_is_not_said_as_an_outage(tmp_path, code, outage):
    """MySQL's deadlock (1213) and lock wait timeout (1205) came out as "the database is not available ... try
    again when it is back", for a server that was up and answering."""
    import pymysql
    from sqlalchemy.exc import OperationalError

    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(StoreError) as raised, store._translate_errors():
        raise OperationalError("UPDATE analyses ...", {}, pymysql.err.OperationalError(code, "the server's words"))
    assert isinstance(raised.value, DatabaseUnavailable) == outage
    assert outage or str(raised.value).startswith("the database was busy with another user's change")
