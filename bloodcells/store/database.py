"""The Store: engine, transactions, schema migrations and the operations the app needs."""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path

from sqlalchemy import create_engine, delete, event, func, or_, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from ..clock import stamp
from ..taxonomy import Tree
from . import schema
from .blobs import BlobStore
from .errors import MigrationCheckError, StoreError
from .lineage import LineageStore
from .reviews import DIRECTION_CONTROLS, AnalysisLocked, ReviewStore, signed_by
from .rows import AnalysisRun, DetectionRow, PredictionRow, ResultCounts, sha256_hex
from .schema import (
    SIGNED,
    Analysis,
    CellType,
    Detection,
    Model,
    ModelCellType,
    ModelType,
    Prediction,
    Review,
    Signoff,
    utcnow,
)
from .search import fold, folded, register_fold

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SUPPORTED_BACKENDS = ("sqlite", "mysql", "mariadb")
_LARGEST_ID = 2**63 - 1  # a BIGINT; SQLite's INTEGER holds the same
EXAMPLE_URLS = "sqlite:////srv/bloodcells/bloodcells.db or mysql+pymysql://user:password@host/bloodcells"
_BLOB_BATCH = 32  # images per blob transaction in finish_analysis


class Store(BlobStore, ReviewStore, LineageStore):
    """All database access. ``Store(url)``; ``upgrade()`` creates or migrates the schema; reviews and
    sign-offs come from ``ReviewStore``."""

    def __init__(self, url: str, create: bool = True, **engine_options):
        """``create=False``: an SQLite file that is not there is an error, not a new empty database."""
        self.url = url
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):  # the text itself is not echoed: it may hold a password
            raise StoreError("the database URL (BLOODCELLS_DATABASE_URL) is not a URL (a password with @, /, : "
                             f"or % in it must be URL-encoded): give one such as {EXAMPLE_URLS}") from None
        if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
            raise StoreError(f"the database URL names {parsed.get_backend_name()!r}: bloodcells stores in SQLite "
                             f"or MySQL/MariaDB ({EXAMPLE_URLS})")
        if parsed.database in (None, "", ":memory:"):  # SQLite's in-memory one is gone with its connection
            raise StoreError(f"the database URL names no database {'file' if parsed.get_backend_name() == 'sqlite' else ''}"
                             f": give one such as {EXAMPLE_URLS}")
        if parsed.get_backend_name() == "sqlite":
            if not create and not Path(parsed.database).is_file():
                raise StoreError(f"no database at {parsed.database}")
            folder = Path(parsed.database).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(f"the database folder {folder} cannot be created "
                                 f"({error.strerror or error})") from error
        options = {"pool_pre_ping": True, **engine_options}
        if parsed.get_backend_name() == "sqlite":
            options.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        try:
            self.engine: Engine = create_engine(url, **options)
            _check_driver_options(self.engine, parsed)
        except (ArgumentError, ImportError, ValueError) as error:  # NoSuchModuleError is an ArgumentError
            raise StoreError(f"the database URL cannot be used: {_first_line(error)}") from error
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _prepare_sqlite)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Failures that could not be recorded because the database was lost: written by the next
        # session once it is back, so that no analysis stays "running" for ever.
        self._unrecorded_failures: dict[int, str] = {}
        self._failures_lock = threading.Lock()

    @property
    def display_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    # -- schema --------------------------------------------------------------------------
    def upgrade(self, revision: str = "head") -> None:
        """Create or upgrade the schema with Alembic."""
        from alembic import command
        from alembic.util import CommandError

        with self._translate_errors():
            try:
                command.upgrade(self._alembic_config(), revision)
            except CommandError as error:  # e.g. a revision of a newer bloodcells than this one
                raise StoreError(f"the database's schema cannot be upgraded: {error} (was it made by a newer "
                                 "version of bloodcells?)") from error
            except MigrationCheckError as error:
                raise StoreError(f"the schema upgrade was rolled back, nothing changed: {error}") from error

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self._translate_errors(), self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def _alembic_config(self):
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["engine"] = self.engine
        return config

    def sync_cell_types(self, tree: Tree) -> None:
        """Make the cell_types table hold every node of ``tree`` (idempotent)."""
        with self.session() as session:
            existing = {c.code: c for c in session.scalars(select(CellType))}
            for node in tree.root.walk():
                row = existing.get(node.code)
                if row is None:
                    row = existing[node.code] = CellType(code=node.code, name=node.name)
                    session.add(row)
                row.name = node.name
                row.parent = existing[node.parent.code] if node.parent else None

    # -- transactions --------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        if self._unrecorded_failures:
            self._record_failures()
        with self._translate_errors(), self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def _translate_errors(self):
        try:
            yield
        except OperationalError as error:
            if _disk_full(error.orig):
                raise StoreError(f"the database at {self.display_url} is full: the disk it is on has no space "
                                 f"left ({_first_line(error.orig)}); free space there. Nothing stored before was "
                                 "lost") from error
            raise StoreError(f"the database at {self.display_url} cannot be reached or refused "
                             f"the operation: {_first_line(error.orig)}") from error
        except DBAPIError as error:
            if "max_allowed_packet" in str(error.orig):
                raise StoreError("the database refused a value larger than its max_allowed_packet; "
                                 "raise max_allowed_packet on the server") from error
            raise StoreError(f"database error: {_first_line(error.orig)}") from error

    def ping(self) -> None:
        """Raise StoreError when the database cannot be reached."""
        with self.session() as session:
            session.execute(select(1))

    # -- models --------------------------------------------------------------------------
    def register_model(self, *, kind: str, architecture: str, weights_path: str, sha256: str,
                       metrics: dict, tree: str | None = None, node_code: str | None = None,
                       class_codes: Iterable[str] = ()) -> int:
        """Record trained weights (idempotent by sha256); the newest per node is active."""
        register = partial(self._register_model, kind, architecture, weights_path, sha256, metrics, tree, node_code,
                           list(class_codes))
        try:
            return register()
        except StoreError as error:
            if not isinstance(error.__cause__, IntegrityError):
                raise
        # Another writer stored the same weights or architecture between this one's read and its write
        # (two people accepting trees at once): found this time.
        return register()

    def _register_model(self, kind, architecture, weights_path, sha256, metrics, tree, node_code, class_codes) -> int:
        with self.session() as session:
            existing = session.scalar(select(Model).where(Model.sha256 == sha256))
            if existing is not None:
                return existing.id
            model_type = session.scalar(select(ModelType).where(ModelType.architecture == architecture))
            if model_type is None:
                model_type = ModelType(architecture=architecture, family=kind)
                session.add(model_type)
            for older in session.scalars(select(Model).where(Model.kind == kind, Model.tree == tree,
                                                             Model.node_code == node_code)):
                older.active = False
            model = Model(kind=kind, tree=tree, node_code=node_code, model_type=model_type,
                          weights_path=weights_path, sha256=sha256, metrics=metrics)
            session.add(model)
            session.flush()
            cell_types = {c.code: c.id for c in session.scalars(select(CellType))}
            for position, code in enumerate(class_codes):
                if code in cell_types:
                    session.add(ModelCellType(model_id=model.id, cell_type_id=cell_types[code],
                                              position=position))
            return model.id

    def list_models(self, kind: str | None = None, active_only: bool = True) -> list[Model]:
        with self.session() as session:
            query = select(Model).options(selectinload(Model.model_type)).order_by(Model.id)
            if kind:
                query = query.where(Model.kind == kind)
            if active_only:
                query = query.where(Model.active.is_(True))
            return list(session.scalars(query))

    # -- analyses ------------------------------------------------------------------------
    def start_analysis(self, name: str, kind: str, model_versions: dict | None = None) -> int:
        """Record that an analysis began (status ``running``, a first sign of life) and return its id."""
        with self.session() as session:
            # one form of its characters (NFC): a name from a Mac's zip comes decomposed, and MySQL finds it
            # only in the form people type
            now = utcnow()
            analysis = Analysis(name=_fitted(_one_line(unicodedata.normalize("NFC", name)), Analysis.name), kind=kind,
                                status="running",
                                model_versions=model_versions or {}, created_at=now, heartbeat_at=now)
            session.add(analysis)
            session.flush()
            return analysis.id

    @contextmanager
    def analysis(self, name: str, kind: str, model_versions: dict | None = None) -> Iterator[AnalysisRun]:
        """Record the analysis the block runs: ``running`` from the start, with a sign of life every
        ``HEARTBEAT`` while it runs; ``done`` with the run's results when the block ends (all of them
        or none); ``failed`` with the error on any exception, cancellation and Ctrl-C included, so that
        none stays ``running``. The error is re-raised. A process killed outside Python's reach
        (SIGKILL, a power cut) falls silent: its analysis counts as interrupted once ``SILENT_AFTER``
        has passed, and is marked failed the next time analyses are listed."""
        run = AnalysisRun(self.start_analysis(name, kind, model_versions))
        stop = threading.Event()
        heartbeat = threading.Thread(target=self._beat, args=(run.id, stop), daemon=True,
                                     name=f"bloodcells analysis {run.id} heartbeat")
        heartbeat.start()
        try:
            yield run
            self.finish_analysis(run.id, predictions=run.predictions, detections=run.detections,
                                 summary=run.summary)
        except BaseException as error:
            self.fail_analysis(run.id, f"{type(error).__name__}: {error}")
            raise
        finally:
            stop.set()
            heartbeat.join()

    def _beat(self, analysis_id: int, stop: threading.Event) -> None:
        """Record a sign of life of a running analysis every HEARTBEAT until ``stop`` is set. A beat the
        database does not take (unreachable, locked by a long write) is tried again at the next one."""
        while not stop.wait(schema.HEARTBEAT.total_seconds()):
            try:
                with self._translate_errors(), self._sessions() as session, session.begin():
                    session.execute(update(Analysis).where(Analysis.id == analysis_id, Analysis.status == "running")
                                    .values(heartbeat_at=utcnow()))
            except StoreError:
                continue

    def _fail_interrupted(self) -> None:
        """Mark failed every analysis left ``running`` by a process that fell silent."""
        with self._translate_errors(), self._sessions() as session:
            silent = list(session.execute(select(Analysis.id, Analysis.heartbeat_at, Analysis.created_at).where(
                Analysis.status == "running", ~Analysis.being_stored)))
        for analysis_id, heartbeat_at, created_at in silent:
            self._fail(analysis_id, "interrupted: the process storing it stopped (its last sign of life: "
                       f"{stamp(heartbeat_at or created_at)}); nothing of it was stored", only_running=True)

    def finish_analysis(self, analysis_id: int, *, predictions: Iterable[PredictionRow] = (),
                        detections: Iterable[DetectionRow] = (), summary: dict | None = None) -> None:
        """Store every result of an analysis and mark it done: all its predictions or none.

        ``predictions`` are read once, as a stream. Their images go first, a batch at a time, in
        transactions of their own (a blob is content-addressed and may be shared, so one stored
        early is never half of anything); then every prediction, detection and the status in one
        transaction. Only the small rows are held in memory meanwhile, never the images.
        """
        rows: list[tuple[PredictionRow, str | None]] = []
        blob_ids: dict[str, int] = {}
        pending: dict[str, bytes] = {}
        for row in predictions:
            digest = None
            if row.content is not None:
                digest = sha256_hex(row.content)
                if digest not in blob_ids:
                    pending[digest] = row.content
                row = replace(row, content=None)
            rows.append((row, digest))
            if len(pending) >= _BLOB_BATCH:
                blob_ids.update(self.put_blobs(pending))
                pending = {}
        if pending:
            blob_ids.update(self.put_blobs(pending))
        with self.session() as session:
            analysis = session.get(Analysis, analysis_id)
            if analysis is None:
                raise StoreError(f"analysis {analysis_id} does not exist (deleted meanwhile?)")
            for row, digest in rows:
                session.add(Prediction(analysis_id=analysis_id, blob_id=blob_ids[digest] if digest else None,
                                       filename=_fitted(row.filename, Prediction.filename), code=row.code, path=row.path,
                                       confidence=float(row.confidence), level_confidences=row.level_confidences,
                                       needs_review=bool(row.needs_review)))
            for row in detections:
                x1, y1, x2, y2 = (float(v) for v in row.box)
                session.add(Detection(analysis_id=analysis_id, filename=_fitted(row.filename, Detection.filename),
                                      class_code=row.class_code, score=float(row.score),
                                      x1=x1, y1=y1, x2=x2, y2=y2, code=row.code, path=row.path,
                                      sub_confidence=row.sub_confidence))
            analysis.status = "done"
            analysis.summary = summary or {}
            analysis.finished_at = utcnow()
            session.flush()  # this analysis no longer counts as being stored
            self._delete_unreferenced_images(session)

    def fail_analysis(self, analysis_id: int, error: str) -> None:
        """Mark an analysis failed with its error; it keeps no partial results.

        When the database cannot be reached, the failure is kept and written by this Store's next
        transaction once it is back (and StoreError is raised as usual).
        """
        try:
            self._fail(analysis_id, error)
        except StoreError:
            with self._failures_lock:
                self._unrecorded_failures[analysis_id] = error
            raise

    def _fail(self, analysis_id: int, error: str, only_running: bool = False) -> None:
        with self._translate_errors(), self._sessions() as session, session.begin():
            analysis = session.get(Analysis, analysis_id)
            if analysis is not None and (analysis.status == "running" or not only_running):
                session.execute(delete(Prediction).where(Prediction.analysis_id == analysis_id))
                session.execute(delete(Detection).where(Detection.analysis_id == analysis_id))
                analysis.status, analysis.error, analysis.finished_at = "failed", error[:4000], utcnow()
                session.flush()
                self._delete_unreferenced_images(session)

    def _record_failures(self) -> None:
        with self._failures_lock:
            pending, self._unrecorded_failures = self._unrecorded_failures, {}
        for analysis_id, error in pending.items():
            try:
                self._fail(analysis_id, error, only_running=True)  # unless finished meanwhile
            except StoreError:  # still unreachable: kept for the next transaction
                with self._failures_lock:
                    self._unrecorded_failures.setdefault(analysis_id, error)

    def list_analyses(self, kind: str | None = None, limit: int = 200, search: str = "", reviewed: bool = False,
                      done: bool = False, made: tuple[datetime | None, datetime | None] = (None, None),
                      also: int | None = None) -> list[Analysis]:
        """The newest analyses, at most ``limit``, of ``kind``; ``reviewed``: only those with a reviewed
        cell; ``done``: only finished ones; ``made``: begun from the first (naive UTC) time to before
        the second. ``search`` keeps those whose name contains it, and the one whose id it is (``#12``
        or ``12``): how older analyses are found. ``also``: an analysis listed last when it meets the
        conditions but is older than the newest ``limit`` (the one a page has open)."""
        conditions = _analysis_conditions(kind, search, reviewed, done, made)
        self._fail_interrupted()
        with self.session() as session:
            analyses = list(session.scalars(select(Analysis).where(*conditions).order_by(Analysis.id.desc())
                                            .limit(limit)))
            if also is not None and also not in {a.id for a in analyses}:
                analyses += session.scalars(select(Analysis).where(Analysis.id == also, *conditions))
            return analyses

    def count_analyses(self, kind: str | None = None, search: str = "", reviewed: bool = False, done: bool = False,
                       made: tuple[datetime | None, datetime | None] = (None, None)) -> int:
        """How many analyses ``list_analyses`` would list without a limit."""
        with self.session() as session:
            return session.scalar(select(func.count()).select_from(Analysis).where(
                *_analysis_conditions(kind, search, reviewed, done, made)))

    def analysis_span(self, done: bool = True) -> tuple[datetime, datetime] | None:
        """When the first and the last (finished) analysis began (naive UTC), or None when there is none."""
        with self.session() as session:
            first, last = session.execute(select(func.min(Analysis.created_at), func.max(Analysis.created_at))
                                          .where(*_analysis_conditions(done=done))).one()
        return None if first is None else (first, last)

    def get_analysis(self, analysis_id: int) -> Analysis:
        """An analysis with its predictions (and their reviews), detections and sign-offs loaded."""
        with self.session() as session:
            analysis = session.scalar(
                select(Analysis).where(Analysis.id == analysis_id).options(
                    selectinload(Analysis.predictions).selectinload(Prediction.reviews),
                    selectinload(Analysis.detections), selectinload(Analysis.signoffs)))
            if analysis is None:
                raise KeyError(f"no analysis {analysis_id}")
            return analysis

    def delete_analysis(self, analysis_id: int) -> None:
        """Delete an analysis with its results, reviews and sign-offs. Refused (AnalysisLocked) while
        it is signed off (a signed differential is the lab's record; reopen it first) and while it is
        being stored (its run would fail at the end, its images left behind)."""
        with self.locked(analysis_id) as (session, last):
            if last is not None and last.action == SIGNED:
                raise AnalysisLocked(f"analysis #{analysis_id} was signed off by {signed_by(last)}: reopen it to "
                                     "delete it")
            analysis = session.get(Analysis, analysis_id)
            if analysis is not None and analysis.being_stored:
                raise AnalysisLocked(f"analysis #{analysis_id} is still running (started {stamp(analysis.created_at)}): "
                                     "delete it once it has finished or failed")
            prediction_ids = select(Prediction.id).where(Prediction.analysis_id == analysis_id)
            session.execute(delete(Review).where(Review.prediction_id.in_(prediction_ids)))
            session.execute(delete(Signoff).where(Signoff.analysis_id == analysis_id))
            session.execute(delete(Prediction).where(Prediction.analysis_id == analysis_id))
            session.execute(delete(Detection).where(Detection.analysis_id == analysis_id))
            session.execute(delete(Analysis).where(Analysis.id == analysis_id))
            self._delete_unreferenced_images(session)

    def result_counts(self, analysis_ids: Iterable[int]) -> dict[int, ResultCounts]:
        """What each of ``analysis_ids`` holds (zeros for one with no results), counted in the database."""
        ids = list(analysis_ids)
        counts = {analysis_id: ResultCounts() for analysis_id in ids}
        by_analysis = {
            "cells": select(Prediction.analysis_id, func.count()).where(Prediction.analysis_id.in_(ids)),
            "needs_review": select(Prediction.analysis_id, func.count()).where(
                Prediction.analysis_id.in_(ids), Prediction.needs_review.is_(True), Prediction.reviewed_code.is_(None)),
            "reviewed": select(Prediction.analysis_id, func.count()).where(
                Prediction.analysis_id.in_(ids), Prediction.reviewed_code.is_not(None)),
            "amendments": select(Prediction.analysis_id, func.count()).join(Review, Review.prediction_id == Prediction.id)
            .where(Prediction.analysis_id.in_(ids), Review.reopening_id.is_not(None)),
            "boxes": select(Detection.analysis_id, func.count()).where(Detection.analysis_id.in_(ids)),
        }
        with self.session() as session:
            for name, query in by_analysis.items():
                for analysis_id, count in session.execute(query.group_by(query.selected_columns[0])):
                    setattr(counts[analysis_id], name, count)
        return counts

    def count_rows(self, table) -> int:
        with self.session() as session:
            return session.scalar(select(func.count()).select_from(table))


