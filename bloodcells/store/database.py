"""The Store: engine, transactions, schema migrations and the operations the app needs."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from functools import partial
from pathlib import Path

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from ..taxonomy import Tree
from .analyses import AnalysisStore
from .blobs import BlobStore
from .errors import DatabaseUnavailable, MigrationCheckError, NoDatabase, StoreError
from .lineage import LineageStore
from .reviews import ReviewStore
from .rows import AnalysisRun
from .schema import CHUNK_SIZE, CellType, Model, ModelCellType, ModelType
from .search import register_fold

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# a piece of an image (CHUNK_SIZE) goes in one statement, escaped: room for it twice over and the rest
MIN_PACKET_BYTES = 4 * CHUNK_SIZE
SUPPORTED_BACKENDS = ("sqlite", "mysql", "mariadb")
EXAMPLE_URLS = "sqlite:////srv/bloodcells/bloodcells.db or mysql+pymysql://user:password@host/bloodcells"


class Store(AnalysisStore, BlobStore, ReviewStore, LineageStore):
    """All database access. ``Store(url)``; ``upgrade()`` creates or migrates the schema; analyses come
    from ``AnalysisStore``, reviews and sign-offs from ``ReviewStore``, images from ``BlobStore``, model
    versions' lineage from ``LineageStore``."""

    def __init__(self, url: str, create: bool = True, **engine_options):
        """``create=False``: an SQLite file that is not there is an error, not a new empty database."""
        self.url = url
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):  # the text itself is not echoed: it may hold a password
            raise StoreError("the database URL (BLOODCELLS_DATABASE_URL) is not a URL (a password with @, /, : "
                             f"or % in it must be URL-encoded): give one such as {EXAMPLE_URLS}") from None
        if "@" in (parsed.host or ""):  # the password's @ taken for the host's: the rest of it shown as a host
            raise StoreError("the database URL (BLOODCELLS_DATABASE_URL) holds more than one @: a password with @, "
                             f"/, : or % in it must be URL-encoded (@ as %40): give one such as {EXAMPLE_URLS}")
        if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
            raise StoreError(f"the database URL names {parsed.get_backend_name()!r}: bloodcells stores in SQLite "
                             f"or MySQL/MariaDB ({EXAMPLE_URLS})")
        if parsed.database in (None, "", ":memory:"):  # SQLite's in-memory one is gone with its connection
            raise StoreError(f"the database URL names no database{' file' if parsed.get_backend_name() == 'sqlite' else ''}"
                             f": give one such as {EXAMPLE_URLS}")
        if parsed.get_backend_name() == "sqlite":
            if not create and not Path(parsed.database).is_file():
                raise NoDatabase(f"no database at {parsed.database}: nothing was ever stored there (is it the file "
                                 "the app uses? BLOODCELLS_DATABASE_URL, else BLOODCELLS_DATA_DIR, names it)")
            folder = Path(parsed.database).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(f"the database folder {folder} cannot be created "
                                 f"({error.strerror or error})") from error
            if not os.access(folder, os.W_OK):  # it said "cannot be reached ...: unable to open database file"
                raise StoreError(f"the database folder {folder} is not writable by this user: SQLite writes the "
                                 "database and its -wal and -shm files there (a read-only mount? give "
                                 "BLOODCELLS_DATA_DIR a folder it may write in)")
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
            self._check_mysql_server()
            try:
                command.upgrade(self._alembic_config(), revision)
            except CommandError as error:  # e.g. a revision of a newer bloodcells than this one
                raise StoreError(f"the database's schema cannot be upgraded: {error} (was it made by a newer "
                                 "version of bloodcells?)") from error
            except MigrationCheckError as error:
                raise StoreError(f"the schema upgrade was rolled back, nothing changed: {error}") from error

    def _check_mysql_server(self) -> None:
        """Refuse, in words, a MySQL database that would fail later with a misleading error: one whose
        character set cannot hold "Łukasz" or "王" (latin1, MariaDB's default before 11.6: "Incorrect string
        value" at the first such name), or a server whose max_allowed_packet is smaller than an image's
        piece needs ("MySQL server has gone away" at the first image over about 1 MB, for ever)."""
        if self.backend not in ("mysql", "mariadb"):
            return
        with self.engine.connect() as connection:
            charset, packet = connection.exec_driver_sql(
                "SELECT @@character_set_database, @@max_allowed_packet").one()
        name = make_url(self.url).database
        if charset != "utf8mb4":
            raise StoreError(f"the database {name} uses the character set {charset}, which cannot hold names "
                             f"such as Łukasz or 王: make it utf8mb4 (CREATE DATABASE {name} CHARACTER SET utf8mb4, "
                             f"or ALTER DATABASE {name} CHARACTER SET utf8mb4 before its tables are made)")
        if packet < MIN_PACKET_BYTES:
            raise StoreError(f"the MySQL server's max_allowed_packet is {packet // 1024} KiB: images are stored in "
                             f"{CHUNK_SIZE // 2**20} MiB pieces; raise it to at least {MIN_PACKET_BYTES // 2**20} MB "
                             "(e.g. --max-allowed-packet=64M, as docker-compose.yml does)")

    def backup(self, target: str | Path) -> Path:
        """A copy of an SQLite database in the new file ``target``, made with SQLite's online backup: complete
        while the app writes (a copy of the file alone left the newest changes behind in its ``-wal`` file: 4 KB
        and "(empty database)"). MySQL/MariaDB: refused, naming mysqldump."""
        import sqlite3

        if self.backend != "sqlite":
            raise StoreError(f"{self.display_url}: back up a MySQL/MariaDB database with mysqldump "
                             "--single-transaction (docs/operations.md)")
        target = Path(target)
        if target.exists() or target.with_name(target.name + "-wal").exists():
            raise StoreError(f"{target}: already there; give a new file (a backup never overwrites one)")
        if not target.parent.is_dir():
            raise StoreError(f"{target.parent}: no such folder")
        with self._translate_errors():
            source = self.engine.raw_connection()
        try:
            with closing(sqlite3.connect(target)) as copy:
                source.driver_connection.backup(copy)
                copy.execute("PRAGMA journal_mode=DELETE")  # one file, to keep or copy as it is
        except sqlite3.Error as error:  # the target's folder not writable, its disk full...
            target.unlink(missing_ok=True)
            raise StoreError(f"{target}: the backup could not be written ({error})") from error
        finally:
            source.close()
        return target

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
        except DBAPIError as error:  # OperationalError among them
            if _disk_full(error.orig):
                raise DatabaseUnavailable(f"the database at {self.display_url} is full: the disk it is on has no space "
                                 f"left ({_first_line(error.orig)}); free space there. Nothing stored before was "
                                 "lost") from error
            if isinstance(error, OperationalError) and getattr(error.orig, "args", (None,))[:1] in ((1205,), (1213,)):
                # MySQL's lock wait timeout and deadlock: another user's change came first, the server is up
                raise StoreError(f"the database was busy with another user's change: {_first_line(error.orig)}; "
                                 "try again") from error
            if isinstance(error, OperationalError):
                raise DatabaseUnavailable(f"the database at {self.display_url} cannot be reached or refused "
                                 f"the operation: {_first_line(error.orig)}") from error
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

    def count_rows(self, table) -> int:
        with self.session() as session:
            return session.scalar(select(func.count()).select_from(table))


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
    return code in _MYSQL_FULL or any(sign in text for sign in (
        "database or disk is full", "No space left on device", "Errcode: 28", "error 28 from storage engine"))


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


def open_store(url: str | None = None, upgrade: bool = True, create: bool | None = None) -> Store:
    """The store at ``url`` (default: BLOODCELLS_DATABASE_URL or the embedded SQLite file), its schema upgraded
    unless ``upgrade`` is False (to inspect it). An SQLite file that is not there is created only when
    ``create`` (by default, when upgrading): a command that only reads (the list of analyses, a report) given a
    mistyped path made a new, empty database there and said "no analyses yet", as if the lab's were lost."""
    from ..settings import settings

    store = Store(url or settings().database_url, create=upgrade if create is None else create)
    if upgrade:
        store.upgrade()
    return store
