"""The distributed server against real Mosquitto, Kafka and PostgreSQL, ledger-checked:
simulator -> site broker -> gateway -> central broker -> receiver -> Kafka -> sink ->
PostgreSQL, and the direct path (bridge -> Kafka -> stream decoder -> sink)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from harness import EDGE, REPO, Server, Site, keep_dying, make_server, services, settle, tally_pg, to_toml, wait_until
from harness import assert_exactly_once_pg as assert_exactly_once

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def server(site, kafka, pg_dsn):
    srv = make_server(site, kafka, pg_dsn)
    yield srv
    srv.drop()


@pytest.fixture
def server_on_both(request, site, kafka, storage_dsn):
    """The server on each storage: plain PostgreSQL, then TimescaleDB."""
    srv = make_server(site, kafka, storage_dsn)
    _assert_storage(request, srv)
    yield srv
    srv.drop()


def _assert_storage(request, server: Server) -> None:
    """The database took the storage the test is parametrized with (its migrate chose)."""
    want = request.node.callspec.params["storage_dsn"]
    assert server.query("SELECT value FROM edge_settings WHERE key = 'storage'") == [(want,)]


def run_sim(site: Site, count: int, rate: float, **kw) -> None:
    sim = site.simulate(count, rate, **kw)
    out, err = sim.communicate(timeout=count / rate + 120)
    assert sim.returncode == 0, err


def test_gateway_to_postgres_every_ledger_record_once(site, server_on_both):
    server = server_on_both
    site.start("server")
    site.start("gateway")
    run_sim(site, 3000, 600)
    settle(site, server)
    assert_exactly_once(site, server)
    t = tally_pg(site.ledger, server)
    assert t.events_stored == t.events_expected > 0  # every hello in device_events, once
    devices = server.query("SELECT count(*) FROM device_state WHERE last_seen IS NOT NULL")[0][0]
    assert devices >= 20
    fw = server.query("SELECT count(*) FROM device_state WHERE fw_version IS NOT NULL")[0][0]
    assert fw > 0
    wait_until(lambda: _lag(site) == 0, 30, "consumer lag back to 0")
    metrics = site.metrics("server")
    assert metrics['edge_sink_rows_total'] == t.expected_rows
    assert any(k.startswith("edge_sink_db_write_seconds_count") and v > 0 for k, v in metrics.items())


def _lag(site: Site) -> float:
    lags = {k: v for k, v in site.metrics("server").items() if k.startswith("edge_kafka_consumer_lag{")}
    return sum(lags.values()) if lags else -1


class AckWatch:
    """Records when confirmations reach the gateway's ack topic on the central broker."""

    def __init__(self, port: int, gateway: str) -> None:
        import paho.mqtt.client as mqtt

        self.times: list[float] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.times.append(time.monotonic())
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"edge/{gateway}/ack", qos=0)
        self.client.loop_start()

    def between(self, start: float, end: float) -> int:
        return sum(1 for t in self.times if start <= t <= end)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.timeout(600)
def test_kafka_killed_for_60s_no_confirmation_while_down_all_arrive_once(site, server):
    site.start("server")
    site.start("gateway")
    watch = AckWatch(site.central_port, site.name)
    sim = site.simulate(16_000, 200)
    try:
        wait_until(lambda: len(watch.times) >= 20, 60, "confirmations flowing before the outage")
        services("kill", "kafka")
        killed = time.monotonic()
        time.sleep(60)
        restarting = time.monotonic()
        services("up", "kafka")
        # Settle margin: deliveries in flight at the moment of the kill.
        assert watch.between(killed + 3, restarting) == 0, "a batch was confirmed while Kafka was down"
        out, err = sim.communicate(timeout=180)
        assert sim.returncode == 0, err
        settle(site, server, 240)
        assert_exactly_once(site, server)
        assert watch.between(restarting, time.monotonic()) > 0  # the backlog was confirmed after
    finally:
        if sim.poll() is None:
            sim.kill()
        services("up", "kafka")
        watch.close()


def _committed(server: Server, group: str) -> int:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=server.kafka)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
        return sum(o.offset for o in offsets.values())
    finally:
        admin.close()


@pytest.mark.timeout(600)
def test_postgres_down_60s_offsets_never_pass_the_database_and_lag_returns_to_0(site, server):
    site.start("server")
    site.start("gateway")
    sim = site.simulate(15_000, 200)
    group = f"{site.name}-sink"
    try:
        wait_until(lambda: _committed(server, group) > 0, 60, "the sink committing offsets")
        services("kill", "postgres")  # immediate mode: no clean shutdown
        time.sleep(3)  # a transaction in flight at the kill fails; its offsets never move
        frozen = _committed(server, group)
        samples = []
        for _ in range(11):
            time.sleep(5)
            samples.append(_committed(server, group))
        assert all(s == frozen for s in samples), f"offsets moved while PostgreSQL was down: {frozen} -> {samples}"
        assert site.metrics("server").get(f'edge_consumer_paused{{group="{group}"}}') == 1.0
    finally:
        services("up", "postgres")
    out, err = sim.communicate(timeout=180)
    assert sim.returncode == 0, err
    settle(site, server, 240)
    assert_exactly_once(site, server)
    wait_until(lambda: _lag(site) == 0, 60, "consumer lag back to 0")
    assert _committed(server, group) > frozen


