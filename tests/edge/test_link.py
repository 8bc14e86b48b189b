"""MqttLink without a broker: the uplink's topics, its will, and what it hears, through a
recording session (tests/support/fakes.py); the real broker: tests/integration."""

from __future__ import annotations

import json

from fakes import FakeSessions

from edge.config import MqttConfig
from edge.io.link import MqttLink


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes | None]] = []

    def link_up(self) -> None:
        self.seen.append(("up", None))

    def link_down(self) -> None:
        self.seen.append(("down", None))

    def confirmation(self, payload: bytes) -> None:
        self.seen.append(("confirmation", payload))

    def command(self, payload: bytes) -> None:
        self.seen.append(("command", payload))

    def receiver_online(self) -> None:
        self.seen.append(("receiver_online", None))


def _link():
    sessions, events = FakeSessions(), Events()
    link = MqttLink(MqttConfig(), "gw-1", 3600, b'{"status":"offline"}', session=sessions)
    link.start(events)
    return link, sessions.last, events


def test_the_link_keeps_a_session_hears_its_topics_and_leaves_a_will():
    _, session, _ = _link()
    assert session.client_id == "edge-gw-1-uplink" and session.options["session_expiry_s"] == 3600
    assert [f for f, _ in session.options["subscriptions"]] == [
        "edge/gw-1/ack", "edge/gw-1/down", "edge/receivers/+/status"]
    assert session.options["will"] == ("edge/gw-1/status", b'{"status":"offline"}')


def test_what_arrives_is_told_to_the_uplink_by_topic():
    _, session, events = _link()
    session.connect()
    session.receive(1, "edge/gw-1/ack", b"ok")
    session.receive(2, "edge/gw-1/down", b"cmd")
    session.receive(3, "edge/receivers/rx-1/status", json.dumps({"status": "online"}).encode())
    session.receive(4, "edge/receivers/rx-1/status", json.dumps({"status": "offline"}).encode())
    session.receive(5, "edge/receivers/rx-1/status", b"\xff not json")
    session.disconnect()
    assert events.seen == [("up", None), ("confirmation", b"ok"), ("command", b"cmd"),
                           ("receiver_online", None), ("down", None)]


def test_frames_go_up_at_qos_1_and_the_status_retained_and_a_clean_stop_says_its_last_status():
    link, session, _ = _link()
    session.connect()
    link.publish_frame(b"EG...")
    link.publish_status(b'{"status":"online"}')
    link.stop(b'{"status":"offline"}')
    assert [(p.topic, p.qos, p.retain) for p in session.published] == [
        ("edge/gw-1/up", 1, False), ("edge/gw-1/status", 1, True), ("edge/gw-1/status", 1, True)]
    assert session.published[-1].payload == b'{"status":"offline"}' and session.stopped
    link.publish_frame(b"after stop")  # nothing to publish on: dropped, the uplink resends
    assert len(session.published) == 3
