"""The decoder waits for the committed sequence state before it decodes anything."""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import pytest

from edge.actors.buffer import Append, GetSeqState, SeqState
from edge.actors.decoder import Decoder, Incoming
from edge.codecs import registry as registry_mod
from edge.codecs import uplink
from edge.codecs.batch import PRIORITY_HIGH, decode_batch, digest
from edge.codecs.dispatch import Dispatcher
from edge.codecs.records import DeviceGap, Measurement
from edge.config import SupervisionConfig
from edge.runtime.actor import EdgeActor
from edge.runtime.graph import ActorSpec, Runtime
from edge.runtime.metrics import ACTOR_UP

REGISTRY = (Path(__file__).resolve().parents[2] / "fixtures" / "registry.toml").read_text()


class SlowBuffer(EdgeActor):
    """Answers the state request only when the test releases it, like a busy buffer."""
    receives = (object,)  # a stand-in: takes anything

    stores: queue.Queue = queue.Queue()
    requests: list = []

    def handle(self, message):
        match message:
            case GetSeqState(reply_to):
                SlowBuffer.requests.append(reply_to)
            case Append():
                SlowBuffer.stores.put(message)


def telemetry(seq: int) -> bytes:
    return json.dumps({"v": 2, "device_id": "pm-1", "ts": f"2026-07-26T10:00:{seq:02d}Z", "seq": seq,
                       "msg_type": "telemetry",
                       "measurements": [{"type": "voltage_dc", "val": 700.0 + seq, "unit": "V"}]}).encode()


def test_batches_wait_for_the_sequence_state_and_are_then_decoded_with_it(unique):
    SlowBuffer.stores, SlowBuffer.requests = queue.Queue(), []
    runtime = Runtime([ActorSpec("buffer", SlowBuffer.start),
                       ActorSpec("decoder", lambda ctx: Decoder.start(ctx, REGISTRY), after=("buffer",))],
                      SupervisionConfig())
    runtime.start()
    try:
        messages = tuple((i, "iot/pm-1/telemetry", telemetry(seq), 1.0) for i, seq in enumerate((5, 6), 1))
        runtime.handles["decoder"].tell(Incoming(messages, generation=1, batch=1))
        with pytest.raises(queue.Empty):  # nothing is decoded before the state is back
            SlowBuffer.stores.get(timeout=0.5)
        assert len(SlowBuffer.requests) == 1
        SlowBuffer.requests[0].tell(SeqState({"pm-1": (5, None)}))  # seq 5 is already durable
        store = SlowBuffer.stores.get(timeout=5)
        assert store.mids == (1, 2) and (store.generation, store.batch) == (1, 1)
        assert len(store.entries) == 1  # seq 5 dropped as a duplicate, seq 6 kept
        assert store.seq_state == {"pm-1": (6, "2026-07-26T10:00:06Z")}  # seq and its ts
    finally:
        runtime.stop()


def v2(seq: int, msg_type: str, **fields) -> bytes:
    return json.dumps({"v": 2, "device_id": "pm-2", "ts": f"2026-07-26T10:01:{seq:02d}Z", "seq": seq,
                       "msg_type": msg_type, **fields}).encode()


MIXED = (
    (1, "iot/pm-2/telemetry", v2(1, "telemetry", measurements=[{"type": "voltage_dc", "val": 1.0},
                                                              {"type": "current_dc", "val": "x"}]), 2.0),
    (2, "iot/pm-2/telemetry", v2(1, "telemetry", measurements=[]), 2.0),  # a duplicate seq
    (3, "iot/pm-2/status", v2(2, "status", status="offline"), 2.5),
    (4, "iot/pm-2/command/ack", v2(3, "command_ack", cmd_id="c-9", result="accepted"), 3.0),
    (5, "iot/pm-2/telemetry", b"{not json", 3.5),
    (6, "homelab/energy/meter-1", json.dumps({"timestamp": "2026-07-26T10:02:00Z", "power_kw": 2.5}).encode(), 4.0),
) + tuple((10 + i, "iot/pm-3/telemetry",
           json.dumps({"v": 2, "device_id": "pm-3", "ts": "2026-07-26T10:03:00Z", "seq": i,
                       "msg_type": "telemetry", "measurements": [{"type": "p", "val": float(i)}]}).encode(), 5.0)
          for i in range(7))