def _analysis_conditions(kind: str | None = None, search: str = "", reviewed: bool = False, done: bool = False,
                         made: tuple[datetime | None, datetime | None] = (None, None)) -> list:
    """The WHERE conditions of ``Store.list_analyses`` and ``count_analyses``."""
    conditions = []
    if kind:
        conditions.append(Analysis.kind == kind)
    if reviewed:
        conditions.append(Analysis.predictions.any(Prediction.reviewed_code.is_not(None)))
    if done:
        conditions.append(Analysis.status == "done")
    if made[0] is not None:
        conditions.append(Analysis.created_at >= made[0])
    if made[1] is not None:
        conditions.append(Analysis.created_at < made[1])
    if search := search.strip():
        named = folded(Analysis.name).contains(fold(search), autoescape=True)
        number = search.removeprefix("#")
        # a specimen number pasted as the search is no id when it is past what an id column holds
        is_id = number.isdecimal() and int(number) <= _LARGEST_ID
        conditions.append(or_(named, Analysis.id == int(number)) if is_id else named)
    return conditions


def _check_driver_options(engine: Engine, parsed) -> None:
    """Refuse (ValueError) URL options the MySQL driver does not take: PyMySQL raised TypeError for an
    unknown one (``?sslmode=require``, a PostgreSQL option) and AttributeError for an unknown charset,
    at the first connection, as a traceback on every page."""
    if engine.dialect.name != "mysql":
        return
    import inspect

    from pymysql.charset import charset_by_name

    _, options = engine.dialect.create_connect_args(parsed)  # converts the values: ValueError when it cannot
    taken = inspect.signature(engine.dialect.loaded_dbapi.connect).parameters
    if unknown := sorted(set(options) - set(taken)):
        raise ValueError(f"the MySQL driver (PyMySQL) takes no option {', '.join(unknown)}")
    if "charset" in options and charset_by_name(options["charset"]) is None:
        raise ValueError(f"the MySQL driver (PyMySQL) knows no charset {options['charset']!r} (use utf8mb4)")


