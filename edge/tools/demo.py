"""``edge demo``: the whole runtime in one process, on embedded defaults.

Simulated devices (F2 controllers, v2 power meters, homelab meters) feed the real
gateway actors (decoder, SQLite buffer, uplink) through ``DemoSource``, which stands in
for the site broker: it numbers batches like the MQTT source, keeps what is not yet
committed, treats ``Committed`` as the broker's PUBACK and redelivers on ``Refused``. The
uplink talks over a ``LocalLink`` to the in-process receiver and single-node store (the
single-node deployment). The link is taken down for the scripted outage, so the buffer
grows, then drains. At the end the ledger says what was sent, stored, lost and doubled;
the exit code is 0 only when it balances.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from prometheus_client import REGISTRY

from edge import app
from edge import config as config_mod
from edge.actors.buffer import Committed, GetStats, Refused
from edge.actors.decoder import Incoming
from edge.codecs.records import Measurement, iso
from edge.codecs.uplink import Batch
from edge.io.link import LocalLink
from edge.io.store import SqliteStore
from edge.runtime import log
from edge.runtime.actor import ActorContext, EdgeActor
from edge.runtime.graph import Runtime
from edge.tools import ledger
from edge.tools.credits import Credits
from edge.tools.simulate import Traffic

REPO_REGISTRY = Path(__file__).resolve().parents[2] / "fixtures" / "registry.toml"
IN_FLIGHT = 1000  # like the site broker's receive maximum


class TimedStore(SqliteStore):
    """The single-node store, noting when each (device, time) key became durable."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "power-safe")
        self.stored_at: dict[tuple[str, str], float] = {}

    def write(self, batches: list[Batch]) -> None:
        super().write(batches)
        now = time.monotonic()
        for batch in batches:
            for r in batch.records:
                if type(r) is Measurement:
                    self.stored_at.setdefault((r.device_id, iso(r.time)), now)


@dataclass
class _Pending:
    mid: int
    topic: str
    payload: bytes
    ledger: dict[str, Any]
    published: float


class DemoSource(EdgeActor):
    """The site broker's stand-in: feeds the decoder at ``rate`` msgs/s, acks on commit."""
    receives = (Committed, Refused)

    def __init__(self, ctx: ActorContext, traffic: Traffic, rate: float,
                 holder: dict[str, DemoSource]) -> None:
        super().__init__(ctx)
        holder["source"] = self  # the demo reads the ledger from it
        self.traffic, self.rate = iter(traffic), rate
        self.credits = Credits(IN_FLIGHT)
        self.lock = threading.Lock()
        self.generation, self.batch, self.mid = 1, 0, 0
        self.outstanding: dict[int, list[_Pending]] = {}
        self.accepted: list[tuple[dict[str, Any], float]] = []
        self.stop_feeding = threading.Event()

    def on_start(self) -> None:
        threading.Thread(target=self._feed, name="demo-devices", daemon=True).start()

    def close(self) -> None:
        self.stop_feeding.set()

    def _feed(self) -> None:
        began, sent, pending = time.monotonic(), 0, []
        last_flush = time.monotonic()
        while not self.stop_feeding.is_set():
            message = next(self.traffic)
            self.mid += 1
            pending.append(_Pending(self.mid, message.topic, message.payload, message.ledger,
                                    time.monotonic()))
            sent += 1
            if len(pending) >= 200 or time.monotonic() - last_flush > 0.005:
                while not self.credits.acquire(len(pending), timeout=0.5):
                    if self.stop_feeding.is_set():
                        return
                self._send(pending)
                pending, last_flush = [], time.monotonic()
            delay = began + sent / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _send(self, messages: list[_Pending]) -> None:
        with self.lock:
            self.batch += 1
            self.outstanding[self.batch] = messages
            batch = tuple((m.mid, m.topic, m.payload, time.time()) for m in messages)
            self.send("decoder", Incoming(batch, self.generation, self.batch))

    def handle(self, message: Any) -> Any:
        match message:
            case Committed(_, generation, batch) if generation == self.generation:
                with self.lock:
                    messages = self.outstanding.pop(batch, [])
                self.accepted.extend((m.ledger, m.published) for m in messages)
                self.credits.release(len(messages))
            case Refused(generation, _) if generation == self.generation:
                with self.lock:  # as a broker would: redeliver everything unacked, in order
                    again = [m for b in sorted(self.outstanding) for m in self.outstanding[b]]
                    self.generation += 1
                    self.batch = 0
                    self.outstanding.clear()
                self.credits.release(len(again))
                for start in range(0, len(again), 200):
                    chunk = again[start:start + 200]
                    self.credits.acquire(len(chunk))
                    self._send(chunk)
            case Committed() | Refused():
                pass
        return None


