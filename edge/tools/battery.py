"""A simulated battery behind a protocol-v2 device (protocols.md §2): it obeys ``set_power``,
reports its state of charge, and acknowledges every command.

- ``set_power`` (``power_kw``: > 0 charges, < 0 discharges; optional ``valid_from`` and
  ``valid_until``, ISO 8601 with offset): ``accepted`` when within its power limit and
  still valid, then held from ``valid_from`` until ``valid_until`` (0 kW after);
  ``rejected`` with the reason otherwise. ``request_status`` answers with a hello;
  ``reboot`` restarts its sequence. Any other command: ``unsupported``.
- State of charge follows the planner's energy model (docs/market.md): charging at p kW
  for h hours adds p·h·√η kWh, discharging takes |p|·h/√η; at a limit the power drops to 0.
- Every ``send_s`` it publishes telemetry (``soc`` in %, ``power_kw``, and the AC side:
  ``voltage_ac``, ``current_ac``, ``frequency``), a hello every third time.
  ``time_scale`` runs its energy clock faster than real time (a demo's hour in a minute).
"""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import UTC, datetime
from typing import Any

from edge.codecs.records import iso
from edge.config import MqttConfig
from edge.io.mqtt import make_client
from edge.market.battery import Battery


class SimBattery:
    def __init__(self, broker: MqttConfig, device_id: str, battery: Battery, send_s: float = 10.0,
                 time_scale: float = 1.0, client_id: str | None = None) -> None:
        self.device_id, self.battery = device_id, battery
        self.soc_kwh = battery.soc_kwh
        self.power_kw = 0.0
        self.until: datetime | None = None
        self.send_s, self.time_scale = send_s, time_scale
        self.seq = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.acks: list[tuple[str, str]] = []  # (cmd_id, result), for tests and the demo's ledger
        self.scheduled: list[tuple[datetime, float, datetime | None]] = []  # (from, kW, until)
        self.client = make_client(broker, client_id or f"{device_id}-sim")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"iot/{device_id}/command", qos=2)
        self.client.on_message = lambda c, u, m: self._on_command(m.payload)
        self.broker = broker
        self.thread = threading.Thread(target=self._run, name=f"battery-{device_id}", daemon=True)

    def start(self) -> SimBattery:
        self.client.connect(self.broker.host, self.broker.port, 15)
        self.client.loop_start()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()

    # -- energy ------------------------------------------------------------------------

    def advance(self, seconds: float, now: datetime) -> None:
        """Integrate ``seconds`` of real time (times ``time_scale``) at the current power."""
        with self.lock:
            for start, kw, until in list(self.scheduled):
                if start <= now:
                    self.power_kw, self.until = kw, until
                    self.scheduled.remove((start, kw, until))
            if self.until is not None and now >= self.until:
                self.power_kw, self.until = 0.0, None
            hours = seconds * self.time_scale / 3600
            root = math.sqrt(self.battery.efficiency)
            if self.power_kw > 0:
                self.soc_kwh += self.power_kw * hours * root
            elif self.power_kw < 0:
                self.soc_kwh += self.power_kw * hours / root
            low, high = self.battery.soc_min_kwh, self.battery.soc_max_kwh
            if self.soc_kwh >= high or self.soc_kwh <= low:
                self.soc_kwh = min(max(self.soc_kwh, low), high)
                if (self.power_kw > 0 and self.soc_kwh >= high) or (self.power_kw < 0 and self.soc_kwh <= low):
                    self.power_kw = 0.0

    @property
    def soc_pct(self) -> float:
        return round(self.soc_kwh / self.battery.capacity_kwh * 100, 3)

    # -- commands ----------------------------------------------------------------------

    def _on_command(self, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
            cmd_id = str(doc["cmd_id"])
        except (ValueError, KeyError, TypeError):
            return  # not a command: nothing to answer to
        result, detail = self.apply(doc.get("cmd"), doc.get("params") or {}, datetime.now(UTC))
        self.acks.append((cmd_id, result))
        self._publish("command/ack", {"msg_type": "command_ack", "cmd_id": cmd_id, "result": result,
                                      "detail": detail})
        if doc.get("cmd") == "request_status":
            self._hello()

    def apply(self, cmd: Any, params: dict[str, Any], now: datetime) -> tuple[str, str]:
        """(result, detail) of one command, applied when accepted."""
        if cmd in ("request_status", "reboot"):
            if cmd == "reboot":
                self.seq = 0
            return "accepted", cmd
        if cmd != "set_power":
            return "unsupported", f"a battery takes set_power, request_status and reboot, not {cmd!r}"
        power = params.get("power_kw")
        if isinstance(power, bool) or not isinstance(power, int | float) or not math.isfinite(power):
            return "rejected", f"power_kw {power!r} is not a number"
        limit = self.battery.charge_kw if power > 0 else self.battery.discharge_kw
        if abs(power) > limit + 1e-9:
            return "rejected", f"{power} kW is beyond the {limit} kW limit"
        try:
            start = datetime.fromisoformat(params["valid_from"]) if params.get("valid_from") else now
            until = datetime.fromisoformat(params["valid_until"]) if params.get("valid_until") else None
        except (TypeError, ValueError):
            return "rejected", "valid_from and valid_until are ISO 8601 times with their offset"
        if start.tzinfo is None or (until is not None and until.tzinfo is None):
            return "rejected", "valid_from and valid_until need their UTC offset"
        if until is not None and until <= now:
            return "rejected", f"valid_until {until.isoformat()} has passed"
        with self.lock:
            self.scheduled.append((start, float(power), until))
        return "accepted", f"{power} kW from {start.isoformat()}" + (f" until {until.isoformat()}" if until else "")

    # -- telemetry ---------------------------------------------------------------------

    def _run(self) -> None:
        last = time.monotonic()
        sends = 0
        while not self.stopping.wait(0 if sends == 0 else self.send_s):
            now = time.monotonic()
            self.advance(now - last, datetime.now(UTC))
            last = now
            if sends % 3 == 0:
                self._hello()
            sends += 1
            t = iso(datetime.now(UTC))
            current = abs(self.power_kw) * 1000 / (25_000 * math.sqrt(3) * 0.97)
            self._publish("telemetry", {"msg_type": "telemetry", "measurements": [
                {"ts": t, "type": "soc", "val": self.soc_pct, "unit": "%"},
                {"ts": t, "type": "power_kw", "val": round(self.power_kw, 3), "unit": "kW"},
                {"ts": t, "type": "voltage_ac", "val": 25_000.0, "unit": "V"},
                {"ts": t, "type": "current_ac", "val": round(current, 3), "unit": "A"},
                {"ts": t, "type": "frequency", "val": 50.0, "unit": "Hz"}]})

    def _hello(self) -> None:
        self._publish("hello", {"msg_type": "hello", "fw_version": "bat-1.0", "uptime_s": self.seq,
                                "broker_connections": 1, "buf_usage_pct": 0.0})

    def _publish(self, suffix: str, fields: dict[str, Any]) -> None:
        with self.lock:
            seq, self.seq = self.seq, (self.seq + 1) % 2**32
        doc = {"v": 2, "device_id": self.device_id, "ts": iso(datetime.now(UTC)), "seq": seq, **fields}
        self.client.publish(f"iot/{self.device_id}/{suffix}", json.dumps(doc), qos=1)
