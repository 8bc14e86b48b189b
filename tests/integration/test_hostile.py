"""No message can stop the pipeline: hostile and oversized input against real brokers,
real processes (gateway, single-node receiver), ledger-counted. Each numbered case of the
issue is a poison message followed by good traffic: the good all stored once, the poison
quarantined with its reason, no process exits or restarts, health tells the truth."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from harness import (
    EDGE,
    REPO,
    Site,
    assert_exactly_once,
    drained,
    free_port,
    make_server,
    publish,
    quarantined,
    services,
    to_toml,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOW = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
HUGE = "1" + "0" * 400


def v2(device: str, kind: str, seq: int, **fields) -> bytes:
    doc = {"v": 2, "device_id": device, "ts": NOW, "seq": seq, "msg_type": kind.replace("/", "_"), **fields}
    return json.dumps(doc).encode()


def poison(seq: int) -> list[tuple[str, str, bytes, str]]:
    """(what the issue found, topic, payload, the reason it must be quarantined with)."""
    return [
    ("1: hello uptime 1e20", "iot/pz-1/hello",
     v2("pz-1", "hello", seq, fw_version="1", uptime_s=1e20, broker_connections=1, buf_usage_pct=1), "out_of_range"),
    ("1: exit button 2**64", "tele/f2-e4fd45f654be/alarm-mode/J1/exit-buttons",
     b'{"button_pressed": true, "button_id": 18446744073709551616}', "out_of_range"),
    ("1: lone surrogate key", "homelab/energy/pz-2", b'{"power_\\ud800": 1}', "bad_text"),
    ("8: value 10**400", "iot/pz-3/telemetry",
     v2("pz-3", "telemetry", seq, measurements=[]).replace(b'"measurements": []',
                                                        b'"measurements": [{"type": "v", "val": '
                                                        + HUGE.encode() + b"}]"),
     "bad_value"),
    ("6: NUL in a label", "homelab/energy/pz-4", b'{"l\\u0000": 1}', "bad_text"),
    ("7: exit button 2**40 would wrap into pin 0", "tele/f2-abc123def456/alarm-mode/J2/exit-buttons",
     b'{"button_pressed": true, "button_id": 1099511627776}', "out_of_range"),
    ("12: a device clock in 1970", "iot/pz-5/telemetry",
     json.dumps({"v": 2, "device_id": "pz-5", "ts": "1970-01-01T00:00:05Z", "seq": seq, "msg_type": "telemetry",
                 "measurements": [{"type": "v", "val": 1.0}]}).encode(), "implausible_time"),
    ("12: a device clock in 2200", "iot/pz-6/telemetry",
     json.dumps({"v": 2, "device_id": "pz-6", "ts": "2200-01-01T00:00:00Z", "seq": seq, "msg_type": "telemetry",
                 "measurements": [{"type": "v", "val": 1.0}]}).encode(), "implausible_time"),
    ("3: a payload over the decoder's limit", "homelab/energy/pz-7",
     b'{"power": 1, "pad": "' + b"x" * 600_000 + b'"}', "too_large"),
    ]


POISON = poison(1)


def no_restarts(site: Site, role: str = "gateway") -> None:
    assert site.processes[role].poll() is None, f"the {role} exited"
    metrics = site.metrics(role)
    restarts = {k: v for k, v in metrics.items() if k.startswith("edge_actor_restarts_total") and v}
    errors = {k: v for k, v in metrics.items() if k.startswith("edge_actor_errors_total") and v}
    assert restarts == {} and errors == {}, (restarts, errors)


def test_poison_messages_are_quarantined_with_their_reason_and_the_good_traffic_behind_flows(site):
    site.start("receiver")
    site.start("gateway")
    codes = publish(site.site_port, [(topic, payload) for _, topic, payload, _ in POISON])
    assert codes == [0] * len(POISON)  # the site broker took each one: the gateway must cope
    sim = site.simulate(count=1500, rate=500, kind="mix")
    codes = publish(site.site_port, [(topic, payload) for _, topic, payload, _ in poison(2)])  # mid-traffic
    assert codes == [0] * len(POISON)
    assert sim.wait(timeout=60) == 0, sim.stderr.read()
    drained(site)
    assert_exactly_once(site)
    # A quarantined message's identity is its topic and bytes: the poisons sent twice alike
    # (those without a device sequence) are kept once.
    distinct = len({(topic, payload) for _, topic, payload, _ in POISON + poison(2)})
    assert distinct > len(POISON)
    wait_until(lambda: len(quarantined(site.store_db)) >= distinct, 30, "every poison in quarantine")
    kept = quarantined(site.store_db)
    assert len(kept) == distinct
    by_topic = {}
    for topic, reason, _record in kept:
        by_topic.setdefault(topic, set()).add(reason)
    for case, topic, _payload, reason in POISON:
        assert by_topic.get(topic) == {reason}, (case, by_topic.get(topic))
    big = next(r for t, _, r in kept if t == "homelab/energy/pz-7")
    assert len(bytes.fromhex(big["payload_hex"])) == 4096 and "sha256" in big["message"]
    no_restarts(site)


def test_a_payload_over_the_site_brokers_limit_is_refused_there_and_the_gateway_never_sees_it(site):
    site.start("receiver")
    site.start("gateway")
    # Mosquitto 2.0 refuses it (message_size_limit): an MQTT v5 client is disconnected with
    # a protocol error and never gets the PUBACK. Either way it goes no further.
    (code,) = publish(site.site_port, [("homelab/energy/huge", b"x" * 2_000_000)], timeout=5)
    assert code != 0, "the site broker must refuse a 2 MB message (message_size_limit)"
    sim = site.simulate(count=300, rate=0, kind="v2")
    assert sim.wait(timeout=60) == 0, sim.stderr.read()
    drained(site)
    assert_exactly_once(site)
    assert quarantined(site.store_db) == []
    no_restarts(site)


@pytest.mark.gateway_config({"buffer": {"quota_bytes": 100_000, "policy": "reject"}})
def test_a_message_bigger_than_the_whole_quota_never_blocks_ingest(site):
    site.start("receiver")
    site.start("gateway")
    junk = b"{" + b"x" * 200_000  # not JSON, within the decoder's limit: quarantined whole
    assert publish(site.site_port, [("homelab/energy/quota-buster", junk)]) == [0]
    sim = site.simulate(count=300, rate=100, kind="v2")
    assert sim.wait(timeout=60) == 0, sim.stderr.read()
    drained(site)
    assert_exactly_once(site)
    assert [reason for topic, reason, _ in quarantined(site.store_db)] == ["bad_json"]
    no_restarts(site)


def test_retained_garbage_is_quarantined_once_not_again_at_every_reconnect(site):
    site.start("receiver")
    site.start("gateway")
    topic = f"homelab/energy/{site.name}-retained"
    try:
        assert publish(site.site_port, [(topic, b"not json")], retain=True) == [0]
        wait_until(lambda: len(quarantined(site.store_db)) == 1, 30, "the retained garbage in quarantine")
        for _ in range(2):  # the gateway restarts and resubscribes on its persistent session
            site.kill("gateway", signal.SIGTERM)
            site.start("gateway")
        sim = site.simulate(count=200, rate=0, kind="v2")
        assert sim.wait(timeout=60) == 0, sim.stderr.read()
        drained(site)
        assert len(quarantined(site.store_db)) == 1
    finally:
        publish(site.site_port, [(topic, b"")], retain=True)  # clear the retained message


def test_a_gateway_pointed_at_brokers_that_are_not_there_says_so_in_its_log_health_and_status(tmp_path, unique):
    dead_site, dead_central, metrics_port = free_port(), free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(to_toml({
        "node": {"id": unique}, "metrics": {"port": metrics_port},
        "site_broker": {"port": dead_site, "reconnect_max_s": 2.0},
        "central_broker": {"port": dead_central, "reconnect_max_s": 2.0},
        "decoder": {"registry": str(REPO / "fixtures" / "registry.toml")},
        "buffer": {"path": str(tmp_path / "buffer.db")}, "commands": {"path": str(tmp_path / "c.db")}}))
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen([EDGE, "gateway", "--config", str(config)], stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{metrics_port}"
        wait_until(lambda: "Connection refused" in (tmp_path / "gateway.log").read_text(), 15,
                   "the refused connections in the log")
        time.sleep(6)  # several retries: still logged once per connection
        text = (tmp_path / "gateway.log").read_text()
        refused = [line for line in text.splitlines() if "event=degraded" in line and "refused" in line]
        assert len(refused) == 3, refused  # site broker, its commands client, central broker: once each
        assert f"127.0.0.1:{dead_site}" in text and f"127.0.0.1:{dead_central}" in text
        status = subprocess.run([EDGE, "status", "--url", url], capture_output=True, text=True, timeout=30)
        assert status.returncode == 1, status.stdout
        assert "DEGRADED" in status.stdout and "site broker:" in status.stdout
        assert "central broker (uplink):" in status.stdout
        assert "Traceback" not in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == 0


# ------------------------------------------------------------------ the server (Kafka, PostgreSQL)

@pytest.fixture
def server(site, kafka, pg_dsn):
    srv = make_server(site, kafka, pg_dsn, supervision={"stall_s": 5.0})
    yield srv
    srv.drop()


class AckTopic:
    """What the receiver answers a gateway on edge/<gw>/ack, by (boot epoch, first seq)."""

    def __init__(self, port: int, gateway: str) -> None:
        import paho.mqtt.client as mqtt

        self.answers: dict[tuple[int, int], dict] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"edge/{gateway}/ack", qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        doc = json.loads(message.payload)
        self.answers[(doc["boot_epoch"], doc["first_seq"])] = doc

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_uplink_frames_with_a_valid_crc_and_records_of_any_type_never_stop_the_server(site, server):
    """The issue's fuzz found 246 of 3,735 decodable frames crashing the receiver. Here: 1,500
    hostile frames (records of any type, damaged frames) between 150 good ones."""
    from datetime import UTC, datetime, timedelta

    from hostile import Hostile

    from edge.codecs import uplink
    from edge.codecs.errors import UplinkFrameError
    from edge.codecs.records import Measurement

    gateway = f"{site.name}-fake"
    site.start("server")
    acks = AckTopic(site.central_port, gateway)
    hostile, start = Hostile(seed=16), datetime.now(UTC).replace(microsecond=0)
    frames, good, refused, rejected = [], {}, set(), 0
    for i in range(1650):
        first = 1 + 10 * i
        if i % 11 == 0:
            records = [Measurement(start + timedelta(seconds=i, milliseconds=j), f"{site.name}-dev", None, None,
                                   None, "v", float(i * 10 + j), "V", "t") for j in range(3)]
            frame = uplink.encode(gateway, 1, first, records)
            good[(1, first)] = records
        else:
            frame = hostile.frame(gateway, 1, first)
            try:
                uplink.decode(frame)
                good[(1, first)] = None  # valid by chance: stored and confirmed like any other
            except UplinkFrameError as exc:
                rejected += 1
                if exc.frame is not None:
                    refused.add((1, first))
        frames.append((f"edge/{gateway}/up", frame))
    try:
        assert publish(site.central_port, frames) == [0] * len(frames)
        wait_until(lambda: all(k in acks.answers for k in good) and all(k in acks.answers for k in refused),
                   90, "an answer for every good frame and every frame refused for good")
        assert {k for k, a in acks.answers.items() if a["status"] == "ok"} == set(good)
        assert {k for k, a in acks.answers.items() if a["status"] == "rejected"} == refused
        assert all(acks.answers[k]["reason"] for k in refused)
        expected = sum(1 for r in good.values() if r)
        wait_until(lambda: server.query("SELECT count(*) FROM iot_measurements WHERE device_id = %s",
                                        f"{site.name}-dev")[0][0] == 3 * expected, 60, "the good frames' rows")
        metrics = site.metrics("server")
        assert sum(v for k, v in metrics.items() if k.startswith("edge_receiver_frames_rejected_total")) == rejected
        no_restarts(site, "server")
    finally:
        acks.close()


def test_rows_no_column_can_take_and_rows_the_database_refuses_go_to_the_dead_letters_alone(site, server):
    """One bad row used to dead-letter the 20 good rows of its Kafka record with it."""
    import msgpack
    import psycopg
    from kafka import KafkaConsumer, KafkaProducer

    with psycopg.connect(server.dsn, autocommit=True) as conn:  # a row only the database refuses
        conn.execute("ALTER TABLE iot_measurements ADD CONSTRAINT no_evil CHECK (label <> 'evil')")
    site.start("server")
    us = int(time.time()) * 1_000_000

    def row(n: int, label: str = "v", pin: int = 1) -> list:
        return [n, us + n, f"{site.name}-rows", "sensor-mode", 1, pin, label, float(n), "V", "t"]

    values = [
        [row(n, label="a\x00b") if n == 10 else row(n) for n in range(21)],  # NUL: caught before the DB
        [row(n, pin=2**40) if n == 30 else row(n) for n in range(21, 42)],  # would wrap into an int4
        [row(n, label="evil") if n == 50 else row(n) for n in range(42, 63)],  # the DB refuses it
    ]
    producer = KafkaProducer(bootstrap_servers=server.kafka, acks="all")
    for rows in values:
        producer.send(server.topics["decoded"], key=b"dev", value=msgpack.packb(
            {"v": 1, "src": f"{site.name}/1", "r": rows})).get(timeout=30)
    producer.close()
    wait_until(lambda: server.query("SELECT count(*) FROM iot_measurements")[0][0] == 60, 60,
               "the 60 good rows stored")
    assert server.query("SELECT count(*) FROM iot_measurements WHERE pin_position <> 1")[0][0] == 0
    consumer = KafkaConsumer(server.topics["decoded"] + ".dlq", bootstrap_servers=server.kafka,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    dead = []
    deadline = time.monotonic() + 30
    while len(dead) < 3 and time.monotonic() < deadline:
        dead += [(dict(r.headers), msgpack.unpackb(r.value)) for r in consumer]
    consumer.close()
    assert sorted((h["dlq_reason"].decode(), [x[0] for x in v["r"]]) for h, v in dead) == [
        ("bad_text", [10]), ("db_23514", [50]), ("out_of_range", [30])]
    no_restarts(site, "server")


def test_kafka_refusing_a_message_for_good_dead_letters_it_and_the_delivery_goes_on(kafka, unique):
    from kafka import KafkaConsumer

    from edge.codecs.stream import Outgoing
    from edge.config import KafkaConfig
    from edge.io.kafka import Delivery, ensure_topics, producer

    cfg = KafkaConfig(bootstrap_servers=(kafka.address,), decoded_topic=f"{unique}.d", raw_topic=f"{unique}.r",
                      events_topic=f"{unique}.e")
    ensure_topics(cfg, f"{unique}-admin")  # max.message.bytes 1 MiB
    delivery = Delivery(lambda: producer(cfg, unique))
    started = time.monotonic()
    try:
        delivery.deliver([Outgoing(cfg.raw_topic, b"k", b"small-1", []),
                          Outgoing(cfg.raw_topic, b"k", b"x" * 2_000_000, [("mqtt_topic", b"t/1")]),
                          Outgoing(cfg.raw_topic, b"k", b"small-2", [])])
    finally:
        delivery.close()
    assert time.monotonic() - started < 30, "a message Kafka refuses is never retried"
    consumer = KafkaConsumer(cfg.raw_topic, cfg.raw_topic + ".dlq", bootstrap_servers=kafka.address,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    got = {}
    for r in consumer:
        got.setdefault(r.topic, []).append((r.value, dict(r.headers)))
    consumer.close()
    assert sorted(v for v, _ in got[cfg.raw_topic]) == [b"small-1", b"small-2"]
    ((value, headers),) = got[cfg.raw_topic + ".dlq"]
    assert value == b"x" * 4096 and headers["mqtt_topic"] == b"t/1"
    assert headers["dlq_reason"] == b"kafka_MessageSizeTooLargeError" and b"sha256" in headers["dlq_detail"]


def test_edge_server_with_kafka_unreachable_exits_69_with_one_line_after_a_bounded_wait(tmp_path, unique):
    config = tmp_path / "server.toml"
    config.write_text(to_toml({"node": {"id": unique, "role": "server"}, "metrics": {"port": free_port()},
                               "kafka": {"bootstrap_servers": [f"127.0.0.1:{free_port()}"],
                                         "connect_timeout_s": 3.0}}))
    started = time.monotonic()
    result = subprocess.run([EDGE, "server", "--config", str(config)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 69, result.stderr
    assert time.monotonic() - started < 30
    lines = [line for line in result.stderr.splitlines() if line.startswith("edge server:")]
    assert len(lines) == 1 and "not reachable within 3 s" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(900)
@pytest.mark.parametrize("service", ["postgres", "kafka"])
def test_a_service_frozen_for_60s_turns_health_degraded_and_then_everything_arrives_once(site, server, service):
    """PostgreSQL or Kafka that answers nothing for 60 s (SIGSTOP: sockets open, no
    replies, as a hung host). A frozen database used to leave /healthz ok, the lag gauge
    frozen and nothing in the log. Every reading arrives once after SIGCONT, and the
    process recovers by itself (no thread blocked for good)."""
    from harness import assert_exactly_once_pg, settle

    site.start("server")
    site.start("gateway")
    sim = site.simulate(14_000, 200)  # 70 s of traffic around the 60 s freeze
    url = f"http://127.0.0.1:{site.rx_port}"

    def status() -> subprocess.CompletedProcess:
        return subprocess.run([EDGE, "status", "--url", url], capture_output=True, text=True, timeout=30)

    try:
        wait_until(lambda: server.query("SELECT count(*) FROM iot_measurements")[0][0] > 0, 60, "rows flowing")
        services("freeze", service)
        frozen_at = time.monotonic()
        wait_until(lambda: status().returncode == 1, 45, f"edge status: degraded, {service} frozen")
        degraded = status().stdout
        time.sleep(max(0.0, 60 - (time.monotonic() - frozen_at)))  # the fault's length
        log = (site.tmp / "server.log").read_text()
        if service == "postgres":
            assert "stalled" in degraded, degraded
            stalls = [line for line in log.splitlines() if "event=degraded" in line and "sink stalled" in line]
            assert len(stalls) == 1, stalls  # logged once, as it began
    finally:
        services("thaw", service)
    out, err = sim.communicate(timeout=180)
    assert sim.returncode == 0, err
    settle(site, server, 240)
    assert_exactly_once_pg(site, server)
    wait_until(lambda: status().returncode == 0, 120, "healthy again")
    no_restarts(site, "server")
    no_restarts(site, "gateway")


def _topic_count(kafka: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=kafka)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends, starts = consumer.end_offsets(parts), consumer.beginning_offsets(parts)
        return sum(ends[p] - starts[p] for p in parts)
    finally:
        consumer.close()


@pytest.mark.timeout(600)
def test_thousands_of_hostile_messages_through_gateway_and_server_stop_nothing_and_lose_nothing(site, server):
    """The system fuzz: 3,000 generated hostile messages (grammar of the field's shapes with
    huge, special and wrongly typed values, surrogates, NUL, byte flips, oversize) among
    3,000 good ones from the simulator, through a real gateway, central broker, Kafka and
    PostgreSQL. Every good reading stored once; every bad message kept with a reason."""
    from harness import assert_exactly_once_pg, settle
    from hostile import Hostile

    site.start("server")
    site.start("gateway")

    def gateway_count(name: str) -> float:
        return sum(v for k, v in site.metrics().items() if k.startswith(name))
    time.sleep(1)
    retained = gateway_count("edge_source_messages_received_total")  # earlier tests' Last Wills
    sim = site.simulate(3000, 300, kind="mix")
    hostile = list(Hostile(seed=1616).messages(3000))
    codes = []
    for i in range(0, len(hostile), 100):
        codes += publish(site.site_port, hostile[i:i + 100])
    # All within the site broker's limit; 16 ("no matching subscribers"): a topic the gateway
    # does not subscribe to (assets/...), which it never sees.
    assert set(codes) <= {0, 16}
    delivered = codes.count(0)
    out, err = sim.communicate(timeout=120)
    assert sim.returncode == 0, err
    settle(site, server, 180)
    assert_exactly_once_pg(site, server)
    wait_until(lambda: gateway_count("edge_source_messages_acked_total") == retained + 3000 + delivered, 60,
               "every message acked")
    quarantined = gateway_count("edge_decoder_messages_quarantined_total")
    assert quarantined > 0.6 * delivered
    raw = server.topics["raw"]
    wait_until(lambda: _topic_count(server.kafka, raw) >= quarantined, 60,
               "every quarantined message in the raw topic")
    # The server decodes them again with the same rules: each one is dead-lettered with a reason.
    wait_until(lambda: _topic_count(server.kafka, raw + ".dlq") >= quarantined, 90,
               "every quarantined message dead-lettered by the stream decoder")
    no_restarts(site, "gateway")
    no_restarts(site, "server")
    for role in ("gateway", "server"):
        assert "Traceback" not in (site.tmp / f"{role}.log").read_text()


def test_a_broker_that_refuses_a_message_for_good_does_not_take_its_neighbours_with_it(kafka, unique):
    """A refusal by the broker (a topic whose max.message.bytes is below what the producer
    allows) is fatal to kafka-python's idempotent producer: every batch after it fails with
    the same error. Each message is then tried alone: only the refused one is dead-lettered."""
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient, NewTopic

    from edge.codecs.stream import Outgoing
    from edge.config import KafkaConfig
    from edge.io.kafka import Delivery, producer

    topic = f"{unique}.small"
    admin = KafkaAdminClient(bootstrap_servers=kafka.address)
    admin.create_topics([NewTopic(topic, 3, 1, topic_configs={"max.message.bytes": "100000"}),
                         NewTopic(topic + ".dlq", 1, 1)])
    admin.close()
    cfg = KafkaConfig(bootstrap_servers=(kafka.address,))
    delivery = Delivery(lambda: producer(cfg, unique))
    messages = [Outgoing(topic, f"k{i}".encode(), f"small-{i}".encode(), []) for i in range(20)]
    messages.insert(7, Outgoing(topic, b"k7", b"x" * 300_000, []))
    try:
        delivery.deliver(messages)
    finally:
        delivery.close()
    consumer = KafkaConsumer(topic, topic + ".dlq", bootstrap_servers=kafka.address,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    got: dict[str, list[bytes]] = {}
    for r in consumer:
        got.setdefault(r.topic, []).append(r.value)
    consumer.close()
    assert sorted(got[topic]) == sorted(f"small-{i}".encode() for i in range(20))
    assert got[topic + ".dlq"] == [b"x" * 4096]
