"""Devices and a server on the test brokers, as paho clients: a v2 meter (or an F2
controller) that answers the commands it gets, and a one-shot publisher on edge/<gw>/down."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from datetime import UTC, datetime

from edge.config import MqttConfig
from edge.io.mqtt import make_client


class FakeDevice:
    """A v2 meter (or an F2 controller) on the site broker that acks what it gets."""

    def __init__(self, port: int, device_id: str, subscribe: str, ack: bool = True) -> None:
        self.device_id, self.got, self.seq = device_id, queue.Queue(), 0
        self.client = make_client(MqttConfig(port=port), f"{device_id}-{uuid.uuid4().hex[:6]}")
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(subscribe, qos=1), ready.set())
        self.client.on_message = lambda c, u, m: self._on_command(m, ack)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)
        time.sleep(0.3)

    def publish(self, msg_type: str, **fields) -> None:
        doc = {"v": 2, "device_id": self.device_id, "ts": datetime.now(UTC).isoformat(),
               "seq": self.seq, "msg_type": msg_type, **fields}
        self.seq += 1
        topic = {"hello": "hello", "command_ack": "command/ack"}[msg_type]
        self.client.publish(f"iot/{self.device_id}/{topic}", json.dumps(doc), qos=1).wait_for_publish(5)

    def _on_command(self, message, ack: bool) -> None:
        doc = json.loads(message.payload)
        self.got.put((message.topic, doc))
        if ack and "cmd_id" in doc:
            self.publish("command_ack", cmd_id=doc["cmd_id"], result="accepted", detail="applied")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def down(central_port: int, gateway: str, **command) -> None:
    client = make_client(MqttConfig(port=central_port), f"server-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", central_port)
    client.loop_start()
    client.publish(f"edge/{gateway}/down", json.dumps(command), qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
