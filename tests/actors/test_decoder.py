"""The decoder waits for the committed sequence state before it decodes anything."""

from __future__ import annotations

import json
import queue
from pathlib import Path

import pytest

from edge.actor import EdgeActor
from edge.actors.buffer import GetSeqState, SeqState, Store
from edge.actors.decoder import Decoder, Incoming
from edge.config import SupervisionConfig
from edge.runtime import ActorSpec, Runtime

REGISTRY = (Path(__file__).resolve().parents[2] / "fixtures" / "registry.toml").read_text()


class SlowBuffer(EdgeActor):
    """Answers the state request only when the test releases it, like a busy buffer."""

    stores: queue.Queue = queue.Queue()
    requests: list = []

    def handle(self, message):
        match message:
            case GetSeqState(reply_to):
                SlowBuffer.requests.append(reply_to)
            case Store():
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
        assert store.seq_state == {"pm-1": (6, None)}
    finally:
        runtime.stop()
