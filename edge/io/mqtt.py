"""paho-mqtt clients built the same way everywhere: MQTT v5, TLS and credentials from
``MqttConfig``, persistent sessions. Callbacks run on paho's network thread: keep them
short and hand work to an actor.

``Client`` turns Nagle's algorithm off (``nodelay``): with it on, every small packet of the
ack chain could wait for a delayed TCP ACK (device -> store p99 at 1,000 msg/s: 110 ->
30 ms, with ``set_tcp_nodelay`` in the brokers' configs).

Four changes to paho's receive path, all measured with bench/gateway.py (a gateway
draining queued QoS 1 messages, paho 2.2, 2-core machine) and all leaving what paho does
unchanged, only cheaper:

- ``Client`` reads its socket 64 KiB at a time (``_ReadBuffer``). Stock paho reads a
  packet with three or four ``recv()`` calls (type, length bytes, body), each releasing and
  retaking the GIL; in a gateway whose decoder and buffer threads hold the GIL, every
  retake waits. Sustained ingest: 3.8k-4.3k -> 5.2k-5.5k msgs/s.
- ``share_property_tables()`` (called once per process by ``edge.app.run_*``): paho builds its
  MQTT v5 property tables (27 names, 27 type lookups) in every ``Properties`` instance,
  that is for every PUBLISH received, 14 us here, and ``clear()`` re-derives the 27 names
  on every unpack. The tables are constants that paho only reads: one shared read-only
  copy. Sustained ingest: +25 %.
- ``Client.loop_read`` handles every packet already in the read buffer. Stock paho
  handles one QoS 0/1 packet per pass of its loop, and each pass costs a ``select()``
  (the GIL given up, and retaken behind the decoder and the buffer) and ``loop_misc()``.
  Sustained ingest on a fast machine: 15.5k -> 24k-25.5k msgs/s.
- ``_Matcher``: paho walks its tree of ``message_callback_add()`` filters for every
  message, empty or not; edge's answers at once while it is empty.

And one to its send path: ``ack_many()`` sends the manual acks of a committed batch as one
write. paho's ``ack()`` queues one PUBACK per call, each with a byte to the socket pair
that wakes paho's loop and a ``send()`` of its own: two system calls and two GIL hand-offs
per message, and one TCP segment per PUBACK with Nagle off.

These reach into paho: ``_create_socket``, ``_packet_queue`` and ``_on_message_filtered``
are private (``loop_read`` is public, but its one-packet-per-call behaviour is not
promised), and the property tables are instance attributes. Each is applied only when
paho looks the way it was written for (checked at run time, logged otherwise, and covered
by tests/edge/test_mqtt.py), so a paho upgrade that changes them falls back to stock
behaviour instead of breaking.
"""

from __future__ import annotations

import functools
import inspect
import random
import socket
import ssl
import struct
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import MqttConfig
from edge.runtime import log
from edge.runtime.health import CONDITIONS

_log = log.get(__name__)

# paho's types as the actors name them (they import no paho themselves).
PahoClient = mqtt.Client
topic_matches = mqtt.topic_matches_sub

READ_CHUNK = 64 * 1024


class _ReadBuffer:
    """A socket whose ``recv(n)`` is served from one large read; everything else is the
    socket's. ``pending()`` counts the bytes held here, so paho's loop does not wait in
    ``select()`` while a packet sits in the buffer (paho asks ``pending()`` for TLS)."""

    __slots__ = ("_sock", "_buf", "_pos")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(max(n, READ_CHUNK))  # raises BlockingIOError etc. as before
            if len(data) <= n:
                return data
            self._buf, self._pos = data, 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def fileno(self) -> int:  # select() asks on every pass of paho's loop
        return self._sock.fileno()

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return self.buffered() + inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Matcher(MQTTMatcher):
    """paho's topic tree for ``message_callback_add()``, answering at once while empty.

    paho walks it for every message received (building a generator per topic level) even
    when no callback was ever added: 7 % of a busy gateway's GIL."""

    def iter_match(self, topic: str) -> Iterator[Any]:
        if not self._root._children:
            return iter(())
        return super().iter_match(topic)


