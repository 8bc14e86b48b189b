"""The gateway's two clocks, and the rule for which one to read.

Timestamps that are data (when a message was received, when a gap or a command answer
happened) come from ``wall()``: the system clock, the time the rest of the system
understands, which NTP or an operator may step at any moment (a Pi without a real-time
clock boots on a stale time and is stepped once NTP answers).

Durations (how old a buffer row is against its TTL, how long a command may still wait,
how long ago a device was heard) are measured on a ``Steady`` clock instead: the wall
time when it was made, advanced by ``time.monotonic()``. A step of the system clock while
the process runs (an hour back, a day forward) changes none of them; ``Steady.step()``
tells how far the two clocks moved apart since it was last asked, so the step is logged
and counted once (``edge_clock_steps_total``).

An owner that stored times before (the buffer's rows, the command queue) moves its new
clock up to the latest of them (``catch_up``): a restart on a clock set back does not make
stored rows younger or reorder them. A step while the process was down cannot be told from
downtime.

Tests step the clock of a running process with ``EDGE_FAULT_CLOCK_FILE``: a file holding
seconds added to the system clock, read again at most every 100 ms (tests only).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from edge.runtime import log

__all__ = ["Steady", "wall"]

_log = log.get(__name__)

STEPS = Counter("edge_clock_steps", "Steps of the system clock seen while running (NTP, an operator)")
SKEW = Gauge("edge_clock_step_seconds", "System clock minus the steady clock that durations "
             "are measured on: the sum of the steps seen since start")

STEP_TOLERANCE_S = 2.0  # less than this is slewing and scheduling, not a step


class _FaultOffset:
    """The system clock plus the seconds in a file (tests only)."""

    def __init__(self, path: str) -> None:
        self.path, self.offset, self.read_at = path, 0.0, -1.0

    def __call__(self) -> float:
        now = time.monotonic()
        if now - self.read_at >= 0.1:
            self.read_at = now
            try:
                with open(self.path) as f:
                    self.offset = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass  # keep the last offset: the test is rewriting the file
        return time.time() + self.offset


wall: Callable[[], float] = (_FaultOffset(os.environ["EDGE_FAULT_CLOCK_FILE"])
                             if os.environ.get("EDGE_FAULT_CLOCK_FILE") else time.time)


class Steady:
    """Seconds since the epoch that never step: see the module's docstring.

    ``system`` is the clock for data timestamps (this module's ``wall`` unless given), kept
    as ``self.wall``; ``monotonic`` advances this one. Both are injectable for tests."""

    def __init__(self, system: Callable[[], float] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.wall = system if system is not None else wall
        self._monotonic = monotonic
        self._base = self.wall() - monotonic()
        self._skew = 0.0

    def catch_up(self, latest: float) -> None:
        """Read no earlier than ``latest`` (a time its owner stored before this start)."""
        if latest > self():
            self._base = latest - self._monotonic()
            self._skew = self.wall() - self()

    def __call__(self) -> float:
        return self._base + self._monotonic()

    def step(self, name: str) -> float:
        """Seconds the system clock moved against this one since the last call (0.0 below
        ``STEP_TOLERANCE_S``); a step is counted and logged once, naming ``name``."""
        skew = self.wall() - self()
        moved = skew - self._skew
        if abs(moved) < STEP_TOLERANCE_S:
            return 0.0
        self._skew = skew
        STEPS.inc()
        SKEW.set(skew)
        _log.warning("clock_stepped", by=name, seconds=round(moved, 3), system_minus_steady_s=round(skew, 3),
                     detail="ages, TTL, command deadlines and presence keep running on the steady "
                            "clock; receive times follow the system clock")
        return moved
