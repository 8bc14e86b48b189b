"""The wiring: the one place where the actor graph is built, started and stopped.

``Runtime`` takes ``ActorSpec``s (name, how to start it, what it starts after), starts
the actors in dependency order, pinging each before the next starts, supervises them,
and stops them in reverse order: on SIGTERM/SIGINT, or when the supervisor gives up on
a crash loop. Stopping is a bounded drain: pykka's stop message queues behind the work
already in each mailbox, so in-flight work finishes unless ``stop_timeout_s`` runs out;
what does not finish was never acknowledged upstream and is redelivered after restart.
"""

from __future__ import annotations

import graphlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pykka

from edge.config import Config, SupervisionConfig
from edge.errors import CrashLoopError, RuntimeFailure, StartupError
from edge.runtime import log, metrics, systemd
from edge.runtime.actor import ActorContext, ActorHandle, Ping
from edge.runtime.health import CONDITIONS
from edge.runtime.metrics import ACTOR_UP
from edge.runtime.supervision import RestartPolicy, Supervisor

_log = log.get(__name__)

EXIT_OK = 0
EXIT_CRASH_LOOP = 70  # EX_SOFTWARE: systemd's Restart=on-failure takes over


@dataclass(frozen=True, slots=True)
class ActorSpec:
    """One node of the graph. ``start`` builds and starts the actor from its context;
    ``after``: the actors it starts after; ``sends_to``: the actors it may send to (the
    graph's edges; None leaves them undeclared, which only tests do)."""

    name: str
    start: Callable[[ActorContext], pykka.ActorRef[Any]]
    after: tuple[str, ...] = ()
    sends_to: tuple[str, ...] | None = None


def start_order(specs: Iterable[ActorSpec]) -> list[ActorSpec]:
    """Dependencies first; ties keep the order the specs were given in."""
    specs = list(specs)
    by_name = {s.name: s for s in specs}
    if len(by_name) != len(specs):
        raise StartupError("two actors share a name in the graph")
    for spec in specs:
        for dep in spec.after:
            if dep not in by_name:
                raise StartupError(f"actor {spec.name!r} starts after unknown actor {dep!r}")
    sorter = graphlib.TopologicalSorter({s.name: s.after for s in specs})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        raise StartupError(f"actor graph has a cycle: {' -> '.join(exc.args[1])}") from exc
    position = {s.name: i for i, s in enumerate(specs)}
    order: list[ActorSpec] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(by_name[n] for n in ready)
        sorter.done(*ready)
    return order


