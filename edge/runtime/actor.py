"""The base every actor of the runtime derives from, and how actors reach each other.

Actors never hold each other's ``pykka.ActorRef`` directly: they hold an ``ActorHandle``,
owned by the runtime. When the supervisor restarts a crashed actor it swaps the new ref
into the same handle, so the restarted actor keeps its place in the graph and senders
need not know it was ever gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar

import pykka

from edge.errors import ActorUnavailableError
from edge.runtime import log
from edge.runtime.health import CONDITIONS
from edge.runtime.metrics import (
    ACTOR_ERRORS,
    ACTOR_MESSAGES_IN,
    ACTOR_MESSAGES_OUT,
    ACTOR_UNDELIVERED,
)

_log = log.get(__name__)


@dataclass(frozen=True, slots=True)
class Ping:
    """Asked by the runtime at start-up (and by health checks); answered with ``health()``."""


class UnknownMessage(TypeError):
    """An actor was sent a message it does not declare in ``receives``: a wiring bug."""


class ActorHandle:
    """A stable address for one actor across restarts. Thread-safe.

    ``tell`` returns False (and counts the message as undelivered) while the actor is down:
    on the data path nothing is acknowledged upstream before the durable write, so a
    message that could not be delivered is redelivered by its source, not lost.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._ref: pykka.ActorRef[Any] | None = None
        self._lock = threading.Lock()
        self._undelivered = ACTOR_UNDELIVERED.labels(name)

    @property
    def ref(self) -> pykka.ActorRef[Any] | None:
        return self._ref

    def bind(self, ref: pykka.ActorRef[Any] | None) -> None:
        """Point the handle at a (new) actor; called by the runtime and the supervisor."""
        with self._lock:
            self._ref = ref

    def is_alive(self) -> bool:
        ref = self._ref
        return ref is not None and ref.is_alive()

    def tell(self, message: Any) -> bool:
        ref = self._ref
        if ref is None:
            self._undelivered.inc()
            return False
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            self._undelivered.inc()
            return False
        return True

    def ask(self, message: Any, timeout: float | None = None) -> Any:
        """Ask and wait. Only for start-up pings, shutdown and CLI queries: never per record."""
        ref = self._ref
        if ref is None:
            raise ActorUnavailableError(f"actor {self.name!r} is not running")
        try:
            return ref.ask(message, timeout=timeout)
        except pykka.ActorDeadError as exc:
            raise ActorUnavailableError(f"actor {self.name!r} is not running") from exc


@dataclass(frozen=True, slots=True)
class ActorContext:
    """What the wiring gives an actor: its name, the handles of the whole graph, and the
    peers it may send to (the edges ``edge/app.py`` declares; None: not declared, any,
    for graphs built by hand in tests)."""

    name: str
    handles: Mapping[str, ActorHandle]
    on_crash: Callable[[str, BaseException | None], None] = lambda name, exc: None
    peers: frozenset[str] | None = None

    @property
    def handle(self) -> ActorHandle:
        return self.handles[self.name]

    def has_peer(self, name: str) -> bool:
        return name in self.handles and (self.peers is None or name in self.peers)

    def peer(self, name: str) -> ActorHandle:
        """The handle of a declared peer; a send along an undeclared edge is a bug."""
        if not self.has_peer(name):
            raise KeyError(f"actor {self.name!r} has no edge to {name!r} (declared in edge/app.py)")
        return self.handles[name]


class EdgeActor(pykka.ThreadingActor):
    """Base actor: counts messages in and out, answers ``Ping``, reports crashes.

    Subclasses declare the message types they take in ``receives``, implement
    ``handle(message)`` with a ``match`` on those types (tests/actors/test_messages.py checks
    that the two agree) and override ``health()`` to add their own state. Any other message
    is refused here, once for all actors: ``UnknownMessage`` crashes a told actor (the
    supervisor restarts it) and is raised to an asker. Messages arrive on the actor's thread.
    """

    receives: ClassVar[tuple[type, ...]] = ()

    def __init__(self, ctx: ActorContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.name = ctx.name
        # Bind this instance's handle now, in the starting thread, before pykka runs
        # on_start on the actor's own thread: anything on_start sets in motion (a link up
        # at once, a request answered by name) must find this actor, not its predecessor.
        if ctx.name in ctx.handles:
            ctx.handles[ctx.name].bind(self.actor_ref)
        self._in = ACTOR_MESSAGES_IN.labels(ctx.name)
        self._out = ACTOR_MESSAGES_OUT.labels(ctx.name)
        self._busy_name = f"actor {ctx.name}"

    def on_receive(self, message: Any) -> Any:
        self._in.inc()
        if isinstance(message, Ping):
            return self.health()
        if not isinstance(message, self.receives):
            raise UnknownMessage(f"actor {self.name!r} got a message it does not take: {message!r}")
        # Seen from /healthz without asking this actor: a message that takes longer than
        # the stall bound (a database or broker that does not answer) makes it degraded.
        CONDITIONS.enter(self._busy_name, type(message).__name__)
        try:
            return self.handle(message)
        finally:
            CONDITIONS.leave(self._busy_name)

    def handle(self, message: Any) -> Any:
        """Handle one message; an exception from a ``tell`` crashes the actor."""
        raise NotImplementedError(f"{type(self).__name__} handles no messages")

    def health(self) -> dict[str, Any]:
        return {"state": "running"}

    def close(self) -> None:
        """Release what the actor holds (connections, files). Called on stop AND on crash,
        so a restarted instance never competes with a leftover of the crashed one."""

    def on_stop(self) -> None:
        self.close()

    def tell_self(self, message: Any) -> bool:
        """Queue a message to this very instance, from any thread (I/O callbacks, tickers).

        Never through ``ctx.handle``: after a restart the handle points at the successor, and
        a ticker or callback of this (crashed, stopping) instance must not feed it."""
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            return False
        return True

    def send(self, target: str | ActorHandle, message: Any) -> bool:
        """Tell another actor of the graph (by name or handle), counting the message."""
        handle = target if isinstance(target, ActorHandle) else self.ctx.peer(target)
        delivered = handle.tell(message)
        if delivered:
            self._out.inc()
        return delivered

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        ACTOR_ERRORS.labels(self.name).inc()
        _log.error("actor_crashed", actor=self.name, error=repr(exception_value))
        try:
            self.close()
        finally:
            self.ctx.on_crash(self.name, exception_value)
