"""Simulated device traffic for the site broker, with a ledger for loss checks.

Kinds: ``f2`` (sensor frames built from the registry's templates, on the registry's
controllers and pins), ``v2`` (power meters: hello at seq 0, then telemetry with seq and
3 measurements, every fourth message a hello again), ``homelab`` (energy meters), ``mix``
(all three in turn). Every message has a timestamp of its own (a run's clock advances 1 µs
per message), so the ledger line ``{"device_id", "time", "records", "values", "topic",
"seq"}`` names exactly the rows it must produce in the store, by identity (device, time)
and by value (``values``: label -> value; ``edge.tools.ledger`` compares them). A ledger
line is written only once the broker acknowledged the message (QoS 1 PUBACK): the ledger
holds what the site broker accepted. ``--malformed P`` makes P % of the messages garbage
on real topics (ledger: ``"malformed": true``).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from edge.codecs import registry as registry_mod
from edge.codecs.records import iso
from edge.codecs.template import CompiledTemplate
from edge.config import MqttConfig
from edge.io.mqtt import PahoClient, make_client

HELLO_EVERY = 4  # a v2 meter's messages: hello at power-on, then 3 telemetry to 1 hello


@dataclass(frozen=True, slots=True)
class Publish:
    """What one simulated device publishes, and the ledger of what it must become."""

    topic: str
    payload: bytes
    ledger: dict[str, Any]


class Traffic:
    """An endless, deterministic (seeded) stream of device messages."""

    def __init__(self, kind: str, devices: int, registry_text: str | None, seed: int = 1,
                 malformed_pct: float = 0.0, start: datetime | None = None,
                 device_prefix: str = "pm-dc") -> None:
        self.kind, self.devices, self.device_prefix = kind, devices, device_prefix
        self.rng = random.Random(seed)
        self.malformed_pct = malformed_pct
        self.clock = start or datetime.now(UTC).replace(microsecond=0)
        self.v2_seq: dict[str, int] = {}
        self.pins: list[tuple[str, int, int, CompiledTemplate]] = []
        if kind in ("f2", "mix"):
            if registry_text is None:
                raise ValueError("f2 traffic needs --registry")
            reg = registry_mod.loads(registry_text)
            compiled = {t.name: CompiledTemplate(t) for t in reg.templates}
            self.pins = [(c.mac, conn.number, p.position, compiled[p.template])
                         for c in reg.controllers for conn in c.connectors for p in conn.pins
                         if compiled[p.template].template.payload == "hex"]

    def _tick(self) -> datetime:
        self.clock += timedelta(microseconds=1)
        return self.clock

    def __iter__(self) -> Iterator[Publish]:
        kinds = ["f2", "v2", "homelab"] if self.kind == "mix" else [self.kind]
        i = 0
        while True:
            kind = kinds[i % len(kinds)]
            device = i // len(kinds) % self.devices
            i += 1
            if self.rng.random() * 100 < self.malformed_pct:
                yield self._malformed(device)
                continue
            yield getattr(self, f"_{kind}")(device)

    def _f2(self, device: int) -> Publish:
        mac, connector, position, template = self.pins[device % len(self.pins)]
        values = {}
        for dp in template.template.data_points:
            if dp.encoding == "Float32":
                values[dp.label] = float(self.rng.randint(0, 5000))
            else:  # raw 0..100 fits every integer encoding
                values[dp.label] = self.rng.randint(0, 100) / (10 ** dp.decimals)
        t = self._tick()
        data = template.encode(values).hex(" ").upper()
        payload = json.dumps({"timestamp": t.strftime("%Y-%m-%d %H:%M:%S.%f"), "data": data})
        topic = f"tele/f2-{mac}/sensor-mode/J{connector}/sensor-{position}"
        return Publish(topic, payload.encode(), {"device_id": f"f2-{mac}", "time": iso(t),
                                                 "records": len(template.points), "topic": topic,
                                                 "values": {p.dp.label: values[p.dp.label]
                                                            for p in template.points}})

    def _ac(self, device: int) -> Publish:
        """A ``power_meter_ac`` (protocols.md §2): medium-voltage AC, 24-26 kV, 100-200 A,
        49.9-50.1 Hz, power factor 0.92-0.99; hellos and sequence as the DC meter's."""
        return self._v2(device, ac=True)

    def _v2(self, device: int, ac: bool = False) -> Publish:
        prefix = "pm-ac" if ac and self.device_prefix == "pm-dc" else self.device_prefix
        device_id = f"{prefix}-{device:04d}"
        t = self._tick()
        seq = self.v2_seq.get(device_id)
        if seq is None:  # power-on: hello first, seq 0
            self.v2_seq[device_id] = 0
            doc = {"v": 2, "device_id": device_id, "ts": iso(t), "seq": 0, "msg_type": "hello",
                   "fw_version": "2.4.1", "uptime_s": 1, "broker_connections": 1, "buf_usage_pct": 0.0}
            topic = f"iot/{device_id}/hello"
            return Publish(topic, json.dumps(doc).encode(), {"device_id": device_id, "time": iso(t),
                           "records": 0, "events": 1, "topic": topic, "seq": 0})
        seq = self.v2_seq[device_id] = (seq + 1) % 2**32
        if seq % HELLO_EVERY == 0:  # hello every 30 s beside telemetry every 10 s (docs/protocols.md)
            doc = {"v": 2, "device_id": device_id, "ts": iso(t), "seq": seq, "msg_type": "hello",
                   "fw_version": "2.4.1", "uptime_s": 1 + seq * 10, "broker_connections": 1, "buf_usage_pct": 0.0}
            topic = f"iot/{device_id}/hello"
            return Publish(topic, json.dumps(doc).encode(), {"device_id": device_id, "time": iso(t),
                           "records": 0, "events": 1, "topic": topic, "seq": seq})
        if ac:
            ms = [{"ts": iso(t), "type": "voltage_ac", "val": round(self.rng.uniform(24_000, 26_000), 1), "unit": "V"},
                  {"ts": iso(t), "type": "current_ac", "val": round(self.rng.uniform(100, 200), 1), "unit": "A"},
                  {"ts": iso(t), "type": "frequency", "val": round(self.rng.uniform(49.9, 50.1), 3), "unit": "Hz"},
                  {"ts": iso(t), "type": "pf", "val": round(self.rng.uniform(0.92, 0.99), 3), "unit": ""}]
        else:
            ms = [{"ts": iso(t), "type": "voltage_dc", "val": round(self.rng.uniform(700, 800), 1), "unit": "V"},
                  {"ts": iso(t), "type": "current_dc", "val": round(self.rng.uniform(200, 400), 1), "unit": "A"},
                  {"ts": iso(t), "type": "temperature", "val": round(self.rng.uniform(20, 60), 1), "unit": "Cel"}]
        doc = {"v": 2, "device_id": device_id, "ts": iso(t), "seq": seq, "msg_type": "telemetry",
               "measurements": ms}
        topic = f"iot/{device_id}/telemetry"
        return Publish(topic, json.dumps(doc).encode(), {"device_id": device_id, "time": iso(t),
                       "records": len(ms), "topic": topic, "seq": seq,
                       "values": {m["type"]: m["val"] for m in ms}})

    def _homelab(self, device: int) -> Publish:
        t = self._tick()
        doc = {"timestamp": iso(t), "total_energy_kwh": round(self.rng.uniform(0, 1e4), 2),
               "power_kw": round(self.rng.uniform(0, 10), 2), "voltage": 230,
               "current": round(self.rng.uniform(0, 30), 1)}
        topic = f"homelab/energy/meter{device}"
        return Publish(topic, json.dumps(doc).encode(), {"device_id": f"meter{device}", "time": iso(t),
                       "records": 4, "topic": topic, "values": {k: v for k, v in doc.items() if k != "timestamp"}})

    def _malformed(self, device: int) -> Publish:
        t = self._tick()
        topic = f"homelab/energy/meter{device}"
        payload = b'{"timestamp": "' + iso(t).encode() + b'", "power_kw": [garbage'
        return Publish(topic, payload, {"device_id": f"meter{device}", "time": iso(t), "records": 0,
                                        "topic": topic, "malformed": True})


