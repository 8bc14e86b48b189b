"""Topic -> codec dispatch from a table of MQTT topic filters.

The default table covers the field's topics; a site's registry adds its own
(``[[topics]] filter = "homelab/energy/#" codec = "homelab"``), which take precedence.
``Dispatcher.decode`` never raises anything but ``CodecError``; errors of single values
come back in ``DecodeResult.errors`` beside the records that did decode.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from edge.codecs import homelab, v2
from edge.codecs.errors import CodecError, PayloadError, TopicError
from edge.codecs.f2 import F2Codec
from edge.codecs.records import Event, Measurement
from edge.codecs.registry import Registry, TopicMapping

MAX_PAYLOAD = 256 * 1024  # bounds decode time: nothing the field sends comes close

DEFAULT_ROUTES: tuple[TopicMapping, ...] = (
    TopicMapping("cmnd/+/+/+/+", "f2"),
    TopicMapping("stat/+/+/+/+", "f2"),
    TopicMapping("tele/+/+/+/+", "f2"),
    TopicMapping("iot/+/telemetry", "v2"),
    TopicMapping("iot/+/hello", "v2"),
    TopicMapping("iot/+/status", "v2"),
    TopicMapping("iot/+/command/ack", "v2"),
    TopicMapping("iot/+/ota/status", "v2"),
    TopicMapping("homelab/+/+", "homelab"),
    TopicMapping("assets/+/telemetry", "asset"),
)


@dataclass(slots=True)
class DecodeResult:
    codec: str
    records: list[Measurement | Event] = field(default_factory=list)
    errors: list[CodecError] = field(default_factory=list)
    envelope: v2.Envelope | None = None  # v2 only: device, seq, msg type for the tracker
    message_id: str | None = None  # asset telemetry's event_id, for downstream dedup


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching: ``+`` one level, ``#`` the rest (including none)."""
    p_parts, t_parts = pattern.split("/"), topic.split("/")
    for i, p in enumerate(p_parts):
        if p == "#":
            return True
        if i >= len(t_parts) or (p != "+" and p != t_parts[i]):
            return False
    return len(p_parts) == len(t_parts)


class Dispatcher:
    """Decodes any message of the site. Thread-safe after construction."""

    def __init__(self, registry: Registry, routes: Iterable[TopicMapping] | None = None) -> None:
        self.registry = registry
        self.routes = tuple(registry.topics) + tuple(DEFAULT_ROUTES if routes is None else routes)
        self.f2 = F2Codec(registry)
        self.codec_for = lru_cache(maxsize=8192)(self._codec_for)

    def _codec_for(self, topic: str) -> str:
        for route in self.routes:
            if topic_matches(route.filter, topic):
                return route.codec
        raise TopicError("no codec is mapped to this topic", reason="unknown_topic", topic=topic)

    def decode(self, topic: str, payload: bytes, received_at: datetime | None = None) -> DecodeResult:
        try:
            return self._decode(topic, payload, received_at)
        except CodecError as exc:
            raise exc.at(topic) from None

    def _decode(self, topic: str, payload: bytes, received_at: datetime | None) -> DecodeResult:
        if len(payload) > MAX_PAYLOAD:
            raise PayloadError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}",
                               reason="too_large", offset=MAX_PAYLOAD)
        codec = self.codec_for(topic)
        if codec == "f2":
            records, errors = self.f2.decode(topic, payload, received_at)
            return DecodeResult(codec, records, [e.at(topic) for e in errors])
        if codec == "v2":
            envelope, records, errors = v2.decode(topic, payload)
            return DecodeResult(codec, records, errors, envelope=envelope)
        if codec == "homelab":
            records, errors = homelab.decode_homelab(topic, payload, received_at)
            return DecodeResult(codec, records, errors)
        event_id, records, errors = homelab.decode_asset(topic, payload, received_at)
        return DecodeResult(codec, records, errors, message_id=event_id)
