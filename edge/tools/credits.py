"""``Credits``: the demo's stand-in for the site broker's Receive Maximum.

``edge demo`` has no broker: its ``DemoSource`` takes credit for every message it hands to
the decoder and gives it back when the buffer commits (or refuses) the batch, so at most
``IN_FLIGHT`` messages are unacknowledged, as a real broker allows the real source. The
runtime's own actors are bounded by the protocol instead (docs/architecture.md, "What
bounds the pipeline"): the broker's Receive Maximum, the source's numbered batches, the
buffer's quota, the uplink's window and the consumers' batch sizes.
"""

from __future__ import annotations

import threading


class Credits:
    """A thread-safe counter of outstanding work with a hard limit.

    Any thread may ``acquire`` or ``release``; ``reset`` forgets everything outstanding.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"credit limit must be at least 1, got {limit}")
        self.limit = limit
        self._outstanding = 0
        self._cond = threading.Condition()

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
            return True

    def release(self, n: int = 1) -> None:
        with self._cond:
            if n > self._outstanding:
                raise ValueError(f"release of {n} credits, only {self._outstanding} outstanding")
            self._outstanding -= n
            self._cond.notify_all()

    def reset(self) -> None:
        with self._cond:
            self._outstanding = 0
            self._cond.notify_all()