def recent_latency(source: DemoSource, store: TimedStore, since: float) -> tuple[float, float] | None:
    """p50 and p99 (ms) device -> store of the messages accepted after ``since`` (monotonic)."""
    ms = sorted((store.stored_at[k] - published) * 1000
                for entry, published in source.accepted[-5000:]
                if published >= since and entry["records"]
                and (k := (entry["device_id"], entry["time"])) in store.stored_at)
    if not ms:
        return None
    return statistics.median(ms), ms[max(0, int(len(ms) * 0.99) - 1)]


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels or None) or 0.0


def _sum(name: str) -> float:
    return sum(s.value for m in REGISTRY.collect() for s in m.samples if s.name == name)


def run(duration: float, devices: int, rate: float, outage: tuple[float, float] | None,
        data_dir: Path, registry: Path, ui: bool, out: IO[str] = sys.stdout) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in ("buffer.db", "store.db"):
        for suffix in ("", "-wal", "-shm"):
            Path(data_dir, name + suffix).unlink(missing_ok=True)
    log.setup("info", "kv", stream=open(data_dir / "demo.log", "a", encoding="utf-8"))
    cfg = config_mod.from_mapping({})
    store = TimedStore(str(data_dir / "store.db"))
    link = LocalLink(store)
    traffic = Traffic("mix", devices, registry.read_text(encoding="utf-8"), seed=7)
    registry_text = registry.read_text(encoding="utf-8")
    buffer_path = str(data_dir / "buffer.db")
    holder: dict[str, DemoSource] = {}
    specs = app.demo_specs(cfg, buffer_path, registry_text, link,
                           lambda ctx: DemoSource.start(ctx, traffic, rate, holder))
    runtime = Runtime(specs, cfg.supervision)
    view = _view(ui, out)
    runtime.start()
    source = holder["source"]
    began = time.monotonic()
    state = {"outage": "before" if outage else "none"}
    try:
        while (elapsed := time.monotonic() - began) < duration:
            if outage and state["outage"] == "before" and elapsed >= outage[0]:
                link.set_up(False)
                state["outage"] = "during"
                view.event(elapsed, f"uplink down (scripted outage until {outage[1]:g} s): "
                                    "the buffer keeps everything")
            if outage and state["outage"] == "during" and elapsed >= outage[1]:
                link.set_up(True)
                state["outage"] = "after"
                depth = runtime.handles["buffer"].ask(GetStats(), timeout=5)["depth"]
                view.event(elapsed, f"uplink restored: draining {depth:,} buffered records")
                state["drain_from"] = elapsed
            view.tick(elapsed, runtime, link, source, store)
            if state.get("drain_from") is not None and \
                    runtime.handles["buffer"].ask(GetStats(), timeout=5)["depth"] == 0:
                view.event(elapsed, f"buffer drained in {elapsed - state.pop('drain_from'):.1f} s")
            time.sleep(0.25)
        source.stop_feeding.set()
        view.event(time.monotonic() - began, "devices stopped; waiting for the last records")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not source.outstanding and runtime.handles["buffer"].ask(GetStats(), timeout=5)["depth"] == 0:
                break
            time.sleep(0.2)
    finally:
        runtime.stop()
        view.close()
    return _ledger(source, store, out)


