"""Delivery's logic with stand-in producers (the real broker is in tests/integration)."""

from __future__ import annotations

import time

from edge.codecs.stream import Outgoing
from edge.io.kafka import Delivery


class _Future:
    def __init__(self, done: bool) -> None:
        self.is_done, self.exception = done, None

    def failed(self) -> bool:
        return False


class _Producer:
    """Acknowledges everything, or (stuck) nothing, ever."""

    def __init__(self, stuck: bool) -> None:
        self.stuck, self.sent, self.closed = stuck, [], False

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append(value)
        return _Future(done=not self.stuck)

    def flush(self, timeout=None):
        time.sleep(0.01)

    def close(self, timeout=None):
        self.closed = True


def test_a_producer_that_acknowledges_nothing_is_replaced_and_the_records_sent_again():
    made = []

    def make():
        made.append(_Producer(stuck=not made))  # the first one is stuck
        return made[-1]

    delivery = Delivery(make, wait_s=0.01, backoff_max_s=0.01, stall_s=0.2)
    messages = [Outgoing("t", b"k", b"%d" % i, []) for i in range(3)]
    start = time.monotonic()
    delivery.deliver(messages)
    assert 0.2 <= time.monotonic() - start < 5
    assert len(made) == 2
    assert made[0].sent == made[1].sent == [b"0", b"1", b"2"]
    deadline = time.monotonic() + 2
    while not made[0].closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert made[0].closed


def test_a_healthy_producer_is_kept():
    made = []
    delivery = Delivery(lambda: made.append(_Producer(stuck=False)) or made[-1], stall_s=0.2)
    delivery.deliver([Outgoing("t", None, b"x", [])])
    assert len(made) == 1 and made[0].sent == [b"x"]
