"""The DirectBridge without threads, brokers or Kafka: messages handed to it as paho's thread
would, a recording session and a recording delivery (the real ones:
tests/integration/test_server.py)."""

from __future__ import annotations

import threading

import pytest
from fakes import FakeSessions, context

from edge.actors.bridge import DirectBridge, _Messages
from edge.codecs import stream
from edge.config import BridgeConfig, KafkaConfig, MqttConfig


class RecordingDelivery:
    def __init__(self) -> None:
        self.delivered: list[stream.Outgoing] = []
        self.fail: Exception | None = None
        self.closed = False
        self.stopping = threading.Event()

    def deliver(self, messages: list[stream.Outgoing]) -> None:
        if self.fail is not None:
            raise self.fail
        self.delivered.extend(messages)

    def close(self) -> None:
        self.closed = True


def _bridge(**cfg):
    ctx, _ = context("bridge")
    sessions, delivery = FakeSessions(), RecordingDelivery()
    actor = DirectBridge(ctx, MqttConfig(host="central", port=1883), KafkaConfig(), BridgeConfig(**cfg), "br-1",
                         session=sessions, delivery=lambda: delivery)
    actor.on_start()
    return actor, sessions.last, delivery


def test_it_subscribes_every_mapping_shared_and_keeps_a_persistent_session():
    _, session, _ = _bridge(mappings=("iot/# -> raw_iot_data", "homelab/energy/# -> homelab.energy"),
                            share_group="g")
    assert session.options["subscriptions"] == [("$share/g/iot/#", 1), ("$share/g/homelab/energy/#", 1)]
    assert session.options["manual_ack"] is True and session.options["retain_once"] is False
    _, plain, _ = _bridge(share_group="")
    assert plain.options["retain_once"] is True  # retained messages once, not at every reconnect


def test_messages_reach_kafka_routed_keyed_and_enriched_and_only_then_are_acked_together():
    actor, session, delivery = _bridge(mappings=("iot/# -> raw_iot_data", "homelab/energy/# -> homelab.energy"))
    session.receive(5, "iot/pm-1/telemetry", b'{"v":2}')
    session.receive(6, "homelab/energy/meter-1", b'{"power_kw":1}')
    session.receive(7, "stray/topic", b"x")  # matches no mapping (an older mapping's retained message)
    actor.handle(_Messages())
    assert [(m.topic, m.key, m.value) for m in delivery.delivered] == [
        ("raw_iot_data", b"pm-1", b'{"v":2}'), ("homelab.energy", b"meter-1", b'{"power_kw":1}'),
        (KafkaConfig().raw_topic + ".dlq", b"topic", b"x")]
    first = delivery.delivered[0]
    assert stream.header(first.headers, "mqtt_topic") == "iot/pm-1/telemetry"
    assert stream.header(first.headers, "broker") == "central:1883"
    assert stream.header(first.headers, "received_at")
    assert session.acked == [5, 6, 7] and session.ack_calls == 1


def test_when_kafka_does_not_take_them_nothing_is_acked_and_the_broker_redelivers():
    actor, session, delivery = _bridge()
    delivery.fail = TimeoutError("kafka away")
    session.receive(1, "iot/pm-1/telemetry", b"{}")
    with pytest.raises(TimeoutError):
        actor.handle(_Messages())
    assert session.acked == []


def test_close_stops_the_session_and_the_delivery():
    actor, session, delivery = _bridge()
    actor.close()
    assert session.stopped and delivery.closed
