"""Downlink commands through a real gateway: delivered while valid, `expired` after,
never applied late; the device's ack reaches the store with priority."""

from __future__ import annotations

import json
import queue
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from devices import FakeDevice, down
from harness import Site, wait_until

pytestmark = pytest.mark.integration


def acks_in_store(site: Site) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{site.store_db}?mode=ro", uri=True)
    rows = conn.execute("SELECT body FROM events WHERE type = 'command_ack'").fetchall()
    conn.close()
    answers = [json.loads(b) for (b,) in rows]
    return {a["cmd_id"]: a["result"] for a in answers if a["result"] != "delivered"}


def delivered_in_store(site: Site) -> set[str]:
    conn = sqlite3.connect(f"file:{site.store_db}?mode=ro", uri=True)
    rows = conn.execute("SELECT body FROM events WHERE type = 'command_ack'").fetchall()
    conn.close()
    return {json.loads(b)["cmd_id"] for (b,) in rows if json.loads(b)["result"] == "delivered"}


def deadline(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def test_commands_are_applied_while_valid_expire_after_and_acks_travel_up(tmp_path, site_mqtt,
                                                                       central_mqtt, unique):
    site = Site(tmp_path, unique, site_mqtt.port, central_mqtt.port)
    meter = f"{unique}-pm"
    try:
        site.start("receiver")
        site.start("gateway")
        device = FakeDevice(site_mqtt.port, meter, f"iot/{meter}/command")
        device.publish("hello", fw_version="2.4.1", uptime_s=3, broker_connections=1, buf_usage_pct=0.0)

        valid = str(uuid.uuid4())
        down(central_mqtt.port, unique, cmd_id=valid, device_id=meter, kind="v2", deadline=deadline(60),
             cmd="update_config", params={"send_interval_s": 5})
        topic, doc = device.got.get(timeout=15)
        assert topic == f"iot/{meter}/command"
        assert doc["cmd_id"] == valid and doc["cmd"] == "update_config" and doc["v"] == 2
        wait_until(lambda: acks_in_store(site).get(valid) == "accepted", 30, "the device's ack upstream")
        wait_until(lambda: valid in delivered_in_store(site), 30, "the gateway's delivered answer upstream")

        # A device that is not online before the deadline never gets the command.
        late = f"{unique}-late"
        expiring = str(uuid.uuid4())
        down(central_mqtt.port, unique, cmd_id=expiring, device_id=late, kind="v2", deadline=deadline(3),
             cmd="reboot")
        wait_until(lambda: acks_in_store(site).get(expiring) == "expired", 30, "the expired answer")
        sleeper = FakeDevice(site_mqtt.port, late, f"iot/{late}/command")
        sleeper.publish("hello", fw_version="2.4.1", uptime_s=1, broker_connections=1, buf_usage_pct=0.0)
        with pytest.raises(queue.Empty):
            sleeper.got.get(timeout=5)
        assert expiring not in delivered_in_store(site)

        # F2: a strike pulse to an online controller, on its cmnd/ topic.
        controller = FakeDevice(site_mqtt.port, "f2-e4fd45f654be", "cmnd/f2-e4fd45f654be/+/+/strike-1",
                                ack=False)
        controller.client.publish("tele/f2-e4fd45f654be/sensor-mode/J1/sensor-1", json.dumps(
            {"timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"), "data": "09C4157C0320"}),
            qos=1).wait_for_publish(5)
        time.sleep(1)
        strike_topic = "cmnd/f2-e4fd45f654be/access-control-mode/J1/strike-1"
        down(central_mqtt.port, unique, cmd_id=str(uuid.uuid4()), device_id="f2-e4fd45f654be", kind="f2",
             deadline=deadline(30), topic=strike_topic, payload={"power-flag": 2, "period": 3})
        topic, doc = controller.got.get(timeout=15)
        assert (topic, doc) == (strike_topic, {"power-flag": 2, "period": 3})
        for d in (device, sleeper, controller):
            d.close()
    finally:
        site.stop_all()
