"""How the uplink reaches the server: over MQTT, or in-process.

``MqttLink`` publishes frames on ``edge/<gateway>/up`` and hears confirmations on
``/ack`` and commands on ``/down``; a retained ``/status`` with a Last Will says whether
the gateway is online. It also hears receivers announce themselves online
(``edge/receivers/+/status``), so the uplink resends what is unconfirmed at once.
``LocalLink`` is the single-node deployment's link (and ``edge demo``'s): the same frames
go to an in-process receiver writing the single-node store, which answers with the same
confirmations; ``set_up(False)`` makes it behave like an unreachable broker (frames are
lost, the uplink resends after the link returns).

Callbacks (``LinkEvents``) may come from any thread; the uplink turns them into messages.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Protocol

from edge.codecs import uplink as frames
from edge.codecs.errors import UplinkFrameError
from edge.config import MqttConfig
from edge.io.mqtt import Inbound, MqttSession, Session, SessionFactory
from edge.io.store import RecordStore, confirmation, refusal
from edge.runtime import log

_log = log.get(__name__)


class LinkEvents(Protocol):
    def link_up(self) -> None: ...
    def link_down(self) -> None: ...
    def confirmation(self, payload: bytes) -> None: ...
    def command(self, payload: bytes) -> None: ...
    def receiver_online(self) -> None: ...


class Link(Protocol):
    def start(self, events: LinkEvents) -> None: ...
    def publish_frame(self, frame: bytes) -> None: ...
    def publish_status(self, payload: bytes) -> None: ...
    def stop(self, last_status: bytes | None) -> None: ...


class MqttLink:
    def __init__(self, broker: MqttConfig, gateway_id: str, session_expiry_s: int,
                 will: bytes, session: SessionFactory = Session) -> None:
        self.make_session = session
        self.broker, self.will, self.session_expiry_s = broker, will, session_expiry_s
        base = f"edge/{gateway_id}"
        self.topic_up, self.topic_ack = f"{base}/up", f"{base}/ack"
        self.topic_status, self.topic_down = f"{base}/status", f"{base}/down"
        self.client_id = broker.client_id or f"edge-{gateway_id}-uplink"
        self.session: MqttSession | None = None
        self.events: LinkEvents | None = None

    def start(self, events: LinkEvents) -> None:
        self.events = events
        self.session = self.make_session(
            self.broker, self.client_id, "central broker (uplink)",
            session_expiry_s=self.session_expiry_s,
            subscriptions=[(self.topic_ack, 1), (self.topic_down, 1), (RECEIVERS, 1)],
            on_message=self._on_message, on_connect=lambda flags: events.link_up(),
            on_disconnect=lambda reason: events.link_down(), will=(self.topic_status, self.will))
        self.session.start()

    def _on_message(self, message: Inbound) -> None:
        assert self.events is not None
        if message.topic == self.topic_down:
            self.events.command(message.payload)
        elif message.topic == self.topic_ack:
            self.events.confirmation(message.payload)
        elif _online(message.payload):
            self.events.receiver_online()

    def publish_frame(self, frame: bytes) -> None:
        if self.session is not None:
            self.session.publish(self.topic_up, frame)

    def publish_status(self, payload: bytes) -> None:
        if self.session is not None:
            self.session.publish(self.topic_status, payload, retain=True)

    def stop(self, last_status: bytes | None) -> None:
        session, self.session = self.session, None
        if session is not None:
            if last_status is not None and session.is_connected():
                session.publish(self.topic_status, last_status, retain=True)
            session.stop()


RECEIVERS = "edge/receivers/+/status"  # where receivers say they are online (retained)


def _online(payload: bytes) -> bool:
    try:
        return json.loads(payload).get("status") == "online"
    except (ValueError, AttributeError):
        return False


class LocalLink:
    """An in-process receiver behind the uplink's usual protocol. Thread-safe."""

    def __init__(self, store: RecordStore, up: bool = True) -> None:
        self.store = store
        self.up = up
        self.status: bytes | None = None
        self.events: LinkEvents | None = None
        self.frames: queue.Queue[bytes | None] = queue.Queue()
        self.worker: threading.Thread | None = None
        self.lock = threading.Lock()

    def start(self, events: LinkEvents) -> None:
        self.events = events
        self.worker = threading.Thread(target=self._receive, name="local-link", daemon=True)
        self.worker.start()
        if self.up:
            events.link_up()

    def set_up(self, up: bool) -> None:
        """Bring the link down (frames are lost, as to a broker that is gone) or back."""
        with self.lock:
            changed, self.up = up != self.up, up
        if changed and self.events is not None:
            self.events.link_up() if up else self.events.link_down()

    def publish_frame(self, frame: bytes) -> None:
        if self.up:
            self.frames.put(frame)

    def publish_status(self, payload: bytes) -> None:
        self.status = payload

    def stop(self, last_status: bytes | None) -> None:
        self.status = last_status
        self.frames.put(None)
        if self.worker is not None:
            self.worker.join(timeout=10)

    def _receive(self) -> None:
        while (frame := self.frames.get()) is not None:
            try:
                batch = frames.decode(frame)
            except UplinkFrameError as exc:
                self.store.reject("local", frame, exc.reason, exc.describe())
                if exc.frame is not None and self.up and self.events is not None:
                    self.events.confirmation(refusal(*exc.frame[1:], exc))
                continue
            self.store.write([batch])  # durable before the confirmation, as over MQTT
            if self.up and self.events is not None:
                self.events.confirmation(confirmation(batch))
