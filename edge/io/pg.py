"""PostgreSQL for the server: connections and the versioned SQL migrations.

Migrations live in deploy/server/migrations (shipped as the package ``edge.migrations``):
``NNNN_name.sql`` for every database, or a pair ``NNNN_name.timescaledb.sql`` /
``NNNN_name.postgres.sql`` of which one is chosen by whether the ``timescaledb``
extension is available. Each applies in its own transaction, under an advisory lock
(two servers starting together do not race), and is recorded in ``schema_migrations``
with its checksum: an applied file that changed afterwards is an error, never silently
re-run. Applying is idempotent: what is recorded is skipped.
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


def has_timescale(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone() is not None


def migrate(conn: psycopg.Connection, directory: Path | None = None,
            timescale: bool | None = None) -> list[Migration]:
    """Apply what is not applied yet; return what was applied. ``conn`` in autocommit."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute(_BOOTSTRAP)
    if timescale is None:
        timescale = has_timescale(conn)
    todo = choose(available(directory), timescale)
    done: list[Migration] = []
    for m in todo:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            row = conn.execute("SELECT name, variant, checksum FROM schema_migrations WHERE version = %s",
                               (m.version,)).fetchone()
            if row is not None:
                if row[1] == m.variant and row[2] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name} ({m.variant}) was applied with another "
                        "content: an applied migration must never change; add a new one")
                continue
            if timescale and m.version == todo[0].version:
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            try:
                conn.execute(m.sql)
            except psycopg.Error as exc:
                raise MigrationError(f"migration {m.version:04d}_{m.name} ({m.variant}) failed: "
                                     f"{exc.diag.message_primary or exc}") from exc
            conn.execute("INSERT INTO schema_migrations (version, name, variant, checksum) "
                         "VALUES (%s, %s, %s, %s)", (m.version, m.name, m.variant, m.checksum))
            done.append(m)
    return done


def pending(conn: psycopg.Connection, directory: Path | None = None) -> list[str]:
    """Names of migrations not applied yet (the server refuses to run with any)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0]
    applied = set() if exists is None else {
        v for (v,) in conn.execute("SELECT version FROM schema_migrations").fetchall()}
    versions = sorted({m.version: m.name for m in available(directory)}.items())
    return [f"{v:04d}_{n}" for v, n in versions if v not in applied]