def _ledger(source: DemoSource, store: TimedStore, out: IO[str]) -> int:
    events = 0
    latencies = []
    for entry, published in source.accepted:
        if entry["records"]:
            key = (entry["device_id"], entry["time"])
            if key in store.stored_at:
                latencies.append((store.stored_at[key] - published) * 1000)
        events += entry.get("events", 0)
    # By identity (device, time) and by value: a collapsed or altered reading does not balance.
    balance = ledger.compare((e for e, _ in source.accepted), store.measurements())
    stored_events = store.count_events("hello")
    lost = balance.expected - balance.stored + max(0, events - stored_events)
    doubled = sum(found - n for _, _, n, found in balance.doubled) + max(0, stored_events - events)
    stored = balance.stored
    p50 = statistics.median(latencies) if latencies else 0.0
    p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1] if latencies else 0.0
    print(f"\nledger: messages sent {len(source.accepted):,} | records expected "
          f"{balance.expected:,} | stored {stored:,} | lost {lost} | duplicated {doubled} "
          f"| other values {len(balance.wrong)} | hello events {stored_events}/{events}", file=out)
    print(f"latency device -> store: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
          "(records held through the outage included)", file=out)
    balanced = lost == 0 and doubled == 0 and not balance.wrong and stored > 0
    print("ledger balanced: nothing lost, nothing stored twice" if balanced
          else "LEDGER DOES NOT BALANCE", file=out)
    return 0 if balanced else 1


class _PlainView:
    """Periodic plain lines, for logs and CI (``--no-ui``)."""

    def __init__(self, out: IO[str]) -> None:
        self.out, self.next_line, self.last = out, 0.0, (0.0, 0.0, 0.0)

    def event(self, elapsed: float, text: str) -> None:
        print(f"[{elapsed:5.1f}s] {text}", file=self.out, flush=True)

    def tick(self, elapsed: float, runtime: Runtime, link: LocalLink, source: DemoSource,
             store: TimedStore) -> None:
        if elapsed < self.next_line:
            return
        self.next_line = elapsed + 2.0
        stats = runtime.handles["buffer"].ask(GetStats(), timeout=5)
        decoded, confirmed = _metric("edge_decoder_records_total"), _metric("edge_uplink_records_confirmed_total")
        t0, d0, c0 = self.last
        span = max(elapsed - t0, 1e-6)
        self.last = (elapsed, decoded, confirmed)
        lat = recent_latency(source, store, time.monotonic() - span)
        latency = f"p50 {lat[0]:5.1f} ms p99 {lat[1]:6.1f} ms" if lat else "p50     - ms p99      - ms"
        print(f"[{elapsed:5.1f}s] uplink {'up  ' if link.up else 'DOWN'} | decoded {(decoded - d0) / span:7,.0f} rec/s"
              f" | confirmed {(confirmed - c0) / span:7,.0f} rec/s | buffer {stats['depth']:7,} "
              f"(oldest {stats['oldest_age_s']:5.1f} s) | dropped {stats['dropped_total']} | "
              f"quarantined {_sum('edge_decoder_messages_quarantined_total'):.0f} | {latency}",
              file=self.out, flush=True)

    def close(self) -> None:
        pass


def _view(ui: bool, out: IO[str]) -> _PlainView:
    if ui:
        try:
            from edge.tools.demo_ui import RichView
        except ImportError:
            print("(rich is not installed: plain output; pip install 'edge-runtime[demo]')", file=out)
        else:
            return RichView(out)  # type: ignore[return-value]
    return _PlainView(out)


def parse_outage(text: str) -> tuple[float, float]:
    start, _, end = text.partition(":")
    a, b = float(start), float(end)
    if not 0 <= a < b:
        raise ValueError(f"--outage {text!r}: want START:END seconds with START < END")
    return a, b

