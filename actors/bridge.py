"""DirectBridge: devices that publish straight to the central broker, into Kafka.

Configured mappings ``"<MQTT topic filter> -> <Kafka topic>"`` (first match wins), e.g.
``cmnd/# -> raw_iot_data`` and ``homelab/energy/# -> homelab.energy`` as the field
systems run them. Each message goes to Kafka as it came, enriched in headers with the
received time, the broker and the original topic (codecs/stream.py), key = the device
part of the topic. MQTT v5, persistent session with a fixed client id, QoS 1, optionally
a shared subscription so several bridges share the load; the MQTT ack is sent only
after Kafka acknowledged the message (acks=all), so a bridge or Kafka that dies loses
nothing: the broker redelivers what was not acked.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter

from edge.codecs import stream
from edge.codecs.dispatch import topic_matches
from edge.config import BridgeConfig, KafkaConfig, MqttConfig
from edge.io.kafka import Delivery, producer
from edge.io.mqtt import Inbound, MqttSession, Session, SessionFactory
from edge.runtime import log
from edge.runtime.actor import ActorContext, EdgeActor

_log = log.get(__name__)

BRIDGED = Counter("edge_bridge_messages", "Messages bridged to Kafka", ["filter", "topic"])


@dataclass(frozen=True, slots=True)
class _Messages:
    """Wake-up: messages are waiting in ``pending``."""


def parse_mappings(items: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        filt, _, topic = item.partition("->")
        out.append((filt.strip(), topic.strip()))
    return out


class DirectBridge(EdgeActor):
    receives = (_Messages,)

    def __init__(self, ctx: ActorContext, broker: MqttConfig, kafka: KafkaConfig, cfg: BridgeConfig,
                 client_id: str, session: SessionFactory = Session,
                 delivery: Callable[[], Delivery] | None = None) -> None:
        """``session`` and ``delivery`` make the broker session and the Kafka delivery
        (tests give fakes); by default a ``Session`` and a ``Delivery`` to ``kafka``."""
        super().__init__(ctx)
        self.broker, self.kafka, self.cfg, self.client_id = broker, kafka, cfg, client_id
        self.make_session, self.make_delivery = session, delivery or self._kafka_delivery
        self.mappings = parse_mappings(cfg.mappings)
        self.session: MqttSession | None = None
        self.delivery: Delivery | None = None
        self.lock = threading.Lock()
        self.pending: list[tuple[int, str, bytes, datetime]] = []
        self.origin = f"{broker.host}:{broker.port}"

    def on_start(self) -> None:
        self.delivery = self.make_delivery()
        share = f"$share/{self.cfg.share_group}/" if self.cfg.share_group else ""
        self.session = self.make_session(
            self.broker, self.client_id, "central broker (bridge)", manual_ack=True,
            session_expiry_s=self.cfg.session_expiry_s, receive_maximum=self.cfg.receive_maximum,
            subscriptions=[(share + f, 1) for f, _ in self.mappings],
            retain_once=not share,  # shared subscriptions get no retained messages anyway
            on_message=self._on_message)
        self.session.start()

    def close(self) -> None:
        if self.delivery is not None:
            self.delivery.stopping.set()
        if self.session is not None:
            self.session.stop()
            self.session = None
        if self.delivery is not None:
            self.delivery.close()
            self.delivery = None

    def _kafka_delivery(self) -> Delivery:
        return Delivery(lambda: producer(self.kafka, f"{self.client_id}-kafka"), name="bridge",
                        bootstrap=self.kafka.bootstrap_servers)

    def _on_message(self, message: Inbound) -> None:
        with self.lock:
            wake = not self.pending
            self.pending.append((message.mid, message.topic, message.payload, datetime.now(UTC)))
        if wake:
            self.tell_self(_Messages())

    def handle(self, message: Any) -> Any:
        match message:
            case _Messages():
                with self.lock:
                    waiting, self.pending = self.pending, []
                if waiting:
                    self._bridge(waiting)
        return None

    def route(self, topic: str) -> tuple[str, str] | None:
        for filt, kafka_topic in self.mappings:
            if topic_matches(filt, topic):
                return filt, kafka_topic
        return None

    def _bridge(self, waiting: list[tuple[int, str, bytes, datetime]]) -> None:
        assert self.session is not None and self.delivery is not None
        out: list[stream.Outgoing] = []
        counted: list[tuple[str, str]] = []
        for _, topic, payload, received_at in waiting:
            route = self.route(topic)
            if route is None:  # a retained message of an older mapping, say: keep it visible
                route = ("(unmapped)", self.kafka.raw_topic + ".dlq")
            key = stream.device_key(topic)
            out.append(stream.raw(route[1], topic, payload, received_at, key, broker=self.origin,
                                  source=f"mqtt:{self.origin}"))
            counted.append(route)
        self.delivery.deliver(out)  # returns only when Kafka has every message
        self.session.ack([mid for mid, *_ in waiting])  # one write for the batch
        for (filt, kafka_topic), n in collections.Counter(counted).items():  # an inc() takes a lock
            BRIDGED.labels(filt, kafka_topic).inc(n)