# MySQL/MariaDB: "The table ... is full" (1114), "Disk full" (1021), a write failing with errno 28
_MYSQL_FULL = (1114, 1021)


def _disk_full(error: BaseException) -> bool:
    """Whether the database refused because its disk (or its size limit) is full."""
    code = error.args[0] if error.args else None
    text = str(error)
    return code in _MYSQL_FULL or "database or disk is full" in text or "No space left on device" in text \
        or "Errcode: 28" in text


def _one_line(name: str) -> str:
    """An upload's name on one line of the pages and the report: its control characters (a tab or a
    line break in a file name) as spaces, direction overrides dropped (U+202E turned the date after
    the name around)."""
    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in name if c not in DIRECTION_CONTROLS)


def _fitted(text: str | None, column) -> str | None:
    """``text`` shortened in its middle to the length of ``column`` (a String column), keeping its start
    and its end (a file's type): MySQL refuses a longer value ("Data too long"), SQLite keeps it, and
    a name from a deep zip path or a long upload must not fail the whole analysis on either."""
    length = column.type.length
    if text is None or len(text) <= length:  # None: the database says what is wrong with it
        return text
    tail = (length - 1) // 2
    return f"{text[:length - 1 - tail]}…{text[len(text) - tail:]}"


def _prepare_sqlite(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
    register_fold(dbapi_connection)


def _first_line(error: BaseException | None) -> str:
    return str(error).strip().splitlines()[0] if error and str(error).strip() else type(error).__name__


def record_analysis(store: Store | None, name: str, kind: str,
                    model_versions: dict | None = None) -> AbstractContextManager[AnalysisRun]:
    """``store.analysis(...)``, or without a store a run that records nothing (its ``id`` is None)."""
    return store.analysis(name, kind, model_versions) if store is not None else nullcontext(AnalysisRun(None))


def open_store(url: str | None = None, upgrade: bool = True) -> Store:
    """The store at ``url`` (default: BLOODCELLS_DATABASE_URL or the embedded SQLite file); without
    ``upgrade`` (to inspect it), a database file that is not there is an error rather than created."""
    from ..settings import settings

    store = Store(url or settings().database_url, create=upgrade)
    if upgrade:
        store.upgrade()
    return store
