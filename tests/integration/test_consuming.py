"""Kafka consumers against a real broker: joins that complete, and stalls that recover.

kafka-python 3.0.12 left a consumer "rebalancing" for good when a poll timed out during a
rejoin that a metadata change had started (edge.io.kafka._complete_pending_joins). The
consumers here must finish that join; and a consumer that stops fetching for any other
reason is rebuilt by its actor (ConsumingActor's watch).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from harness import wait_until
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewPartitions, NewTopic

from edge.actors.consuming import REBUILDS, ConsumingActor
from edge.config import KafkaConfig
from edge.io.kafka import consumer
from edge.runtime.actor import ActorContext

pytestmark = pytest.mark.integration


class _Collect(ConsumingActor):
    """Keeps (partition, offset) of every record it makes durable."""

    instances: list[_Collect] = []
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def on_start(self) -> None:
        _Collect.instances.append(self)
        super().on_start()

    def process(self, prepared) -> None:
        with _Collect.lock:
            _Collect.seen.extend((r.partition, r.offset) for r in prepared)


def _produce(address: str, topic: str, start: int, n: int, partitions: int | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=address, acks="all", linger_ms=5)
    for f in [producer.send(topic, key=b"dev-%d" % (i % 5), value=b"%d" % i,
                            partition=None if partitions is None else i % partitions)
              for i in range(start, start + n)]:
        f.get(timeout=30)
    producer.close()


def _committed(address: str, group: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=address)
    try:
        return sum(om.offset for om in admin.list_group_offsets(group)[group].values())
    finally:
        admin.close()


def test_a_rejoin_started_by_new_partitions_completes_although_polls_time_out(kafka, unique):
    """Without the workaround the member stays "rebalancing" with its old partition, and
    the records of the new partitions are never read (3 runs of 3 before it)."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.address, client_id=unique)
    admin.create_topics([NewTopic(unique, num_partitions=1, replication_factor=1)])
    cfg = KafkaConfig(bootstrap_servers=(kafka.address,))
    c = consumer(cfg, unique, unique, 500, metadata_max_age_ms=1000)  # sees new partitions soon
    c.subscribe([unique])
    seen: Counter[tuple[int, int]] = Counter()

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for records in c.poll(timeout_ms=1).values():  # every join outlasts its poll
                seen.update((r.partition, r.offset) for r in records)

    try:
        _produce(kafka.address, unique, 0, 10)
        pump(5)
        assert len(seen) == 10
        admin.create_partitions({unique: NewPartitions(3)})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(c.assignment()) < 3:
            pump(0.5)
        assert len(c.assignment()) == 3, f"still {c.assignment()}, {c._coordinator.state}"
        _produce(kafka.address, unique, 10, 60, partitions=3)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(seen) < 70:
            pump(0.5)
        assert len(seen) == 70 and max(seen.values()) == 1
        assert {p for p, _ in seen} == {0, 1, 2}
    finally:
        c.close(autocommit=False)
        admin.close()


def _collector(address: str, topic: str, stall_s: float):
    """A topic of two partitions and a _Collect actor on it (group and client id: the topic)."""
    admin = KafkaAdminClient(bootstrap_servers=address, client_id=topic)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    _Collect.instances.clear()
    _Collect.seen.clear()
    cfg = KafkaConfig(bootstrap_servers=(address,), session_timeout_ms=6_000)
    return _Collect.start(ActorContext(topic, {}), cfg, topic, (topic,), topic, batch_max=100,
                          batch_ms=50, stall_s=stall_s)


def test_a_consumer_that_fetches_nothing_while_records_wait_is_rebuilt_and_loses_nothing(kafka, unique):
    ref = _collector(kafka.address, unique, stall_s=4.0)
    try:
        _produce(kafka.address, unique, 0, 200)
        wait_until(lambda: len(_Collect.seen) >= 200, 60, "the first 200 records")
        actor = _Collect.instances[0]
        rebuilds = REBUILDS.labels(unique)
        assert rebuilds._value.get() == 0
        wait_until(lambda: _committed(kafka.address, unique) == 200, 30, "offsets of the first 200 committed")

        stuck = actor.consumer
        stuck._fetcher.send_fetches = lambda: []  # the stuck consumer sent no fetch request
        time.sleep(1.5)  # a fetch already in flight (a long poll of up to 500 ms) returns first
        _produce(kafka.address, unique, 200, 200)
        time.sleep(3)
        assert len(_Collect.seen) == 200, "the stuck consumer still fetched: the fault was not injected"

        # the counter moves before the old consumer has left its group: wait for the new one
        wait_until(lambda: rebuilds._value.get() >= 1 and actor.consumer not in (stuck, None), 60,
                   "the stalled consumer rebuilt")
        wait_until(lambda: len(_Collect.seen) >= 400, 60, "all 400 records")
        time.sleep(1)
        counts = Counter(_Collect.seen)
        assert len(counts) == 400, f"{400 - len(counts)} records never arrived"
        assert max(counts.values()) == 1, f"records twice: {[k for k, c in counts.items() if c > 1][:10]}"
        assert rebuilds._value.get() == 1, "rebuilt again although it was fetching"
    finally:
        ref.stop()


def test_an_idle_caught_up_consumer_is_left_alone(kafka, unique):
    ref = _collector(kafka.address, unique, stall_s=2.0)
    try:
        _produce(kafka.address, unique, 0, 50)
        wait_until(lambda: len(_Collect.seen) >= 50, 60, "the 50 records")
        time.sleep(16)  # idle: the watch asks the broker every 2 s, and finds nothing behind
        assert REBUILDS.labels(unique)._value.get() == 0
        assert len(_Collect.seen) == 50
    finally:
        ref.stop()
