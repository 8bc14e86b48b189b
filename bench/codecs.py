"""Codec throughput on one core: python bench/codecs.py [--seconds S]

Prints decodes/s for an F2 frame with 3 and 16 data points (JSON envelope and hex
included), v2 telemetry with 10 measurements, uplink frame encode/decode of 500 records,
and, as the baseline the design was chosen against, the same 3-point template parsed by a
compiled construct Struct.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import construct as cs

from edge.codecs import registry, uplink
from edge.codecs.dispatch import Dispatcher
from edge.codecs.records import Measurement
from edge.codecs.template import CompiledTemplate

REPO = Path(__file__).resolve().parent.parent


def rate(fn, seconds: float) -> tuple[float, int]:
    """Calls per second of fn() over about `seconds`, best of 3 rounds."""
    best, total = 0.0, 0
    for _ in range(3):
        n, began = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - began) < seconds / 3:
            for _ in range(200):
                fn()
            n += 200
        best = max(best, n / elapsed)
        total += n
    return best, total


def wide_registry() -> str:
    points = "\n".join(
        f'[[templates.data_points]]\nlabel = "P{i}"\nencoding = "Int16"\noffset = {2 * i}\n'
        f'length = 2\ndecimals = 1\nappend = " u"' for i in range(16))
    return (REPO / "fixtures/registry.toml").read_text() + f"""
[[templates]]
name = "Sixteen Points"
{points}

[[controllers]]
mac = "ffeeddccbbaa"
name = "Bench"
  [[controllers.connectors]]
  number = 1
    [[controllers.connectors.pins]]
    position = 1
    device = "Wide"
    template = "Sixteen Points"
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    d = Dispatcher(registry.loads(wide_registry()))

    f2_topic = "tele/f2-e4fd45f654be/sensor-mode/J1/sensor-1"
    f2_payload = b'{"timestamp": "2023-05-25 15:13:10.543400", "data": "09 C4 15 7C 03 20"}'
    wide_topic = "tele/f2-ffeeddccbbaa/sensor-mode/J1/sensor-1"
    wide_data = " ".join(f"{b:02X}" for b in bytes(range(32)))
    wide_payload = json.dumps({"timestamp": "2023-05-25 15:13:10.543400", "data": wide_data}).encode()
    v2_topic = "iot/pm-dc-001/telemetry"
    v2_payload = json.dumps({
        "v": 2, "device_id": "pm-dc-001", "ts": "2026-07-26T10:00:00Z", "seq": 42,
        "msg_type": "telemetry",
        "measurements": [{"ts": "2026-07-26T10:00:00Z", "type": f"m{i}", "val": 700.5 + i, "unit": "V"}
                         for i in range(10)]}).encode()
    assert len(d.decode(f2_topic, f2_payload).records) == 3
    assert len(d.decode(wide_topic, wide_payload).records) == 16
    assert len(d.decode(v2_topic, v2_payload).records) == 10

    now = datetime(2026, 7, 26, 10, tzinfo=UTC)
    # Like a gateway's backlog: 3 data points per frame share a timestamp; 50 devices.
    records = [Measurement(now + timedelta(milliseconds=37 * (i // 3)), f"f2-{i % 50:012x}",
                           "sensor-mode", 1, 1 + i % 3, ("Temperature", "Humidity", "CO2")[i % 3],
                           20.0 + i / 100, "°C", f"tele/f2-{i % 50:012x}/sensor-mode/J1/sensor-1")
               for i in range(500)]
    frame = uplink.encode("gw-bench", 7, 1000, records)
    assert uplink.decode(frame).records == records

    env = cs.Struct("Temperature" / cs.Int16sb, "Humidity" / cs.Int16ub, "CO2" / cs.Int16ub).compile()
    raw = bytes.fromhex("09C4157C0320")

    ours = CompiledTemplate(d.registry.template("Environmental Sensor"))
    results = [
        ("F2 frame, 3 data points (JSON + hex + template)", "frames/s",
         rate(lambda: d.decode(f2_topic, f2_payload), args.seconds)[0], 100_000),
        ("F2 frame, 16 data points", "frames/s",
         rate(lambda: d.decode(wide_topic, wide_payload), args.seconds)[0], None),
        ("v2 telemetry, 10 measurements", "messages/s",
         rate(lambda: d.decode(v2_topic, v2_payload), args.seconds)[0], None),
        ("uplink encode, 500 records", "records/s",
         rate(lambda: uplink.encode("gw-bench", 7, 1000, records), args.seconds)[0] * 500, 300_000),
        ("uplink decode, 500 records", "records/s",
         rate(lambda: uplink.decode(frame), args.seconds)[0] * 500, 300_000),
        ("uplink encode+decode, 500 records, zlib", "records/s",
         rate(lambda: uplink.decode(uplink.encode("gw-bench", 7, 1000, records, compress=True)),
              args.seconds)[0] * 500, None),
        ("template only: compiled struct.Struct, 3 points (bytes -> values)", "decodes/s",
         rate(lambda: ours.decode(raw), args.seconds)[0], None),
        ("baseline: construct compiled Struct, 3 fields (parse only)", "parses/s",
         rate(lambda: env.parse(raw), args.seconds)[0], None),
    ]
    for name, unit, value, target in results:
        verdict = "" if target is None else (f"  (target {target:d}: {'met' if value >= target else 'MISSED'})")
        print(f"{name:<62} {value:>12,.0f} {unit}{verdict}")


if __name__ == "__main__":
    main()