class Client(mqtt.Client):
    """paho's client, with TCP_NODELAY, reading its socket through ``_ReadBuffer``, and
    the empty-matcher shortcut (``_Matcher``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if _matcher_is_replaceable(self):
            self._on_message_filtered = _Matcher()

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        nodelay(sock)
        return _ReadBuffer(sock)

    def reconnect(self) -> mqtt.MQTTErrorCode:
        """paho's, remembering why a connection attempt failed (paho's ``on_connect_fail``
        is told nothing): refused, unreachable, TLS."""
        try:
            return super().reconnect()
        except OSError as exc:
            self.connect_error = exc
            raise

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """Every packet already in the read buffer, not one per pass of paho's loop.

        Stock ``loop_read`` handles one incoming QoS 0/1 packet per call, and every pass of
        ``_loop`` around it costs a ``select()`` (the GIL given up and taken back) and
        ``loop_misc``. What was read in one 64 KiB ``recv()`` is handled here in one go;
        ``_loop`` then writes (the acks) and checks keepalive as before."""
        rc = super().loop_read(max_packets)
        sock = self._sock
        while rc == mqtt.MQTT_ERR_SUCCESS and isinstance(sock, _ReadBuffer) and sock.buffered() \
                and self._sock is sock:
            rc = super().loop_read(max_packets)
        return rc


_PUBACK = struct.Struct("!BBH")  # what paho's ack() sends for QoS 1: type, length 2, message id


def ack_many(client: mqtt.Client, mids: Sequence[int]) -> None:
    """The manual QoS 1 acks of ``mids``, in order: the same PUBACK bytes paho's ``ack()``
    sends, queued as one packet (one wake-up of paho's loop, one ``send()``)."""
    if not mids:
        return
    if not _can_queue_raw():
        for mid in mids:
            client.ack(mid, 1)
        return
    if not getattr(client, "_manual_ack", True):  # as ack(): without manual acks paho acked
        return
    client._packet_queue(PUBACK, b"".join([_PUBACK.pack(PUBACK, 2, mid) for mid in mids]), 0, 1)


@functools.cache
def _can_queue_raw() -> bool:
    queue = getattr(mqtt.Client, "_packet_queue", None)
    params = list(inspect.signature(queue).parameters)[:5] if queue is not None else []
    if params != ["self", "command", "packet", "mid", "qos"]:
        _log.warning("paho_ack_many_unavailable", reason="paho.mqtt.client.Client._packet_queue is not "
                     "what edge.io.mqtt was written for: acking one message at a time")
        return False
    return True


def nodelay(sock: Any) -> None:
    """TCP_NODELAY: paho leaves Nagle's algorithm on, which holds a small packet (a PUBACK,
    a confirmation) until the peer ACKs the previous one, and Linux delays that ACK up to
    40 ms. Measured gateway -> central broker -> receiver -> confirmation: 62 ms on average
    with Nagle on both ends, 4.5 ms with it off (the brokers' configs set
    ``set_tcp_nodelay true`` for the other direction)."""
    if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_PROPERTY_ATTRS = {"packetType", "types", "names", "properties"}


def share_property_tables(cls: type[Properties] = Properties) -> bool:
    """Make ``cls`` (paho's ``Properties`` by default) share one read-only copy of its
    tables instead of building them per instance. Returns whether it applied."""
    if getattr(cls, "_edge_shared_tables", False):
        return True
    probe = cls(PacketTypes.PUBLISH)
    if set(vars(probe)) != _PROPERTY_ATTRS or not isinstance(probe.names, dict):
        _log.warning("paho_properties_unchanged", reason="paho's Properties is not what edge.io.mqtt "
                     "was written for", attributes=sorted(vars(probe)))
        return False
    kinds = tuple(probe.types)
    names = types.MappingProxyType(dict(probe.names))
    table = types.MappingProxyType(dict(probe.properties))
    compressed = tuple(name.replace(" ", "") for name in names)

    def __init__(self: Properties, packetType: int) -> None:  # noqa: N807,N803 (paho's names)
        d = self.__dict__
        d["packetType"], d["types"], d["names"], d["properties"] = packetType, kinds, names, table

    def clear(self: Properties) -> None:
        d = self.__dict__
        for name in compressed:
            d.pop(name, None)

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls.clear = clear  # type: ignore[method-assign]
    cls._edge_shared_tables = True  # type: ignore[attr-defined]
    return True


class Inbound(Protocol):
    """A message as the session hands it to its owner (paho's ``MQTTMessage`` is one)."""

    mid: int
    topic: str
    payload: bytes
    dup: bool  # the broker sent it before (MQTT DUP flag): a redelivery


class MqttSession(Protocol):
    """What an actor holds of its broker connection: ``Session`` in production, a
    recording fake in the actors' thread-free unit tests (tests/support/fakes.py)."""

    def start(self) -> MqttSession: ...
    def stop(self) -> None: ...
    def is_connected(self) -> bool: ...
    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                expiry_s: int | None = None) -> Any: ...
    def ack(self, mids: Sequence[int]) -> None: ...


# How an actor makes its session: ``Session`` itself, or a test's fake with its signature.
SessionFactory = Callable[..., MqttSession]


