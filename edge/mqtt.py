"""paho-mqtt clients built the same way everywhere: MQTT v5, TLS and credentials from
``MqttConfig``, persistent sessions. Callbacks run on paho's network thread: keep them
short and hand work to an actor."""

from __future__ import annotations

import random
import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import MqttConfig


def make_client(cfg: MqttConfig, client_id: str, manual_ack: bool = False) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password.reveal() or None)
    if cfg.tls:
        client.tls_set(ca_certs=cfg.ca_file or None, certfile=cfg.cert_file or None,
                       keyfile=cfg.key_file or None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    return client


def connect_properties(session_expiry_s: int, receive_maximum: int | None = None) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    if receive_maximum:
        props.ReceiveMaximum = receive_maximum
    return props


def jittered_backoff(client: mqtt.Client, min_s: float, max_s: float) -> None:
    """paho doubles its reconnect delay up to max_s; a random start spreads a fleet of
    gateways that lost the same broker at the same moment."""
    client.reconnect_delay_set(min_delay=max(1, round(min_s * random.uniform(1.0, 2.0))),
                               max_delay=max(1, round(max_s)))
