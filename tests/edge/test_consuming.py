"""records_behind: what a consumer could fetch but has not (the stall watch's evidence)."""

from __future__ import annotations

from kafka import TopicPartition

from edge.consuming import records_behind

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
