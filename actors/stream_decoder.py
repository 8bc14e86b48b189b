"""The server's Decoder: raw device messages from Kafka -> ``decoded_iot_data``.

A consumer group member on the raw topics (``raw_iot_data`` and the bridge's streams such
as ``homelab.energy``). Each record carries the device's payload as it came and its MQTT
topic in a header; the same dispatcher as the gateway decodes it, with the registry held
in PostgreSQL (read at start, re-read when ``registry_state.version`` moves, checked
every ``registry_refresh_s``; a database that is away leaves the cached registry in use).

Measurements go to the decoded topic, events to the events topic, and a message that does
not decode (or decodes only in part) to ``<topic>.dlq`` with reason code, field, byte
offset and the record's coordinates. Offsets are committed only after Kafka acknowledged
everything produced from them (actors/consuming.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from edge.actors.consuming import ConsumingActor
from edge.codecs import stream
from edge.codecs.dispatch import Dispatcher
from edge.codecs.errors import CodecError
from edge.codecs.records import Event, Measurement, identity
from edge.codecs.registry import Registry
from edge.config import KafkaConfig, PostgresConfig, StreamDecoderConfig
from edge.errors import SchemaNotReady, ServiceUnavailable
from edge.io import registry_db
from edge.io.kafka import KafkaRecord
from edge.io.pg import connect, translated
from edge.runtime import log
from edge.runtime.actor import ActorContext

_log = log.get(__name__)

DECODED = Counter("edge_stream_decoder_messages", "Raw messages decoded", ["codec"])
RECORDS = Counter("edge_stream_decoder_records", "Measurements and events produced")
REGISTRY_VERSION = Gauge("edge_stream_decoder_registry_version", "Registry version in use")


class StreamDecoder(ConsumingActor):
    retryable = (ServiceUnavailable,)

    def __init__(self, ctx: ActorContext, kafka: KafkaConfig, postgres: PostgresConfig,
                 cfg: StreamDecoderConfig, client_id: str) -> None:
        super().__init__(ctx, kafka, cfg.group, cfg.topics, client_id, cfg.batch_max, 50.0)
        self.postgres, self.cfg = postgres, cfg
        self.topics_out = stream.Topics(kafka.decoded_topic, kafka.raw_topic, kafka.events_topic)
        self.version = -1
        self.dispatcher: Dispatcher | None = None
        self.checked_at = 0.0

    def _registry(self) -> Dispatcher:
        now = time.monotonic()
        if self.dispatcher is not None and now - self.checked_at < self.cfg.registry_refresh_s:
            return self.dispatcher
        try:
            with translated("reading the registry"), connect(self.postgres, autocommit=True) as conn:
                version = registry_db.version(conn)
                if version != self.version:
                    version, registry = registry_db.read(conn)
                    self.dispatcher = Dispatcher.with_window(registry, self.cfg.max_age_s,
                                                             self.cfg.max_ahead_s)
                    self.version = version
                    REGISTRY_VERSION.set(version)
                    _log.info("registry_loaded", version=version, templates=len(registry.templates),
                              controllers=len(registry.controllers))
        except SchemaNotReady:
            _log.warning("registry_missing", detail="no registry tables: run `edge server migrate`")
            self.dispatcher = self.dispatcher or Dispatcher.with_window(
                Registry(), self.cfg.max_age_s, self.cfg.max_ahead_s)
        except ServiceUnavailable:
            if self.dispatcher is None:
                raise  # nothing cached yet: retry the batch with backoff
            _log.warning("registry_refresh_failed", version=self.version)
        self.checked_at = now
        assert self.dispatcher is not None
        return self.dispatcher

    def process(self, records: list[KafkaRecord]) -> None:
        dispatcher = self._registry()
        out: list[stream.Outgoing] = []
        for rec in records:
            out += self._decode(dispatcher, rec)
        assert self.delivery is not None
        self.delivery.deliver(out)

    def _decode(self, dispatcher: Dispatcher, rec: KafkaRecord) -> list[stream.Outgoing]:
        topic = stream.header(rec.headers, "mqtt_topic")
        if not topic:
            return [self.dead_letter(rec, "no_topic", "the record has no mqtt_topic header", "mqtt_topic")]
        received = stream.header(rec.headers, "received_at")
        try:
            received_at = datetime.fromisoformat(received) if received else datetime.now(UTC)
        except ValueError:
            received_at = datetime.now(UTC)
        try:
            result = dispatcher.decode(topic, rec.value, received_at)
        except CodecError as exc:
            return [self.dead_letter(rec, exc.reason, exc.describe(), exc.field)]
        DECODED.labels(result.codec).inc()
        src = f"kafka:{rec.topic}/{rec.partition}/{rec.offset}"
        numbered: list[tuple[int, Measurement]] = []
        out: list[stream.Outgoing] = []
        for i, r in enumerate(result.records):
            if type(r) is Measurement:
                numbered.append((i, r))
            elif isinstance(r, Event):
                # The event's identity, as the gateway path gives it: a message a device
                # publishes twice (to the gateway and the central broker, or again after a
                # reconnect) is one event.
                out.append(stream.event(r, identity(r), stream.header(rec.headers, "gateway"),
                                        self.topics_out.events))
        out[:0] = stream.measurements(src, numbered, self.topics_out.decoded)
        RECORDS.inc(len(result.records))
        if result.errors:
            first = result.errors[0]
            out.append(self.dead_letter(rec, first.reason, "; ".join(e.describe() for e in result.errors),
                                  first.field, decoded_records=len(result.records)))
        return out

    def health(self) -> dict[str, Any]:
        return {**super().health(), "registry_version": self.version}
