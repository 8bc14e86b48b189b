"""CommandRouter: downlink commands from the server to the site's devices.

Commands arrive on ``edge/<gateway>/down`` (the uplink forwards them) as JSON::

    {"cmd_id": "<uuid>", "device_id": "pm-dc-0001", "deadline": "2026-07-26T10:05:00Z",
     "kind": "v2", "cmd": "update_config", "params": {...}}
    {"cmd_id": "<uuid>", "device_id": "f2-e4fd45f654be", "deadline": "...", "kind": "f2",
     "topic": "cmnd/f2-e4fd45f654be/access-control-mode/J1/strike-1",
     "payload": {"power-flag": 2, "period": 3}}

Each is stored in SQLite (it survives a restart), and delivered when its device is online
(a v2 device: seen within 2 x max(send interval, hello interval), not offline by status or
Last Will; an F2 controller: seen within the same window) and the deadline has not passed.
It is published at QoS 1 with an MQTT v5 Message Expiry Interval ending at the deadline,
so no broker queue can hand it over late. A command never delivered before its deadline
is answered ``expired`` upstream (a ``CommandAck`` event with priority), and marked
expired only once the buffer has that answer durably (``LocalAppended``): a crash in between
leaves the command pending, and the answer is made again after the restart (at least once,
never lost). A command published to its device is answered ``delivered`` upstream the same
way (informational: the server's row moves from sent to delivered). The device's own ack
travels up with priority through the decoder and closes the command here.

Deadlines, presence and the queue's order are measured on a steady clock
(edge.runtime.clock): the time left until a deadline is read once, when the command arrives,
and a later step of the system clock (an hour back, a day forward) neither delivers a command
late nor expires it early, nor takes a device for online or offline.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack
from prometheus_client import Counter, Gauge

from edge.actors.buffer import PRIORITY_HIGH, AppendLocal, Entry, LocalAppended
from edge.codecs.records import CommandAck, iso
from edge.codecs.uplink import to_wire
from edge.config import MqttConfig
from edge.io.commands_db import CommandQueue
from edge.io.mqtt import MqttSession, Session, SessionFactory
from edge.runtime import log
from edge.runtime.actor import ActorContext, EdgeActor
from edge.runtime.clock import Steady

_log = log.get(__name__)

RECEIVED = Counter("edge_commands_received", "Downlink commands received", ["kind"])
DELIVERED = Counter("edge_commands_delivered", "Commands published to their device")
EXPIRED = Counter("edge_commands_expired", "Commands whose deadline passed before delivery")
INVALID = Counter("edge_commands_invalid", "Downlink messages that are not a valid command")
PENDING = Gauge("edge_commands_pending", "Commands stored and not yet delivered")
ONLINE = Gauge("edge_devices_online", "Devices seen within the offline window")

DEFAULT_OFFLINE_AFTER_S = 2 * max(10, 30)  # docs/protocols.md: 2 x max(send 10 s, hello 30 s)


@dataclass(frozen=True, slots=True)
class Downlink:
    """From the uplink: a payload received on edge/<gateway>/down."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Presence:
    """From the decoder, once per batch: the devices heard, each with its status (``online``,
    ``offline``, a Last Will's) or None when the message carried none. Seen now: on the
    router's steady clock, which a step of the system clock does not move."""

    seen: dict[str, str | None]


@dataclass(frozen=True, slots=True)
class DeviceAck:
    """From the decoder: a device acknowledged a command."""

    cmd_id: str
    result: str


@dataclass(frozen=True, slots=True)
class _Tick:
    pass


