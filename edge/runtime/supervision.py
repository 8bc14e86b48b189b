"""Supervision: restart crashed actors with backoff, give up on a crash loop.

pykka has no supervision: an actor whose ``tell`` handler raises simply stops (and one
whose ``on_start`` raises stops without even calling ``on_failure``). The ``Supervisor``
therefore watches every handle from its own thread and treats any actor that is dead
without having been asked to stop as crashed, whatever the cause.

Policy (Erlang's restart intensity): a crashed actor is restarted after an exponential
backoff (``backoff_initial_s`` doubling up to ``backoff_max_s``); when one actor crashes
more than ``max_restarts`` times within ``window_s`` seconds the supervisor gives up and
calls ``on_give_up`` with a ``CrashLoopError``: the runtime then stops and the process
exits non-zero so systemd (or compose) restarts it from a clean state.

What a crash loses: the messages still queued in the dead actor's mailbox. The data path
acknowledges upstream only after durable writes, so those messages are redelivered by
their source, never silently lost.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from edge.errors import CrashLoopError
from edge.runtime import log
from edge.runtime.actor import ActorHandle, Ping
from edge.runtime.metrics import ACTOR_ERRORS, ACTOR_RESTARTS, ACTOR_UP

_log = log.get(__name__)


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    max_restarts: int = 5
    window_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


@dataclass(slots=True)
class RestartTracker:
    """Pure restart bookkeeping for one actor; the clock is passed in, so it is testable.

    ``crashed(now)`` returns the delay before the restart, or None when the restart
    intensity is exceeded and the supervisor must give up.
    """

    policy: RestartPolicy
    crashes: deque[float] = field(default_factory=deque)

    def crashed(self, now: float) -> float | None:
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > self.policy.window_s:
            self.crashes.popleft()
        if len(self.crashes) > self.policy.max_restarts:
            return None
        exponent = len(self.crashes) - 1
        return min(self.policy.backoff_max_s, self.policy.backoff_initial_s * 2**exponent)


@dataclass(slots=True)
class _Child:
    handle: ActorHandle
    start: Callable[[], pykka.ActorRef[Any]]
    tracker: RestartTracker
    restart_at: float | None = None
    last_error: str = "actor stopped unexpectedly"
    reported: bool = False


class Supervisor:
    """Watches handles from a daemon thread and restarts dead actors.

    ``crashed()`` may be called from any thread (actors call it from ``on_failure``);
    ``watch()`` and ``stop()`` from the runtime's thread.
    """

    POLL_S = 0.05

    def __init__(
        self,
        policy: RestartPolicy,
        on_give_up: Callable[[CrashLoopError], None],
        ping_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._on_give_up = on_give_up
        self._ping_timeout_s = ping_timeout_s
        self._clock = clock
        self._children: dict[str, _Child] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)

    def watch(self, handle: ActorHandle, start: Callable[[], pykka.ActorRef[Any]]) -> None:
        with self._lock:
            self._children[handle.name] = _Child(handle, start, RestartTracker(self.policy))
        ACTOR_UP.labels(handle.name).set(1)
        if not self._thread.is_alive() and not self._stopping.is_set():
            self._thread.start()

    def crashed(self, name: str, error: BaseException | None) -> None:
        with self._lock:
            child = self._children.get(name)
            if child is not None:
                child.last_error = repr(error) if error is not None else child.last_error
                child.reported = True

    def state(self, name: str) -> str:
        with self._lock:
            child = self._children.get(name)
            if child is None:
                return "starting"
            if child.restart_at is not None:
                return "restarting"
        return "running" if child.handle.is_alive() else "down"

    def stop(self) -> None:
        """Stop restarting anything: called first thing on shutdown."""
        self._stopping.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stopping.wait(self.POLL_S):
            now = self._clock()
            with self._lock:
                children = list(self._children.values())
            for child in children:
                if self._stopping.is_set():
                    return
                if child.restart_at is None and not child.handle.is_alive():
                    self._on_death(child, now)
                elif child.restart_at is not None and now >= child.restart_at:
                    self._restart(child)

    def _on_death(self, child: _Child, now: float) -> None:
        name = child.handle.name
        ACTOR_UP.labels(name).set(0)
        if not child.reported:  # died in on_start, or without on_failure: count it here
            ACTOR_ERRORS.labels(name).inc()
        child.reported = False
        delay = child.tracker.crashed(now)
        if delay is None:
            error = CrashLoopError(
                name, len(child.tracker.crashes), self.policy.window_s, child.last_error
            )
            _log.error("crash_loop", actor=name, restarts=len(child.tracker.crashes))
            self._stopping.set()
            self._on_give_up(error)
            return
        _log.warning("actor_restart_scheduled", actor=name, delay_s=delay, error=child.last_error)
        child.restart_at = now + delay

    def _restart(self, child: _Child) -> None:
        name = child.handle.name
        child.restart_at = None
        ref = None
        with self._lock:
            child.reported = False
        try:
            ref = child.start()
            child.handle.bind(ref)  # before the ping, as at start-up (see Runtime.start)
            ref.ask(Ping(), timeout=self._ping_timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure to come up is another crash
            if ref is not None:
                ref.stop(block=False)
            # pykka marks a failing actor dead before its on_failure reports why: give the
            # report a moment, so the log names the actor's own error, not the dead ping.
            deadline = time.monotonic() + 0.5
            while not child.reported and time.monotonic() < deadline:
                time.sleep(0.01)
            with self._lock:
                if not child.reported:
                    child.last_error = f"restart failed: {exc!r}"
                    ACTOR_ERRORS.labels(name).inc()
                child.reported = True
            self._on_death(child, self._clock())
            return
        ACTOR_RESTARTS.labels(name).inc()
        ACTOR_UP.labels(name).set(1)
        _log.info("actor_restarted", actor=name)
