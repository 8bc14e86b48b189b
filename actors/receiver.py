"""UplinkReceiver: the server's end of the uplink.

Subscribes to ``$share/<group>/edge/+/up`` (an MQTT v5 shared subscription: several
receivers share the gateways' load), checks each frame, hands its records to the store,
and only when the store has them durably acks the MQTT message and publishes the
confirmation on ``edge/<gateway>/ack``. A frame that cannot be read (bad CRC, truncated,
another version, a gateway id that does not match its topic) is kept in the store's
rejected frames with the reason, counted, acked (so it is not redelivered forever) and
not confirmed: the gateway sends it again from its buffer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from prometheus_client import Counter, Histogram

from edge import log
from edge.actor import ActorContext, EdgeActor
from edge.codecs import uplink as frames
from edge.codecs.errors import UplinkFrameError
from edge.config import MqttConfig, ReceiverConfig
from edge.mqtt import connect_properties, jittered_backoff, make_client
from edge.store import RecordStore, confirmation

_log = log.get(__name__)

FRAMES = Counter("edge_receiver_frames", "Frames stored and confirmed")
RECORDS = Counter("edge_receiver_records", "Records in stored frames (before dedup)")
REJECTED = Counter("edge_receiver_frames_rejected", "Frames that could not be read", ["reason"])
WRITE_SECONDS = Histogram("edge_receiver_store_write_seconds", "Time to store one frame durably")


@dataclass(frozen=True, slots=True)
class _Frames:
    """Wake-up: frames are waiting in ``pending``."""


class UplinkReceiver(EdgeActor):
    def __init__(self, ctx: ActorContext, broker: MqttConfig, cfg: ReceiverConfig,
                 store: RecordStore, client_id: str) -> None:
        super().__init__(ctx)
        self.broker, self.cfg, self.store, self.client_id = broker, cfg, store, client_id
        self.client: mqtt.Client | None = None
        self.lock = threading.Lock()
        self.pending: list[tuple[int, str, bytes]] = []

    def on_start(self) -> None:
        client = make_client(self.broker, self.client_id, manual_ack=True)
        jittered_backoff(client, 0.5, 30)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive_s,
                             clean_start=False, properties=connect_properties(7 * 86_400, 100))
        client.loop_start()
        self.client = client

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe(f"$share/{self.cfg.share_group}/edge/+/up", qos=1)
            _log.info("receiver_connected", host=self.broker.host, group=self.cfg.share_group)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
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
            case _:
                raise TypeError(f"receiver got an unknown message {message!r}")
        return None

    def _frames(self, waiting: list[tuple[int, str, bytes]]) -> None:
        """Everything that arrived since the last commit, in ONE transaction."""
        assert self.client is not None
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
                _log.warning("frame_rejected", topic=topic, reason=exc.reason, detail=exc.describe())
                self.store.reject(topic, payload, exc.reason, exc.describe())
                self.client.ack(mid, 1)
                continue
            good.append((mid, gateway, batch))
        if not good:
            return
        with WRITE_SECONDS.time():
            self.store.write([b for _, _, b in good])  # durable on return; raising = unacked
        for mid, gateway, batch in good:
            self.client.ack(mid, 1)
            FRAMES.inc()
            RECORDS.inc(len(batch.records))
            self.client.publish(f"edge/{gateway}/ack", confirmation(batch), qos=1)