@pytest.mark.timeout(600)
def test_sink_killed_between_database_commit_and_offset_commit_no_duplicate_rows(request, site, kafka, storage_dsn):
    server = make_server(site, kafka, storage_dsn, server={"bridge": False, "sink": False})
    _assert_storage(request, server)
    sink_toml = site.tmp / "sink.toml"
    sink_port = _port()
    cfg = dict(server.config)
    cfg["node"] = {"id": f"{site.name}-sink", "role": "server"}
    cfg["metrics"] = {"port": sink_port}
    cfg["server"] = {"receiver": False, "bridge": False, "decoder": False, "sink": True}
    # A killed member's partitions move after 10 s (the broker's minimum is 6 s).
    cfg["kafka"] = {**cfg["kafka"], "client_id": f"{site.name}-sinkproc", "session_timeout_ms": 10_000}
    cfg["sink"] = {**cfg["sink"], "batch_rows": 20, "batch_ms": 50.0}
    sink_toml.write_text(to_toml(cfg))
    proc = None
    try:
        site.start("server")
        site.start("gateway")
        sim = site.simulate(6000, 400)
        faulty = {**os.environ, "EDGE_FAULT_EXIT_BEFORE_COMMIT": "0.5"}
        log = open(site.tmp / "sink.log", "ab")
        exits = 0
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            # Four deaths in the window, then a sink that finishes the job.
            proc = subprocess.Popen([EDGE, "server", "--config", str(sink_toml)],
                                    stdout=log, stderr=log, env=faulty if exits < 4 else None)
            # Until the fault fires, or until everything is stored (then stop it).
            while proc.poll() is None and time.monotonic() < deadline and not (
                    sim.poll() is not None and not tally_pg(site.ledger, server).missing):
                time.sleep(0.5)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
                break
            assert proc.returncode == 86, (site.tmp / "sink.log").read_text()[-2000:]
            exits += 1
        assert sim.wait(timeout=60) == 0
        assert exits == 4, f"the fault fired {exits} times"
        settle(site, server, 30)
        assert_exactly_once(site, server)
        replays = (site.tmp / "sink.log").read_text().count("fault_injected")
        assert replays == exits
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()  # a sink left running would compete with the next test's
            proc.wait(timeout=30)
        server.drop()


def test_a_receiver_that_dies_between_its_kafka_write_and_its_confirmation_stores_every_kind_once(site, server):
    """The server's receiver exits (os._exit, as kill -9) once Kafka acknowledged its frames
    and before it acks them to the central broker and confirms them: the frames come again
    and are produced twice. F2 frames, v2 telemetry and hellos and homelab readings reach
    PostgreSQL once each, by identity and by value."""
    site.start("server", env={"EDGE_FAULT_EXIT_BEFORE_CONFIRM": "0.04"}, may_exit=True)
    site.start("gateway")
    sim = site.simulate(150 * 25, 150, kind="mix")
    exits = keep_dying(site, "server", "EDGE_FAULT_EXIT_BEFORE_CONFIRM", sim, exits_max=5)
    assert exits >= 2, f"the receiver died {exits} times: the window was hardly hit"
    settle(site, server)
    assert_exactly_once(site, server)


def _port() -> int:
    from harness import free_port
    return free_port()


