"""Migrations, the registry in PostgreSQL and the sink's writes, against the real server:
each on both storages (``db``: plain PostgreSQL and TimescaleDB, two clusters), what is one
storage's own on that storage (``plain_db``, ``tsdb``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from prometheus_client import REGISTRY
from twins import TWINS, Twins, readings

from edge.codecs import registry as registry_mod
from edge.codecs import stream
from edge.codecs.uplink import Batch
from edge.config import PostgresConfig
from edge.io import pg, registry_db, sink_db
from edge.io.sink_db import KEY, SchemaNotReady, SinkDb

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
EDGE = shutil.which("edge", path=str(Path(sys.executable).parent)) or "edge"


def _database(dsn: str, name: str) -> Iterator[PostgresConfig]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    userinfo, hostpart = dsn.split("://", 1)[1].split("@", 1)
    host, port = hostpart.split("/", 1)[0].rsplit(":", 1)
    yield PostgresConfig(host=host, port=int(port), dbname=name, user=userinfo)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def db(storage_dsn, unique):
    yield from _database(storage_dsn, unique)


@pytest.fixture
def plain_db(pg_dsn, unique):
    yield from _database(pg_dsn, unique)


@pytest.fixture
def tsdb(tsdb_dsn, unique):
    yield from _database(tsdb_dsn, unique)


@pytest.fixture
def storage(request, storage_dsn) -> str:
    return request.node.callspec.params["storage_dsn"]


ALL = ["0001_registry", "0002_measurements", "0003_operations", "0004_time_index", "0005_state_order",
       "0006_conflicts", "0007_rollup_table", "0008_market", "0009_market_actor", "0010_commands"]


def test_migrations_apply_once_warn_of_nothing_and_are_recorded_with_their_storage(db, storage):
    with pg.connect(db, autocommit=True) as conn:
        assert pg.pending(conn) == ALL
        notices: list[str] = []
        applied = pg.migrate(conn, notices=notices)
        variants = [(1, "all"), (2, storage), (3, "all"), (4, storage), (5, "all"), (6, "all"), (7, storage),
                    (8, "all"), (9, "all"), (10, "all")]
        assert [(m.version, m.variant) for m in applied] == variants
        assert notices == []  # e.g. no key column left out of TimescaleDB's compression settings
        assert pg.migrate(conn) == []
        assert pg.pending(conn) == []
        assert conn.execute("SELECT version, variant FROM schema_migrations ORDER BY 1").fetchall() == variants
        assert pg.recorded_storage(conn) == storage
        relkind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'iot_measurements'").fetchone()
        assert relkind == ("p",) if storage == "postgres" else ("r",)
        assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'iot_measurements_hourly'").fetchone() \
            == ("r",)  # the rollup is the sink's table on both


def test_timescaledb_makes_a_compressed_hypertable_whose_settings_hold_every_key_column(tsdb):
    with pg.connect(tsdb, autocommit=True) as conn:
        pg.migrate(conn)
        assert pg.timescale_problem(pg.timescale_version(conn)) is None
        dims = conn.execute("SELECT column_name, time_interval FROM timescaledb_information.dimensions "
                            "WHERE hypertable_name = 'iot_measurements'").fetchall()
        assert dims == [("time", timedelta(days=1))]
        settings = conn.execute("SELECT segmentby, orderby FROM timescaledb_information."
                                "hypertable_compression_settings WHERE hypertable = 'iot_measurements'::regclass"
                                ).fetchone()
        assert settings == ("device_id", 'label,connector_mode,pin_position,"time" DESC')
        jobs = dict(conn.execute("SELECT proc_name, coalesce(config->>'compress_after', config->>'drop_after') "
                                 "FROM timescaledb_information.jobs WHERE hypertable_name = 'iot_measurements'"
                                 ).fetchall())
        assert jobs == {"policy_compression": "30 days", "policy_retention": "730 days"}
        assert conn.execute("SELECT count(*) FROM timescaledb_information.continuous_aggregates").fetchone() == (0,)


def test_every_partition_has_the_key_and_a_brin_time_index_that_range_queries_use(plain_db):
    db = plain_db
    with pg.connect(db, autocommit=True) as conn:
        pg.migrate(conn)
        conn.execute("SELECT edge_ensure_partition('2030-06-01')")  # made after the migrations
        indexes = dict(conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'iot_measurements_20300601'").fetchall())
        assert len(indexes) == 2, indexes
        brin = [d for d in indexes.values() if "USING brin" in d]
        assert len(brin) == 1 and "(\"time\")" in brin[0] and "autosummarize='on'" in brin[0], indexes
        key = [d for d in indexes.values() if "UNIQUE" in d]
        assert len(key) == 1 and "(device_id, connector_mode, pin_position, label, \"time\")" in key[0], indexes
        conn.execute("INSERT INTO iot_measurements (time, device_id, label, value) "
                     "SELECT '2030-06-01'::timestamptz + i * interval '1 second', 'pm-' || i % 20, 'v', i "
                     "FROM generate_series(0, 86399) AS i")  # a day, in time order, 20 devices
        conn.execute("ANALYZE iot_measurements")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT * FROM iot_measurements WHERE time >= '2030-06-01 10:00Z' AND time < '2030-06-01 11:00Z'"))
        assert "Bitmap Index Scan on iot_measurements_20300601_time_idx" in plan, plan


def test_an_applied_migration_that_changed_is_an_error_naming_it(db, tmp_path):
    for f in pg.migrations_dir().glob("*.sql"):
        shutil.copy(f, tmp_path / f.name)
    with pg.connect(db, autocommit=True) as conn:
        pg.migrate(conn, tmp_path)
        path = tmp_path / "0003_operations.sql"
        path.write_text(path.read_text() + "\n-- edited afterwards\n")
        with pytest.raises(pg.MigrationError, match="0003_operations .*never change"):
            pg.migrate(conn, tmp_path)


def test_a_failing_migration_is_rolled_back_and_names_the_file(db, tmp_path):
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE a (x int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE b (x int); SELECT nope FROM nowhere;")
    with pg.connect(db, autocommit=True) as conn:
        with pytest.raises(pg.MigrationError, match="0002_bad .*nowhere"):
            pg.migrate(conn, tmp_path)
        assert conn.execute("SELECT to_regclass('a'), to_regclass('b')").fetchone() == ("a", None)
        assert conn.execute("SELECT array_agg(version) FROM schema_migrations").fetchone() == ([1],)


def test_the_registry_round_trips_through_postgres_and_reloading_changes_nothing(db):
    text = (REPO / "fixtures" / "registry.toml").read_text()
    reg = registry_mod.loads(text)
    with pg.connect(db, autocommit=True) as conn:
        pg.migrate(conn)
        assert registry_db.load(conn, reg, "r.toml", text) == (True, 1)
        assert registry_db.load(conn, reg, "r.toml", text) == (False, 1)
        version, back = registry_db.read(conn)
        assert (version, back) == (1, reg)
        # An edited template replaces its data points and moves the version.
        edited = text.replace('label = "CO2"', 'label = "Carbon dioxide"')
        assert edited != text
        changed, v2 = registry_db.load(conn, registry_mod.loads(edited), "r.toml", edited)
        assert (changed, v2) == (True, 2)
        labels = {r[0] for r in conn.execute("SELECT label FROM data_points")}
        assert "Carbon dioxide" in labels and "CO2" not in labels


def test_sink_refuses_an_unmigrated_database_and_writes_idempotently_with_an_exact_rollup(db):
    sink = SinkDb(db)
    with pytest.raises(SchemaNotReady, match="edge server migrate"):
        sink.connect()
    with pg.connect(db, autocommit=True) as conn:
        pg.migrate(conn)
    old = datetime(2023, 5, 25, 15, 13, 10, 543400, tzinfo=UTC)  # a day with no partition yet
    rows = [(old, "dev", "", None, 0, "v", 1.5, "V", "t", "gw/1/1"),
            (old.replace(minute=50), "dev", "", None, 0, "v", 2.5, "V", "t", "gw/1/2")]
    event = {"key": "gw/1/3", "type": "hello", "time": "2023-05-25T15:14:00Z", "device_id": "dev",
             "gateway": "gw", "seq": 9, "fw_version": "2.0.1"}
    try:
        assert sink.write(rows, [event]) == 2  # new rows: the plain INSERT
        assert sink.write(rows, [event]) == 0  # a replay: ON CONFLICT, nothing new
        new = (old.replace(minute=55), "dev", "", None, 0, "v", 4.0, "V", "t", "gw/1/4")
        assert sink.write([rows[1], new, new], []) == 1  # a stored row, a new one given twice
    finally:
        sink.close()
    with pg.connect(db, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM iot_measurements WHERE time::date = '2023-05-25'").fetchone() == (3,)
        assert conn.execute("SELECT n, sum, min, max FROM iot_measurements_hourly").fetchone() == (3, 8.0, 1.5, 4.0)
        assert conn.execute("SELECT count(*) FROM device_events").fetchone() == (1,)
        state = conn.execute("SELECT fw_version, last_seq, gateway_id, last_seen FROM device_state").fetchone()
        assert state == ("2.0.1", 9, "gw", datetime(2023, 5, 25, 15, 55, 10, 543400, tzinfo=UTC))


def sink_rows(first_seq: int, records: list) -> list:
    """Records as the sink gets them: a gateway batch through the receiver's Kafka messages."""
    batch = Batch("gw", 7, first_seq, records, list(range(first_seq, first_seq + len(records))))
    return [row for m in stream.from_batch(batch, stream.Topics()) if m.topic == "decoded_iot_data"
            for row in stream.read_measurements(m.value).rows]