class DeviceConnections:
    """One MQTT connection per v2 device, each with its Last Will: the retained
    ``iot/<id>/status`` ``offline`` message of docs/protocols.md (no seq: a will is fixed at
    connect time), and a retained ``online`` once connected. Used with ``--lwt``."""

    def __init__(self, broker: MqttConfig, prefix: str, on_publish: Any) -> None:
        self.broker, self.prefix, self.on_publish = broker, prefix, on_publish
        self.clients: dict[str, PahoClient] = {}

    @staticmethod
    def status(device_id: str, state: str) -> bytes:
        return json.dumps({"v": 2, "device_id": device_id, "status": state,
                           "ts": iso(datetime.now(UTC))}).encode()

    def client_for(self, device_id: str) -> PahoClient:
        client = self.clients.get(device_id)
        if client is None:
            client = make_client(self.broker, f"{self.prefix}-{device_id}")
            topic = f"iot/{device_id}/status"
            client.will_set(topic, self.status(device_id, "offline"), qos=1, retain=True)
            client.on_publish = self.on_publish
            ready = threading.Event()
            client.on_connect = lambda c, u, f, rc, p: ready.set()
            client.connect(self.broker.host, self.broker.port, 15)  # keepalive 15 s, as devices
            client.loop_start()
            if not ready.wait(15):
                raise ConnectionError(f"device {device_id}: no CONNACK")
            client.publish(topic, self.status(device_id, "online"), qos=1, retain=True)
            self.clients[device_id] = client
        return client

    def close(self) -> None:
        for device_id, client in self.clients.items():
            client.publish(f"iot/{device_id}/status", self.status(device_id, "offline"),
                           qos=1, retain=True).wait_for_publish(5)
            client.disconnect()
            client.loop_stop()


