"""PostgreSQL for the server: connections and the versioned SQL migrations.

Migrations live in deploy/server/migrations (shipped as the package ``edge.migrations``):
``NNNN_name.sql`` for every database, or a pair ``NNNN_name.timescaledb.sql`` /
``NNNN_name.postgres.sql`` of which one is chosen by the database's storage. Each applies
in its own transaction, under an advisory lock (two servers starting together do not
race), and is recorded in ``schema_migrations`` with its checksum: an applied file that
changed afterwards is an error, never silently re-run (a former content listed in
``SUPERSEDED`` is accepted: later migrations bring such a database to the current shape).
Applying is idempotent: what is recorded is skipped.

The storage is decided once per database, at its first migration, and recorded
(``edge_settings.storage``); every later run follows the record, whatever is installed
by then (``decide_storage``). TimescaleDB is taken when it is preloaded (``auto``) or asked
for (``[postgres] storage``); installed but not preloaded is an error that says how to
preload it, never a silent fall-back; versions that lose rows are refused
(``timescale_problem``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg

from edge.config import PostgresConfig
from edge.errors import MigrationError, SchemaNotReady, ServiceRefused, ServiceUnavailable

# TimescaleDB before 2.18.1 drops every new row of an INSERT ... ON CONFLICT DO NOTHING
# that meets a row stored in a compressed chunk (timescale/timescaledb#7672): the sink's
# replay path. Refused by migrate and by the sink.
TIMESCALE_MIN = (2, 18, 1)

# Former contents of migration files, accepted as applied (file name: sha256 of the old
# text). 0002 on TimescaleDB made the hourly rollup a continuous aggregate and left two
# key columns out of the compression settings; 0007 converts such a database.
SUPERSEDED = {
    "0002_measurements.timescaledb": {"e50a7488edec7d97e0feace76f7c40c1eeda55ddc232743730f7d76910078695"},
}

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(timescaledb|postgres))?\.sql$")
_LOCK = 0x6564_6765  # "edge": pg_advisory_xact_lock key for migrations

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    variant    text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS edge_settings (key text PRIMARY KEY, value text NOT NULL);
"""


@contextmanager
def translated(what: str) -> Iterator[None]:
    """psycopg's errors as the error tree's: ``what`` names the work (``"writing 120 rows"``).
    A broken connection, a timeout or a server going away (``OperationalError``) is
    ``ServiceUnavailable``; a missing table ``SchemaNotReady``; any other refusal
    ``ServiceRefused`` with its SQLSTATE."""
    try:
        yield
    except psycopg.errors.UndefinedTable as exc:
        raise SchemaNotReady(f"{what}: {describe(exc)}: run `edge server migrate`") from exc
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable(f"PostgreSQL, {what}: {describe(exc)}") from exc
    except psycopg.Error as exc:
        raise ServiceRefused(f"db_{exc.sqlstate or 'error'}", describe(exc)) from exc


def describe(exc: psycopg.Error) -> str:
    """The server's primary message and its context, without the SQL of the statement."""
    diag = exc.diag
    text = (diag.message_primary or str(exc)).strip()
    return text + (f" ({diag.context.strip()})" if diag.context else "")


def conninfo(cfg: PostgresConfig, statement_timeout: bool = True) -> str:
    """Connection string: a bounded connect, TCP keepalives and a TCP user timeout (a
    peer that vanished ends the connection in about 30 s instead of never), and, unless
    ``statement_timeout`` is off (migrations), the configured statement timeout."""
    options = f"-c statement_timeout={int(cfg.statement_timeout_s * 1000)}" if statement_timeout else None
    return psycopg.conninfo.make_conninfo(
        host=cfg.host, port=cfg.port, dbname=cfg.dbname, user=cfg.user,
        password=cfg.password.reveal() or None, application_name="edge",
        connect_timeout=cfg.connect_timeout_s, keepalives=1, keepalives_idle=10,
        keepalives_interval=5, keepalives_count=3, tcp_user_timeout=30_000, options=options)


