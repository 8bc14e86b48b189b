"""Hostile input for the system tests: what a careless or malicious sender can put on a
site broker or on the central broker. A grammar of the field's message shapes filled with
values chosen to break later hops (huge and special numbers, wrongly typed fields, lone
surrogates, NUL, long text), byte flips of good messages, oversized payloads; and uplink
frames with a valid CRC around records of any type. Seeded: a failure replays exactly."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from edge.codecs import uplink

NUMBERS = [10**400, -(10**400), 2**64, 2**63, -(2**63) - 1, 2**40, 2**31, 70_000, 1e308, -1e308,
           1e-320, -0.0, 0, 1, -1, 3.5]
TEXTS = ["\ud800", "a\udfffb", "x\u0000y", "\u0000", "", " ", "🔥" * 40, "a" * 5000, "NaN",
         "Infinity", "1e999 V", "27.93 °C", "'; DROP TABLE iot_measurements; --", '"quoted"',
         "\\", "online", "offline", "2026-01-01T00:00:00Z", "1970-01-01T00:00:05Z",
         "2200-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "not-a-time"]
OTHERS = [None, True, False, [], {}, [1, 2], {"a": 1}, [[[[[]]]]]]
F2_COMPONENTS = ["sensor-1", "strike-1", "reader-1", "siren-1", "motion-sensor-1", "door-sensors",
                 "exit-buttons", "status"]
F2_MODES = ["sensor-mode", "alarm-mode", "access-control-mode"]
F2_MACS = ["e4fd45f654be", "abc123def456", "123456abcdef", "0a1b2c3d4e5f"]


class Hostile:
    def __init__(self, seed: int, now: datetime | None = None) -> None:
        self.rng = random.Random(seed)
        self.now = now or datetime.now(UTC)

    def value(self) -> object:
        pool = self.rng.choice([NUMBERS, TEXTS, OTHERS, [self.time()]])
        return self.rng.choice(pool)

    def time(self) -> str:
        shift = self.rng.choice([0, 0, -400 * 86_400, 3 * 86_400, -(10**6)])
        return (self.now + timedelta(seconds=shift)).isoformat().replace("+00:00", "Z")

    def maybe(self, good: object) -> object:
        return good if self.rng.random() < 0.6 else self.value()

    def message(self) -> tuple[str, bytes]:
        """(topic, payload) of one hostile message."""
        kind = self.rng.choice(["v2", "v2", "f2", "f2", "homelab", "asset", "flip", "oversize", "junk"])
        return getattr(self, f"_{kind}")()

    def _v2(self) -> tuple[str, bytes]:
        device = self.rng.choice(["pm-h-1", "pm-h-2", "x" * 200, "dév"])
        kind = self.rng.choice(["telemetry", "hello", "status", "command/ack", "ota/status"])
        doc = {"v": self.maybe(2), "device_id": self.maybe(device), "ts": self.maybe(self.time()),
               "seq": self.maybe(self.rng.randrange(2**32)),
               "msg_type": self.maybe(kind.replace("/", "_"))}
        if kind == "telemetry":
            doc["measurements"] = [{"ts": self.maybe(self.time()), "type": self.maybe("voltage_dc"),
                                    "val": self.maybe(750.5), "unit": self.maybe("V")}
                                   for _ in range(self.rng.choice([1, 3, 250]))]
        elif kind == "hello":
            doc.update(fw_version=self.maybe("1.0"), uptime_s=self.maybe(10),
                       broker_connections=self.maybe(1), buf_usage_pct=self.maybe(1.5))
        elif kind == "status":
            doc["status"] = self.maybe("online")
        elif kind == "command/ack":
            doc.update(cmd_id=self.maybe("c-1"), result=self.maybe("accepted"), detail=self.value())
        else:
            doc.update(cmd_id=self.maybe("c-1"), ota_state=self.maybe("success"),
                       progress_pct=self.maybe(50.0))
        return f"iot/{device}/{kind}", self.dump(doc)

    def _f2(self) -> tuple[str, bytes]:
        component = self.rng.choice(F2_COMPONENTS)
        topic = (f"{self.rng.choice(['cmnd', 'stat', 'tele'])}/f2-{self.rng.choice(F2_MACS)}/"
                 f"{self.rng.choice(F2_MODES)}/{self.rng.choice(['1', 'J2', '4'])}/{component}")
        if self.rng.random() < 0.1:
            topic = topic.replace(component, f"sensor-{self.rng.choice([2**40, 99999999999999999999])}")
        doc: dict[str, object] = {"timestamp": self.maybe(self.time().replace("T", " ").rstrip("Z"))}
        fields = {"sensor-1": {"data": "01 03 0C 32 30 32 30 36 32 38 30 31 30 31 5B 18 28 01"},
                  "strike-1": {"state": "locked", "voltage": 12.1, "current": 1.5},
                  "reader-1": {"card_id": "A1B2C3D4", "read_type": "nfc", "signal_strength": 85},
                  "siren-1": {"state": "active", "volume": 95, "pattern": "pulsing"},
                  "motion-sensor-1": {"motion_detected": True, "sensitivity": 7, "zone": "zone_1"},
                  "door-sensors": {"door_1": "open", "door_2": "closed", "tamper": False},
                  "exit-buttons": {"button_pressed": True, "button_id": 2},
                  "status": {"status": True}}.get(component, {})
        doc.update({k: self.maybe(v) for k, v in fields.items()})
        return topic, self.dump(doc)

    def _homelab(self) -> tuple[str, bytes]:
        doc = {self.rng.choice(["power_kw", "voltage", "\ud800x", "l\u0000", "a" * 300, "temp"]): self.value()
               for _ in range(self.rng.randint(1, 6))}
        if self.rng.random() < 0.2:
            doc = {f"f{i}": i for i in range(5000)}  # a message of too many records
        doc["timestamp"] = self.maybe(self.time())
        return f"homelab/energy/{self.rng.choice(['meter-h', 'm' * 300])}", self.dump(doc)

    def _asset(self) -> tuple[str, bytes]:
        doc = {"header": {"event_id": self.maybe("e-1"), "asset_id": self.maybe("INV-H-1")},
               "measurements": {"power_kw": self.value(), "inverter_temp_c": self.maybe(40.0)},
               "timestamp": self.maybe(self.time())}
        return "assets/INV-H-1/telemetry", self.dump(doc)

    def _flip(self) -> tuple[str, bytes]:
        topic, payload = self._v2() if self.rng.random() < 0.5 else self._f2()
        data = bytearray(payload)
        for _ in range(self.rng.randint(1, 4)):
            i = self.rng.randrange(len(data))
            data[i] ^= 1 << self.rng.randrange(8)
        return topic, bytes(data)

    def _oversize(self) -> tuple[str, bytes]:
        size = self.rng.choice([300_000, 900_000])  # beyond the decoder's 256 KiB, within the broker's 1 MiB
        return "homelab/energy/big", b'{"power": 1, "pad": "' + b"x" * size + b'"}'

    def _junk(self) -> tuple[str, bytes]:
        return self.rng.choice(["iot/pm-h-1/telemetry", "homelab/energy/m", "tele/f2-e4fd45f654be/"
                                "sensor-mode/1/sensor-1"]), self.rng.randbytes(self.rng.randint(0, 300))

    def dump(self, doc: object) -> bytes:
        return json.dumps(doc, ensure_ascii=True).encode()  # surrogates travel as \\ud800 escapes

    def messages(self, n: int) -> Iterator[tuple[str, bytes]]:
        for _ in range(n):
            yield self.message()

    # -- uplink frames -------------------------------------------------------------------
    def frame(self, gateway: str, boot: int, first: int) -> bytes:
        """A frame whose CRC is right around records of any type, or a damaged one."""
        count = self.rng.randint(1, 5)
        wire = [self.wire_record() for _ in range(count)]
        try:
            frame = uplink.encode_wire(gateway, boot, first, wire)
        except (ValueError, TypeError, OverflowError):
            frame = uplink.encode_wire(gateway, boot, first, [[0, "x"]])
        if self.rng.random() < 0.2:  # damaged in transit or by hand
            data = bytearray(frame)
            data[self.rng.randrange(len(data))] ^= 0xFF
            frame = bytes(data[: self.rng.randint(1, len(data))])
        return frame

    def wire_record(self) -> list[object]:
        us = self.rng.choice([1_780_000_000_000_000, 2**62, -1, "x", None])
        shape = self.rng.choice(["measurement", "event", "quarantined", "gap", "any"])
        scalars = [*NUMBERS[2:], *TEXTS, None, True, b"bytes", 1.5]
        scalars = [s for s in scalars if not (isinstance(s, int) and not -(2**63) <= s < 2**64)]
        pick = lambda: self.rng.choice(scalars)  # noqa: E731
        if shape == "measurement":
            return [0, us, self.maybe("dev-h"), pick(), pick(), pick(), self.maybe("label"), pick(),
                    pick(), pick()]
        if shape == "event":
            return [1, us, self.rng.choice(["hello", "status", "card_read", "nope"]),
                    {"device_id": pick(), "topic": pick(), "seq": pick(), "fw_version": pick(),
                     "uptime_s": pick(), "broker_connections": pick(), "buf_usage_pct": pick()}]
        if shape == "quarantined":
            return [2, us, pick(), pick(), pick(), pick(), pick(), pick()]
        if shape == "gap":
            return [3, us, pick(), pick(), pick(), pick()]
        return [self.rng.randint(-1, 5), us, *[pick() for _ in range(self.rng.randint(0, 10))]]
