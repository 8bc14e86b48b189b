"""Prometheus exposition and /healthz over real HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from edge.config import SupervisionConfig
from edge.runtime import metrics
from edge.runtime.actor import EdgeActor
from edge.runtime.graph import ActorSpec, Runtime


class Echo(EdgeActor):
    receives = (object,)  # a stand-in: takes anything

    def handle(self, message):
        if message == "boom":
            raise RuntimeError("boom")
        return message


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_and_health_report_each_actor(unique):
    runtime = Runtime([ActorSpec(unique, Echo.start)],
                      SupervisionConfig(backoff_initial_s=30, backoff_max_s=30))
    runtime.start()
    server = metrics.serve("127.0.0.1", 0, runtime.health)
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert runtime.handles[unique].ask("hi", timeout=5) == "hi"
        status, body = get(base + "/healthz")
        assert status == 200 and json.loads(body) == {"status": "ok", "actors": {unique: "running"},
                                                      "conditions": {}}

        status, body = get(base + "/metrics")
        assert status == 200
        assert f'edge_actor_messages_received_total{{actor="{unique}"}} 2.0' in body  # ping + hi
        assert f'edge_actor_up{{actor="{unique}"}} 1.0' in body

        runtime.handles[unique].tell("boom")
        for _ in range(100):  # "down" until the supervisor's next look, then "restarting"
            status, body = get(base + "/healthz")
            if json.loads(body)["actors"][unique] == "restarting":
                break
            time.sleep(0.02)
        assert status == 503 and json.loads(body)["actors"][unique] == "restarting"
        _, body = get(base + "/metrics")
        assert f'edge_actor_errors_total{{actor="{unique}"}} 1.0' in body
        assert f'edge_actor_up{{actor="{unique}"}} 0.0' in body
    finally:
        server.stop()
        runtime.stop()


def test_edge_status_summarises_a_running_process_and_says_when_it_is_not(unique):
    import subprocess
    import sys
    from pathlib import Path

    edge = str(Path(sys.executable).parent / "edge")
    runtime = Runtime([ActorSpec(unique, Echo.start)], SupervisionConfig(backoff_initial_s=30))
    runtime.start()
    server = metrics.serve("127.0.0.1", 0, runtime.health)
    url = f"http://127.0.0.1:{server.port}"
    try:
        ok = subprocess.run([edge, "status", "--url", url], capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stdout
        assert ok.stdout.splitlines()[0] == f"{url}: ok"
        assert f"actor {unique}" in ok.stdout and "running" in ok.stdout
        runtime.handles[unique].tell("boom")
        time.sleep(0.3)
        bad = subprocess.run([edge, "status", "--url", url], capture_output=True, text=True, timeout=30)
        assert bad.returncode == 1 and "degraded" in bad.stdout.splitlines()[0]
    finally:
        server.stop()
        runtime.stop()
    gone = subprocess.run([edge, "status", "--url", url], capture_output=True, text=True, timeout=30)
    assert gone.returncode == 2 and "does not answer" in gone.stdout


class Stuck(EdgeActor):
    """Blocks in a message until released, as an actor does on a database that stopped answering."""
    receives = (object,)  # a stand-in: takes anything

    def __init__(self, ctx, release):
        super().__init__(ctx)
        self.release = release

    def handle(self, message):
        self.release.wait(30)


def test_an_actor_blocked_longer_than_the_stall_bound_makes_health_degraded_until_it_returns(unique, caplog):
    import logging
    import threading

    release = threading.Event()
    runtime = Runtime([ActorSpec(unique, lambda ctx: Stuck.start(ctx, release))],
                      SupervisionConfig(stall_s=0.5))
    runtime.start()
    server = metrics.serve("127.0.0.1", 0, runtime.health)
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(base + "/healthz")[0] == 200
        runtime.handles[unique].tell("block")
        time.sleep(0.8)
        with caplog.at_level(logging.INFO):
            status, body = get(base + "/healthz")
            report = json.loads(body)
            assert status == 503 and report["actors"][unique] == "running"  # alive, and stuck
            assert report["conditions"][f"actor {unique} stalled"].startswith("busy for ")
            get(base + "/healthz")  # asked again: the stall is logged once, when it begins
            release.set()
            time.sleep(0.3)
            assert get(base + "/healthz")[0] == 200
        stalls = [r for r in caplog.records if getattr(r, "fields", {}).get("condition") == f"actor {unique} stalled"]
        assert [r.getMessage() for r in stalls] == ["degraded", "recovered"]
    finally:
        release.set()
        server.stop()
        runtime.stop()


def test_a_condition_reported_by_a_component_degrades_health_and_is_logged_once_per_change(caplog):
    import logging

    from edge.runtime.health import Conditions

    conditions = Conditions()
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            conditions.problem("central broker", "cannot connect to 127.0.0.1:1: [Errno 111] Connection refused")
        assert conditions.report(30) == {"central broker": "cannot connect to 127.0.0.1:1: [Errno 111] "
                                                           "Connection refused"}
        conditions.clear("central broker")
        conditions.clear("central broker")
        assert conditions.report(30) == {}
    assert [r.getMessage() for r in caplog.records] == ["degraded", "recovered"]
