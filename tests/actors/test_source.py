"""MqttSource against the real site Mosquitto: what it holds unacked stays bounded."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from fakes import FakeSessions, context
from harness import drop_session, wait_until
from prometheus_client import REGISTRY

from edge.actors.buffer import Committed, Refused, Room
from edge.actors.decoder import Incoming
from edge.actors.source import MqttSource
from edge.config import MqttConfig, SourceConfig, SupervisionConfig
from edge.io.mqtt import connect_properties, make_client
from edge.runtime.actor import EdgeActor
from edge.runtime.graph import ActorSpec, Runtime

RECEIVE_MAXIMUM = 50
QUEUED = 3_000


class CommittingStub(EdgeActor):
    """Stands in for decoder and buffer: takes every batch at once and commits it 5 ms later,
    like a busy buffer; records the most messages the source had handed on uncommitted."""
    receives = (object,)  # a stand-in: takes anything

    received = 0
    committed = 0
    most_held = 0
    lock = threading.Lock()

    def handle(self, message):
        match message:
            case Incoming(messages, generation, batch):
                with CommittingStub.lock:
                    CommittingStub.received += len(messages)
                    held = CommittingStub.received - CommittingStub.committed
                    CommittingStub.most_held = max(CommittingStub.most_held, held)
                threading.Timer(0.005, self._commit, (messages, generation, batch)).start()

    def _commit(self, messages, generation, batch):
        with CommittingStub.lock:
            CommittingStub.committed += len(messages)
        self.ctx.handles["source"].tell(Committed(tuple(m[0] for m in messages), generation, batch))


def queue_for(port: int, client_id: str, topic: str, n: int) -> None:
    """A persistent session for client_id with n QoS 1 messages queued while it is away."""
    sub = make_client(MqttConfig(port=port), client_id)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.connect("127.0.0.1", port, clean_start=False, properties=connect_properties(3600))
    sub.loop_start()
    sub.subscribe(topic, qos=1)
    assert subscribed.wait(10)
    sub.disconnect()
    sub.loop_stop()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(100)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(topic, b"x" * 100, qos=1) for _ in range(n)]
    for info in infos:
        info.wait_for_publish(30)
    pub.disconnect()
    pub.loop_stop()


def test_the_source_holds_at_most_receive_maximum_unacked_even_when_the_broker_sends_more(
        site_mqtt, unique):
    # Mosquitto 2.0.11 sends a resuming session's queue past the client's Receive Maximum
    # while acks come in; without the source's own bound it held 1,000s here.
    client_id, topic = f"{unique}-source", f"iot/{unique}/telemetry"
    queue_for(site_mqtt.port, client_id, topic, QUEUED)
    CommittingStub.received = CommittingStub.committed = CommittingStub.most_held = 0
    other = f"iot/{unique}/hello"  # a second filter: counts are per filter
    cfg = SourceConfig(topics=(other, topic), receive_maximum=RECEIVE_MAXIMUM, batch_max=20)
    runtime = Runtime([ActorSpec("decoder", CommittingStub.start),
                       ActorSpec("source", lambda ctx: MqttSource.start(
                           ctx, MqttConfig(port=site_mqtt.port), cfg, client_id), after=("decoder",))],
                      SupervisionConfig())
    runtime.start()
    try:
        wait_until(lambda: CommittingStub.committed >= QUEUED, 60, "the queue drained")
    finally:
        runtime.stop()
        drop_session(site_mqtt.port, client_id)
    assert CommittingStub.received == QUEUED
    assert REGISTRY.get_sample_value("edge_source_messages_received_total", {"filter": topic}) == QUEUED
    assert REGISTRY.get_sample_value("edge_source_messages_received_total", {"filter": other}) is None
    assert 0 < CommittingStub.most_held <= RECEIVE_MAXIMUM


# -- without a broker: the source driven by hand, a recording session (tests/support/fakes.py)

def _source(**cfg):
    ctx, peers = context("source", "decoder")
    sessions = FakeSessions()
    actor = MqttSource(ctx, MqttConfig(), SourceConfig(**cfg), "gw-src", session=sessions)
    actor._connect()  # on_start without its ticker thread
    return actor, sessions, peers["decoder"]


def test_a_full_batch_goes_to_the_decoder_numbered_and_its_commit_acks_it_in_one_write():
    actor, sessions, decoder = _source(batch_max=3)
    session = sessions.last
    assert session.options["manual_ack"] and session.options["receive_maximum"] == 1000
    session.connect()
    for mid in (11, 12, 13, 14):
        session.receive(mid, "iot/pm-1/telemetry", b"{}")
    (incoming,) = decoder.told
    assert [m[0] for m in incoming.messages] == [11, 12, 13] and incoming.batch == 1
    actor.handle(Committed((11, 12, 13), incoming.generation, incoming.batch))
    assert session.acked == [11, 12, 13] and session.ack_calls == 1
    assert actor.held == 1  # 14 waits for the next batch


def test_a_commit_of_a_lost_connection_is_never_acked_on_the_new_one():
    actor, sessions, decoder = _source(batch_max=2)
    session = sessions.last
    session.connect()
    session.receive(1, "iot/pm-1/telemetry", b"{}")
    session.receive(2, "iot/pm-1/telemetry", b"{}")
    (incoming,) = decoder.told
    session.disconnect()  # paho reconnects; the broker redelivers 1 and 2
    actor.handle(Committed((1, 2), incoming.generation, incoming.batch))
    assert session.acked == []


def test_a_refused_batch_reconnects_and_a_full_buffer_keeps_the_source_away_until_it_has_room():
    actor, sessions, decoder = _source(batch_max=1)
    sessions.last.connect()
    sessions.last.receive(1, "iot/pm-1/telemetry", b"{}")
    generation = decoder.told[-1].generation
    actor.handle(Refused(generation, "batch 1 missing", False))
    assert len(sessions.made) == 2 and sessions.made[0].stopped and sessions.last.started
    sessions.last.connect()
    sessions.last.receive(1, "iot/pm-1/telemetry", b"{}")
    actor.handle(Refused(decoder.told[-1].generation, "buffer quota reached", True))
    assert sessions.last.stopped and len(sessions.made) == 2 and actor.reconnect_at is not None
    actor.handle(Room())
    assert len(sessions.made) == 3 and actor.reconnect_at is None and actor.full_backoff == 0.0
