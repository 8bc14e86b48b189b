"""The UplinkReceiver without threads or brokers: frames handed to it as paho's thread would,
its ``handle`` driven by hand, a recording session and a recording store (the real broker
and store: tests/integration/test_receiver.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fakes import FakeSessions, context

from edge.actors.receiver import UplinkReceiver, _Frames
from edge.codecs import uplink as frames
from edge.codecs.records import Measurement
from edge.config import MqttConfig, ReceiverConfig


class RecordingStore:
    def __init__(self) -> None:
        self.written: list[list[frames.Batch]] = []
        self.rejected: list[tuple[str, str]] = []
        self.fail: Exception | None = None

    def write(self, batches: list[frames.Batch]) -> None:
        if self.fail is not None:
            raise self.fail
        self.written.append(batches)

    def reject(self, topic: str, frame: bytes, reason: str, detail: str) -> None:
        self.rejected.append((topic, reason))

    def close(self) -> None:
        pass


def frame(gateway: str, first_seq: int, n: int) -> bytes:
    t0 = datetime(2026, 7, 26, 10, tzinfo=UTC)
    return frames.encode(gateway, 7, first_seq, [
        Measurement(t0 + timedelta(seconds=i), "pm-1", None, None, None, "p", float(i), "W", None)
        for i in range(n)])


def _receiver():
    ctx, _ = context("receiver")
    store, sessions = RecordingStore(), FakeSessions()
    actor = UplinkReceiver(ctx, MqttConfig(), ReceiverConfig(share_group="g"), store, "rx-1", session=sessions)
    actor.on_start()
    session = sessions.last
    return actor, store, session


def test_it_subscribes_shared_with_a_persistent_session_and_says_online_with_a_will_of_offline():
    _, _, session = _receiver()
    assert session.started and session.options["manual_ack"] is True
    assert session.options["subscriptions"] == [("$share/g/edge/+/up", 1)]
    assert session.options["session_expiry_s"] > 0
    topic, will = session.options["will"]
    assert topic == "edge/receivers/rx-1/status" and json.loads(will)["status"] == "offline"
    session.connect()
    assert json.loads(session.on(topic)[-1])["status"] == "online"
    assert session.published[-1].retain


def test_frames_are_stored_in_one_write_then_acked_together_then_confirmed_each():
    actor, store, session = _receiver()
    session.receive(1, "edge/gw-a/up", frame("gw-a", 10, 3))
    session.receive(2, "edge/gw-b/up", frame("gw-b", 50, 2))
    assert store.written == [] and session.acked == []  # nothing before the actor's turn
    actor.handle(_Frames())
    assert [[(b.gateway_id, b.first_seq, len(b.records)) for b in w] for w in store.written] == [
        [("gw-a", 10, 3), ("gw-b", 50, 2)]]
    assert session.acked == [1, 2] and session.ack_calls == 1
    assert json.loads(session.on("edge/gw-a/ack")[0]) == {"boot_epoch": 7, "first_seq": 10, "count": 3,
                                                          "status": "ok"}
    assert json.loads(session.on("edge/gw-b/ack")[0])["first_seq"] == 50


def test_a_store_that_fails_leaves_everything_unacked_and_unconfirmed_for_redelivery():
    actor, store, session = _receiver()
    store.fail = OSError("disk I/O error")
    session.receive(1, "edge/gw-a/up", frame("gw-a", 10, 3))
    with pytest.raises(OSError):
        actor.handle(_Frames())
    assert session.acked == [] and session.published == []


def test_a_frame_refused_for_good_is_kept_acked_and_answered_rejected_while_the_good_one_flows():
    actor, store, session = _receiver()
    good = frame("gw-a", 10, 2)
    body = bytearray(frame("gw-a", 20, 1))
    bad = frames.encode_wire("gw-a", 7, 20, [["no such record type"]])  # CRC holds: answered
    session.receive(1, "edge/gw-a/up", bad)
    session.receive(2, "edge/gw-a/up", good)
    body[-1] ^= 0xFF  # CRC broken: not answered, the gateway sends it again
    session.receive(3, "edge/gw-a/up", bytes(body))
    actor.handle(_Frames())
    assert [r for _, r in store.rejected][0] != "" and len(store.rejected) == 2
    assert sorted(session.acked) == [1, 2, 3]
    answers = [json.loads(p) for p in session.on("edge/gw-a/ack")]
    assert [(a["first_seq"], a["status"]) for a in answers] == [(20, "rejected"), (10, "ok")]


def test_a_frame_of_another_gateway_on_a_topic_is_kept_and_not_answered_to_either():
    actor, store, session = _receiver()
    session.receive(1, "edge/gw-a/up", frame("gw-evil", 10, 1))
    actor.handle(_Frames())
    assert store.rejected == [("edge/gw-a/up", "gateway_mismatch")]
    assert session.acked == [1] and session.published == [] and store.written == []


def test_closing_says_offline_when_connected_and_stops_the_session():
    actor, _, session = _receiver()
    session.connect()
    actor.close()
    assert json.loads(session.published[-1].payload)["status"] == "offline" and session.stopped
