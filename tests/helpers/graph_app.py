"""A runtime process for tests of signals and crash loops: run as a script.

    python graph_app.py drain|crash-loop|bad-start METRICS_PORT

Its actors print what happens to them, one line each, so the test can read the order.
"""

from __future__ import annotations

import sys
import time

from edge import config
from edge.runtime import log
from edge.runtime.actor import EdgeActor
from edge.runtime.graph import ActorSpec, run_graph


class Recorder(EdgeActor):
    receives = (object,)  # a stand-in: takes anything

    def on_start(self) -> None:
        if self.name == "bad" and MODE == "bad-start":
            raise RuntimeError("cannot open device")
        print(f"started {self.name}", flush=True)

    def on_stop(self) -> None:
        print(f"stopped {self.name}", flush=True)

    def handle(self, message):
        match message:
            case "work":
                time.sleep(0.3)  # in-flight work that a drain must let finish
                print(f"finished work in {self.name}", flush=True)
            case "boom":
                raise RuntimeError(f"boom in {self.name}")


class Trigger(EdgeActor):
    receives = (object,)  # a stand-in: takes anything

    def on_start(self) -> None:
        print(f"started {self.name}", flush=True)
        if MODE == "crash-loop":
            self.send("flaky", "boom")
        else:
            self.send("flaky", "work")

    def on_stop(self) -> None:
        print(f"stopped {self.name}", flush=True)


class Flaky(Recorder):
    starts = 0

    def on_start(self) -> None:
        super().on_start()
        Flaky.starts += 1
        if MODE == "crash-loop" and Flaky.starts > 1:
            self.actor_ref.tell("boom")  # crash again right after every restart


MODE = sys.argv[1]


def main() -> int:
    cfg = config.from_mapping(
        {
            "metrics": {"port": int(sys.argv[2])},
            "supervision": {"max_restarts": 3, "window_s": 30, "backoff_initial_s": 0.05},
        }
    )
    log.setup("info", "kv")
    specs = [
        ActorSpec("trigger", Trigger.start, after=("flaky",)),
        ActorSpec("store", Recorder.start),
        ActorSpec("flaky", Flaky.start, after=("store",)),
    ]
    if MODE == "bad-start":
        specs.append(ActorSpec("bad", Recorder.start, after=("store",)))
    print("ready", flush=True)
    return run_graph(specs, cfg)


if __name__ == "__main__":
    sys.exit(main())
