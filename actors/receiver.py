"""UplinkReceiver: the server's end of the uplink.

Subscribes to ``$share/<group>/edge/+/up`` (an MQTT v5 shared subscription: several
receivers share the gateways' load), checks each frame and every record in it
(``edge.codecs.uplink``: what it returns the store can take), hands the records to the
store, and only when the store has them durably acks the MQTT message and publishes the
confirmation on ``edge/<gateway>/ack``.

A frame that cannot be taken is kept in the store's rejected frames (a dead letter, its
size bounded) with the reason, counted and acked, so it is not redelivered forever:

- when its CRC held (the header is the gateway's own, and every resend would be refused
  the same way: a record of the wrong type, a body that does not unpack), the gateway is
  answered ``{"status": "rejected", "reason": ...}`` and deletes the frame: the chain
  moves on;
- otherwise (corrupt, truncated, another version, a gateway id that does not match its
  topic) nothing is answered: the gateway sends it again from its buffer.

On every connect the receiver publishes a retained ``online`` on
``edge/receivers/<client id>/status`` (its Last Will says ``offline``): gateways resend
what is unconfirmed at once, instead of after their confirmation timeout.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram

from edge.codecs import uplink as frames
from edge.codecs.errors import UplinkFrameError
from edge.config import MqttConfig, ReceiverConfig
from edge.io.mqtt import Inbound, MqttSession, Session, SessionFactory
from edge.io.store import RecordStore, confirmation, refusal
from edge.runtime import faults, log
from edge.runtime.actor import ActorContext, EdgeActor

_log = log.get(__name__)
_rejected_lines = log.Throttle()

FRAMES = Counter("edge_receiver_frames", "Frames stored and confirmed")
RECORDS = Counter("edge_receiver_records", "Records in stored frames (before dedup)")
REJECTED = Counter("edge_receiver_frames_rejected", "Frames that could not be read", ["reason"])
WRITE_SECONDS = Histogram("edge_receiver_store_write_seconds", "Time to store one frame durably")


@dataclass(frozen=True, slots=True)
class _Frames:
    """Wake-up: frames are waiting in ``pending``."""


class UplinkReceiver(EdgeActor):
    receives = (_Frames,)

    def __init__(self, ctx: ActorContext, broker: MqttConfig, cfg: ReceiverConfig,
                 store: RecordStore, client_id: str, session: SessionFactory = Session) -> None:
        super().__init__(ctx)
        self.broker, self.cfg, self.store, self.client_id = broker, cfg, store, client_id
        self.make_session = session
        self.session: MqttSession | None = None
        self.lock = threading.Lock()
        self.pending: list[tuple[int, str, bytes]] = []
        self.status_topic = f"edge/receivers/{client_id}/status"

    def on_start(self) -> None:
        self.session = self.make_session(
            self.broker, self.client_id, "central broker (receiver)", manual_ack=True,
            session_expiry_s=7 * 86_400, receive_maximum=100,
            subscriptions=[(f"$share/{self.cfg.share_group}/edge/+/up", 1)],
            on_message=self._on_message, on_connect=self._on_connect,
            will=(self.status_topic, self._status("offline")))
        self.session.start()

    def close(self) -> None:
        if self.session is not None:
            if self.session.is_connected():
                self.session.publish(self.status_topic, self._status("offline"), retain=True)
            self.session.stop()
            self.session = None

    def _status(self, state: str) -> bytes:
        return json.dumps({"status": state, "receiver": self.client_id, "ts": time.time()}).encode()

    def _on_connect(self, flags: Any) -> None:
        assert self.session is not None
        self.session.publish(self.status_topic, self._status("online"), retain=True)
        _log.info("receiver_connected", host=self.broker.host, group=self.cfg.share_group)

    def _on_message(self, message: Inbound) -> None:
        with self.lock:
            wake = not self.pending
            self.pending.append((message.mid, message.topic, message.payload))
        if wake:
            self.tell_self(_Frames())

    def handle(self, message: Any) -> Any:
        match message:
            case _Frames():
                with self.lock:
                    waiting, self.pending = self.pending, []
                if waiting:
                    self._frames(waiting)
        return None

    def _frames(self, waiting: list[tuple[int, str, bytes]]) -> None:
        """Everything that arrived since the last commit, in ONE transaction."""
        session = self.session
        assert session is not None
        good: list[tuple[int, str, frames.Batch]] = []
        for mid, topic, payload in waiting:
            gateway = topic.split("/")[1] if topic.count("/") == 2 else ""
            try:
                batch = frames.decode(payload)
                if batch.gateway_id != gateway:
                    raise UplinkFrameError(f"frame of gateway {batch.gateway_id!r} on {topic}",
                                           reason="gateway_mismatch", field="gateway")
            except UplinkFrameError as exc:
                REJECTED.labels(exc.reason).inc()
                final = exc.frame is not None and exc.frame[0] == gateway
                held = _rejected_lines.allow(exc.reason)
                if held is not None:
                    _log.warning("frame_rejected", topic=topic, reason=exc.reason,
                                 detail=exc.describe()[:500], answered=final, suppressed=held)
                self.store.reject(topic, payload, exc.reason, exc.describe())  # durable: a dead letter
                session.ack([mid])
                if final:
                    assert exc.frame is not None
                    session.publish(f"edge/{gateway}/ack", refusal(*exc.frame[1:], exc))
                continue
            good.append((mid, gateway, batch))
        if not good:
            return
        with WRITE_SECONDS.time():
            self.store.write([b for _, _, b in good])  # durable on return; raising = unacked
        faults.BEFORE_CONFIRM.maybe(actor=self.name, frames=len(good))  # tests only
        session.ack([mid for mid, _, _ in good])  # one write for what was stored together
        for _, gateway, batch in good:
            FRAMES.inc()
            RECORDS.inc(len(batch.records))
            session.publish(f"edge/{gateway}/ack", confirmation(batch))
