"""MqttSource: the site broker's messages, acked only after the buffer committed them.

paho-mqtt 2.x, MQTT v5, fixed client id, persistent session (clean start off, session
expiry of days), QoS 1 subscriptions, ``manual_ack``. At most ``receive_maximum``
messages are held unacked, which bounds what is in flight in the whole pipeline (and the
gateway's memory, whatever backlog the site broker has queued). The broker is asked for
that in CONNECT, and the source enforces it too: Mosquitto 2.0.11 (Debian bookworm's)
sends past a client's Receive Maximum while acks come in (eclipse-mosquitto/mosquitto
#2301; seen here: 41,000 unacked at a receive maximum of 50), so at the limit paho's
network thread waits for commits, and TCP holds the rest back in the broker. Messages are
handed on in batches: at ``batch_max`` messages or ``batch_bytes`` of payload, or every
``batch_ms`` while fewer than ``IN_FLIGHT`` batches wait for their commit (a busy buffer
gets bigger batches, so fewer fsyncs; an idle one gets every message within ``batch_ms``).

The ack chain: a batch goes to the decoder numbered (generation, batch); the buffer
answers ``Committed`` and the source acks those ids, in order. When the buffer answers
``Refused`` (a batch went missing in a crash), or a batch stays unacked longer than
``ack_timeout_s``, the source reconnects: the broker then redelivers everything unacked,
in order, and nothing is lost. When it is refused because the buffer is full (quota,
policy ``reject``), the source disconnects and stays away, reading nothing, until the
buffer says it has ``Room`` again, or at the latest after a backoff (doubling to
``full_backoff_max_s``): a full buffer does not cost a core re-reading the same messages.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from edge.actors.buffer import Committed, Refused, Room
from edge.actors.decoder import Incoming
from edge.config import MqttConfig, SourceConfig
from edge.io.mqtt import Inbound, MqttSession, Session, SessionFactory, topic_matches
from edge.runtime import clock, faults, log
from edge.runtime.actor import ActorContext, EdgeActor

_log = log.get(__name__)

RECEIVED = Counter("edge_source_messages_received", "Messages received from the site broker", ["filter"])
ACKED = Counter("edge_source_messages_acked", "Messages acked to the site broker after commit")
RECONNECTS = Counter("edge_source_reconnects", "Reconnects forced to get unacked messages redelivered",
                     ["reason"])
CONNECTED = Gauge("edge_source_connected", "1 while connected to the site broker")
WAITS = Counter("edge_source_receive_maximum_waits",
                "Times paho's thread waited for commits: receive_maximum messages were held")
UNACKED = Gauge("edge_source_unacked_messages", "Messages received and not yet acked")

TOPICS_CACHED = 10_000  # topics whose filter is remembered (one per device and kind)
IN_FLIGHT = 2  # batches handed on and not committed, before the ticker lets the next one grow
_generations = itertools.count(int(time.time() * 1000))


@dataclass(frozen=True, slots=True)
class _Reconnect:
    reason: str


@dataclass(frozen=True, slots=True)
class _Resume:
    reason: str


class MqttSource(EdgeActor):
    receives = (Committed, Refused, Room, _Resume, _Reconnect)

    def __init__(self, ctx: ActorContext, broker: MqttConfig, cfg: SourceConfig,
                 client_id: str, decoder: str = "decoder", session: SessionFactory = Session) -> None:
        super().__init__(ctx)
        self.broker, self.cfg, self.client_id, self.decoder = broker, cfg, client_id, decoder
        self.make_session = session
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)  # notified when held messages are acked
        self.held = 0  # received on this connection, not acked yet
        self.releasing = False  # a disconnect is under way: paho's thread must not wait
        self.pending: list[tuple[int, str, bytes, float]] = []
        self.pending_dup: list[int] = []  # ids of pending messages the broker sent again (DUP set)
        self.pending_bytes = 0
        self.outstanding: dict[int, tuple[float, int]] = {}  # batch -> (sent at, messages)
        self.generation = 0
        self.batch = 0
        self.session: MqttSession | None = None
        self.reconnect_at: float | None = None  # away on purpose (full buffer) until then
        self.full_backoff = 0.0
        self.stop_ticker = threading.Event()
        # topic -> the counter of the first filter it matches (no subscription identifiers:
        # paho decodes a PUBLISH that carries one at twice the cost)
        self.counters: dict[str, Any] = {}
        self.reconnect_requested = False

    # -- life cycle (actor thread)
    def on_start(self) -> None:
        self._connect()
        threading.Thread(target=self._tick, name=f"{self.name}-ticker", daemon=True).start()

    def close(self) -> None:
        self.stop_ticker.set()
        self._disconnect()

    def _new_generation_locked(self) -> None:
        self.generation = next(_generations)
        self.batch = 0
        self._count(tuple(self.pending))  # received, though never handed on
        self.pending.clear()
        self.pending_dup.clear()
        self.pending_bytes = 0
        UNACKED.dec(sum(n for _, n in self.outstanding.values()))
        self.outstanding.clear()
        self.held = 0
        self.room.notify_all()

    def _connect(self) -> None:
        with self.lock:
            self._new_generation_locked()
            self.reconnect_requested = False
            self.releasing = False
        self.session = self.make_session(
            self.broker, self.client_id, "site broker", manual_ack=True,
            session_expiry_s=self.cfg.session_expiry_s, receive_maximum=self.cfg.receive_maximum,
            subscriptions=[(topic, 1) for topic in self.cfg.topics], retain_once=True,
            on_message=self._on_message, on_connect=self._on_connect, on_disconnect=self._on_disconnect)
        self.session.start()

    def _disconnect(self) -> None:
        with self.lock:
            self.releasing = True  # free paho's thread if it waits for room: loop_stop joins it
            self.room.notify_all()
        session, self.session = self.session, None
        if session is not None:
            session.stop()
            CONNECTED.set(0)

    # -- paho's thread
    def _on_connect(self, flags: Any) -> None:
        CONNECTED.set(1)
        _log.info("source_connected", host=self.broker.host, port=self.broker.port,
                  session_present=flags.session_present, generation=self.generation)

    def _on_disconnect(self, reason: Any) -> None:
        CONNECTED.set(0)
        # paho reconnects by itself (clean start off) and the broker redelivers what is
        # unacked. What is queued for the dead connection must never be acked on the new
        # one: a new generation makes the buffer's answers for the old one void.
        with self.lock:
            self._new_generation_locked()

    def _on_message(self, message: Inbound) -> None:
        topic = message.topic
        payload = message.payload
        with self.lock:
            self.pending.append((message.mid, topic, payload, clock.wall()))  # data: the system clock
            if message.dup:
                self.pending_dup.append(message.mid)
            self.pending_bytes += len(payload)
            self.held += 1
            if len(self.pending) >= self.cfg.batch_max or self.pending_bytes >= self.cfg.batch_bytes:
                self._flush_locked()
            generation = self.generation
            while (self.held >= self.cfg.receive_maximum and generation == self.generation
                   and not self.releasing):
                WAITS.inc()
                self._flush_locked()  # what is held must reach the buffer to be committed
                self.room.wait(0.5)

    def _count(self, batch: tuple[tuple[int, str, bytes, float], ...]) -> None:
        """Per filter, once per batch (an inc() takes a lock)."""
        counts: dict[Any, int] = {}
        counters = self.counters
        for _, topic, _, _ in batch:
            counter = counters.get(topic)
            if counter is None:
                if len(counters) >= TOPICS_CACHED:
                    counters.clear()
                name = next((f for f in self.cfg.topics if topic_matches(f, topic)), "other")
                counter = counters[topic] = RECEIVED.labels(name)
            counts[counter] = counts.get(counter, 0) + 1
        for counter, n in counts.items():
            counter.inc(n)

    # -- any thread, under the lock
    def _flush_locked(self) -> None:
        if not self.pending:
            return
        batch, self.pending = tuple(self.pending), []
        redelivered, self.pending_dup = frozenset(self.pending_dup), []
        self.pending_bytes = 0
        self._count(batch)
        self.batch += 1
        self.outstanding[self.batch] = (time.monotonic(), len(batch))
        UNACKED.inc(len(batch))
        # An undelivered batch (decoder restarting) leaves a hole the buffer will refuse.
        self.send(self.decoder, Incoming(batch, self.generation, self.batch, redelivered))

    def _tick(self) -> None:
        interval = self.cfg.batch_ms / 1000
        while not self.stop_ticker.wait(interval):
            with self.lock:
                # Group commit: while IN_FLIGHT batches wait for the buffer, what arrives
                # gathers into the next batch (up to batch_max) instead of many small
                # commits; an idle pipeline gets every message within batch_ms.
                if len(self.outstanding) < IN_FLIGHT:
                    self._flush_locked()
                oldest = min((t for t, _ in self.outstanding.values()), default=None)
                late = oldest is not None and time.monotonic() - oldest > self.cfg.ack_timeout_s
                if late and not self.reconnect_requested:
                    self.reconnect_requested = True
                    self.tell_self(_Reconnect(f"no commit within {self.cfg.ack_timeout_s:g} s"))
                due = self.reconnect_at is not None and time.monotonic() >= self.reconnect_at
            if due:
                self.tell_self(_Resume("backoff over"))

    # -- actor thread
    def handle(self, message: Any) -> Any:
        match message:
            case Committed(mids, generation, batch):
                if generation != self.generation or self.session is None:
                    return None  # an old connection's: those come again
                faults.BEFORE_ACK.maybe(actor=self.name, messages=len(mids))  # tests only
                self.session.ack(mids)  # one write for the batch
                ACKED.inc(len(mids))
                with self.lock:
                    _, count = self.outstanding.pop(batch, (0.0, 0))
                    self.held -= count
                    self.room.notify_all()
                UNACKED.dec(count)
            case Refused(generation, reason, full):
                if generation != self.generation or self.reconnect_at is not None:
                    return None
                if full:
                    self._stay_away(reason)
                else:
                    self._reconnect(reason)
            case Room() | _Resume():
                if isinstance(message, Room):
                    # Only Room resets the backoff: a buffer at its quota may still take
                    # a small batch, and a reset on that commit polled it every second.
                    self.full_backoff = 0.0
                if self.reconnect_at is not None:
                    self.reconnect_at = None
                    _log.info("source_resumed", reason="buffer has room" if isinstance(message, Room)
                              else "backoff over")
                    self._connect()
            case _Reconnect(reason):
                if self.reconnect_at is None:
                    self._reconnect(reason)
        return None

    def _reconnect(self, reason: str) -> None:
        """Drop the connection on purpose so the broker redelivers everything unacked."""
        RECONNECTS.labels(reason.split(" ")[0]).inc()
        _log.warning("source_reconnect", reason=reason)
        self._disconnect()
        self._connect()

    def _stay_away(self, reason: str) -> None:
        """The buffer is full: read nothing (the broker keeps the messages) until it has
        room, or the backoff is over."""
        RECONNECTS.labels("full").inc()
        self.full_backoff = min(max(1.0, self.full_backoff * 2), self.cfg.full_backoff_max_s)
        _log.warning("source_paused", reason=reason, retry_in_s=self.full_backoff)
        self._disconnect()
        with self.lock:
            self._new_generation_locked()
        self.reconnect_at = time.monotonic() + self.full_backoff

    def health(self) -> dict[str, Any]:
        with self.lock:
            unacked = sum(n for _, n in self.outstanding.values())
        return {"state": "paused" if self.reconnect_at is not None else "running",
                "generation": self.generation, "unacked": unacked,
                "connected": bool(self.session and self.session.is_connected())}
