"""The Uplink actor without threads, brokers or pykka's loop: its ``handle`` driven
message by message, with a recording link and recording peers (the buffer's tests drive
``BufferDB`` the same way)."""

from __future__ import annotations

import json
import time

from fakes import context

from edge.actors.buffer import Confirm, GetStats, Leased, LeaseRequest, Stats
from edge.actors.commands import Downlink
from edge.actors.uplink import Uplink, _Ack, _Connected, _Tick
from edge.config import UplinkConfig


class RecordingLink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.statuses: list[dict] = []

    def start(self, events) -> None:
        self.events = events

    def publish_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def publish_status(self, payload: bytes) -> None:
        self.statuses.append(json.loads(payload))

    def stop(self, last_status) -> None:
        pass


def _uplink(**cfg):
    ctx, peers = context("uplink", "buffer", "commands")
    buffer, commands = peers["buffer"], peers["commands"]
    link = RecordingLink()
    actor = Uplink(ctx, lambda will: link, UplinkConfig(**cfg), "gw-1")
    actor.link = link
    link.start(actor)
    return actor, link, buffer, commands


def test_a_leased_batch_travels_as_one_frame_and_is_confirmed_back_to_the_buffer():
    actor, link, buffer, _ = _uplink(batch_records=100)
    actor.handle(_Connected())
    assert link.statuses[-1]["status"] == "online"
    assert buffer.told == [LeaseRequest(100, UplinkConfig().max_frame_bytes)]
    bodies = tuple(b"\x91\x01" for _ in range(3))  # any bodies: the frame carries them as they are
    actor.handle(Leased(7, (11, 12, 13), bodies))
    assert len(link.frames) == 1 and link.frames[0][:2] == b"EG" and b"gw-1" in link.frames[0]
    assert isinstance(buffer.told[-1], LeaseRequest)  # the next lease is asked at once
    actor.handle(_Ack(json.dumps({"boot_epoch": 7, "first_seq": 11, "count": 3, "status": "ok"}).encode()))
    assert Confirm((11, 12, 13)) in buffer.told and actor.window == {}


def test_a_confirmation_that_matches_no_frame_changes_nothing():
    actor, link, buffer, _ = _uplink()
    actor.handle(_Connected())
    actor.handle(Leased(7, (11, 12), (b"\x01", b"\x02")))
    for wrong in ({"boot_epoch": 7, "first_seq": 11, "count": 5, "status": "ok"},
                  {"boot_epoch": 8, "first_seq": 11, "count": 2, "status": "ok"}, "garbage"):
        actor.handle(_Ack(json.dumps(wrong).encode()))
    assert len(actor.window) == 1 and not any(isinstance(m, Confirm) for m in buffer.told)


def test_the_heartbeat_asks_the_buffer_by_message_not_by_ask_and_reports_its_figures():
    actor, link, buffer, _ = _uplink(heartbeat_s=1.0)
    actor.handle(_Connected())
    actor.last_heartbeat = time.monotonic() - 2
    actor.handle(_Tick())
    request = next(m for m in buffer.told if isinstance(m, GetStats))
    assert request.reply_to is actor.actor_ref  # the answer comes back as a message
    actor.handle(Stats({"depth": 42, "oldest_age_s": 3.5, "dropped_total": 0}))
    status = link.statuses[-1]
    assert status["status"] == "online" and status["buffer_depth"] == 42 and status["oldest_age_s"] == 3.5


def test_a_command_from_the_server_goes_to_the_command_router():
    actor, _, _, commands = _uplink()
    actor.command(b'{"cmd_id": "c1"}')
    assert commands.told == [Downlink(b'{"cmd_id": "c1"}')]