def test_poison_records_go_to_the_dead_letter_topics_with_reasons_while_the_rest_flows(site, server):
    import msgpack
    from kafka import KafkaConsumer, KafkaProducer

    site.start("server")
    site.start("gateway")
    producer = KafkaProducer(bootstrap_servers=server.kafka, acks="all")
    decoded = server.topics["decoded"]
    producer.send(decoded, key=b"x", value=b"\xc1 not msgpack").get(timeout=30)
    nul = {"v": 1, "src": "poison/1", "r": [[0, 1_700_000_000_000_000, "dev-nul", None, None, None,
                                                "bad\x00label", 1.0, "V", "t"]]}
    producer.send(decoded, key=b"dev-nul", value=msgpack.packb(nul)).get(timeout=30)
    producer.close()
    run_sim(site, 2000, 500, malformed=5.0)
    settle(site, server)
    assert_exactly_once(site, server)

    consumer = KafkaConsumer(bootstrap_servers=server.kafka, auto_offset_reset="earliest",
                             group_id=f"{site.name}-check", consumer_timeout_ms=5000)
    consumer.subscribe([decoded + ".dlq", server.topics["raw"] + ".dlq"])
    dead: dict[str, list[dict]] = {}
    deadline = time.monotonic() + 60
    malformed = sum(1 for line in site.ledger.read_text().splitlines() if json.loads(line).get("malformed"))
    while time.monotonic() < deadline and (len(dead.get(decoded + ".dlq", [])) < 2
                                           or len(dead.get(server.topics["raw"] + ".dlq", [])) < malformed):
        for rec in consumer:
            dead.setdefault(rec.topic, []).append({k: v.decode() for k, v in rec.headers})
    consumer.close()
    sink_dead = dead[decoded + ".dlq"]
    # Dead letters are at least once: a rebalance before the offset commit replays them.
    by_source = {h["dlq_source"]: h["dlq_reason"] for h in sink_dead}
    assert sorted(by_source.values()) == ["bad_envelope", "bad_text"], sink_dead  # NUL in a label
    assert all(src.startswith(decoded + "/") for src in by_source)
    raw_dead = dead[server.topics["raw"] + ".dlq"]
    assert malformed > 0 and len(raw_dead) >= malformed
    assert all(h["dlq_reason"] and h["mqtt_topic"] and h.get("gateway") == site.name for h in raw_dead)
    assert server.query("SELECT count(*) FROM iot_measurements WHERE device_id = 'dev-nul'")[0][0] == 0


def test_direct_bridge_homelab_and_f2_cmnd_reach_the_table(site, kafka, pg_dsn):
    server = make_server(site, kafka, pg_dsn, server={"bridge": True, "receiver": False})
    # The simulator's F2 controllers report on tele/; the field's older firmware on cmnd/.
    server.config["bridge"]["mappings"].insert(0, f"tele/# -> {server.topics['raw']}")
    (site.tmp / "server.toml").write_text(to_toml(server.config))
    try:
        site.start("server")
        # Devices on the central broker itself, no gateway in between.
        (site.tmp / "direct").mkdir()
        central = Site(site.tmp / "direct", site.name, site.central_port, site.central_port)
        for kind, seed in (("homelab", 1), ("f2", 2)):
            run_sim(central, 600, 300, kind=kind, devices=4, seed=seed)
        settle(central, server, 60)
        assert_exactly_once(central, server)
        _publish_cmnd_reports(site.central_port)
        wait_until(lambda: server.query("SELECT count(*) FROM iot_measurements WHERE topic LIKE 'cmnd/%%'")[0][0]
                   == 3, 60, "the F2 cmnd/ report's three data points in the table")
        topics = {t for (t,) in server.query("SELECT DISTINCT split_part(topic, '/', 1) FROM iot_measurements")}
        assert topics == {"homelab", "tele", "cmnd"}
        sources = server.query("SELECT count(*) FROM iot_measurements WHERE source LIKE 'kafka:%%'")[0][0]
        assert sources == tally_pg(central.ledger, server).stored_rows + 3
        bridged = {k: v for k, v in site.metrics("server").items() if k.startswith("edge_bridge_messages_total")}
        assert sum(bridged.values()) == 1201
    finally:
        server.drop()


def test_one_v2_event_published_to_both_brokers_is_stored_once(site, kafka, pg_dsn):
    """A device that publishes to the site broker (through the gateway) and to the central
    broker (through the bridge and the stream decoder): its events have one identity."""
    import paho.mqtt.client as mqtt

    server = make_server(site, kafka, pg_dsn, server={"bridge": True})
    server.config["bridge"]["mappings"].insert(0, f"iot/# -> {server.topics['raw']}")
    (site.tmp / "server.toml").write_text(to_toml(server.config))
    device = f"{site.name}-pm"
    now = time.time()
    hellos = [json.dumps({"v": 2, "device_id": device, "seq": seq, "msg_type": "hello",
                          "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + seq)),
                          "fw_version": "2.4.1", "uptime_s": 12 + seq, "broker_connections": 1,
                          "buf_usage_pct": 3.5}).encode() for seq in range(3)]
    try:
        site.start("server")
        site.start("gateway")
        for port in (site.site_port, site.central_port):
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            client.connect("127.0.0.1", port)
            client.loop_start()
            for payload in hellos:
                client.publish(f"iot/{device}/hello", payload, qos=1).wait_for_publish(10)
            client.disconnect()
            client.loop_stop()

        # Both paths reached the sink: it was handed every event twice (hellos only here).
        wait_until(lambda: site.metrics("server").get("edge_sink_events_total", 0) >= 6, 60,
                   "the sink handed the events of both paths")
        rows = server.query("SELECT body->>'seq', count(*) FROM device_events WHERE device_id = %s "
                            "GROUP BY 1 ORDER BY 1", device)
        assert rows == [("0", 1), ("1", 1), ("2", 1)]
    finally:
        server.drop()