class Collecting(EdgeActor):
    """A buffer that answers the state request at once and keeps what reaches it."""
    receives = (object,)  # a stand-in: takes anything

    got: queue.Queue = queue.Queue()

    def handle(self, message):
        match message:
            case GetSeqState(reply_to):
                reply_to.tell(SeqState({}))
            case Append():
                Collecting.got.put(("store", message))
            case _:
                Collecting.got.put(("other", message))


def decode_with(processes: int) -> Append:
    Collecting.got = queue.Queue()
    runtime = Runtime([ActorSpec("buffer", Collecting.start),
                       ActorSpec("decoder", lambda ctx: Decoder.start(ctx, REGISTRY, processes=processes),
                                 after=("buffer",))], SupervisionConfig())
    runtime.start()
    try:
        runtime.handles["decoder"].tell(Incoming(MIXED, generation=1, batch=1))
        kind, store = Collecting.got.get(timeout=30)
        assert kind == "store"
        return store
    finally:
        runtime.stop()


def test_a_redelivered_message_already_committed_is_acked_and_not_stored_again_whatever_its_kind():
    """The gateway stopped between the buffer's commit and the PUBACK: the broker sends the
    batch again with DUP set. Kinds without a device sequence (homelab, a Last-Will status
    without seq, a bad message) used to be stored twice."""
    lwt = (21, "iot/pm-4/status", json.dumps({"status": "offline"}).encode(), 6.0)
    messages = MIXED + (lwt,)
    committed = tuple(digest(topic, payload) for _, topic, payload, _ in messages)
    every = frozenset(m[0] for m in messages)
    # Then the same bytes without DUP: a device sent them again, not the broker. The v2
    # message is a repeat of its sequence (the same bytes: dropped); the Last-Will status
    # is decoded again (the stores dedup it on its identity).
    store, again = decode_remembering(
        [Incoming(messages, generation=1, batch=1, redelivered=every),
         Incoming(messages[-2:], generation=1, batch=2)],
        recent=committed[:-2])  # the buffer had committed all but the last two
    assert len(again.entries) == 1 and again.mids == (16, 21)
    assert store.mids == tuple(m[0] for m in messages)  # every one acked
    assert len(store.entries) == 2 and len(store.fingerprints) == 2  # only what was never committed
    assert [body for _, body in store.entries] == [
        body for _, body in decode_batch_entries(messages[-2:])]


def test_missing_messages_of_a_device_go_upstream_as_device_gap_events_committed_with_the_batch():
    def telemetry_at(seq: int, second: int) -> bytes:
        return json.dumps({"v": 2, "device_id": "pm-7", "ts": f"2026-07-26T10:{second // 60:02d}:{second % 60:02d}Z",
                           "seq": seq, "msg_type": "telemetry",
                           "measurements": [{"type": "p", "val": float(seq)}]}).encode()

    # 1, 2, then 5 (3 and 4 lost); a reboot whose 0..1 were lost: 2 with a newer time.
    sent = [(1, 10), (2, 20), (5, 50), (2, 600)]
    messages = tuple((i, "iot/pm-7/telemetry", telemetry_at(seq, second), 1.0)
                     for i, (seq, second) in enumerate(sent, 1))
    (store,) = decode_remembering([Incoming(messages, generation=1, batch=1)])
    records = [uplink.from_wire(msgpack.unpackb(body)) for _, body in store.entries]
    gaps = [r for r in records if isinstance(r, DeviceGap)]
    assert [(g.seq, g.first_missing, g.count, g.reason) for g in gaps] == [(5, 3, 2, "gap"), (2, 0, 2, "reboot")]
    assert all(g.time == datetime.fromtimestamp(1.0, UTC) for g in gaps)  # when the gateway received it
    assert sum(1 for r in records if isinstance(r, Measurement)) == 4  # nothing dropped
    assert all(p == PRIORITY_HIGH for (p, _), r in zip(store.entries, records, strict=True) if isinstance(r, DeviceGap))
    assert store.seq_state == {"pm-7": (2, "2026-07-26T10:10:00Z")}


class Remembering(EdgeActor):
    """A buffer whose committed state holds the fingerprints in ``recent``."""
    receives = (object,)  # a stand-in: takes anything

    recent: tuple = ()
    got: queue.Queue = queue.Queue()

    def handle(self, message):
        match message:
            case GetSeqState(reply_to):
                reply_to.tell(SeqState({}, Remembering.recent))
            case Append():
                Remembering.got.put(message)