def run(broker: MqttConfig, traffic: Traffic, rate: float, count: int | None,
        ledger: IO[str] | None, client_id: str, stop: threading.Event | None = None,
        lwt: bool = False) -> int:
    """Publish at ``rate`` msgs/s (0: as fast as the broker takes them) until ``count``
    messages or ``stop``; returns how many the broker acknowledged. With ``lwt``, v2
    devices publish over connections of their own, with a Last Will."""
    client = make_client(broker, client_id)
    client.max_inflight_messages_set(100)  # docs/performance.md, "Library costs"
    pending: dict[tuple[int, int], dict[str, Any]] = {}  # (client, mid): mids are per client
    lock = threading.Lock()
    acked = 0

    early: set[tuple[int, int]] = set()  # PUBACKs that beat the registration of their mid

    def record(entry: dict[str, Any]) -> None:
        nonlocal acked
        acked += 1
        if ledger is not None:
            ledger.write(json.dumps(entry) + "\n")

    def on_publish(c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        with lock:
            entry = pending.pop((id(c), mid), None)
            if entry is None:
                early.add((id(c), mid))
            else:
                record(entry)

    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.on_publish = on_publish
    client.connect(broker.host, broker.port, broker.keepalive_s)
    client.loop_start()
    if not connected.wait(15):
        raise ConnectionError(f"no CONNACK from {broker.host}:{broker.port}")
    devices = DeviceConnections(broker, client_id, on_publish) if lwt else None
    began = time.monotonic()
    sent = 0
    try:
        for message in traffic:
            if (count is not None and sent >= count) or (stop is not None and stop.is_set()):
                break
            # Never call into paho holding our lock: its network thread holds paho's own
            # lock while it runs on_publish, which takes ours.
            via = client
            if devices is not None and message.topic.startswith("iot/"):
                via = devices.client_for(message.ledger["device_id"])
            info = via.publish(message.topic, message.payload, qos=1)
            key = (id(via), info.mid)
            with lock:
                if key in early:
                    early.discard(key)
                    record(message.ledger)
                else:
                    pending[key] = message.ledger
            sent += 1
            if rate > 0:
                delay = began + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if devices is not None:
            devices.close()
        client.disconnect()
        client.loop_stop()
        if ledger is not None:
            ledger.flush()
    return acked