def _publish_cmnd_reports(port: int) -> None:
    """The field example (protocols.md): an Environmental Sensor report on cmnd/."""
    import paho.mqtt.client as mqtt

    fixture = REPO / "fixtures" / "codecs" / "f2-environmental-sensor-field-example"
    topic, doc = (fixture / "topic").read_text().strip(), json.loads((fixture / "payload").read_bytes())
    # Reported now: the field example's own time (2023) is outside the decoder's plausibility window.
    doc["timestamp"] = time.strftime("%Y-%m-%d %H:%M:%S.000000", time.gmtime())
    payload = json.dumps(doc).encode()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


@pytest.mark.timeout(600)
def test_two_server_processes_share_partitions_and_survive_one_killed(site, server):
    cfg = dict(server.config)
    port_b = _port()
    cfg["node"] = {"id": f"{site.name}-srv-b", "role": "server"}
    cfg["metrics"] = {"port": port_b}
    cfg["central_broker"] = {**cfg["central_broker"], "client_id": f"{site.name}-receiver-b"}
    cfg["kafka"] = {**cfg["kafka"], "client_id": f"{site.name}-srv-b"}
    (site.tmp / "server_b.toml").write_text(to_toml(cfg))
    site.start("server")
    site.start("gateway")
    log = open(site.tmp / "server_b.log", "ab")
    import harness
    b = subprocess.Popen([harness.EDGE, "server", "--config", str(site.tmp / "server_b.toml")],
                         stdout=log, stderr=log)
    try:
        wait_until(lambda: harness._healthy(port_b), 30, "second server healthy")
        sim = site.simulate(12_000, 300)
        # Both members own sink partitions (3 decoded + 3 events between two of them).
        wait_until(lambda: "partitions_assigned" in (site.tmp / "server_b.log").read_text()
                   and _assigned(site.tmp / "server.log") and _assigned(site.tmp / "server_b.log"),
                   60, "partitions shared by both processes")
        time.sleep(10)
        site.kill("server")  # SIGKILL: its partitions and uncommitted batches move to b
        out, err = sim.communicate(timeout=180)
        assert sim.returncode == 0, err
        settle(site, server, 240)
        assert_exactly_once(site, server)
        harness.drop_session(site.central_port, f"{site.name}-receiver-b")
    finally:
        b.send_signal(signal.SIGTERM)
        b.wait(timeout=30)


def _assigned(log) -> bool:
    """The sink of this process got at least one partition in its latest assignment."""
    lines = [line for line in log.read_text().splitlines()
             if "partitions_assigned" in line and "actor=sink" in line]
    return bool(lines) and "partitions=[]" not in lines[-1]


@pytest.mark.timeout(600)
def test_a_rebalance_while_a_batch_waits_for_the_database_loses_nothing(site, server):
    """The sink holds an uncommitted batch (database down) when another member joins its
    group: the batch is dropped uncommitted and must be read again, not skipped."""
    from kafka import KafkaConsumer

    site.start("server")
    site.start("gateway")
    sim = site.simulate(4000, 400)
    group = f"{site.name}-sink"
    paused = f'edge_consumer_paused{{group="{group}"}}'
    intruder = None
    try:
        wait_until(lambda: server.query("SELECT count(*) FROM iot_measurements")[0][0] > 0, 60,
                   "rows flowing into PostgreSQL")
        services("kill", "postgres")
        wait_until(lambda: site.metrics("server").get(paused) == 1.0, 60, "the sink paused")
        time.sleep(3)  # more records wait in its batch
        intruder = KafkaConsumer(bootstrap_servers=server.kafka, group_id=group, enable_auto_commit=False,
                                 auto_offset_reset="earliest", session_timeout_ms=10_000)
        intruder.subscribe([server.topics["decoded"], server.topics["events"]])
        deadline = time.monotonic() + 60
        while not intruder.assignment() and time.monotonic() < deadline:
            intruder.poll(timeout_ms=200)  # joins: the sink's partitions are reassigned
        assert intruder.assignment(), "the second member never got partitions"
        intruder.close(autocommit=False)  # leaves without committing: another rebalance
        intruder = None
        wait_until(lambda: "batch_dropped_on_rebalance" in (site.tmp / "server.log").read_text(), 30,
                   "the sink dropped its uncommitted batch")
    finally:
        if intruder is not None:
            intruder.close(autocommit=False)
        services("up", "postgres")
    out, err = sim.communicate(timeout=120)
    assert sim.returncode == 0, err
    settle(site, server, 180)
    assert_exactly_once(site, server)
