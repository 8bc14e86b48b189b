"""The services the suite depends on are the real ones, and behave as the runtime needs."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

pytestmark = pytest.mark.integration


def test_kafka_produces_with_acks_all_and_consumes_every_record(kafka, unique):
    admin = KafkaAdminClient(bootstrap_servers=kafka.address, client_id=unique)
    admin.create_topics([NewTopic(unique, num_partitions=3, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka.address, acks="all", linger_ms=5)
    futures = [producer.send(unique, key=b"dev-%d" % (i % 7), value=b"%d" % i) for i in range(300)]
    metadata = [f.get(timeout=30) for f in futures]
    producer.close()
    assert {m.partition for m in metadata} <= {0, 1, 2}

    consumer = KafkaConsumer(
        bootstrap_servers=kafka.address,
        group_id=unique,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    consumer.subscribe([unique])
    seen: list[int] = []
    deadline = time.monotonic() + 30
    while len(seen) < 300 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            seen.extend(int(r.value) for r in records)
    consumer.commit()
    committed = sum(consumer.committed(TopicPartition(unique, p)) or 0 for p in range(3))
    consumer.close()
    assert sorted(seen) == list(range(300))
    assert committed == 300


class _Collector:
    def __init__(self, expected: int) -> None:
        self.payloads: list[bytes] = []
        self.done = threading.Event()
        self.expected = expected

    def on_message(self, client, userdata, message):
        self.payloads.append(message.payload)
        if len(self.payloads) >= self.expected:
            self.done.set()


def _client(client_id: str) -> mqtt.Client:
    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )


def _connect(client: mqtt.Client, endpoint, clean_start: bool = True) -> None:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect(endpoint.host, endpoint.port, clean_start=clean_start, properties=props)
    client.loop_start()
    assert connected.wait(10), f"no CONNACK from {endpoint.address}"


@pytest.mark.parametrize("broker", ["site_mqtt", "central_mqtt"])
def test_each_mosquitto_delivers_qos1_and_keeps_a_persistent_session(broker, request, unique):
    endpoint = request.getfixturevalue(broker)
    topic = f"test/{unique}"
    collector = _Collector(expected=100)

    # A persistent session subscribes, goes away, and gets what was published meanwhile.
    sub = _client(f"{unique}-sub")
    sub.on_message = collector.on_message
    _connect(sub, endpoint, clean_start=True)
    sub.subscribe(topic, qos=1)
    time.sleep(0.3)
    sub.disconnect()
    sub.loop_stop()

    pub = _client(f"{unique}-pub")
    _connect(pub, endpoint)
    infos = [pub.publish(topic, b"%d" % i, qos=1) for i in range(100)]
    for info in infos:
        info.wait_for_publish(timeout=10)
    assert all(info.is_published() for info in infos)
    pub.disconnect()
    pub.loop_stop()

    back = _client(f"{unique}-sub")
    back.on_message = collector.on_message
    _connect(back, endpoint, clean_start=False)
    assert collector.done.wait(15), f"only {len(collector.payloads)} of 100 queued messages"
    back.disconnect()
    back.loop_stop()
    assert sorted(int(p) for p in collector.payloads) == list(range(100))


def test_postgres_answers_queries_in_an_isolated_schema(pg_dsn, unique):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()[0]
        assert int(version) >= 150000
        conn.execute(f"CREATE SCHEMA {unique}")
        try:
            conn.execute(f"CREATE TABLE {unique}.m (id int PRIMARY KEY, v double precision)")
            with conn.cursor().copy(f"COPY {unique}.m (id, v) FROM STDIN") as copy:
                for i in range(1000):
                    copy.write_row((i, i / 10))
            count, total = conn.execute(f"SELECT count(*), sum(id) FROM {unique}.m").fetchone()
        finally:
            conn.execute(f"DROP SCHEMA {unique} CASCADE")
    assert (count, total) == (1000, sum(range(1000)))