class CommandRouter(EdgeActor):
    receives = (Downlink, Presence, DeviceAck, LocalAppended, _Tick)

    EXPIRY_RETRY_S = 30.0  # an expiry answer the buffer refused (full) is made again after this

    def __init__(self, ctx: ActorContext, broker: MqttConfig, client_id: str, path: str,
                 offline_after_s: float = DEFAULT_OFFLINE_AFTER_S, buffer: str = "buffer",
                 session: SessionFactory = Session, clock: Steady | None = None) -> None:
        super().__init__(ctx)
        self.clock = clock  # made in on_start unless given; never behind the queue's latest time
        self.make_session = session
        self.broker, self.client_id, self.path = broker, client_id, path
        self.offline_after_s, self.buffer = offline_after_s, buffer
        self.presence: dict[str, tuple[float, str | None]] = {}  # device -> (heard at, status)
        self.queue: CommandQueue | None = None
        self.session: MqttSession | None = None
        self.connected = threading.Event()
        self.stop_ticker = threading.Event()
        self.pending = 0  # commands waiting: no routing work on the hot path when 0
        self.expiring: dict[str, float] = {}  # cmd_id -> when its answer went to the buffer

    def on_start(self) -> None:
        self.queue = CommandQueue(self.path)
        if self.clock is None:
            self.clock = Steady()
        self.clock.catch_up(self.queue.latest())
        self.session = self.make_session(self.broker, self.client_id, "site broker (commands)",
                               on_connect=lambda flags: self.connected.set(),
                               on_disconnect=lambda reason: self.connected.clear())
        self.session.start()
        self.pending = self.queue.count_pending()
        threading.Thread(target=self._tick, name=f"{self.name}-ticker", daemon=True).start()
        self._publish_gauges()

    def close(self) -> None:
        self.stop_ticker.set()
        if self.session is not None:
            self.session.stop()
            self.session = None
        if self.queue is not None:
            self.queue.close()
            self.queue = None

    def _tick(self) -> None:
        while not self.stop_ticker.wait(1.0):
            self.tell_self(_Tick())

    def handle(self, message: Any) -> Any:
        match message:
            case Downlink(payload):
                self._accept(payload)
                self._route()
            case Presence(seen):
                at = self.now()
                for device, status in seen.items():
                    _, old_status = self.presence.get(device, (0.0, None))
                    self.presence[device] = (at, status if status is not None else
                                             (None if old_status == "offline" else old_status))
                if self.pending:
                    self._route()
            case DeviceAck(cmd_id, result):
                assert self.queue is not None
                self.queue.acked(cmd_id, result)
            case LocalAppended(("expired", cmd_id, device), ok):
                self._expired(cmd_id, device, ok)
            case LocalAppended(("delivered", _, _), _):
                pass  # informational: a refused one is superseded by the device's own answer
            case _Tick():
                if self.pending:
                    self._route()
                self._publish_gauges()
        return None

    def now(self) -> float:
        """The steady clock: deadlines, presence and the queue's order are measured on it."""
        assert self.clock is not None
        return self.clock()

    def wall_time(self) -> datetime:
        """The system clock's time, for timestamps that are data (a command's ``ts``, an answer)."""
        assert self.clock is not None
        return datetime.fromtimestamp(self.clock.wall(), UTC)

    def online(self, device: str, now: float) -> bool:
        at, status = self.presence.get(device, (0.0, None))
        return status != "offline" and now - at <= self.offline_after_s

    def _accept(self, payload: bytes) -> None:
        assert self.queue is not None
        try:
            doc = json.loads(payload)
            cmd_id, device, kind = str(doc["cmd_id"]), str(doc["device_id"]), doc["kind"]
            due = datetime.fromisoformat(doc["deadline"])
            if due.tzinfo is None:  # else it would be read in the gateway's local time
                raise ValueError(f"deadline {doc['deadline']!r} has no UTC offset")
            if kind == "v2":
                topic = f"iot/{device}/command"
                body = {"v": 2, "cmd_id": cmd_id, "ts": iso(self.wall_time()), "cmd": doc["cmd"],
                        "params": doc.get("params", {})}
            elif kind == "f2":
                topic = str(doc["topic"])
                if not topic.startswith(f"cmnd/{device}/"):
                    raise ValueError(f"F2 command topic {topic!r} is not under cmnd/{device}/")
                body = doc["payload"]
            else:
                raise ValueError(f"kind {kind!r} is not v2 or f2")
        except (ValueError, KeyError, TypeError) as exc:
            INVALID.inc()
            _log.warning("command_invalid", error=str(exc), payload=payload[:200])
            return
        RECEIVED.labels(kind).inc()
        self.pending += 1
        # The time left is read once, on the system clock (the server's deadline is in its
        # terms), and counted down on the steady one: a later step of the system clock
        # neither expires the command early nor delivers it late.
        now = self.now()
        deadline = now + (due.timestamp() - self.clock.wall())
        self.queue.add(cmd_id, device, deadline, topic, json.dumps(body).encode(), now)
        _log.info("command_received", cmd_id=cmd_id, device=device, kind=kind)

    def _route(self) -> None:
        assert self.queue is not None
        now = self.now()
        for cmd_id, device, deadline, topic, payload in self.queue.pending():
            if now >= deadline:
                if now - self.expiring.get(cmd_id, -self.EXPIRY_RETRY_S) >= self.EXPIRY_RETRY_S:
                    self._expire(cmd_id, device, now)
            elif self.online(device, now) and self.connected.is_set() and self.session is not None:
                self.session.publish(topic, payload, expiry_s=max(1, int(deadline - now)))
                self.queue.delivered(cmd_id, now)
                DELIVERED.inc()
                _log.info("command_delivered", cmd_id=cmd_id, device=device, topic=topic)
                self._answer(cmd_id, device, "delivered", f"published to {topic}", ("delivered", cmd_id, device))
        self.pending = self.queue.count_pending()
        PENDING.set(self.pending)

    def _expire(self, cmd_id: str, device: str, now: float) -> None:
        self.expiring[cmd_id] = now
        self._answer(cmd_id, device, "expired", "deadline passed before the device could be reached",
                     ("expired", cmd_id, device))

    def _answer(self, cmd_id: str, device: str, result: str, detail: str, receipt: Any) -> None:
        """An answer of the gateway's own (``delivered``, ``expired``) upstream with priority."""
        ack = CommandAck(self.wall_time(), device, None, None, cmd_id, result, detail)
        self.send(self.buffer, AppendLocal((Entry(PRIORITY_HIGH, msgpack.packb(to_wire(ack))),),
                                           self.name, receipt))

    def _expired(self, cmd_id: str, device: str, ok: bool) -> None:
        """The buffer answered for an expiry answer: durable, so the command is closed; or
        refused (full), so it stays pending and is answered again after EXPIRY_RETRY_S."""
        assert self.queue is not None
        if not ok:
            return
        self.expiring.pop(cmd_id, None)
        self.queue.expired(cmd_id)
        self.pending = self.queue.count_pending()
        EXPIRED.inc()
        _log.warning("command_expired", cmd_id=cmd_id, device=device)

    def _publish_gauges(self) -> None:
        """Once a second (the tick), not per batch: it walks every known device."""
        PENDING.set(self.pending)
        now = self.now()
        ONLINE.set(sum(1 for d in self.presence if self.online(d, now)))

    def health(self) -> dict[str, Any]:
        return {"state": "running", "broker_connected": self.connected.is_set()}
