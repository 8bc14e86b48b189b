"""Wiring: dependency order, pings, reverse stop on signals, clear exits."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edge.config import SupervisionConfig
from edge.errors import StartupError
from edge.runtime.actor import EdgeActor
from edge.runtime.graph import EXIT_CRASH_LOOP, ActorSpec, Runtime, start_order

APP = Path(__file__).resolve().parent.parent / "helpers" / "graph_app.py"


def spec(name, *after):
    return ActorSpec(name, EdgeActor.start, after=after)


def test_actors_start_after_what_they_depend_on():
    order = start_order([spec("uplink", "buffer"), spec("source", "decoder"),
                         spec("decoder", "buffer"), spec("buffer")])
    names = [s.name for s in order]
    assert names.index("buffer") < names.index("decoder") < names.index("source")
    assert names.index("buffer") < names.index("uplink")


def test_a_cycle_or_an_unknown_dependency_is_a_startup_error():
    with pytest.raises(StartupError, match="cycle"):
        start_order([spec("a", "b"), spec("b", "a")])
    with pytest.raises(StartupError, match="unknown actor 'nope'"):
        start_order([spec("a", "nope")])


def test_a_failing_start_stops_what_already_started():
    stopped = []

    class Good(EdgeActor):
        receives = (object,)  # a stand-in: takes anything

        def on_stop(self):
            stopped.append(self.name)

    class Bad(EdgeActor):
        receives = (object,)  # a stand-in: takes anything

        def on_start(self):
            raise OSError("port busy")

    runtime = Runtime([ActorSpec("good", Good.start), ActorSpec("bad", Bad.start, after=("good",))],
                      SupervisionConfig(start_timeout_s=2))
    with pytest.raises(StartupError, match="actor 'bad' did not start"):
        runtime.start()
    assert stopped == ["good"]


def run_app(mode: str, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(APP), mode, str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_until(proc, line, timeout=15):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        out = proc.stdout.readline()
        if not out:
            break
        seen.append(out.strip())
        if out.strip() == line:
            return seen
    raise AssertionError(f"never saw {line!r}; saw {seen}")


def wait_healthy(port, timeout=10):
    """Poll /healthz as a readiness probe would: 503 while starting, then 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5))
        except urllib.error.HTTPError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"never healthy: {exc.read()!r}") from exc
            time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_in_flight_work_and_stops_actors_in_reverse_order(sig):
    port = free_port()
    proc = run_app("drain", port)
    seen = read_until(proc, "started trigger")
    assert seen[-3:] == ["started store", "started flaky", "started trigger"]
    health = wait_healthy(port)
    assert health == {"status": "ok", "actors": {"store": "running", "flaky": "running",
                                                  "trigger": "running"}, "conditions": {}}
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.split("\n")[:4] == ["stopped trigger", "finished work in flaky",
                                   "stopped flaky", "stopped store"]


def test_a_crash_loop_ends_the_process_non_zero_with_a_clear_message():
    proc = run_app("crash-loop", free_port())
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_CRASH_LOOP
    last = err.strip().splitlines()[-1]
    assert last.startswith("edge: actor 'flaky' crashed 4 times within 30 s")
    assert "RuntimeError('boom in flaky')" in last
    assert "actor_restarted actor=flaky" in err  # it was restarted before giving up


def test_an_actor_that_cannot_start_ends_the_process_with_its_name():
    proc = run_app("bad-start", free_port())
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_CRASH_LOOP
    assert "edge: actor 'bad' did not start" in err.strip().splitlines()[-1]
    assert "stopped store" in out  # what had started was stopped


def test_under_systemd_the_runtime_reports_ready_watchdog_and_stopping(tmp_path):
    import os
    import socket

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
    proc = subprocess.Popen([sys.executable, str(APP), "drain", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # WATCHDOG_PID is unset: the watchdog is for this process, pinged every 0.5 s.
    got = [sock.recv(100).decode() for _ in range(3)]
    assert got[0] == "READY=1" and got[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    rest = []
    sock.settimeout(1)
    try:
        while True:
            rest.append(sock.recv(100).decode())
    except TimeoutError:
        pass
    assert rest[-1] == "STOPPING=1"
    sock.close()


def test_an_answer_by_name_to_something_started_in_on_start_is_not_lost():
    """A link that is up at once, a request whose reply comes back by name: the handle of a
    starting actor is bound before its ping, so the reply waits in its mailbox."""
    import queue

    got = queue.Queue()

    class Server(EdgeActor):
        receives = (object,)  # a stand-in: takes anything

        def handle(self, message):
            self.send(message, "answer")  # replies to the sender's *name*

    class Client(EdgeActor):
        receives = (object,)  # a stand-in: takes anything

        def on_start(self):
            self.send("server", "client")

        def handle(self, message):
            got.put(message)

    for _ in range(20):  # the race was timing-dependent: give it many chances
        runtime = Runtime([ActorSpec("server", Server.start),
                           ActorSpec("client", Client.start, after=("server",))], SupervisionConfig())
        runtime.start()
        try:
            assert got.get(timeout=5) == "answer"
        finally:
            runtime.stop()
