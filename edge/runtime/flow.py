"""Bounding what is outstanding to an actor.

pykka's mailboxes are unbounded: a fast producer can queue millions of messages in
front of a slow actor and the process grows until it dies. Every data-path actor is
therefore reached through a ``Credits`` counter: the sender acquires credit before it
tells (blocking, or giving up after a timeout, which is the back-pressure signal to pass
upstream, e.g. by not acking the broker), and the receiver releases it once the work is
done or durably handed on.
"""

from __future__ import annotations

import threading

from prometheus_client import Gauge


class Credits:
    """A thread-safe counter of outstanding work with a hard limit.

    Callers: any thread may ``acquire``; the receiving actor calls ``release`` from its own
    thread. After the receiver crashed, its queued messages are gone: the supervisor calls
    ``reset`` so their credit is not lost forever.
    """

    def __init__(self, limit: int, gauge: Gauge | None = None) -> None:
        if limit < 1:
            raise ValueError(f"credit limit must be at least 1, got {limit}")
        self.limit = limit
        self._outstanding = 0
        self._cond = threading.Condition()
        self._gauge = gauge

    @property
    def outstanding(self) -> int:
        return self._outstanding

    @property
    def available(self) -> int:
        return self.limit - self._outstanding

    def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` credits if they are free right now; never blocks."""
        return self.acquire(n, timeout=0)

    def acquire(self, n: int = 1, timeout: float | None = None) -> bool:
        """Take ``n`` credits, waiting up to ``timeout`` s (None: forever). False on time-out."""
        if not 1 <= n <= self.limit:
            raise ValueError(f"cannot acquire {n} credits of a limit of {self.limit}")
        with self._cond:
            if not self._cond.wait_for(lambda: self._outstanding + n <= self.limit, timeout):
                return False
            self._outstanding += n
            self._publish()
            return True

    def release(self, n: int = 1) -> None:
        with self._cond:
            if n > self._outstanding:
                raise ValueError(f"release of {n} credits, only {self._outstanding} outstanding")
            self._outstanding -= n
            self._publish()
            self._cond.notify_all()

    def reset(self) -> None:
        with self._cond:
            self._outstanding = 0
            self._publish()
            self._cond.notify_all()

    def _publish(self) -> None:
        if self._gauge is not None:
            self._gauge.set(self._outstanding)
