"""``edge status --url http://127.0.0.1:9108``: a person's summary of a running process,
read from its ``/healthz`` and ``/metrics`` endpoints: each actor, every condition that
degrades it (unreachable brokers, Kafka or database not answering, a full buffer, a
stalled actor), and one line per part it runs. Exit 0 ok, 1 degraded, 2 not answering."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import defaultdict
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

EXIT_OK, EXIT_DEGRADED, EXIT_UNREACHABLE = 0, 1, 2


def fetch(url: str, timeout: float = 5.0) -> tuple[dict, dict[str, dict[tuple, float]]]:
    base = url.rstrip("/")
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=timeout) as r:
            health = json.load(r)
    except urllib.error.HTTPError as exc:  # 503 still carries the report
        health = json.load(exc)
    with urllib.request.urlopen(f"{base}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    samples: dict[str, dict[tuple, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name][tuple(sorted(s.labels.items()))] = s.value
    return health, samples


def render(url: str, out: IO[str]) -> int:
    try:
        health, m = fetch(url)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"edge status: {url} does not answer: {exc}", file=out)
        return EXIT_UNREACHABLE

    def one(name: str) -> float | None:
        values = m.get(name)
        return sum(values.values()) if values else None

    def line(label: str, text: str) -> None:
        print(f"  {label:<22} {text}", file=out)

    print(f"{url}: {health.get('status', '?')}", file=out)
    actors = health.get("actors", {})
    for actor, state in actors.items():
        restarts = m.get("edge_actor_restarts_total", {}).get((("actor", actor),), 0)
        line(f"actor {actor}", state + (f", restarted {restarts:.0f}x" if restarts else ""))
    for name, reason in sorted(health.get("conditions", {}).items()):
        line("DEGRADED", f"{name}: {reason}")
    # Only the parts this process runs: a server imports the gateway's modules too, and
    # their metrics exist (at zero) without meaning anything there.
    if "buffer" in actors and (depth := one("edge_buffer_depth_records")) is not None:
        line("buffer", f"{depth:,.0f} records waiting, {one('edge_buffer_bytes') or 0:,.0f} bytes, "
                       f"{one('edge_buffer_records_dropped_total') or 0:,.0f} dropped")
    if "uplink" in actors and (up := one("edge_uplink_connected")) is not None:
        line("uplink", f"{'connected' if up else 'DISCONNECTED'}, "
                       f"{one('edge_uplink_window_frames') or 0:.0f} frames unconfirmed, "
                       f"{one('edge_uplink_records_confirmed_total') or 0:,.0f} records confirmed")
    if "source" in actors and (src := one("edge_source_connected")) is not None:
        line("site broker", f"{'connected' if src else 'DISCONNECTED'}, "
                            f"{one('edge_source_messages_acked_total') or 0:,.0f} messages acked, "
                            f"{one('edge_source_unacked_messages') or 0:,.0f} in flight")
    if "decoder" in actors and (q := one("edge_decoder_messages_quarantined_total")) is not None:
        line("decoder", f"{one('edge_decoder_records_total') or 0:,.0f} records, {q:,.0f} quarantined, "
                        f"{one('edge_decoder_duplicates_total') or 0:,.0f} duplicates dropped, "
                        f"{one('edge_decoder_redeliveries_total') or 0:,.0f} redeliveries already stored")
    if "commands" in actors and (online := one("edge_devices_online")) is not None:
        line("devices", f"{online:.0f} online, {one('edge_commands_pending') or 0:.0f} commands pending")
    if "receiver" in actors and (frames := one("edge_receiver_frames_total")) is not None:
        line("receiver", f"{frames:,.0f} frames stored, "
                         f"{one('edge_receiver_frames_rejected_total') or 0:,.0f} rejected")
    if "sink" in actors and (rows := one("edge_sink_rows_total")) is not None:
        line("sink", f"{rows:,.0f} rows written, {one('edge_sink_rows_duplicate_total') or 0:,.0f} "
                     f"already stored, lag {one('edge_kafka_consumer_lag') or 0:,.0f} records")
    if (dead := one("edge_dlq_records_total")) is not None and dead:
        line("dead letters", f"{dead:,.0f}")
    return EXIT_OK if health.get("status") == "ok" else EXIT_DEGRADED