class Session:
    """One broker connection, set up the same way by every actor that has one.

    The client comes from ``MqttConfig`` (MQTT v5, credentials, TLS), reconnects with
    paho's doubling backoff between ``reconnect_min_s`` (jittered, so a fleet that lost the
    same broker does not come back at the same moment) and ``reconnect_max_s``, keeps a
    persistent session when ``session_expiry_s`` is given, and subscribes again at every
    connect. Its state is logged and reported to ``/healthz`` (edge.runtime.health) once per change:
    connected, refused by the broker (with its reason code), unreachable (with the socket
    or TLS error), lost. Callbacks run on paho's thread: ``on_message(message)`` (an
    ``Inbound``), and ``on_connect(flags)`` and ``on_disconnect(reason)``, called after the
    session's own handling. With ``manual_ack``, the owner acks what it has made durable
    with ``ack(mids)``, in the order received.
    """

    def __init__(self, cfg: MqttConfig, client_id: str, name: str, *, manual_ack: bool = False,
                 session_expiry_s: int | None = None, receive_maximum: int | None = None,
                 subscriptions: Sequence[tuple[str, int]] = (), retain_once: bool = False,
                 on_message: Callable[[Inbound], None] | None = None,
                 on_connect: Callable[[Any], None] | None = None,
                 on_disconnect: Callable[[Any], None] | None = None,
                 will: tuple[str, bytes] | None = None) -> None:
        self.cfg, self.client_id, self.name = cfg, client_id, name
        self.where = f"{cfg.host}:{cfg.port}"
        self.session_expiry_s, self.receive_maximum = session_expiry_s, receive_maximum
        self.subscriptions, self.retain_once = list(subscriptions), retain_once
        self.owner_connect, self.owner_disconnect = on_connect, on_disconnect
        self.client = make_client(cfg, client_id, manual_ack=manual_ack)
        jittered_backoff(self.client, cfg.reconnect_min_s, cfg.reconnect_max_s)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        if on_message is not None:
            self.client.on_message = lambda client, userdata, message: on_message(message)
        self.stopping = False

    def start(self) -> Session:
        CONDITIONS.problem(self.name, f"connecting to {self.where}", quiet=True)
        persistent = self.session_expiry_s is not None
        self.client.connect_async(
            self.cfg.host, self.cfg.port, self.cfg.keepalive_s,
            clean_start=False if persistent else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=connect_properties(self.session_expiry_s, self.receive_maximum) if persistent
            else None)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.stopping = True
        self.client.disconnect()
        self.client.loop_stop()
        CONDITIONS.clear(self.name, quiet=True)

    def is_connected(self) -> bool:
        return self.client.is_connected()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                expiry_s: int | None = None) -> mqtt.MQTTMessageInfo:
        """Queue a message; ``expiry_s``: MQTT v5 Message Expiry Interval, after which no
        broker hands it over."""
        props = None
        if expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = expiry_s
        return self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)

    def ack(self, mids: Sequence[int]) -> None:
        """The manual QoS 1 acks of ``mids``, sent as one write (``ack_many``)."""
        ack_many(self.client, mids)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            CONDITIONS.problem(self.name, f"{self.where} refused the connection: {reason}",
                               client_id=self.client_id)
            return
        if self.subscriptions:
            # retain_once: retained messages only when the subscription is new, not at every
            # reconnect of a persistent session (retained garbage is not quarantined again).
            options = [(f, mqtt.SubscribeOptions(qos=q, retainHandling=1 if self.retain_once else 0))
                       for f, q in self.subscriptions]
            client.subscribe(options)
        CONDITIONS.clear(self.name, host=self.where, session_present=flags.session_present)
        _log.info("mqtt_connected", connection=self.name, host=self.where, client_id=self.client_id,
                  session_present=flags.session_present)
        if self.owner_connect is not None:
            self.owner_connect(flags)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        error = getattr(client, "connect_error", None)
        CONDITIONS.problem(self.name, f"cannot connect to {self.where}: "
                           f"{error if error is not None else 'connection failed'}")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if not self.stopping:
            CONDITIONS.problem(self.name, f"connection to {self.where} lost: {reason}")
        if self.owner_disconnect is not None:
            self.owner_disconnect(reason)


def make_client(cfg: MqttConfig, client_id: str, manual_ack: bool = False) -> mqtt.Client:
    client = _client_class()(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password.reveal() or None)
    if cfg.tls:
        client.tls_set(ca_certs=cfg.ca_file or None, certfile=cfg.cert_file or None,
                       keyfile=cfg.key_file or None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    return client


def connect_properties(session_expiry_s: int | None, receive_maximum: int | None = None) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    if session_expiry_s is not None:
        props.SessionExpiryInterval = session_expiry_s
    if receive_maximum:
        props.ReceiveMaximum = receive_maximum
    return props


def jittered_backoff(client: mqtt.Client, min_s: float, max_s: float) -> None:
    """paho doubles its reconnect delay up to max_s; a random start spreads a fleet of
    gateways that lost the same broker at the same moment."""
    client.reconnect_delay_set(min_delay=min_s * random.uniform(1.0, 2.0), max_delay=max_s)


def _matcher_is_replaceable(client: mqtt.Client) -> bool:
    matcher = getattr(client, "_on_message_filtered", None)
    root = getattr(matcher, "_root", None)
    if type(matcher) is MQTTMatcher and isinstance(getattr(root, "_children", None), dict) \
            and not root._children:
        return True
    _warn_once("paho_matcher_unchanged", "paho.mqtt.client.Client._on_message_filtered is not the "
               "MQTTMatcher edge.io.mqtt was written for: every message walks it")
    return False


@functools.cache
def _warn_once(event: str, reason: str) -> None:
    _log.warning(event, reason=reason)


@functools.cache
def _client_class() -> type[mqtt.Client]:
    """Decided once per process (and warned about once)."""
    if hasattr(mqtt.Client, "_create_socket"):
        return Client
    _log.warning("paho_read_buffer_unavailable", reason="paho.mqtt.client.Client has no _create_socket")
    return mqtt.Client
