"""What ``/healthz`` says beyond "every actor is alive": the conditions of the process.

An actor that is alive can still be stuck: its broker unreachable, Kafka not acknowledging,
the database not answering, the buffer full. Components report such a condition here by
name, and clear it when it is over; ``/healthz`` is degraded while any is set, and the
change is logged once (not once per retry). Two kinds:

- ``problem(name, reason)`` / ``clear(name)``: a state the component knows it is in;
- ``busy(name)`` around work that may block (an actor handling one message): when it
  lasts longer than the stall bound, ``stalled()`` reports it, so a thread blocked for
  good on a database that never answers is seen from outside, without asking it.

Thread-safe; one process-wide instance, ``CONDITIONS``, as Prometheus' registry is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import Gauge

from edge.runtime import log

_log = log.get(__name__)

DEGRADED = Gauge("edge_health_degraded", "1 while the named condition keeps the process degraded",
                 ["condition"])


class Conditions:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._problems: dict[str, str] = {}
        self._busy: dict[str, tuple[float, str]] = {}
        self._stalled: set[str] = set()

    def problem(self, name: str, reason: str, quiet: bool = False, **fields: Any) -> None:
        """``name`` is degraded because of ``reason``; logged when it begins or changes
        (``quiet``: a state expected to pass, such as connecting at start, is not logged)."""
        with self._lock:
            changed = self._problems.get(name) != reason
            self._problems[name] = reason
        if changed:
            DEGRADED.labels(name).set(1)
            if not quiet:
                _log.warning("degraded", condition=name, reason=reason, **fields)

    def clear(self, name: str, quiet: bool = False, **fields: Any) -> None:
        """``name`` is fine again (``quiet``: it stopped, nothing recovered)."""
        with self._lock:
            was = self._problems.pop(name, None)
        if was is not None:
            DEGRADED.labels(name).set(0)
            if not quiet:
                _log.info("recovered", condition=name, was=was, **fields)

    def enter(self, name: str, what: str) -> None:
        """``name`` starts work that may block (cheap: called for every actor message)."""
        self._busy[name] = (self.clock(), what)  # one dict store: atomic under the GIL

    def leave(self, name: str) -> None:
        self._busy.pop(name, None)
        if name in self._stalled:
            with self._lock:
                self._stalled.discard(name)
            DEGRADED.labels(f"{name} stalled").set(0)
            _log.info("recovered", condition=f"{name} stalled")

    @contextmanager
    def busy(self, name: str, what: str) -> Iterator[None]:
        """Mark ``name`` busy with ``what`` for the duration of the block."""
        self.enter(name, what)
        try:
            yield
        finally:
            self.leave(name)

    def stalled(self, bound_s: float) -> dict[str, str]:
        """Work that has been running for longer than ``bound_s``; newly stalled work is
        logged once. Called by ``/healthz`` and by the runtime's own loop."""
        now = self.clock()
        out, new = {}, []
        with self._lock:
            for name, (since, what) in list(self._busy.items()):
                if now - since > bound_s:
                    out[f"{name} stalled"] = f"busy for {now - since:.0f} s with {what}"
                    if name not in self._stalled:
                        self._stalled.add(name)
                        new.append((name, what, now - since))
        for name, what, seconds in new:
            DEGRADED.labels(f"{name} stalled").set(1)
            _log.error("degraded", condition=f"{name} stalled", reason=f"busy for {seconds:.0f} s with {what}",
                       detail="blocked: nothing it owns moves until this returns")
        return out

    def report(self, bound_s: float) -> dict[str, str]:
        """Every condition that makes the process degraded now, by name."""
        stalled = self.stalled(bound_s)
        with self._lock:
            return {**self._problems, **stalled}

    def reset(self) -> None:
        """Forget everything (tests, and a runtime started again in the same process)."""
        with self._lock:
            for name in self._problems:
                DEGRADED.labels(name).set(0)
            self._problems.clear()
            self._busy.clear()
            self._stalled.clear()


CONDITIONS = Conditions()
