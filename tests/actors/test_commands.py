"""The CommandRouter without brokers or pykka's loop: its ``handle`` driven message by
message, a recording session, its real SQLite queue (the whole path through a real broker:
tests/integration/test_gateway_commands.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import msgpack
import pytest
from fakes import Clocks, FakeSessions, context

from edge.actors.buffer import PRIORITY_HIGH, AppendLocal, LocalAppended
from edge.actors.commands import CommandRouter, DeviceAck, Downlink, Presence, _Tick
from edge.codecs.uplink import from_wire
from edge.config import MqttConfig


def command(cmd_id: str, device: str = "pm-1", in_s: float = 60, at: float | None = None,
            **extra) -> Downlink:
    """A v2 command due ``in_s`` after now (``at``, the server's clock; the real one unless given)."""
    now = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    doc = {"cmd_id": cmd_id, "device_id": device, "kind": "v2", "cmd": "update_config",
           "params": {"interval": 5}, "deadline": (now + timedelta(seconds=in_s)).isoformat()} | extra
    return Downlink(json.dumps(doc).encode())


@pytest.fixture
def router(tmp_path):
    made = []

    def make(path=tmp_path / "commands.db", clock=None):
        ctx, peers = context("commands", "buffer")
        sessions = FakeSessions()
        actor = CommandRouter(ctx, MqttConfig(), "gw-cmd", str(path), offline_after_s=60, session=sessions,
                              clock=clock)
        actor.on_start()
        made.append(actor)
        return actor, sessions.last, peers["buffer"]

    yield make
    for actor in made:
        actor.close()


def online(device: str = "pm-1") -> Presence:
    return Presence({device: None})


def test_a_command_for_an_online_device_is_published_once_with_an_expiry_at_its_deadline(router):
    actor, session, buffer = router()
    session.connect()
    actor.handle(online())
    actor.handle(command("c-1", in_s=120))
    (sent,) = session.published
    assert sent.topic == "iot/pm-1/command" and sent.qos == 1 and 110 <= sent.expiry_s <= 120
    body = json.loads(sent.payload)
    assert (body["v"], body["cmd_id"], body["cmd"], body["params"]) == (2, "c-1", "update_config", {"interval": 5})
    actor.handle(_Tick())
    actor.handle(command("c-1", in_s=120))  # the same command again (a redelivery): not added twice
    assert len(session.published) == 1
    (told,) = [m for m in buffer.told if isinstance(m, AppendLocal)]  # "delivered", upstream with priority
    (entry,) = told.entries
    ack = from_wire(msgpack.unpackb(entry.body))
    assert (entry.priority, ack.cmd_id, ack.result, ack.detail) == (PRIORITY_HIGH, "c-1", "delivered",
                                                                    "published to iot/pm-1/command")
    actor.handle(LocalAppended(told.receipt, False))  # refused (full): informational, nothing to redo
    assert actor.queue.count_pending() == 0


def test_a_command_waits_for_its_device_and_for_the_broker(router):
    actor, session, _ = router()
    actor.handle(command("c-2"))
    actor.handle(online())
    assert session.published == []  # not connected yet
    session.connect()
    actor.handle(_Tick())  # the next tick routes what waits
    assert [p.topic for p in session.published] == ["iot/pm-1/command"]


def test_a_device_offline_by_its_status_gets_nothing_until_it_is_seen_again(router):
    actor, session, _ = router()
    session.connect()
    actor.handle(Presence({"pm-1": "offline"}))
    actor.handle(command("c-3"))
    assert session.published == []
    actor.handle(Presence({"pm-1": None}))
    assert len(session.published) == 1


def test_a_command_past_its_deadline_is_answered_expired_upstream_with_priority(router):
    actor, session, buffer = router()
    session.connect()
    actor.handle(command("c-4", in_s=-1))
    actor.handle(online())
    assert session.published == []
    (stored,) = [m for m in buffer.told if isinstance(m, AppendLocal)]
    (entry,) = stored.entries
    ack = from_wire(msgpack.unpackb(entry.body))
    assert entry.priority == PRIORITY_HIGH and (ack.cmd_id, ack.result) == ("c-4", "expired")
    assert stored.reply_to == "commands"


def _expiry_answers(buffer) -> list[AppendLocal]:
    return [m for m in buffer.told if isinstance(m, AppendLocal)]


def test_an_expired_command_is_closed_only_once_the_buffer_has_its_answer(router):
    actor, _, buffer = router()
    actor.handle(command("c-7", in_s=-1))
    (answer,) = _expiry_answers(buffer)
    assert actor.queue.count_pending() == 1  # not closed before the answer is durable
    actor.handle(_Tick())
    assert len(_expiry_answers(buffer)) == 1  # and not answered twice while it waits
    actor.handle(LocalAppended(answer.receipt, True))
    row = actor.queue.conn.execute("SELECT state FROM commands WHERE cmd_id = 'c-7'").fetchone()
    assert tuple(row) == ("expired",) and actor.queue.count_pending() == 0


def test_a_crash_before_the_buffer_answered_makes_the_expiry_answer_again_after_the_restart(router):
    first, _, buffer = router()
    first.handle(command("c-8", in_s=-1))
    assert len(_expiry_answers(buffer)) == 1
    first.close()  # the AppendLocal was lost with the buffer's mailbox, say
    second, _, buffer2 = router()
    second.handle(_Tick())
    (again,) = _expiry_answers(buffer2)
    assert again.receipt[1] == "c-8"


def test_an_expiry_answer_the_full_buffer_refused_is_made_again_later(router):
    actor, _, buffer = router()
    actor.EXPIRY_RETRY_S = 0.0
    actor.handle(command("c-9", in_s=-1))
    (answer,) = _expiry_answers(buffer)
    actor.handle(LocalAppended(answer.receipt, False))
    assert actor.queue.count_pending() == 1
    actor.handle(_Tick())
    assert len(_expiry_answers(buffer)) == 2


@pytest.mark.parametrize("doc", [
    b"{not json", b'{"cmd_id": "x"}',
    json.dumps({"cmd_id": "x", "device_id": "f2-1", "kind": "f2", "deadline": "2030-01-01T00:00:00Z",
                "topic": "cmnd/f2-OTHER/relay", "payload": {}}).encode(),
    json.dumps({"cmd_id": "x", "device_id": "pm-1", "kind": "v9", "deadline": "2030-01-01T00:00:00Z"}).encode(),
    json.dumps({"cmd_id": "x", "device_id": "pm-1", "kind": "v2", "cmd": "reboot",
                "deadline": "2030-01-01T00:00:00"}).encode(),  # no offset: whose local time?
])
def test_an_invalid_command_is_refused_and_the_next_one_flows(router, doc):
    actor, session, _ = router()
    session.connect()
    actor.handle(online())
    actor.handle(Downlink(doc))
    assert session.published == [] and actor.queue.count_pending() == 0
    actor.handle(command("c-5"))
    assert len(session.published) == 1


def test_a_pending_command_survives_a_restart_and_a_device_ack_closes_it(router, tmp_path):
    first, _, _ = router()
    first.handle(command("c-6"))
    first.close()
    second, session, _ = router()
    session.connect()
    second.handle(online())
    assert [json.loads(p.payload)["cmd_id"] for p in session.published] == ["c-6"]
    second.handle(DeviceAck("c-6", "accepted"))
    row = second.queue.conn.execute("SELECT state, result FROM commands WHERE cmd_id = 'c-6'").fetchone()
    assert tuple(row) == ("acked", "accepted")


def test_a_step_of_the_system_clock_neither_expires_a_command_early_nor_delivers_it_late(router):
    clocks = Clocks()
    actor, session, buffer = router(clock=clocks.steady())
    actor.handle(command("c-10", in_s=120, at=clocks.system))
    actor.handle(command("c-11", in_s=30, at=clocks.system))
    clocks.step(86_400)  # a day forward: both deadlines are past by the system clock
    actor.handle(_Tick())
    assert _expiry_answers(buffer) == []
    clocks.step(-86_400 - 3_600)  # then an hour back: both look an hour further off
    clocks.advance(31)  # but c-11's 30 s are over
    actor.handle(_Tick())
    assert [a.receipt[1] for a in _expiry_answers(buffer)] == ["c-11"]
    (answer,) = _expiry_answers(buffer)
    ack = from_wire(msgpack.unpackb(answer.entries[0].body))
    assert ack.time.timestamp() == clocks.system  # the answer's time is data: the system clock's
    session.connect()
    actor.handle(online())
    (sent,) = session.published
    assert json.loads(sent.payload)["cmd_id"] == "c-10" and sent.expiry_s == 89


def test_how_long_ago_a_device_was_heard_is_not_moved_by_a_step_of_the_system_clock(router):
    clocks = Clocks()
    actor, session, _ = router(clock=clocks.steady())  # offline after 60 s of silence
    session.connect()
    actor.handle(online())
    clocks.step(86_400)  # a day forward: the device was heard a moment ago, not a day
    actor.handle(command("c-12", at=clocks.system))
    assert [json.loads(p.payload)["cmd_id"] for p in session.published] == ["c-12"]
    clocks.step(-86_400 - 3_600)  # an hour back: its last message is not an hour in the future
    clocks.advance(61)
    actor.handle(command("c-13", at=clocks.system))
    assert len(session.published) == 1  # silent for 61 s: offline, so c-13 waits
    actor.handle(online())
    assert len(session.published) == 2
