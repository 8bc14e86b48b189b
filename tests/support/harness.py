"""Gateway/receiver processes, real brokers and the ledger check for the loss tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.tools import ledger

REPO = Path(__file__).resolve().parents[2]
EDGE = shutil.which("edge", path=str(Path(sys.executable).parent)) or "edge"
SERVICES = str(REPO / "scripts" / "services")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def services(*args: str) -> None:
    subprocess.run([SERVICES, *args], check=True, capture_output=True, timeout=180)


@dataclass
class Site:
    """One gateway + one receiver, wired to the test brokers, in tmp_path."""

    tmp: Path
    name: str
    site_port: int
    central_port: int
    overrides: dict[str, dict] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    sims: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.buffer_db = self.tmp / "buffer.db"
        self.store_db = self.tmp / "store.db"
        self.ledger = self.tmp / "ledger.jsonl"
        self.gw_port, self.rx_port = free_port(), free_port()
        gateway = {
            "node": {"id": self.name},
            "metrics": {"port": self.gw_port},
            "site_broker": {"port": self.site_port, "client_id": f"{self.name}-source"},
            "central_broker": {"port": self.central_port, "client_id": f"{self.name}-uplink"},
            "decoder": {"registry": str(REPO / "fixtures" / "registry.toml")},
            "buffer": {"path": str(self.buffer_db)},
            "commands": {"path": str(self.tmp / "commands.db")},
            "uplink": {"heartbeat_s": 2.0, "confirm_timeout_s": 5.0},
            "source": {"ack_timeout_s": 10.0},
        }
        for section, values in self.overrides.items():
            gateway.setdefault(section, {}).update(values)
        receiver = {
            "node": {"id": f"{self.name}-rx", "role": "server"},
            "metrics": {"port": self.rx_port},
            "central_broker": {"port": self.central_port, "client_id": f"{self.name}-receiver"},
            "receiver": {"share_group": self.name, "store_path": str(self.store_db)},
        }
        (self.tmp / "gateway.toml").write_text(to_toml(gateway))
        (self.tmp / "receiver.toml").write_text(to_toml(receiver))

    def start(self, role: str, healthy: bool = True, env: dict[str, str] | None = None,
              may_exit: bool = False) -> subprocess.Popen:
        """Start ``role`` and wait until it is healthy (``healthy=False``: until it answers
        at all; a gateway whose central broker is down is rightly degraded). ``env``: added
        to the environment (fault injection), with ``may_exit`` when the fault may end it
        before it is healthy."""
        log = open(self.tmp / f"{role}.log", "ab")
        proc = subprocess.Popen([EDGE, role, "--config", str(self.tmp / f"{role}.toml")],
                                stdout=log, stderr=log, env={**os.environ, **env} if env else None)
        self.processes[role] = proc
        port = self.gw_port if role == "gateway" else self.rx_port
        ready = _healthy if healthy else _answering
        wait_until(lambda: ready(port) or proc.poll() is not None, 30, f"{role} healthy")
        assert may_exit or proc.poll() is None, f"{role} exited: {(self.tmp / f'{role}.log').read_text()[-3000:]}"
        return proc

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        proc = self.processes.pop(role, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=30)

    def stop_all(self) -> None:
        for sim in self.sims:  # a failed test's simulator would publish into the next tests
            if sim.poll() is None:
                sim.kill()
                sim.wait(timeout=30)
        for role in list(self.processes):
            self.kill(role, signal.SIGTERM)
        # A persistent session outlives its test and queues every later test's traffic:
        # remove this site's sessions from both brokers.
        drop_session(self.site_port, f"{self.name}-source")
        drop_session(self.central_port, f"{self.name}-uplink")
        drop_session(self.central_port, f"{self.name}-receiver")

    def simulate(self, count: int, rate: float, kind: str = "mix", devices: int = 20,
                 malformed: float = 0.0, seed: int = 1) -> subprocess.Popen:
        sim = subprocess.Popen(
            [EDGE, "simulate", "--broker", f"127.0.0.1:{self.site_port}", "--devices", str(devices),
             "--rate", str(rate), "--count", str(count), "--kind", kind, "--seed", str(seed),
             "--registry", str(REPO / "fixtures" / "registry.toml"), "--ledger", str(self.ledger),
             "--malformed", str(malformed), "--client-id", f"{self.name}-sim-{seed}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.sims.append(sim)
        return sim

    def metrics(self, role: str = "gateway") -> dict[str, float]:
        import urllib.request

        port = self.gw_port if role == "gateway" else self.rx_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out


def keep_dying(site: Site, role: str, variable: str, sim: subprocess.Popen, exits_max: int = 8) -> int:
    """Keep ``role`` (started with the fault ``variable``) running while the simulator runs:
    each time it exits at its window (code 86) start it again, without the fault after
    ``exits_max`` exits; then a clean restart finishes the job. Returns the exits."""
    fault = {variable: "0.04"}
    exits = 0
    while sim.poll() is None:
        proc = site.processes[role]
        if proc.poll() is not None:
            assert proc.returncode == 86, (site.tmp / f"{role}.log").read_text()[-2000:]
            exits += 1
            site.start(role, healthy=False, env=fault if exits < exits_max else None, may_exit=True)
        time.sleep(0.1)
    assert sim.returncode == 0, sim.stderr.read()
    site.kill(role, signal.SIGTERM)
    site.start(role)
    return exits


def drop_session(port: int, client_id: str) -> None:
    """Connect with clean start and session expiry 0: the broker forgets the session."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    try:
        client.connect("127.0.0.1", port, clean_start=True)
        client.loop_start()
        time.sleep(0.2)
        client.disconnect()
        client.loop_stop()
    except OSError:
        pass  # a broker that is down keeps nothing of ours that matters to the next test


