"""Topic -> codec dispatch from a table of MQTT topic filters.

The default table covers the field's topics; a site's registry adds its own
(``[[topics]] filter = "homelab/energy/#" codec = "homelab"``), which take precedence.
``Dispatcher.decode`` never raises anything but ``CodecError``; errors of single values
come back in ``DecodeResult.errors`` beside the records that did decode. Every record it
returns has passed ``edge.codecs.limits`` (it packs, frames, produces and inserts) and,
when a window is set, carries a time plausible for when it was received.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache

from edge.codecs import homelab, v2
from edge.codecs.errors import CodecError, PayloadError, TopicError
from edge.codecs.f2 import F2Codec
from edge.codecs.limits import MAX_PAYLOAD, MAX_RECORDS, check_event, check_measurement, check_window
from edge.codecs.records import Event, Measurement
from edge.codecs.registry import Registry, TopicMapping

__all__ = ["MAX_PAYLOAD", "DecodeResult", "Dispatcher", "topic_matches"]

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
    """Decodes any message of the site. Thread-safe after construction.

    ``max_age`` / ``max_ahead``: the plausibility window of a record's time around the
    message's receive time (None: unbounded on that side). A record outside it is an
    ``implausible_time`` error of that record: a device without a real-time clock that
    sends 1970, or one whose clock ran off to 2200, is quarantined instead of stored."""

    def __init__(self, registry: Registry, routes: Iterable[TopicMapping] | None = None,
                 max_age: timedelta | None = None, max_ahead: timedelta | None = None) -> None:
        self.registry = registry
        self.routes = tuple(registry.topics) + tuple(DEFAULT_ROUTES if routes is None else routes)
        self.f2 = F2Codec(registry)
        self.codec_for = lru_cache(maxsize=8192)(self._codec_for)
        self.max_age, self.max_ahead = max_age, max_ahead

    @classmethod
    def with_window(cls, registry: Registry, max_age_s: float, max_ahead_s: float) -> Dispatcher:
        """A dispatcher whose plausibility window is given in seconds (0: that side open)."""
        return cls(registry, max_age=timedelta(seconds=max_age_s) if max_age_s else None,
                   max_ahead=timedelta(seconds=max_ahead_s) if max_ahead_s else None)

    def _codec_for(self, topic: str) -> str:
        for route in self.routes:
            if topic_matches(route.filter, topic):
                return route.codec
        raise TopicError("no codec is mapped to this topic", reason="unknown_topic", topic=topic)

    def decode(self, topic: str, payload: bytes, received_at: datetime | None = None) -> DecodeResult:
        try:
            result = self._decode(topic, payload, received_at)
        except CodecError as exc:
            raise exc.at(topic) from None
        if len(result.records) > MAX_RECORDS:
            raise PayloadError(f"message holds {len(result.records)} records, at most {MAX_RECORDS} "
                               "allowed", reason="too_many", topic=topic)
        self._check(result, topic, received_at)
        return result

    def _check(self, result: DecodeResult, topic: str, received_at: datetime | None) -> None:
        """Move every record that a later hop could not carry into ``result.errors``."""
        earliest = latest = None
        if received_at is not None:
            earliest = received_at - self.max_age if self.max_age is not None else None
            latest = received_at + self.max_ahead if self.max_ahead is not None else None
        check = check_measurement
        try:  # the usual case, every record fine, in one pass
            for record in result.records:
                if type(record) is Measurement:
                    check(record)
                else:
                    check_event(record)
            if earliest is not None or latest is not None:
                for record in result.records:
                    t = record.time
                    if (earliest is not None and t < earliest) or (latest is not None and t > latest):
                        check_window(t, received_at, self.max_age, self.max_ahead)
        except CodecError:
            self._check_each(result, topic, received_at)

    def _check_each(self, result: DecodeResult, topic: str, received_at: datetime | None) -> None:
        kept: list[Measurement | Event] = []
        for i, record in enumerate(result.records):
            try:
                if type(record) is Measurement:
                    check_measurement(record)
                else:
                    check_event(record)
                check_window(record.time, received_at, self.max_age, self.max_ahead)
            except CodecError as exc:
                exc.message = f"record {i}: {exc.message}"
                result.errors.append(exc.at(topic))
                continue
            kept.append(record)
        result.records = kept

    def _decode(self, topic: str, payload: bytes, received_at: datetime | None) -> DecodeResult:
        if len(payload) > MAX_PAYLOAD:
            raise PayloadError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}",
                               reason="too_large", field="payload", offset=MAX_PAYLOAD)
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
