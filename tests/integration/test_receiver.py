"""UplinkReceiver against the real central Mosquitto: what it confirms, what it rejects."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
from harness import drop_session, wait_until

from edge.actors.receiver import UplinkReceiver
from edge.codecs import uplink as frames
from edge.codecs.records import Measurement
from edge.config import MqttConfig, ReceiverConfig, SupervisionConfig
from edge.io.store import SqliteStore
from edge.runtime.graph import ActorSpec, Runtime


def frame(gateway: str, first_seq: int, n: int) -> bytes:
    t0 = datetime(2026, 7, 26, 10, tzinfo=UTC)
    records = [Measurement(t0 + timedelta(seconds=first_seq + i), "pm-1", None, None, None, "p",
                           float(i), "W", "iot/pm-1/telemetry") for i in range(n)]
    return frames.encode(gateway, 7, first_seq, records)


def real(confirmations: list[dict]) -> list[dict]:
    return [c for c in confirmations if c["first_seq"] != 100_000]


def test_bad_frames_are_kept_acked_and_not_confirmed_while_good_ones_are_stored_and_confirmed(
        central_mqtt, unique, tmp_path):
    gw = f"{unique}-gw"
    store = SqliteStore(str(tmp_path / "store.db"))
    client_id = f"{unique}-receiver"
    runtime = Runtime([ActorSpec("receiver", lambda ctx: UplinkReceiver.start(
        ctx, MqttConfig(port=central_mqtt.port), ReceiverConfig(share_group=unique), store, client_id))],
        SupervisionConfig())
    confirmations: list[dict] = []
    seen = threading.Event()
    gateway = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    gateway.on_subscribe = lambda *args: seen.set()
    gateway.on_message = lambda c, u, m: confirmations.append(json.loads(m.payload))
    gateway.connect("127.0.0.1", central_mqtt.port)
    gateway.loop_start()
    gateway.subscribe(f"edge/{gw}/ack", qos=1)
    assert seen.wait(10)
    runtime.start()
    try:
        probe = frame(gw, 100_000, 1)  # until the receiver has subscribed (stored once, whatever the resends)

        def confirmed() -> bool:
            gateway.publish(f"edge/{gw}/up", probe, qos=1)
            return bool(confirmations)

        wait_until(confirmed, 20, "the receiver subscribed", interval=0.5)
        good = [frame(gw, seq, 500) for seq in range(0, 20 * 500, 500)]
        bad = [b"\x00garbage", frame("another-gw", 0, 3), good[3][:-5]]  # junk, wrong gateway, truncated
        for i, payload in enumerate(good):
            gateway.publish(f"edge/{gw}/up", payload, qos=1)
            if i < len(bad):
                gateway.publish(f"edge/{gw}/up", bad[i], qos=1)
        wait_until(lambda: len(real(confirmations)) >= len(good), 30, "every good frame confirmed")
    finally:
        runtime.stop()
        gateway.disconnect()
        gateway.loop_stop()
        store.close()
    assert sorted(c["first_seq"] for c in real(confirmations)) == list(range(0, 20 * 500, 500))
    assert all(c["count"] == 500 and c["status"] == "ok" for c in real(confirmations))
    db = sqlite3.connect(tmp_path / "store.db")
    assert db.execute("SELECT count(*), count(DISTINCT time) FROM iot_measurements").fetchone() == (10_001, 10_001)
    reasons = sorted(r for (r,) in db.execute("SELECT reason FROM rejected_frames"))
    assert len(reasons) == 3 and "gateway_mismatch" in reasons, reasons
    # Acked: a new session of the same client id gets nothing redelivered.
    redelivered: list[bytes] = []
    again = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    again.on_message = lambda c, u, m: redelivered.append(m.payload)
    again.connect("127.0.0.1", central_mqtt.port, clean_start=False)
    again.loop_start()
    try:
        threading.Event().wait(1.0)
    finally:
        again.disconnect()
        again.loop_stop()
        drop_session(central_mqtt.port, client_id)
    assert redelivered == []
