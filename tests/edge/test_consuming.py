"""records_behind: what a consumer could fetch but has not (the stall watch's evidence);
several writers: what is committed when batches are written at once."""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

from harness import wait_until
from kafka import TopicPartition

from edge.actors.consuming import ConsumingActor
from edge.config import KafkaConfig
from edge.io.kafka import records_behind
from edge.runtime.actor import ActorContext

A, B, C = (TopicPartition("t", p) for p in range(3))


class _Consumer:
    def __init__(self, assigned, ends, committed, starts) -> None:
        self.assigned, self.ends, self.committed_, self.starts = assigned, ends, committed, starts
        self.calls: list[str] = []

    def assignment(self):
        return set(self.assigned)

    def end_offsets(self, partitions, timeout_ms=None):
        self.calls.append("end_offsets")
        return {tp: self.ends[tp] for tp in partitions}

    def committed(self, tp, timeout_ms=None):
        self.calls.append("committed")
        return self.committed_.get(tp)

    def beginning_offsets(self, partitions, timeout_ms=None):
        self.calls.append("beginning_offsets")
        return {tp: self.starts[tp] for tp in partitions}


def test_the_position_is_the_last_record_taken_else_the_commit_else_the_beginning():
    c = _Consumer([A, B, C], ends={A: 10, B: 10, C: 10}, committed={B: 4}, starts={A: 0, B: 0, C: 7})
    assert records_behind(c, {A: 10}) == {B: 6, C: 3}


def test_a_caught_up_consumer_has_nothing_behind():
    c = _Consumer([A, B], ends={A: 5, B: 0}, committed={A: 5}, starts={A: 0, B: 0})
    assert records_behind(c, {}) == {}


def test_no_assignment_asks_the_broker_nothing():
    c = _Consumer([], ends={}, committed={}, starts={})
    assert records_behind(c, {}) == {}
    assert c.calls == []


def test_beginning_offsets_are_asked_once_and_only_when_needed():
    c = _Consumer([A, B], ends={A: 3, B: 3}, committed={A: 1}, starts={A: 0, B: 2})
    assert records_behind(c, {}) == {A: 2, B: 1}
    assert c.calls.count("beginning_offsets") == 1
    c.calls.clear()
    records_behind(c, {A: 3, B: 3})
    assert c.calls == ["end_offsets"]


# -- several writers: batches written at once, offsets committed in batch order ----------
class _Busy(Exception):
    """Stands for a retryable error (the database away)."""


class _Writers(ConsumingActor):
    retryable = (_Busy,)

    def __init__(self) -> None:
        super().__init__(ActorContext("writers", {}), KafkaConfig(), "g", ("t",), "c", batch_max=10,
                         batch_ms=10, writers=2)
        self.consumer = _GroupConsumer()
        self.started: dict[int, threading.Event] = {}
        self.release: dict[int, threading.Event] = {}
        self.fail: set[int] = set()
        self.lag_at = time.monotonic() + 3600  # no lag or stall checks in _step

    def process(self, prepared: list[_Record]) -> None:
        first = prepared[0].offset
        self.started[first].set()
        assert self.release[first].wait(10), f"batch {first} never released"
        if first in self.fail:
            raise _Busy(f"batch {first}")

    def flush(self, first: int) -> None:
        self.started[first], self.release[first] = threading.Event(), threading.Event()
        self.pending = [_Record("t", 0, o) for o in range(first, first + 10)]
        self._flush()


class _Record(NamedTuple):
    topic: str
    partition: int
    offset: int


class _GroupConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.paused_: set[TopicPartition] = set()

    def commit(self, offsets) -> None:
        self.commits.append({tp: om.offset for tp, om in offsets.items()})

    def poll(self, timeout_ms=0, max_records=None):
        return {}

    def assignment(self):
        return {A}

    def pause(self, *tps) -> None:
        self.paused_.update(tps)

    def paused(self):
        return set(self.paused_)

    def close(self, **kwargs) -> None:
        pass


def test_two_writers_write_at_once_and_offsets_are_committed_in_batch_order():
    actor = _Writers()
    try:
        actor.flush(0)
        actor.flush(10)
        assert actor.started[0].wait(5) and actor.started[10].wait(5)  # both in process at once
        actor.release[10].set()  # the later batch is durable first ...
        wait_until(lambda: actor.inflight[1].future.done(), 5, "batch 10 written")
        actor._step()
        assert actor.consumer.commits == []  # ... and waits for the earlier one
        actor.release[0].set()
        wait_until(lambda: actor.inflight[0].future.done(), 5, "batch 0 written")
        actor._step()
        assert actor.consumer.commits == [{A: 10}, {A: 20}]
        assert not actor.inflight
    finally:
        for event in actor.release.values():
            event.set()
        actor.writer.shutdown(wait=True)


def test_a_failed_batch_goes_back_first_with_the_batches_written_after_it():
    actor = _Writers()
    try:
        actor.fail.add(0)
        actor.flush(0)
        actor.flush(10)
        assert actor.started[0].wait(5) and actor.started[10].wait(5)
        actor.release[0].set()
        wait_until(lambda: actor.inflight[0].future.done(), 5, "batch 0 failed")
        actor.pending = [_Record("t", 0, 20)]  # taken meanwhile
        threading.Timer(0.3, actor.release[10].set).start()  # settling waits for batch 10 too
        actor._step()
        assert [r.offset for r in actor.pending] == list(range(21))  # in order: 0-9, 10-19, 20
        assert actor.consumer.commits == []  # nothing past the failed batch
        assert not actor.inflight and actor.retry_at is not None
        assert actor.consumer.paused() == {A}
    finally:
        for event in actor.release.values():
            event.set()
        actor.writer.shutdown(wait=True)