def connect(cfg: PostgresConfig, autocommit: bool = False, statement_timeout: bool = True
            ) -> psycopg.Connection:
    """``ServiceUnavailable`` naming the server when it cannot be reached."""
    try:
        return psycopg.connect(conninfo(cfg, statement_timeout), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable(f"cannot reach PostgreSQL at {cfg.host}:{cfg.port}/{cfg.dbname}: "
                                 f"{str(exc).strip()}") from exc


def connect_migrated(cfg: PostgresConfig) -> psycopg.Connection:
    """An autocommit connection to a database that has every migration this version ships;
    ``SchemaNotReady`` naming the missing ones (run `edge server migrate`) otherwise."""
    conn = connect(cfg, autocommit=True)
    try:
        with translated("checking migrations"):
            missing = pending(conn)
        if missing:
            raise SchemaNotReady(f"database {cfg.dbname} on {cfg.host}:{cfg.port} lacks migrations "
                                 f"{', '.join(missing)}: run `edge server migrate`")
    except BaseException:
        conn.close()
        raise
    return conn


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    variant: str  # "all", "timescaledb" or "postgres"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    return Path(str(resources.files("edge.migrations")))


def available(directory: Path | None = None) -> list[Migration]:
    out = []
    for path in sorted((directory or migrations_dir()).glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path}: migration files are named NNNN_name[.timescaledb|.postgres].sql")
        out.append(Migration(int(m[1]), m[2], m[3] or "all", path.read_text(encoding="utf-8")))
    return out


def choose(migrations: list[Migration], timescale: bool) -> list[Migration]:
    """One migration per version: the common one, or the variant for this database."""
    want = "timescaledb" if timescale else "postgres"
    chosen: dict[int, Migration] = {}
    for m in migrations:
        if m.variant in ("all", want):
            if m.version in chosen:
                raise MigrationError(f"two migrations for version {m.version:04d}: "
                                     f"{chosen[m.version].name} and {m.name}")
            chosen[m.version] = m
    return [chosen[v] for v in sorted(chosen)]


def decide_storage(recorded: str | None, wanted: str, available: bool, preloaded: bool) -> str:
    """The storage of a database: what its first migration recorded, else what ``wanted``
    (``[postgres] storage``) and the server allow. ``MigrationError`` says what to change."""
    if recorded is not None:
        if wanted not in ("auto", recorded):
            raise MigrationError(f"this database was migrated with storage {recorded!r} and [postgres] storage "
                                 f"says {wanted!r}: a database keeps its storage; set storage = \"auto\" "
                                 f"or {recorded!r}, or use a new database")
        if recorded == "timescaledb" and not preloaded:
            raise MigrationError(f"this database uses TimescaleDB, which this server does not preload: {_PRELOAD}")
        return recorded
    if wanted == "postgres" or (wanted == "auto" and not available):
        return "postgres"
    if not available:
        raise MigrationError("[postgres] storage = \"timescaledb\" but the timescaledb extension is not installed "
                             "on this PostgreSQL server (install it, or set storage = \"postgres\")")
    if not preloaded:
        raise MigrationError(f"the timescaledb extension is installed but not preloaded: {_PRELOAD}; "
                             "or set [postgres] storage = \"postgres\" for plain PostgreSQL")
    return "timescaledb"


_PRELOAD = ("add shared_preload_libraries = 'timescaledb' to postgresql.conf and restart PostgreSQL "
            "(docs/operations.md, Storage)")


def timescale_problem(version: str) -> str | None:
    """Why this TimescaleDB version must not store measurements, or None."""
    try:
        parts = tuple(int(p) for p in version.split("-")[0].split(".")[:3])
    except ValueError:
        return None  # a development build: not ours to judge
    if parts < TIMESCALE_MIN:
        return (f"TimescaleDB {version} loses rows when a replayed batch meets rows of a compressed chunk "
                f"(timescale/timescaledb#7672, fixed in 2.18.1): install {'.'.join(map(str, TIMESCALE_MIN))} "
                "or newer and run ALTER EXTENSION timescaledb UPDATE")
    return None


def timescale_version(conn: psycopg.Connection) -> str | None:
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return row[0] if row else None


def _server_storage(conn: psycopg.Connection) -> tuple[bool, bool]:
    """(installed, preloaded) for timescaledb on this server. ``shared_preload_libraries``
    is visible to superusers only, and a trial CREATE EXTENSION leaves the library loaded
    in the session; the loader's own setting ``timescaledb.disable_load`` exists exactly
    when the loader is preloaded."""
    if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone() is None:
        return False, False
    loader = conn.execute("SELECT current_setting('timescaledb.disable_load', true)").fetchone()[0]
    return True, loader is not None


def recorded_storage(conn: psycopg.Connection) -> str | None:
    row = conn.execute("SELECT value FROM edge_settings WHERE key = 'storage'").fetchone()
    return row[0] if row else None


def migrate(conn: psycopg.Connection, directory: Path | None = None, storage: str = "auto",
            notices: list[str] | None = None) -> list[Migration]:
    """Apply what is not applied yet; return what was applied. ``conn`` in autocommit;
    ``storage`` is ``[postgres] storage``. Warnings and notices the server sends while a
    migration runs are appended to ``notices``, naming the migration."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute(_BOOTSTRAP)
    available_, preloaded = _server_storage(conn)
    chosen = decide_storage(recorded_storage(conn), storage, available_, preloaded)
    timescale = chosen == "timescaledb"
    todo = choose(available(directory), timescale)
    done: list[Migration] = []
    current: list[str] = ["?"]

    def heard(diag: psycopg.errors.Diagnostic) -> None:
        if notices is not None:
            notices.append(f"{current[0]}: {diag.severity}: {diag.message_primary}")

    conn.add_notice_handler(heard)
    try:
        if timescale:
            if timescale_version(conn) is None:
                current[0] = "CREATE EXTENSION timescaledb"
                with conn.transaction():
                    conn.execute("CREATE EXTENSION timescaledb")
            problem = timescale_problem(timescale_version(conn) or "")
            if problem:
                raise MigrationError(problem)
        for m in todo:
            current[0] = f"{m.version:04d}_{m.name} ({m.variant})"
            if _apply(conn, m):
                done.append(m)
    finally:
        conn.remove_notice_handler(heard)
    return done


def _apply(conn: psycopg.Connection, m: Migration) -> bool:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        row = conn.execute("SELECT name, variant, checksum FROM schema_migrations WHERE version = %s",
                           (m.version,)).fetchone()
        if row is not None and row[1] in ("all", m.variant):
            known = {m.checksum} | SUPERSEDED.get(f"{m.version:04d}_{m.name}.{m.variant}", set())
            if row[2] not in known:
                raise MigrationError(
                    f"migration {m.version:04d}_{m.name} ({m.variant}) was applied with another "
                    "content: an applied migration must never change; add a new one")
            return False
        # Not applied, or applied in the other storage's variant (a database that once took a
        # variant for the wrong storage): this storage's variant is applied and recorded.
        try:
            conn.execute(m.sql)
        except psycopg.Error as exc:
            raise MigrationError(f"migration {m.version:04d}_{m.name} ({m.variant}) failed: "
                                 f"{exc.diag.message_primary or exc}") from exc
        conn.execute("INSERT INTO schema_migrations (version, name, variant, checksum) VALUES (%s, %s, %s, %s) "
                     "ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, variant = EXCLUDED.variant, "
                     "checksum = EXCLUDED.checksum, applied_at = now()",
                     (m.version, m.name, m.variant, m.checksum))
        return True


def pending(conn: psycopg.Connection, directory: Path | None = None) -> list[str]:
    """Names of migrations not applied yet (the server refuses to run with any)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0]
    applied = set() if exists is None else {
        v for (v,) in conn.execute("SELECT version FROM schema_migrations").fetchall()}
    versions = sorted({m.version: m.name for m in available(directory)}.items())
    return [f"{v:04d}_{n}" for v, n in versions if v not in applied]
