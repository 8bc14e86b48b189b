"""A long outage, simulated fast: a gateway buffers --records records while its central
broker is down, then drains them to a receiver. Needs the brokers of scripts/services:

    scripts/services up && .venv/bin/python bench/backlog.py [--records 1000000]

An hour of a site (100 v2 meters, device times spread over --hours) is published to the
site broker as fast as the gateway takes it, --per-message measurements per message. The
gateway's resident memory is sampled every 0.5 s from start to the end of the drain (and
its peak, VmHWM, read at the end). Prints the ingest time, the drain time and rate, RSS
while buffering, while draining and at peak, and checks the receiver's store holds every
record once, by identity and value.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from harness import Site, services, wait_until  # noqa: E402

from edge.config import MqttConfig  # noqa: E402
from edge.io.mqtt import make_client  # noqa: E402

SITE, CENTRAL = 18831, 18832
DEVICES = 100


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    """The gateway's VmRSS every 0.5 s, by phase."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.phase, self.peaks = pid, "buffering", {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                rss = status_kb(self.pid, "VmRSS") / 1024
            except OSError:
                return
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)


def publish(prefix: str, messages: int, per_message: int, hours: float) -> float:
    """``messages`` v2 telemetry messages of ``per_message`` measurements at QoS 1, device
    times spread evenly over ``hours`` ending now; returns the seconds it took."""
    pub = make_client(MqttConfig(port=SITE), f"backlog-pub-{uuid.uuid4().hex[:6]}")
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", SITE)
    pub.loop_start()
    began = time.monotonic()
    start = time.time() - hours * 3600
    step = hours * 3600 / messages
    infos = []
    for i in range(messages):
        dev, seq = i % DEVICES, i // DEVICES
        ts = datetime.fromtimestamp(start + i * step, UTC).isoformat().replace("+00:00", "Z")
        doc = {"v": 2, "device_id": f"{prefix}-{dev:03d}", "ts": ts, "seq": seq, "msg_type": "telemetry",
               "measurements": [{"type": f"m{k}", "val": float(i * per_message + k), "unit": "V"}
                                for k in range(per_message)]}
        infos.append(pub.publish(f"iot/{prefix}-{dev:03d}/telemetry", json.dumps(doc), qos=1))
        if len(infos) >= 5000:
            for info in infos:
                info.wait_for_publish(60)
            infos.clear()
    for info in infos:
        info.wait_for_publish(60)
    pub.disconnect()
    pub.loop_stop()
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--per-message", type=int, default=4)
    parser.add_argument("--hours", type=float, default=1.0)
    args = parser.parse_args()
    messages = args.records // args.per_message
    records = messages * args.per_message
    tmp = Path(tempfile.mkdtemp(prefix="edge-backlog-"))
    name = f"bl{uuid.uuid4().hex[:6]}"
    site = Site(tmp, name, SITE, CENTRAL)
    try:
        run(site, name, messages, records, args)
    finally:
        site.stop_all()
        services("up", "central-mqtt")


def run(site: Site, name: str, messages: int, records: int, args: argparse.Namespace) -> None:
    site.start("receiver")
    wait_until(lambda: site.metrics("receiver")["edge_actor_up{actor=\"receiver\"}"] == 1, 30, "receiver")
    gw = site.start("gateway")  # its site session exists from here on
    services("down", "central-mqtt")
    sampler = Sampler(gw.pid)
    sampler.start()
    began = time.monotonic()
    took = publish(name, messages, args.per_message, args.hours)
    wait_until(lambda: site.metrics()["edge_buffer_depth_records"] >= records, 900, "the backlog", interval=0.5)
    buffered = time.monotonic() - began
    size = site.buffer_db.stat().st_size + sum(
        p.stat().st_size for p in site.buffer_db.parent.glob(site.buffer_db.name + "-*"))
    print(f"{'buffered while the central broker was down':<46} {records:>12,} records "
          f"({messages:,} messages over {args.hours:g} h of device time) in {buffered:.1f} s "
          f"(published in {took:.1f} s); buffer file {size / 1e6:,.0f} MB")

    sampler.phase = "draining"
    services("up", "central-mqtt")
    drain_began = time.monotonic()
    wait_until(lambda: site.metrics()["edge_buffer_depth_records"] < records, 120, "the first confirmation",
               interval=0.05)
    first = time.monotonic()
    wait_until(lambda: site.metrics()["edge_buffer_depth_records"] == 0, 1800, "the drain", interval=0.5)
    drained = time.monotonic() - drain_began
    sustained = records / (time.monotonic() - first)
    sampler.stop.set()
    sampler.join()
    peak = status_kb(gw.pid, "VmHWM") / 1024
    print(f"{'drain: buffer empty, all confirmed':<46} {drained:>12.1f} s from the broker's return "
          f"(reconnect {first - drain_began:.1f} s, then {sustained:,.0f} records/s)")
    print(f"{'gateway RSS, max sampled while buffering':<46} {sampler.peaks.get('buffering', 0):>12.1f} MB")
    print(f"{'gateway RSS, max sampled while draining':<46} {sampler.peaks.get('draining', 0):>12.1f} MB")
    print(f"{'gateway RSS peak (VmHWM, whole run)':<46} {peak:>12.1f} MB (target <= 50)")

    conn = sqlite3.connect(f"file:{site.store_db}?mode=ro", uri=True)
    rows, keys, values = conn.execute(
        "SELECT count(*), count(DISTINCT device_id || '|' || time || '|' || label), "
        "count(DISTINCT value) FROM iot_measurements WHERE device_id LIKE ?", (f"{name}-%",)).fetchone()
    conn.close()
    ok = rows == keys == values == records
    print(f"{'store: rows / distinct keys / distinct values':<46} {rows:>12,} / {keys:,} / {values:,} "
          f"({'every record once' if ok else f'expected {records:,} of each'})")
    site.kill("gateway", signal.SIGTERM)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
