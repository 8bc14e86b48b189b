"""Credits: the demo's bound on unacknowledged messages (its broker's Receive Maximum)."""

from __future__ import annotations

import threading
import time

import pytest

from edge.tools.credits import Credits


def test_acquire_beyond_the_limit_waits_and_times_out():
    credits = Credits(3)
    assert credits.acquire(2) and credits.try_acquire(1)
    assert credits.available == 0
    began = time.monotonic()
    assert credits.acquire(1, timeout=0.1) is False
    assert time.monotonic() - began >= 0.09
    assert credits.try_acquire() is False


def test_a_release_wakes_a_waiting_sender():
    credits = Credits(1)
    credits.acquire()
    got = threading.Event()
    waiter = threading.Thread(target=lambda: credits.acquire(timeout=5) and got.set())
    waiter.start()
    time.sleep(0.05)
    assert not got.is_set()
    credits.release()
    waiter.join(5)
    assert got.is_set() and credits.outstanding == 1


def test_reset_returns_the_credit_of_messages_lost_in_a_crash():
    credits = Credits(2)
    credits.acquire(2)
    credits.reset()
    assert credits.available == 2


def test_misuse_is_an_error():
    credits = Credits(2)
    with pytest.raises(ValueError):
        credits.acquire(3)
    with pytest.raises(ValueError):
        credits.release()
    with pytest.raises(ValueError):
        Credits(0)


def test_many_threads_never_exceed_the_limit():
    credits = Credits(4)
    peak = 0
    lock = threading.Lock()

    def work():
        nonlocal peak
        for _ in range(200):
            credits.acquire()
            with lock:
                peak = max(peak, credits.outstanding)
            credits.release()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak <= 4 and credits.outstanding == 0