def to_toml(sections: dict[str, dict]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _healthy(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200
    except (urllib.error.URLError, OSError):
        return False


def _answering(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
        return True
    except urllib.error.HTTPError:
        return True  # 503: degraded, and answering
    except (urllib.error.URLError, OSError):
        return False


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def read_ledger(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Tally:
    expected_rows: int
    stored_rows: int
    missing: list[tuple[str, str, int, int]]  # (device, time, expected, found)
    doubled: list[tuple[str, str, int, int]]
    events_expected: int
    events_stored: int
    malformed_expected: int
    quarantined: int
    wrong: list[tuple[str, str, Any, Any]]  # (device, time, ledger's values, stored values)


def _tally(entries: list[dict], rows: Any, hellos: list[tuple[str, str]], quarantined: int) -> Tally:
    """``hellos``: (device, time) of every stored hello; those of the ledger's hellos count
    (each time stored), so another sender's, or one whose ledger line a killed simulator
    never wrote, do not."""
    b = ledger.compare(entries, rows)
    sent = {(e["device_id"], e["time"]) for e in entries if e.get("events")}
    return Tally(b.expected, b.stored, b.missing, b.doubled, sum(e.get("events", 0) for e in entries),
                 sum(1 for key in hellos if key in sent), sum(1 for e in entries if e.get("malformed")),
                 quarantined, b.wrong)


def tally(ledger_path: Path, store: Path) -> Tally:
    """The ledger against the single-node store, by identity and by value."""
    entries = read_ledger(ledger_path)
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    rows = conn.execute("SELECT device_id, time, label, value FROM iot_measurements").fetchall()
    hellos = [(json.loads(body)["device_id"], t) for t, body in conn.execute(
        "SELECT time, body FROM events WHERE type = 'hello'")]
    # The ledger's malformed messages among the quarantined (by topic and the time in the
    # payload): other tests' traffic on the same site broker may be quarantined too.
    malformed = {(e["topic"], e["time"]) for e in entries if e.get("malformed")}
    quarantined = 0
    for (body,) in conn.execute("SELECT body FROM quarantine"):
        doc = json.loads(body)
        stamp = re.search(rb'"timestamp": "([^"]+)"', bytes.fromhex(doc.get("payload_hex") or ""))
        quarantined += bool(stamp) and (doc.get("topic"), stamp.group(1).decode()) in malformed
    conn.close()
    return _tally(entries, rows, hellos, quarantined)


def drained(site: Site, timeout: float = 90) -> None:
    """Wait until the single-node store holds everything in the ledger, events too.

    Events count: a frame the uplink published while the receiver was still subscribing
    again (the central broker just restarted) is resent after ``confirm_timeout_s``, and
    can arrive after every measurement did."""
    def complete() -> bool:
        t = tally(site.ledger, site.store_db)
        return not t.missing and t.events_stored >= t.events_expected
    wait_until(complete, timeout, "every ledger record in the store", interval=1.0)


def assert_exactly_once(site: Site) -> None:
    t = tally(site.ledger, site.store_db)
    assert t.expected_rows > 0
    assert t.missing == [], f"{len(t.missing)} messages missing, e.g. {t.missing[:3]}"
    assert t.doubled == [], f"{len(t.doubled)} messages doubled, e.g. {t.doubled[:3]}"
    assert t.wrong == [], f"{len(t.wrong)} messages stored with other values, e.g. {t.wrong[:3]}"
    assert t.stored_rows == t.expected_rows
    assert t.events_stored == t.events_expected
    assert integrity(site.buffer_db) == "ok"


def publish(port: int, messages: list[tuple[str, bytes]], retain: bool = False,
            client_id: str | None = None, timeout: float = 60) -> list[int]:
    """Publish at QoS 1 and wait for every PUBACK; returns each message's reason code (0:
    accepted; a failure code, or -1 when none came within ``timeout``)."""
    import uuid

    import paho.mqtt.client as mqtt

    codes: dict[int, int] = {}
    done = threading.Condition()

    def on_publish(client, userdata, mid, reason, properties):
        with done:
            codes[mid] = reason.value
            done.notify_all()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"pub-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        mids = [client.publish(topic, payload, qos=1, retain=retain).mid for topic, payload in messages]
        with done:
            done.wait_for(lambda: all(m in codes for m in mids), timeout=timeout)
        return [codes.get(m, -1) for m in mids]
    finally:
        client.disconnect()
        client.loop_stop()


def quarantined(store: Path) -> list[tuple[str, str, dict]]:
    """(topic, reason, record) of everything in the single-node store's quarantine."""
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        rows = [json.loads(b) for (b,) in conn.execute("SELECT body FROM quarantine ORDER BY boot_epoch, seq")]
    finally:
        conn.close()
    return [(r["topic"], r["reason"], r) for r in rows]


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def background(fn, *args) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


# ------------------------------------------------------------------ the distributed server
@dataclass
class Server:
    """The server side of a test: its own PostgreSQL database and Kafka topics, config in
    ``<tmp>/server.toml`` (the Site's ``start("server")`` runs it)."""

    site: Site
    kafka: str
    pg_dsn: str
    sections: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = self.site.name
        self.db = name
        self.dsn = self.pg_dsn.rsplit("/", 1)[0] + "/" + self.db
        host, port = self.kafka.rsplit(":", 1)
        pg_host, pg_port = self.pg_dsn.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
        self.topics = {"decoded": f"{name}.decoded", "raw": f"{name}.raw", "events": f"{name}.events"}
        config = {
            "node": {"id": f"{name}-srv", "role": "server"},
            "metrics": {"port": self.site.rx_port},
            "central_broker": {"port": self.site.central_port, "client_id": f"{name}-receiver"},
            "kafka": {"bootstrap_servers": [self.kafka], "client_id": f"{name}-srv", "partitions": 3,
                      "decoded_topic": self.topics["decoded"], "raw_topic": self.topics["raw"],
                      "events_topic": self.topics["events"]},
            "postgres": {"host": pg_host, "port": int(pg_port), "dbname": self.db,
                         "user": self.pg_dsn.split("://", 1)[1].split("@", 1)[0]},
            "receiver": {"share_group": name},
            "server": {"bridge": False},
            "bridge": {"mappings": [f"cmnd/# -> {self.topics['raw']}",
                                    f"homelab/energy/# -> {name}.homelab.energy"],
                       "share_group": name},
            "stream_decoder": {"group": f"{name}-decoder",
                               "topics": [self.topics["raw"], f"{name}.homelab.energy"],
                               "registry_refresh_s": 1.0},
            "sink": {"group": f"{name}-sink", "batch_ms": 200.0, "retry_max_s": 2.0},
        }
        for section, values in self.sections.items():
            config.setdefault(section, {}).update(values)
        self.config = config
        (self.site.tmp / "server.toml").write_text(to_toml(config))

    def prepare(self) -> None:
        """A fresh database, migrated, with the fixture registry loaded."""
        import psycopg

        with psycopg.connect(self.pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.db}"')
        toml = str(self.site.tmp / "server.toml")
        for args in (["server", "migrate"], ["registry", "load", str(REPO / "fixtures" / "registry.toml")]):
            subprocess.run([EDGE, *args, "--config", toml], check=True, capture_output=True, timeout=60)

    def query(self, sql: str, *params) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def drop(self) -> None:
        import psycopg

        drop_session(self.site.central_port, f"{self.site.name}-receiver-bridge")
        with psycopg.connect(self.pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        self._drop_topics()

    def _drop_topics(self) -> None:
        """Delete this test's Kafka topics: a day of runs left hundreds on the broker."""
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.kafka, request_timeout_ms=10_000)
        except KafkaError:
            return  # Kafka is down (a test stopped it): the topics stay, nothing else does
        try:
            mine = [t for t in admin.list_topics() if t.startswith(f"{self.site.name}.")]
            if mine:
                admin.delete_topics(mine)
        except KafkaError:
            pass
        finally:
            admin.close()


def tally_pg(ledger_path: Path, server: Server) -> Tally:
    """The ledger against PostgreSQL, by identity and by value."""
    from edge.codecs.records import iso

    entries = read_ledger(ledger_path)
    rows = [(d, iso(t), label, v) for d, t, label, v in server.query(
        "SELECT device_id, time, label, value FROM iot_measurements")]
    hellos = [(d, iso(t)) for d, t in server.query("SELECT device_id, time FROM device_events WHERE type = 'hello'")]
    return _tally(entries, rows, hellos, 0)


def make_server(site: Site, kafka, pg_dsn: str, **sections) -> Server:
    server = Server(site, kafka.address, pg_dsn, sections)
    server.prepare()
    return server


def settle(site: Site, server: Server, timeout: float = 120) -> None:
    """Wait until every ledger row is in PostgreSQL (or time out with the tally)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = tally_pg(site.ledger, server)
        if not t.missing and t.events_stored >= t.events_expected:
            return
        time.sleep(1)
    t = tally_pg(site.ledger, server)
    try:
        metrics = {k: v for k, v in server.site.metrics("server").items() if "_created" not in k and any(
            w in k for w in ("produced_total", "committed_total", "paused", "sink_rows", "lag{", "dlq",
                             "receiver_frames", "actor_up", "restarts"))}
    except OSError as exc:
        metrics = {"unavailable": repr(exc)}
    raise AssertionError(f"missing after {timeout:g} s: {len(t.missing)} keys, "
                         f"{t.expected_rows - t.stored_rows} rows, e.g. {t.missing[:3]}; hellos "
                         f"{t.events_stored}/{t.events_expected}; server: {metrics}")


def assert_exactly_once_pg(site: Site, server: Server) -> None:
    t = tally_pg(site.ledger, server)
    assert t.expected_rows > 0
    assert not t.missing, t.missing[:5]
    assert not t.doubled, t.doubled[:5]
    assert not t.wrong, t.wrong[:5]
    assert t.stored_rows == t.expected_rows
    assert t.events_stored == t.events_expected, (t.events_stored, t.events_expected)  # once each
    # The rollup counts exactly the stored rows: replays added nothing to it either.
    (rolled,) = server.query("SELECT coalesce(sum(n), 0) FROM iot_measurements_hourly")[0]
    (rows,) = server.query("SELECT count(*) FROM iot_measurements")[0]
    assert rolled == rows
