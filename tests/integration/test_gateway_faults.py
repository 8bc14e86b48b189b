"""The gateway's promise, tested against real Mosquitto brokers and real processes:
every message the site broker acknowledged is in the store exactly once, whatever breaks.

Each test counts from the simulator's ledger (one line per message the site broker
PUBACKed) and checks the buffer with integrity_check at the end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from typing import Any

import pytest
from harness import (
    EDGE,
    Site,
    assert_exactly_once,
    drained,
    integrity,
    keep_dying,
    publish,
    services,
    tally,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def site(tmp_path, site_mqtt, central_mqtt, unique, request):
    marker = request.node.get_closest_marker("gateway_config")
    overrides = marker.args[0] if marker else {}
    s = Site(tmp_path, unique, site_mqtt.port, central_mqtt.port, overrides=overrides)
    yield s
    s.stop_all()
    services("up", "site-mqtt", "central-mqtt")  # whatever a test stopped comes back


def test_central_broker_down_30s_under_200_msgs_loses_nothing(site):
    site.start("receiver")
    site.start("gateway")
    sim = site.simulate(count=200 * 45, rate=200)
    wait_until(lambda: site.metrics().get("edge_uplink_records_confirmed_total", 0) > 0, 30, "records confirmed")
    services("down", "central-mqtt")
    time.sleep(25)
    depth = site.metrics()["edge_buffer_depth_records"]
    assert depth > 3000, f"the buffer should hold the outage's traffic, holds {depth}"
    time.sleep(5)
    services("up", "central-mqtt")
    assert sim.wait(timeout=120) == 0, sim.stderr.read()
    drained(site)
    assert_exactly_once(site)
    wait_until(lambda: site.metrics()["edge_buffer_depth_records"] == 0, 30, "buffer drained")


def test_kill_9_of_the_gateway_ten_times_loses_and_doubles_nothing(site):
    site.start("receiver")
    site.start("gateway")
    sim = site.simulate(count=300 * 35, rate=300, kind="mix")
    rng = random.Random(7)
    for _ in range(10):
        time.sleep(rng.uniform(0.5, 2.5))
        site.kill("gateway", signal.SIGKILL)
        time.sleep(rng.uniform(0, 0.5))
        site.start("gateway")
    assert sim.wait(timeout=120) == 0, sim.stderr.read()
    drained(site)
    assert_exactly_once(site)


def test_a_restarted_site_broker_delivers_what_it_queued_for_the_gateway(site):
    site.start("receiver")
    site.start("gateway")  # establishes the persistent session and its subscriptions
    site.kill("gateway", signal.SIGTERM)
    sim = site.simulate(count=3000, rate=0, kind="mix")
    assert sim.wait(timeout=60) == 0, sim.stderr.read()
    services("down", "site-mqtt")
    services("up", "site-mqtt")
    site.start("gateway")
    drained(site)
    assert_exactly_once(site)


@pytest.mark.gateway_config({"buffer": {"quota_bytes": 400_000, "policy": "reject"}})
def test_a_full_buffer_with_reject_stops_acking_and_loses_nothing(site):
    site.start("receiver")
    site.start("gateway")
    services("down", "central-mqtt")
    sim = site.simulate(count=6000, rate=0, kind="v2", devices=50)
    assert sim.wait(timeout=60) == 0, sim.stderr.read()
    wait_until(lambda: site.metrics().get("edge_buffer_batches_rejected_total", 0) > 0, 30,
               "the quota to be reached")
    unacked_before = site.metrics()["edge_source_messages_acked_total"]
    assert unacked_before < 6000, "with the quota reached, not everything can have been acked"
    # Full is not fine: health says so, and the source stays away instead of re-reading.
    health = _health(site)
    assert health["status"] == "degraded" and "quota" in health["conditions"]["buffer"]
    status = subprocess.run([EDGE, "status", "--url", f"http://127.0.0.1:{site.gw_port}"],
                            capture_output=True, text=True, timeout=30)
    assert status.returncode == 1 and "DEGRADED" in status.stdout and "buffer:" in status.stdout
    before = _pauses(site)
    time.sleep(10)
    assert _pauses(site) - before <= 4, "a full buffer must back off (1, 2, 4, 8 s), not poll each second"
    services("up", "central-mqtt")
    drained(site, timeout=120)
    assert_exactly_once(site)
    wait_until(lambda: _health(site)["status"] == "ok", 30, "health ok once the buffer has room")


def _health(site: Site) -> dict:
    import json
    import urllib.error
    import urllib.request

    try:
        return json.load(urllib.request.urlopen(f"http://127.0.0.1:{site.gw_port}/healthz", timeout=5))
    except urllib.error.HTTPError as exc:
        return json.load(exc)


def _pauses(site: Site) -> float:
    return site.metrics().get('edge_source_reconnects_total{reason="full"}', 0.0)


@pytest.mark.gateway_config({"buffer": {"quota_bytes": 400_000, "policy": "drop-oldest"}})
def test_drop_oldest_reports_exactly_what_it_dropped_and_the_gap_arrives(site):
    import sqlite3

    site.start("receiver")
    site.start("gateway")
    services("down", "central-mqtt")
    sim = site.simulate(count=6000, rate=0, kind="v2", devices=50)
    assert sim.wait(timeout=60) == 0, sim.stderr.read()
    wait_until(lambda: site.metrics()["edge_source_messages_acked_total"] >= 6000, 60, "all acked")
    dropped = site.metrics()["edge_buffer_records_dropped_total"]
    assert dropped > 0
    services("up", "central-mqtt")
    wait_until(lambda: site.metrics()["edge_buffer_depth_records"] == 0, 90, "buffer drained")
    t = tally(site.ledger, site.store_db)
    conn = sqlite3.connect(site.store_db)
    gap_total = sum(int(__import__("json").loads(b)["count"]) for (b,) in
                    conn.execute("SELECT body FROM gaps"))
    conn.close()
    assert gap_total == dropped
    assert t.doubled == []
    assert t.stored_rows == t.expected_rows - dropped
    assert integrity(site.buffer_db) == "ok"


def test_malformed_messages_are_quarantined_with_reasons_and_the_rest_flows(site):
    import sqlite3

    site.start("receiver")
    site.start("gateway")
    sim = site.simulate(count=3000, rate=0, kind="mix", malformed=10)
    assert sim.wait(timeout=60) == 0, sim.stderr.read()
    drained(site)
    t = tally(site.ledger, site.store_db)
    assert t.malformed_expected > 200
    wait_until(lambda: tally(site.ledger, site.store_db).quarantined == t.malformed_expected, 30,
               "every malformed message in quarantine")
    assert_exactly_once(site)
    conn = sqlite3.connect(site.store_db)
    reasons = {r for (r,) in conn.execute("SELECT json_extract(body, '$.reason') FROM quarantine")}
    conn.close()
    assert reasons == {"bad_json"}


def test_devices_last_wills_reach_the_store_when_their_connections_die(site):
    import json
    import sqlite3

    site.start("receiver")
    site.start("gateway")
    sim = subprocess.Popen(
        [EDGE, "simulate", "--broker", f"127.0.0.1:{site.site_port}", "--devices", "3", "--rate", "30",
         "--count", "100000", "--kind", "v2", "--lwt", "--ledger", str(site.ledger),
         "--device-prefix", site.name,
         "--client-id", f"{site.name}-lwt"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(4)
    sim.send_signal(signal.SIGKILL)  # no goodbye: the broker must publish the wills
    sim.wait(10)

    def statuses() -> dict[str, list[str]]:
        conn = sqlite3.connect(f"file:{site.store_db}?mode=ro", uri=True)
        # By the gateway's sequence, never by time: a will's ts is the moment it connected.
        rows = conn.execute("SELECT body FROM events WHERE type = 'status' "
                            "ORDER BY boot_epoch, seq").fetchall()
        conn.close()
        seen: dict[str, list[str]] = {}
        for (body,) in rows:
            doc = json.loads(body)
            seen.setdefault(doc["device_id"], []).append(doc["status"])
        return seen

    devices = {f"{site.name}-{i:04d}" for i in range(3)}
    wait_until(lambda: all(statuses().get(d) == ["online", "offline"] for d in devices), 60,
               "every device online, then its Last Will (offline) in the store")
    drained(site)
    assert_exactly_once(site)


@pytest.mark.gateway_config({"uplink": {"confirm_timeout_s": 120.0}})
def test_after_the_central_broker_lost_everything_the_receiver_coming_back_gets_the_window_resent(site):
    """A central broker killed with -9 forgets sessions and queued frames. Frames the gateway
    resends at its reconnect can arrive before the receiver subscribed again; the receiver's
    online announcement makes the gateway send them again at once, not after confirm_timeout_s."""
    site.start("receiver")
    site.start("gateway")
    sim = site.simulate(count=200 * 20, rate=200)
    wait_until(lambda: site.metrics().get("edge_uplink_records_confirmed_total", 0) > 0, 30, "records confirmed")
    services("kill", "central-mqtt")
    time.sleep(5)
    services("up", "central-mqtt")
    back = time.monotonic()
    assert sim.wait(timeout=120) == 0, sim.stderr.read()
    drained(site, timeout=60)
    assert time.monotonic() - back < 60, "drained only after the confirmation timeout"
    assert_exactly_once(site)


def test_a_gateway_stopped_between_commit_and_puback_stores_what_the_broker_sends_again_once(site):
    """The site broker delivers what the gateway committed but never acked again, with DUP
    set. Records that take their message's receive time (homelab without a timestamp) or
    have no device sequence used to be stored twice: the fingerprints committed with each
    batch recognise the redelivery."""
    site.start("receiver")
    site.start("gateway")
    site.kill("gateway", signal.SIGTERM)  # its persistent session queues what follows
    good = [(f"homelab/energy/{site.name}-m{i}", json.dumps({"power_kw": float(i)}).encode()) for i in range(40)]
    bad = [(f"homelab/energy/{site.name}-bad", f"{{not json {i}".encode()) for i in range(5)]
    assert publish(site.site_port, good[:20] + bad + good[20:]) == [0] * 45
    log = open(site.tmp / "gateway.log", "ab")
    faulty = subprocess.Popen([EDGE, "gateway", "--config", str(site.tmp / "gateway.toml")], stdout=log,
                              stderr=log, env={**os.environ, "EDGE_FAULT_EXIT_BEFORE_ACK": "1"})
    assert faulty.wait(timeout=60) == 86, (site.tmp / "gateway.log").read_text()[-2000:]
    site.start("gateway")

    def delivered() -> bool:
        m = site.metrics("gateway")
        return (m.get("edge_source_messages_acked_total", 0) >= 1 and m.get("edge_buffer_depth_records") == 0
                and m.get("edge_uplink_window_frames") == 0 and tally_rows(site) >= 40)

    wait_until(delivered, 60, "everything the broker sent again stored and confirmed")
    assert site.metrics("gateway").get("edge_decoder_redeliveries_total", 0) > 0  # the path was taken
    conn = sqlite3.connect(f"file:{site.store_db}?mode=ro", uri=True)
    rows = conn.execute("SELECT device_id, value FROM iot_measurements WHERE device_id LIKE ?",
                        (f"{site.name}-m%",)).fetchall()
    assert sorted(rows) == sorted((f"{site.name}-m{i}", float(i)) for i in range(40))  # by identity and value
    quarantined = conn.execute("SELECT count(*) FROM quarantine WHERE body LIKE ?", (f"%{site.name}-bad%",))
    assert quarantined.fetchone() == (5,)
    assert integrity(site.buffer_db) == "ok"


def tally_rows(site: Site) -> int:
    if not site.store_db.exists():
        return 0
    conn = sqlite3.connect(f"file:{site.store_db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM iot_measurements WHERE device_id LIKE ?",
                            (f"{site.name}-m%",)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB filesystem (tmpfs) for the gateway's buffer. The tests run as root (CI, and
    scripts/test on a developer's machine under sudo); a mount that fails fails the test."""
    path = tmp_path / "disk"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)], check=True,
                   capture_output=True, timeout=30)
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)