@pytest.mark.parametrize("twins", TWINS, ids=lambda t: t.family)
def test_a_reading_with_a_stored_key_and_another_value_is_kept_as_a_conflict_once(db, twins: Twins):
    with pg.connect(db, autocommit=True) as conn:
        pg.migrate(conn)
    first = sink_rows(0, readings(twins.topic, twins.first))
    second = sink_rows(100, readings(twins.topic, twins.second))
    counted = lambda: REGISTRY.get_sample_value("edge_conflicting_readings_total") or 0.0  # noqa: E731
    before = counted()
    sink = SinkDb(db)
    try:
        assert sink.write(first, []) == len(first)
        assert sink.write(second, []) == 0  # every key is stored: equal readings are one row
        assert counted() - before == twins.differing
        assert sink.write(first + second, []) == 0  # a replay of both keeps nothing twice
        assert sink.write(second + second, []) == 0
        assert counted() - before == twins.differing
    finally:
        sink.close()
    with pg.connect(db, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM iot_measurements").fetchone() == (len(first),)
        kept = conn.execute("SELECT label, value, stored_value, source FROM measurement_conflicts").fetchall()
        assert conn.execute("SELECT sum(n) FROM iot_measurements_hourly").fetchone() == (len(first),)
    assert len(kept) == twins.differing
    sent = {r[5]: r[6] for r in second}
    assert all(value == sent[label] != stored and source.startswith("gw/7/1")
               for label, value, stored, source in kept), kept


def test_device_state_moves_forward_by_device_time_whatever_the_order_of_arrival(db):
    """An older hello (seq 5, fw 1.0.0, ten minutes earlier) arriving after a newer one (seq
    10, fw 2.0.0), in a later batch or later in the same batch, sets nothing back."""
    with pg.connect(db, autocommit=True) as conn:
        pg.migrate(conn)
    t = datetime(2026, 7, 26, 10, 10, tzinfo=UTC)

    def hello(device: str, seq: int, fw: str, at: datetime) -> dict:
        return {"key": f"gw/1/{device}/{seq}", "type": "hello", "time": at.isoformat(), "device_id": device,
                "gateway": "gw", "seq": seq, "fw_version": fw}

    def status(device: str, state: str, at: datetime) -> dict:
        return {"key": f"gw/1/{device}/s/{at.minute}", "type": "status", "time": at.isoformat(),
                "device_id": device, "gateway": "gw", "status": state}

    older, newer = t - timedelta(minutes=10), t
    sink = SinkDb(db)
    try:
        sink.write([], [hello("a", 10, "2.0.0", newer), status("a", "online", newer)])
        sink.write([], [hello("a", 5, "1.0.0", older), status("a", "offline", older)])  # a late batch
        sink.write([], [hello("b", 10, "2.0.0", newer), hello("b", 5, "1.0.0", older)])  # late in one batch
        sink.write([], [hello("c", 5, "1.0.0", older)])
        sink.write([], [hello("c", 10, "2.0.0", newer)])  # in order: moves forward
    finally:
        sink.close()
    with pg.connect(db, autocommit=True) as conn:
        got = {d: (fw, seq, event, status) for d, fw, seq, event, status in conn.execute(
            "SELECT device_id, fw_version, last_seq, last_event, status FROM device_state")}
    assert got == {"a": ("2.0.0", 10, "hello", "online"), "b": ("2.0.0", 10, "hello", None),
                   "c": ("2.0.0", 10, "hello", None)}


def test_two_writers_on_the_same_devices_neither_deadlock_nor_miscount(db):
    """The sink's writers (and several sink processes) write batches of the same devices
    at once: both create a new day's partition at the same moment, and their rollup and
    device-state upserts meet on the same rows, here listed in opposite orders (without an
    order, two event-only batches of opposite orders deadlock on device_state)."""
    with pg.connect(db, autocommit=True) as conn:
        pg.migrate(conn)
    day = datetime(2023, 6, 1, 10, 0, tzinfo=UTC)  # no partition yet
    devices = [f"dev-{d:02d}" for d in range(20)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        sink = SinkDb(db)
        try:
            order = devices if w == 0 else devices[::-1]
            start.wait(10)
            for b in range(30):
                rows = [(day + timedelta(microseconds=(b * 2 + w) * 100 + i), dev, "", None, 0, "v", 1.0, "V",
                         "t", f"gw{w}/1/{b}/{i}") for i, dev in enumerate(order)]
                events = [{"key": f"gw{w}/1/{b}/{dev}", "type": "hello", "time": "2023-06-01T10:00:00Z",
                           "device_id": dev, "gateway": f"gw{w}", "seq": b, "fw_version": "1"} for dev in order]
                sink.write(rows if b % 3 == 0 else [], events)  # events alone: no rollup to queue behind
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            sink.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with pg.connect(db, autocommit=True) as conn:
        day_rows = conn.execute("SELECT count(*) FROM iot_measurements WHERE time::date = '2023-06-01'").fetchone()
        assert day_rows == (400,)
        hourly = conn.execute("SELECT count(*), sum(n), sum(sum) FROM iot_measurements_hourly").fetchone()
        assert hourly == (20, 400, 400.0)
        assert conn.execute("SELECT count(*) FROM device_state").fetchone() == (20,)
        assert conn.execute("SELECT count(*) FROM device_events").fetchone() == (1200,)


def test_a_partition_another_writer_creates_at_the_same_moment_is_created_once(plain_db):
    """The other writer's CREATE TABLE is not committed yet when this one looks: this one's
    CREATE TABLE IF NOT EXISTS then fails on the catalog once the other commits."""
    db = plain_db
    with pg.connect(db, autocommit=True) as conn:
        pg.migrate(conn)
    day = datetime(2023, 7, 1, tzinfo=UTC)
    row = (day, "dev", "", None, 0, "v", 1.0, "V", "t", "gw/1/1")
    sink = SinkDb(db)
    sink.connect()
    other = pg.connect(db)
    try:
        other.execute("SELECT edge_ensure_partition(%s)", (day.date(),))  # uncommitted
        done: list[BaseException | None] = []

        def create() -> None:
            try:
                sink._partitions(sink.conn, [row])
                done.append(None)
            except BaseException as exc:  # noqa: BLE001 - asserted below
                done.append(exc)

        creator = threading.Thread(target=create)
        creator.start()
        creator.join(1.0)
        assert creator.is_alive()  # waiting for the other writer's catalog rows
        other.commit()
        creator.join(10)
        assert done == [None]
        assert sink.write([row], []) == 1
    finally:
        other.close()
        sink.close()


def test_cli_migrate_and_registry_load_report_what_they_did(db, storage, tmp_path):
    toml = tmp_path / "server.toml"
    toml.write_text(f'[postgres]\nhost = "{db.host}"\nport = {db.port}\ndbname = "{db.dbname}"\nuser = "{db.user}"\n')
    reg = str(REPO / "fixtures" / "registry.toml")
    out = subprocess.run([EDGE, "registry", "load", reg, "--config", str(toml)], capture_output=True, text=True)
    assert out.returncode == 2 and "edge server migrate" in out.stderr
    out = subprocess.run([EDGE, "server", "migrate", "--config", str(toml)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == "", out.stderr  # nothing the server warned of
    assert f"applied 0002_measurements ({storage})" in out.stdout and f"storage {storage}" in out.stdout
    assert ("(TimescaleDB 2.22.1)" in out.stdout) == (storage == "timescaledb"), out.stdout
    out = subprocess.run([EDGE, "registry", "load", reg, "--config", str(toml)], capture_output=True, text=True)
    assert out.returncode == 0 and "loaded, registry version 1 (7 templates, 4 controllers" in out.stdout
    out = subprocess.run([EDGE, "registry", "load", reg, "--config", str(toml)], capture_output=True, text=True)
    assert "unchanged, registry version 1" in out.stdout
    toml.write_text('[postgres]\nhost = "127.0.0.1"\nport = 9\n')
    out = subprocess.run([EDGE, "server", "migrate", "--config", str(toml)], capture_output=True, text=True)
    assert out.returncode == 69 and "cannot reach PostgreSQL at 127.0.0.1:9" in out.stderr


def _rows(start: datetime, n: int, step: timedelta, devices: int = 5, value=float) -> list[tuple]:
    return [(start + i * step, f"dev-{i % devices}", "", None, 0, "v", value(i), "V", "t", f"gw/1/{i}")
            for i in range(n)]


def _rollup_drift(conn: psycopg.Connection) -> list[tuple]:
    """Buckets where the rollup and the stored rows disagree (none when the rollup is exact)."""
    return conn.execute(f"""
        WITH raw AS (SELECT date_trunc('hour', time, 'UTC') AS bucket, {KEY},
                            count(*) AS n, sum(value) AS sum, min(value) AS min, max(value) AS max
                     FROM iot_measurements GROUP BY 1, 2, 3, 4, 5)
        SELECT * FROM raw FULL JOIN iot_measurements_hourly h USING (bucket, {KEY})
        WHERE raw.n IS DISTINCT FROM h.n OR raw.sum IS DISTINCT FROM h.sum
           OR raw.min IS DISTINCT FROM h.min OR raw.max IS DISTINCT FROM h.max""").fetchall()


def test_a_replay_into_a_compressed_chunk_stores_every_new_row_once_and_keeps_the_rollup_exact(db, storage):
    """TimescaleDB before 2.18.1 stored none of the 50 new rows here (timescale/timescaledb#7672):
    the batch met stored rows of a compressed chunk on the ON CONFLICT path. On plain
    PostgreSQL the same batch goes into a day's partition that already holds rows."""
    with pg.connect(db, autocommit=True) as conn:
        pg.migrate(conn)
    # Older than compress_after, and within one day's chunk whatever the time of day (run at
    # 23:45 UTC, 25 minutes of rows from 45 days ago spanned two chunks).
    old = (datetime.now(UTC) - timedelta(days=45)).replace(hour=1, minute=0, second=0, microsecond=0)
    rows = _rows(old, 150, timedelta(seconds=10))
    sink = SinkDb(db)
    try:
        assert sink.write(rows[:100], []) == 100
        with pg.connect(db, autocommit=True) as conn:
            if storage == "timescaledb":
                compressed = conn.execute("SELECT compress_chunk(c) FROM show_chunks('iot_measurements') c"
                                          ).fetchall()
                assert len(compressed) == 1
                state = conn.execute("SELECT is_compressed FROM timescaledb_information.chunks").fetchall()
                assert state == [(True,)]
        changed = (rows[99][0], "dev-4", "", None, 0, "v", -1.0, "V", "t", "gw/2/99")  # a stored key, another value
        assert sink.write(rows[60:150] + [changed], []) == 50  # 40 stored, 50 new, one conflicting
        assert sink.write(rows, []) == 0  # the whole replayed again: nothing new
    finally:
        sink.close()
    with pg.connect(db, autocommit=True) as conn:
        got = conn.execute("SELECT time, device_id, value FROM iot_measurements ORDER BY time").fetchall()
        assert got == [(r[0], r[1], r[6]) for r in rows]
        assert conn.execute("SELECT value, stored_value FROM measurement_conflicts").fetchall() == [(-1.0, 99.0)]
        assert _rollup_drift(conn) == []
        assert conn.execute("SELECT sum(n) FROM iot_measurements_hourly").fetchone() == (150,)


def test_the_hourly_rollup_equals_the_stored_rows_after_every_commit_whatever_their_age(db):
    """One contract on both storages, as the API reads it: after each commit, per hour and
    series, the rollup's count, sum, min and max equal those of the stored rows: the current
    hour, rows from a year ago arriving late, replays and partial replays."""
    with pg.connect(db, autocommit=True) as conn:
        pg.migrate(conn)
    now = datetime.now(UTC).replace(microsecond=0)
    batches = [_rows(now - timedelta(minutes=5), 40, timedelta(seconds=7)),  # this hour (and maybe the last)
               _rows(now - timedelta(days=400), 60, timedelta(minutes=3), value=lambda i: -i / 3),  # a year late
               _rows(now - timedelta(days=40), 30, timedelta(minutes=1))]  # beyond any refresh window
    sink = SinkDb(db)
    try:
        with pg.connect(db, autocommit=True) as conn:
            for batch in batches + [batches[1][20:] + _rows(now - timedelta(days=400, hours=2), 5,
                                                            timedelta(minutes=1), devices=7)]:
                sink.write(batch, [])
                assert _rollup_drift(conn) == []
            stored = conn.execute("SELECT count(*) FROM iot_measurements").fetchone()[0]
            assert stored == 135 and conn.execute("SELECT sum(n) FROM iot_measurements_hourly").fetchone() == (135,)
    finally:
        sink.close()


def test_the_storage_is_decided_once_per_database_and_followed_afterwards(tsdb, plain_db):
    """A database migrated as plain PostgreSQL on a server that has TimescaleDB stays plain
    (before, the variant was chosen at every run, and a database that met the extension later
    took TimescaleDB's 0004 on a plain table); one recorded with TimescaleDB refuses plain."""
    with pg.connect(tsdb, autocommit=True) as conn:
        assert [m.variant for m in pg.migrate(conn, storage="postgres")][1] == "postgres"
        assert pg.migrate(conn) == []  # auto follows the record
        assert pg.recorded_storage(conn) == "postgres" and pg.timescale_version(conn) is None
        variants = {v for (v,) in conn.execute("SELECT variant FROM schema_migrations")}
        assert variants == {"all", "postgres"}
        with pytest.raises(pg.MigrationError, match="migrated with storage 'postgres'.*says 'timescaledb'"):
            pg.migrate(conn, storage="timescaledb")
    with pg.connect(plain_db, autocommit=True) as conn:
        with pytest.raises(pg.MigrationError, match="timescaledb extension is not installed"):
            pg.migrate(conn, storage="timescaledb")
        assert pg.pending(conn) == ALL


def test_a_database_that_took_the_other_storages_variant_gets_its_own(plain_db):
    """What the old per-run choice left behind: 0004 recorded as TimescaleDB's (which does
    nothing) on a plain database. The next migration applies plain PostgreSQL's 0004."""
    with pg.connect(plain_db, autocommit=True) as conn:
        pg.migrate(conn)
        other = next(m for m in pg.available() if m.version == 4 and m.variant == "timescaledb")
        conn.execute("DROP INDEX iot_measurements_time")
        conn.execute("CREATE INDEX iot_measurements_time ON iot_measurements (time DESC)")
        conn.execute("UPDATE schema_migrations SET variant = 'timescaledb', checksum = %s WHERE version = 4",
                     (other.checksum,))
        assert [(m.version, m.variant) for m in pg.migrate(conn)] == [(4, "postgres")]
        assert conn.execute("SELECT DISTINCT variant FROM schema_migrations ORDER BY 1").fetchall() == [
            ("all",), ("postgres",)]
        method = conn.execute("SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
                              "WHERE c.relname = 'iot_measurements_time'").fetchone()
        assert method == ("brin",)


def test_a_timescaledb_database_migrated_with_the_first_0002_is_converted_with_its_rollup_exact(tsdb, tmp_path):
    """The first 0002 (fixtures/migrations-before-0007, what compose ran): a continuous
    aggregate that is empty right after a commit, and two key columns out of the compression
    settings. 0007 makes the rollup the sink's table, filled from every stored row."""
    for f in pg.migrations_dir().glob("*.sql"):
        if int(f.name[:4]) <= 6:
            shutil.copy(f, tmp_path / f.name)
    shutil.copy(REPO / "fixtures" / "migrations-before-0007" / "0002_measurements.timescaledb.sql", tmp_path)
    with pg.connect(tsdb, autocommit=True) as conn:
        notices: list[str] = []
        pg.migrate(conn, tmp_path, notices=notices)
        assert any("connector_mode" in n and "segmenting or ordering" in n for n in notices), notices
        conn.execute("INSERT INTO iot_measurements (time, device_id, label, value) "
                     "SELECT '2026-10-01'::timestamptz + i * interval '1 min', 'dev-' || i % 5, 'v', i "
                     "FROM generate_series(0, 999) AS i")
        assert conn.execute("SELECT coalesce(sum(n), 0) FROM iot_measurements_hourly").fetchone() == (0,)
        notices.clear()
        assert [(m.version, m.variant) for m in pg.migrate(conn, notices=notices)][0] == (7, "timescaledb")
        assert notices == []
        assert pg.migrate(conn) == []  # the first 0002 is accepted as applied: SUPERSEDED
        assert conn.execute("SELECT count(*) FROM timescaledb_information.continuous_aggregates").fetchone() == (0,)
        assert _rollup_drift(conn) == []
        assert conn.execute("SELECT sum(n) FROM iot_measurements_hourly").fetchone() == (1000,)
        orderby = conn.execute("SELECT orderby FROM timescaledb_information.hypertable_compression_settings"
                               ).fetchone()[0]
        assert "connector_mode" in orderby and "pin_position" in orderby
    sink = SinkDb(tsdb)
    try:
        assert sink.write(_rows(datetime(2026, 10, 1, 0, 0, 30, tzinfo=UTC), 3, timedelta(seconds=1)), []) == 3
    finally:
        sink.close()
    with pg.connect(tsdb, autocommit=True) as conn:
        assert _rollup_drift(conn) == [] and conn.execute("SELECT sum(n) FROM iot_measurements_hourly"
                                                          ).fetchone() == (1003,)


def test_migrate_and_the_sink_refuse_a_timescaledb_version_that_loses_replayed_rows(tsdb, monkeypatch):
    """The extension's version as the database reports it, made 2.17.2 (the version compose
    shipped); the real one cannot be changed under a live session."""
    with pg.connect(tsdb, autocommit=True) as conn:
        pg.migrate(conn)
    monkeypatch.setattr(pg, "timescale_version", lambda conn: "2.17.2")
    monkeypatch.setattr(sink_db, "timescale_version", lambda conn: "2.17.2")
    with pg.connect(tsdb, autocommit=True) as conn:
        with pytest.raises(pg.MigrationError, match=r"2\.17\.2 loses rows.*#7672.*2\.18\.1"):
            pg.migrate(conn)
    sink = SinkDb(tsdb)
    try:
        with pytest.raises(SchemaNotReady, match=r"2\.17\.2 loses rows"):
            sink.connect()
    finally:
        sink.close()


def test_migrate_on_a_server_with_timescaledb_installed_but_not_preloaded_exits_2_saying_how(
        plain_db, tmp_path, monkeypatch, capsys):
    """Before: an uncaught ``extension "timescaledb" must be preloaded`` traceback, exit 1.
    The server's answer is made "installed, not preloaded" (a cluster of its own for that
    would be a third one); the rest is the real CLI against the real database."""
    from edge import cli

    monkeypatch.setattr(pg, "_server_storage", lambda conn: (True, False))
    toml = tmp_path / "server.toml"
    toml.write_text(f'[postgres]\nhost = "{plain_db.host}"\nport = {plain_db.port}\ndbname = "{plain_db.dbname}"\n'
                    f'user = "{plain_db.user}"\n')
    assert cli.main(["server", "migrate", "--config", str(toml)]) == 2
    err = capsys.readouterr().err
    assert "installed but not preloaded" in err and "shared_preload_libraries = 'timescaledb'" in err, err
    assert "Traceback" not in err
    toml.write_text(toml.read_text() + 'storage = "postgres"\n')  # what the message offers
    assert cli.main(["server", "migrate", "--config", str(toml)]) == 0
    assert "storage postgres" in capsys.readouterr().out


def test_the_whole_time_range_the_limits_let_in_is_stored_on_both_storages(db):
    """edge.codecs.limits lets in 0001-01-02 .. 9999-12-30: a day's partition or a chunk
    for each end, stored and read back exactly, the rollup with them."""
    from edge.codecs.limits import EARLIEST, LATEST

    with pg.connect(db, autocommit=True) as conn:
        pg.migrate(conn)
    ends = [(EARLIEST, 1.0), (LATEST - timedelta(minutes=1), 2.0), (LATEST, 3.0)]
    rows = [(t, "dev-clock", "", None, 0, "v", v, "V", "t", f"gw/1/{i}") for i, (t, v) in enumerate(ends)]
    sink = SinkDb(db)
    try:
        assert sink.write(rows, []) == 3
        assert sink.write(rows, []) == 0
    finally:
        sink.close()
    with pg.connect(db, autocommit=True) as conn:
        assert conn.execute("SELECT time, value FROM iot_measurements ORDER BY time").fetchall() == [
            (r[0], r[6]) for r in rows]
        assert _rollup_drift(conn) == []


def test_market_prices_are_upserted_and_alerts_stored_once_by_their_identity(db):
    from edge.codecs.redata import read_prices
    from edge.io import market_db
    from edge.market.alerts import arbitrage_alert, price_alerts
    from edge.market.plan import Battery

    with pg.connect(db, autocommit=True) as conn:
        pg.migrate(conn)
        steps = read_prices((REPO / "fixtures" / "market" / "prices-2026-07-27-quarter-hourly.json").read_bytes())
        assert market_db.store_prices(conn, "BZN|ES", "spot", steps) == 96
        assert market_db.store_prices(conn, "BZN|ES", "spot", steps) == 0  # the same answer again
        revised = [*steps[:10], type(steps[10])(steps[10].start, steps[10].hours, steps[10].price + 1), *steps[11:]]
        assert market_db.store_prices(conn, "BZN|ES", "spot", revised) == 1
        hourly = [type(s)(s.start, 1.0, s.price) for s in steps[::4]]  # the same series hourly: kept beside
        assert market_db.store_prices(conn, "BZN|ES", "spot", hourly) == 24
        rows = conn.execute("SELECT count(*), count(DISTINCT start) FROM market_prices").fetchone()
        assert rows == (120, 96)
        assert conn.execute("SELECT price FROM market_prices WHERE start = %s AND resolution = '15 minutes'",
                            (steps[10].start,)).fetchone() == (steps[10].price + 1,)
        alerts = price_alerts(steps) + [arbitrage_alert(steps, Battery(1000, 500, 500, 0.9, 100, 100, 900, 10))]
        assert [a["alert_type"] for a in market_db.store_alerts(conn, alerts)] == [a["alert_type"] for a in alerts]
        assert market_db.store_alerts(conn, alerts) == []  # once, by zone, type and window
        kept = conn.execute("SELECT kind, alert_key, body->>'expected_profit_eur' FROM alerts ORDER BY id").fetchall()
        assert [k for k, _, _ in kept] == [a["alert_type"] for a in alerts] and kept[-1][2] is not None


def _ack(cmd_id: str, result: str, at: datetime, n: int, device: str = "pm-1", kind: str = "command_ack",
         **extra) -> dict:
    return {"key": f"gw/1/{n}", "type": kind, "time": at.isoformat(), "device_id": device, "gateway": "gw",
            "cmd_id": cmd_id, "result": result, **extra}


def test_command_answers_move_each_row_on_once_and_only_forward(plain_db):
    """The sink writes the answers that travel up onto device_commands: delivered only from
    pending or sent, a final state only from an open one, the earliest final answer of a
    batch winning; a replay, an unknown cmd_id and a malformed one change nothing (and are
    counted), and never refuse the batch."""
    from edge.io import device_commands as table

    now = datetime.now(UTC).replace(microsecond=0)
    with pg.connect(plain_db, autocommit=True) as conn:
        pg.migrate(conn)
        ids = [table.create(conn, "pm-1", "reboot", {}, now + timedelta(minutes=5)) for _ in range(4)]
        table.mark_sent(conn, [(ids[0], "gw"), (ids[1], "gw"), (ids[2], "gw")])
    unmatched = REGISTRY.get_sample_value("edge_sink_command_answers_unmatched_total", {"why": "unknown_command"}) or 0
    malformed = REGISTRY.get_sample_value("edge_sink_command_answers_unmatched_total",
                                          {"why": "malformed_cmd_id"}) or 0
    sink = SinkDb(plain_db)
    try:
        sink.write([], [_ack(ids[0], "delivered", now, 1), _ack(ids[0], "accepted", now + timedelta(seconds=1), 2),
                        _ack(ids[1], "rejected", now, 3, detail="busy"), _ack(ids[1], "accepted", now, 4),
                        _ack(ids[2], "delivered", now, 5),
                        _ack(ids[3], "start", now, 6, kind="ota_status", ota_state="downloading", progress_pct=10),
                        _ack(ids[3], "x", now + timedelta(seconds=2), 7, kind="ota_status", ota_state="verifying",
                             progress_pct="lots"),
                        _ack(str(uuid.uuid4()), "accepted", now, 8),
                        _ack("not-a-uuid'; DROP TABLE x", "accepted", now, 9)])
        # Later: a replay of the first batch's acks, and a late delivered after a final state.
        sink.write([], [_ack(ids[0], "rejected", now + timedelta(seconds=9), 10), _ack(ids[1], "delivered", now, 11)])
    finally:
        sink.close()
    with pg.connect(plain_db, autocommit=True) as conn:
        rows = dict(conn.execute("SELECT cmd_id::text, (status, detail, ota_state, ota_progress) FROM device_commands"
                                 ).fetchall())
    assert rows[ids[0]][0] == "accepted"  # final stays final: the later "rejected" changed nothing
    assert rows[ids[1]][:2] == ("rejected", "busy")  # the earliest final answer of the batch (by time, then key)
    assert rows[ids[2]][0] == "delivered"
    assert rows[ids[3]] == ("pending", None, "verifying", None)  # the latest OTA state; a non-number progress dropped
    assert REGISTRY.get_sample_value("edge_sink_command_answers_unmatched_total",
                                     {"why": "unknown_command"}) == unmatched + 1
    assert REGISTRY.get_sample_value("edge_sink_command_answers_unmatched_total",
                                     {"why": "malformed_cmd_id"}) == malformed + 1


def test_the_deadline_closes_what_it_left_open(plain_db):
    from edge.io import device_commands as table

    now = datetime.now(UTC)
    with pg.connect(plain_db, autocommit=True) as conn:
        pg.migrate(conn)
        never = table.create(conn, "pm-1", "reboot", {}, now - timedelta(seconds=1))
        sent = table.create(conn, "pm-1", "reboot", {}, now - timedelta(seconds=30))
        recent = table.create(conn, "pm-1", "reboot", {}, now - timedelta(seconds=1))
        delivered = table.create(conn, "pm-1", "reboot", {}, now - timedelta(seconds=30))
        valid = table.create(conn, "pm-1", "reboot", {}, now + timedelta(seconds=60))
        table.mark_sent(conn, [(sent, "gw"), (recent, "gw"), (delivered, "gw")])
        conn.execute("UPDATE device_commands SET status = 'delivered' WHERE cmd_id = %s", (delivered,))
        with conn.transaction():
            assert [c.cmd_id for c in table.claim(conn, 10)] == [valid]  # never one past its deadline
        assert table.expire(conn, grace_s=10) == {"pending": 1, "sent": 1, "delivered": 1}
        states = dict(conn.execute("SELECT cmd_id::text, status FROM device_commands").fetchall())
    assert states == {never: "expired", sent: "expired", recent: "sent", delivered: "error", valid: "pending"}