class Runtime:
    """Owns the graph. ``start()``/``stop()`` from one thread; ``run()`` blocks until done."""

    def __init__(self, specs: Iterable[ActorSpec], supervision: SupervisionConfig) -> None:
        self.specs = start_order(specs)
        self.config = supervision
        self.handles = {s.name: ActorHandle(s.name) for s in self.specs}
        for spec in self.specs:
            unknown = sorted(set(spec.sends_to or ()) - set(self.handles))
            if unknown:
                raise StartupError(f"actor {spec.name!r} declares edges to actors not in the graph: "
                                   f"{', '.join(unknown)}")
        self.peers = {s.name: None if s.sends_to is None else frozenset(s.sends_to) for s in self.specs}
        self.failure: RuntimeFailure | None = None
        self._done = threading.Event()
        self._started: list[ActorSpec] = []
        self.supervisor = Supervisor(
            RestartPolicy(
                supervision.max_restarts,
                supervision.window_s,
                supervision.backoff_initial_s,
                supervision.backoff_max_s,
            ),
            on_give_up=self._give_up,
            ping_timeout_s=supervision.start_timeout_s,
        )

    def _context(self, name: str) -> ActorContext:
        return ActorContext(name, self.handles, self.supervisor.crashed, self.peers[name])

    def start(self) -> None:
        """Start every actor in order; on any failure stop what started and raise."""
        for spec in self.specs:
            began = time.monotonic()
            ctx = self._context(spec.name)
            try:
                ref = spec.start(ctx)
                # Bound before the ping: what on_start sets in motion (a link that is up at
                # once, a request whose answer comes back by name) must find this actor.
                # Messages to a starting actor wait in its mailbox.
                self.handles[spec.name].bind(ref)
                self._started.append(spec)
                ref.ask(Ping(), timeout=self.config.start_timeout_s)
            except Exception as exc:
                self.stop()
                raise StartupError(f"actor {spec.name!r} did not start: {exc!r}") from exc
            self.supervisor.watch(self.handles[spec.name], lambda s=spec, c=ctx: s.start(c))
            took_ms = round((time.monotonic() - began) * 1000, 1)
            _log.info("actor_started", actor=spec.name, took_ms=took_ms)

    def stop(self) -> None:
        """Stop supervising, then stop actors in reverse start order within the time budget."""
        self.supervisor.stop()
        deadline = time.monotonic() + self.config.stop_timeout_s
        for spec in reversed(self._started):
            handle = self.handles[spec.name]
            ref = handle.ref
            if ref is not None and ref.is_alive():
                remaining = max(0.1, deadline - time.monotonic())
                try:
                    ref.stop(block=True, timeout=remaining)
                except pykka.Timeout:
                    _log.error("actor_stop_timeout", actor=spec.name, waited_s=round(remaining, 1))
                else:
                    _log.info("actor_stopped", actor=spec.name)
            ACTOR_UP.labels(spec.name).set(0)
            handle.bind(None)
        self._started.clear()

    def health(self) -> dict[str, Any]:
        """Each actor's state and every condition that degrades the process (edge.runtime.health):
        ok only when every actor runs and nothing is unreachable, full or stuck."""
        actors = {name: self.supervisor.state(name) for name in self.handles}
        conditions = CONDITIONS.report(self.config.stall_s)
        ok = self.failure is None and all(state == "running" for state in actors.values()) \
            and not conditions
        return {"status": "ok" if ok else "degraded", "actors": actors, "conditions": conditions}

    def all_answer(self, timeout: float) -> bool:
        """Every actor answers a ping within ``timeout``: the runtime is not wedged."""
        try:
            return all(h.ask(Ping(), timeout=timeout) is not None for h in self.handles.values())
        except Exception:  # noqa: BLE001 - any failure to answer is a missed heartbeat
            return False

    def request_stop(self) -> None:
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _give_up(self, error: CrashLoopError) -> None:
        self.failure = error
        self._done.set()

    def run(self, install_signals: bool = True) -> int:
        """Start, wait for SIGTERM/SIGINT or a crash loop, stop; return the exit code."""
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, frame: self.request_stop())
        self.start()
        systemd.notify("READY=1")
        interval = systemd.watchdog_interval()
        next_ping = time.monotonic()
        try:
            while not self._done.wait(0.5):
                CONDITIONS.stalled(self.config.stall_s)  # logs a stall once, as it begins
                if interval and time.monotonic() >= next_ping:
                    next_ping = time.monotonic() + interval
                    if self.all_answer(timeout=interval / 2):
                        systemd.notify("WATCHDOG=1")
        finally:
            systemd.notify("STOPPING=1")
            _log.info("runtime_stopping", reason=str(self.failure) if self.failure else "signal")
            self.stop()
        return EXIT_CRASH_LOOP if self.failure else EXIT_OK


def run_graph(specs: Iterable[ActorSpec], cfg: Config) -> int:
    """The whole life of a runtime process: metrics endpoint, graph, signals, exit code.

    Used by the CLI's long-running commands. On a crash loop it prints one clear line to
    stderr and returns ``EXIT_CRASH_LOOP``; on SIGTERM/SIGINT it drains and returns 0.
    """
    runtime = Runtime(specs, cfg.supervision)
    server = None
    if cfg.metrics.enabled:
        server = metrics.serve(cfg.metrics.host, cfg.metrics.port, runtime.health)
        _log.info("metrics_listening", host=cfg.metrics.host, port=server.port)
    try:
        code = runtime.run()
    except StartupError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_CRASH_LOOP
    finally:
        if server is not None:
            server.stop()
    if runtime.failure is not None:
        print(f"edge: {runtime.failure}", file=sys.stderr)
    return code