def fill(path) -> None:
    """Fill the filesystem of ``path`` to the last byte, as a runaway log would."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


def _on_disk(tmp_path, unique, site_mqtt, central_mqtt, disk, **buffer) -> tuple[Site, Any]:
    """A Site whose gateway buffers on ``disk``, and its ``edge status``."""
    site = Site(tmp_path, unique, site_mqtt.port, central_mqtt.port,
                overrides={"buffer": {"path": str(disk / "buffer.db"), **buffer}})
    site.buffer_db = disk / "buffer.db"
    url = f"http://127.0.0.1:{site.gw_port}"

    def status() -> subprocess.CompletedProcess:
        return subprocess.run([EDGE, "status", "--url", url], capture_output=True, text=True, timeout=30)

    return site, status


def _recovered(site: Site, status: Any, sim: subprocess.Popen, logged: str, drain_s: float) -> None:
    """Everything the simulator sent stored once, healthy again, ``logged`` in the gateway's
    log, and no crash on the way."""
    assert sim.wait(timeout=240) == 0, sim.stderr.read()
    drained(site, timeout=drain_s)
    assert_exactly_once(site)
    wait_until(lambda: status().returncode == 0, 90, "healthy again")
    log = (site.tmp / "gateway.log").read_text()
    assert logged in log and "Traceback" not in log and "actor_restart" not in log


def test_a_full_disk_stops_acking_loses_nothing_and_ingest_resumes_when_space_frees(
        tmp_path, site_mqtt, central_mqtt, unique, small_disk):
    """Something else fills the buffer's filesystem: the buffer refuses batches instead of
    crashing (it used to crash in a loop until the process gave up), acks nothing it did
    not commit, says so in health and log, starts again on the full disk, and takes the
    rest once space is freed."""
    site, status = _on_disk(tmp_path, unique, site_mqtt, central_mqtt, small_disk)
    try:
        site.start("receiver")
        site.start("gateway")
        sim = site.simulate(count=300 * 60, rate=300, kind="mix")
        wait_until(lambda: tally_rows_any(site) > 0, 60, "readings flowing")
        fill(small_disk / "filler")
        wait_until(lambda: status().returncode == 1 and "disk full" in status().stdout, 60,
                   "edge status: degraded, the buffer's disk full")
        assert site.processes["gateway"].poll() is None, (site.tmp / "gateway.log").read_text()[-3000:]
        # Restarted on the full disk (systemd after an update, say): it starts, says so,
        # and keeps refusing. Opening the buffer used to write the new boot epoch, and the
        # gateway exited 70 at every start until space was freed.
        site.kill("gateway", signal.SIGTERM)
        site.start("gateway", healthy=False)
        wait_until(lambda: status().returncode == 1 and "disk full" in status().stdout, 60,
                   "edge status after the restart: degraded, the buffer's disk full")
        assert site.processes["gateway"].poll() is None, (site.tmp / "gateway.log").read_text()[-3000:]
        (small_disk / "filler").unlink()  # the operator frees space
        _recovered(site, status, sim, "disk full", drain_s=180)
    finally:
        site.stop_all()


def test_a_buffer_that_filled_its_own_disk_drains_and_resumes_by_itself(
        tmp_path, site_mqtt, central_mqtt, unique, small_disk):
    """A quota above the free space (here 1 GiB on 16 MiB) and a long outage: the buffer
    itself fills the disk. Once the server is back, deleting confirmed rows needs room in
    the log too: the buffer gives its reserve back, deletes, and takes the site broker's
    messages again. With no reserve (reserve_bytes = 0) it stays stuck, full."""
    site, status = _on_disk(tmp_path, unique, site_mqtt, central_mqtt, small_disk, reserve_bytes=4 * 1024 * 1024)
    try:
        site.start("receiver")
        site.start("gateway")
        services("down", "central-mqtt")
        sim = site.simulate(count=40_000, rate=2_000, kind="mix")
        wait_until(lambda: "disk full" in status().stdout, 120, "the buffer filling its own disk")
        services("up", "central-mqtt")
        _recovered(site, status, sim, "buffer_reserve_released", drain_s=240)
    finally:
        site.stop_all()
        services("up", "central-mqtt")


def tally_rows_any(site: Site) -> int:
    if not site.store_db.exists():
        return 0
    conn = sqlite3.connect(f"file:{site.store_db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM iot_measurements").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


@pytest.mark.gateway_config({"buffer": {"ttl_s": 3_600.0}})
def test_the_system_clock_set_back_an_hour_and_forward_a_day_under_a_backlog_expires_and_loses_nothing(site):
    """Through a real gateway process whose system clock is stepped (EDGE_FAULT_CLOCK_FILE)
    while a backlog waits for the central broker: with the TTL measured on the system clock
    the day forward expired the whole backlog."""
    offset = site.tmp / "clock-offset"
    offset.write_text("0")
    site.start("receiver")
    site.start("gateway", env={"EDGE_FAULT_CLOCK_FILE": str(offset)})
    sim = site.simulate(count=200 * 30, rate=200, kind="mix")
    wait_until(lambda: site.metrics().get("edge_source_messages_acked_total", 0) > 500, 30, "traffic flowing")
    services("down", "central-mqtt")
    wait_until(lambda: site.metrics()["edge_buffer_depth_records"] > 1_000, 30, "a backlog")
    log = site.tmp / "gateway.log"

    def steps() -> int:
        return log.read_text().count("event=clock_stepped")

    offset.write_text("-3600")
    wait_until(lambda: steps() == 1, 30, "the step back seen by the gateway")
    offset.write_text("86400")
    wait_until(lambda: steps() == 2, 30, "the step forward seen by the gateway")  # the TTL check follows it
    services("up", "central-mqtt")
    assert sim.wait(timeout=120) == 0, sim.stderr.read()
    drained(site)
    assert_exactly_once(site)
    metrics = site.metrics()
    assert metrics["edge_clock_steps_total"] == 2 and metrics["edge_clock_step_seconds"] == pytest.approx(86_400, abs=5)
    assert metrics.get("edge_buffer_records_dropped_total", 0) == 0 and "event=buffer_expired" not in log.read_text()


@pytest.mark.parametrize("role, variable", [("receiver", "EDGE_FAULT_EXIT_BEFORE_CONFIRM"),
                                            ("gateway", "EDGE_FAULT_EXIT_BEFORE_DELETE")])
def test_a_hop_that_dies_between_its_durable_write_and_telling_the_sender_stores_every_kind_once(
        site, role, variable):
    """The receiver exits (os._exit, as kill -9) right after its store's commit, before it
    acks the frames and confirms them: the central broker and the gateway send them again.
    The gateway exits right after a confirmation, before its buffer deleted the rows: it
    sends them again after its restart. F2 frames, v2 telemetry and hellos, homelab readings
    and quarantined messages are each stored once, by identity and by value."""
    fault = {variable: "0.04"}
    site.start("receiver", env=fault if role == "receiver" else None, may_exit=True)
    site.start("gateway", env=fault if role == "gateway" else None, may_exit=True)
    sim = site.simulate(count=150 * 25, rate=150, kind="mix", malformed=3.0)
    exits = keep_dying(site, role, variable, sim)
    assert exits >= 2, f"the {role} died {exits} times: the window was hardly hit"
    drained(site)
    assert_exactly_once(site)
    t = tally(site.ledger, site.store_db)
    wait_until(lambda: tally(site.ledger, site.store_db).quarantined == t.malformed_expected, 30,
               "every malformed message quarantined once")