def decode_remembering(batches: list[Incoming], recent: tuple = ()) -> list[Append]:
    """The decoder's Append for each batch, its buffer holding ``recent`` fingerprints."""
    Remembering.recent, Remembering.got = recent, queue.Queue()
    runtime = Runtime([ActorSpec("buffer", Remembering.start),
                       ActorSpec("decoder", lambda ctx: Decoder.start(ctx, REGISTRY), after=("buffer",))],
                      SupervisionConfig())
    runtime.start()
    try:
        for incoming in batches:
            runtime.handles["decoder"].tell(incoming)
        return [Remembering.got.get(timeout=60) for _ in batches]
    finally:
        runtime.stop()


def decode_batch_entries(messages) -> list:
    pack = msgpack.Packer(use_bin_type=True).pack
    return [e for out in decode_batch(Dispatcher(registry_mod.loads(REGISTRY)), pack, messages)
            for e in (*out.entries, *([out.quarantine.entry] if out.quarantine else []))]


def test_decoder_processes_give_exactly_what_the_decoder_thread_gives():
    alone = decode_with(0)
    assert alone.mids == tuple(m[0] for m in MIXED)
    # pm-2: 1 measurement + a quarantined copy (its bad val), the duplicate dropped, status,
    # ack; the bad JSON quarantined; the homelab record; 7 pm-3 measurements.
    assert len(alone.entries) == 2 + 1 + 1 + 1 + 1 + 7
    assert alone.seq_state == {"pm-2": (3, "2026-07-26T10:01:03Z"), "pm-3": (6, "2026-07-26T10:03:00Z")}
    assert len(alone.fingerprints) == len(MIXED)  # committed with the batch, for redeliveries
    assert [priority for priority, _ in alone.entries][:4] == [1, 1, 0, 0]  # telemetry, quarantine, events
    for processes in (1, 2):  # 2: the batch is split in two, the outcomes come back in order
        assert decode_with(processes) == alone


def test_a_decoder_process_that_dies_fails_the_actor_and_a_new_one_takes_over():
    Collecting.got = queue.Queue()
    runtime = Runtime([ActorSpec("buffer", Collecting.start),
                       ActorSpec("decoder", lambda ctx: Decoder.start(ctx, REGISTRY, processes=1),
                                 after=("buffer",))], SupervisionConfig(backoff_initial_s=0.1))
    runtime.start()
    try:
        children = multiprocessing.active_children()
        assert len(children) == 1
        os.kill(children[0].pid, signal.SIGKILL)
        children[0].join(10)
        runtime.handles["decoder"].tell(Incoming(MIXED, generation=1, batch=1))  # meets a broken pool
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the supervisor restarts the decoder with a new process
            if [c for c in multiprocessing.active_children() if c.pid != children[0].pid]:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("no new decoder process")
        while time.monotonic() < deadline and ACTOR_UP.labels("decoder")._value.get() != 1:
            time.sleep(0.05)  # the new actor is in place: a message to its handle reaches it
        assert ACTOR_UP.labels("decoder")._value.get() == 1, "the decoder was not restarted"
        runtime.handles["decoder"].tell(Incoming(MIXED, generation=2, batch=1))  # the redelivery
        kind, store = Collecting.got.get(timeout=30)
        assert kind == "store" and store.generation == 2 and len(store.entries) == 13
    finally:
        runtime.stop()
    assert not multiprocessing.active_children()  # stopping the actor stops its processes


def test_everything_the_decoder_buffers_from_hostile_traffic_is_what_the_receiver_takes():
    """Records the decoder makes itself (device_gap events) are checked like the device's:
    a gap event at a hostile envelope's naive or far-off ts made the receiver refuse the
    whole frame, good readings included (seen in CI)."""
    from hostile import Hostile

    from edge.codecs.limits import check_wire_record

    hostile = list(Hostile(seed=1616).messages(3000))
    messages = tuple((i, topic, payload, 1_700_000_000.0 + i) for i, (topic, payload) in enumerate(hostile, 1))
    appends = decode_remembering([Incoming(messages[start:start + 500], generation=1, batch=n)
                                  for n, start in enumerate(range(0, len(messages), 500), 1)])
    records = [uplink.from_wire(msgpack.unpackb(body)) for a in appends for _, body in a.entries]
    assert sum(isinstance(r, DeviceGap) for r in records) > 0  # the grammar makes sequence gaps
    for record in records:
        check_wire_record(record)
