"""Stand-ins for what actors hold, so their ``handle`` can be driven message by message
without threads, brokers or pykka's loop (the buffer's tests drive ``BufferDB`` the same
way): a recording MQTT session (``edge.io.mqtt.MqttSession``) and recording peers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from edge.runtime.actor import ActorContext, ActorHandle
from edge.runtime.clock import Steady


class Recorder:
    """Stands in for a peer's actor ref: keeps what it was told."""

    def __init__(self) -> None:
        self.told: list[object] = []

    def tell(self, message: object) -> None:
        self.told.append(message)

    def is_alive(self) -> bool:
        return True


def context(name: str, *peers: str) -> tuple[ActorContext, dict[str, Recorder]]:
    """An actor's context whose peers are ``Recorder``s; its own handle binds on start."""
    handles = {n: ActorHandle(n) for n in (name, *peers)}
    recorders = {p: Recorder() for p in peers}
    for p, recorder in recorders.items():
        handles[p].bind(recorder)  # type: ignore[arg-type]
    return ActorContext(name, handles, peers=frozenset(peers)), recorders


@dataclass
class Published:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    expiry_s: int | None


@dataclass
class FakeSession:
    """Made with ``Session``'s arguments; records what its owner does with it."""

    cfg: Any
    client_id: str
    name: str
    options: dict[str, Any]
    started: bool = False
    stopped: bool = False
    connected: bool = False
    published: list[Published] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    ack_calls: int = 0

    # -- what the owner calls (MqttSession)
    def start(self) -> FakeSession:
        self.started = True
        return self

    def stop(self) -> None:
        self.stopped, self.connected = True, False

    def is_connected(self) -> bool:
        return self.connected

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                expiry_s: int | None = None) -> None:
        self.published.append(Published(topic, payload, qos, retain, expiry_s))

    def ack(self, mids: Sequence[int]) -> None:
        self.ack_calls += 1
        self.acked.extend(mids)

    # -- what the test calls, as paho's thread would
    def connect(self, session_present: bool = False) -> None:
        self.connected = True
        if self.options.get("on_connect"):
            self.options["on_connect"](SimpleNamespace(session_present=session_present))

    def disconnect(self, reason: str = "lost") -> None:
        self.connected = False
        if self.options.get("on_disconnect"):
            self.options["on_disconnect"](reason)

    def receive(self, mid: int, topic: str, payload: bytes, dup: bool = False) -> None:
        self.options["on_message"](SimpleNamespace(mid=mid, topic=topic, payload=payload, dup=dup))

    def on(self, topic: str) -> list[bytes]:
        return [p.payload for p in self.published if p.topic == topic]


class FakeSessions:
    """A session factory: ``actor(..., session=FakeSessions())``; ``last`` is the newest."""

    def __init__(self) -> None:
        self.made: list[FakeSession] = []

    def __call__(self, cfg: Any, client_id: str, name: str, **options: Any) -> FakeSession:
        session = FakeSession(cfg, client_id, name, options)
        self.made.append(session)
        return session

    @property
    def last(self) -> FakeSession:
        return self.made[-1]


class Clocks:
    """A system clock and a monotonic clock a test moves by hand: ``advance`` is time
    passing (both move), ``step`` is the system clock set (NTP, an operator: only it moves).
    ``steady`` makes an ``edge.runtime.clock.Steady`` on them."""

    def __init__(self, system: float = 1_780_000_000.0) -> None:
        self.system, self.monotonic = system, 5_000.0

    def advance(self, seconds: float) -> None:
        self.system += seconds
        self.monotonic += seconds

    def step(self, seconds: float) -> None:
        self.system += seconds

    def steady(self) -> Steady:
        return Steady(system=lambda: self.system, monotonic=lambda: self.monotonic)
