"""Delivery's logic with stand-in producers (the real broker is in tests/integration)."""

from __future__ import annotations

import threading
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


def test_after_the_broker_went_away_a_producer_that_completes_nothing_once_it_is_back_is_replaced_soon(
        monkeypatch):
    """A kafka-python producer that lived through a broker restart completed nothing until
    replaced: 90 s (the general stall bound) of a stalled uplink after every Kafka restart.
    Once a send saw the broker away, the bound is SUSPECT_STALL_S after it is reachable."""
    import socket

    from edge.io import kafka as kafka_io

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    monkeypatch.setattr(kafka_io, "SUSPECT_STALL_S", 0.3)  # and 2 x wait_s makes it suspect
    made = []

    def make():
        made.append(_Producer(stuck=not made))
        return made[-1]

    delivery = Delivery(make, wait_s=0.01, backoff_max_s=0.01, stall_s=60, bootstrap=[f"127.0.0.1:{port}"])
    # Nothing listens yet: the broker is away, the producer stays (60 s bound) ...
    back = threading.Timer(0.5, listener.listen)
    back.start()
    start = time.monotonic()
    delivery.deliver([Outgoing("t", None, b"x", [])])
    # ... and once it listens again, the stuck producer goes within about SUSPECT_STALL_S.
    assert 0.5 <= time.monotonic() - start < 5
    assert len(made) == 2 and made[1].sent == [b"x"] and not delivery.suspect
    listener.close()
