"""Supervision: crashed actors come back in their place; crash loops end the process."""

from __future__ import annotations

import queue
import threading
import time

import pytest
from prometheus_client import REGISTRY

from edge.config import SupervisionConfig
from edge.errors import CrashLoopError
from edge.runtime.actor import EdgeActor
from edge.runtime.graph import ActorSpec, Runtime
from edge.runtime.supervision import RestartPolicy, RestartTracker


def metric(name: str, actor: str) -> float:
    return REGISTRY.get_sample_value(name, {"actor": actor}) or 0.0


class Sink(EdgeActor):
    """Collects what it is told in a queue the test reads."""
    receives = (object,)  # a stand-in: takes anything

    received: queue.Queue = queue.Queue()

    def handle(self, message):
        Sink.received.put(message)


class Relay(EdgeActor):
    """Forwards to the sink; crashes on "boom"."""
    receives = (object,)  # a stand-in: takes anything

    starts = 0

    def on_start(self) -> None:
        Relay.starts += 1

    def handle(self, message):
        if message == "boom":
            raise RuntimeError("boom")
        self.send("sink", (message, Relay.starts))


def policy(**overrides) -> SupervisionConfig:
    base = {"max_restarts": 3, "window_s": 30.0, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
    return SupervisionConfig(**(base | overrides))


@pytest.fixture
def graph(unique):
    Sink.received = queue.Queue()
    Relay.starts = 0
    names = {"sink": f"{unique}-sink", "relay": f"{unique}-relay"}
    # Names are unique per test so metric samples of one test do not leak into another.
    specs = [
        ActorSpec(names["relay"], lambda ctx: Relay.start(_renamed(ctx, names)), after=(names["sink"],)),
        ActorSpec(names["sink"], Sink.start),
    ]
    runtime = Runtime(specs, policy())
    runtime.start()
    yield runtime, names
    runtime.stop()


def _renamed(ctx, names):
    """Relay addresses the sink as "sink": give it the graph's handles under that alias too."""
    handles = dict(ctx.handles) | {"sink": ctx.handles[names["sink"]]}
    return type(ctx)(ctx.name, handles, ctx.on_crash)


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_crashed_actor_is_restarted_and_keeps_its_place_in_the_graph(graph):
    runtime, names = graph
    relay = runtime.handles[names["relay"]]
    relay.tell("before")
    assert Sink.received.get(timeout=5) == ("before", 1)

    relay.tell("boom")
    assert wait_until(lambda: Relay.starts == 2 and relay.is_alive())
    # The same handle reaches the new instance, which still reaches the sink.
    relay.tell("after")
    assert Sink.received.get(timeout=5) == ("after", 2)
    assert metric("edge_actor_restarts_total", names["relay"]) == 1
    assert metric("edge_actor_errors_total", names["relay"]) == 1
    assert runtime.health()["actors"] == {names["sink"]: "running", names["relay"]: "running"}


def test_messages_told_while_an_actor_is_down_are_counted_as_undelivered(unique):
    specs = [ActorSpec(unique, Relay.start)]
    runtime = Runtime(specs, policy(backoff_initial_s=5.0, backoff_max_s=5.0))
    runtime.start()
    try:
        handle = runtime.handles[unique]
        handle.tell("boom")
        assert wait_until(lambda: not handle.is_alive())
        assert wait_until(lambda: runtime.health()["actors"][unique] == "restarting")
        assert runtime.health()["status"] == "degraded"
        assert handle.tell("lost?") is False
        assert metric("edge_actor_messages_undelivered_total", unique) == 1
    finally:
        runtime.stop()


def test_a_crash_loop_stops_the_runtime_with_a_crash_loop_error(unique):
    class AlwaysFails(EdgeActor):
        receives = (object,)  # a stand-in: takes anything

        starts = 0

        def on_start(self) -> None:
            AlwaysFails.starts += 1
            if AlwaysFails.starts > 1:
                raise OSError("device gone")  # pykka calls no on_failure for this

        def handle(self, message):
            raise RuntimeError("first crash")

    runtime = Runtime([ActorSpec(unique, AlwaysFails.start)], policy(max_restarts=2))
    runtime.start()
    runtime.handles[unique].tell("go")
    assert runtime.wait(timeout=10), "the supervisor never gave up"
    runtime.stop()
    assert isinstance(runtime.failure, CrashLoopError)
    assert runtime.failure.actor == unique
    assert "crashed 3 times within 30 s" in str(runtime.failure)
    assert metric("edge_actor_errors_total", unique) == 3


def test_restart_backoff_doubles_up_to_its_cap():
    tracker = RestartTracker(RestartPolicy(max_restarts=10, window_s=100, backoff_initial_s=0.5, backoff_max_s=3))
    delays = [tracker.crashed(float(t)) for t in range(6)]
    assert delays == [0.5, 1.0, 2.0, 3, 3, 3]


def test_restart_intensity_counts_only_crashes_within_the_window():
    tracker = RestartTracker(RestartPolicy(max_restarts=2, window_s=10, backoff_initial_s=1, backoff_max_s=1))
    assert tracker.crashed(0.0) == 1
    assert tracker.crashed(5.0) == 1
    assert tracker.crashed(9.0) is None  # third crash within 10 s: give up
    fresh = RestartTracker(RestartPolicy(max_restarts=2, window_s=10, backoff_initial_s=1, backoff_max_s=1))
    assert [fresh.crashed(t) for t in (0.0, 11.0, 22.0, 33.0)] == [1, 1, 1, 1]


def test_crash_reports_from_any_thread_are_safe(graph):
    runtime, names = graph
    threads = [
        threading.Thread(target=runtime.supervisor.crashed, args=(names["relay"], ValueError(i)))
        for i in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runtime.health()["status"] == "ok"
