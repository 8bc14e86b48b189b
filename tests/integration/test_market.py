"""The market actor in `edge server` against real Kafka and PostgreSQL, with REData served
by a local mirror and the process's clock set to the recorded days (EDGE_FAULT_CLOCK_FILE):
alerts once in Kafka and in the table across a death between Kafka's ack and the mark, a
broken answer kept and the rest stored, the API down and the process down across days
backfilled without a gap or a double."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest
from harness import Site, make_server, wait_until
from mirror import MARKET, Mirror

pytestmark = [pytest.mark.integration]

NINE_IN_MADRID = datetime(2026, 7, 26, 7, tzinfo=UTC)  # before the day-ahead publication
KINDS = ("flows", "pvpc", "spot")


@pytest.fixture
def mirror():
    m = Mirror(any_day=True).serve()
    yield m
    m.close()


def market_server(site, kafka, pg_dsn, mirror, **market):
    server = make_server(site, kafka, pg_dsn,
                         server={"receiver": False, "decoder": False, "sink": False, "bridge": False, "market": True},
                         market={"base_url": mirror.url, "backfill_days": 2, "retry_initial_s": 0.5, "attempts": 1,
                                 "timeout_s": 2.0, "alerts_topic": f"{site.name}.market-alerts", **market})
    server.clock = site.tmp / "clock"
    set_clock(server, NINE_IN_MADRID)
    return server


def set_clock(server, at: datetime) -> None:
    server.clock.write_text(str(at.timestamp() - time.time()))


def start(site: Site, server, **env) -> None:
    site.start("server", healthy=False, env={"EDGE_FAULT_CLOCK_FILE": str(server.clock), **env},
               may_exit=bool(env))


def kafka_alerts(server) -> list[tuple[bytes, str, dict]]:
    """Every record of the alerts topic: (key, alert_id header, value)."""
    from kafka import KafkaConsumer, TopicPartition

    topic = server.config["market"]["alerts_topic"]
    consumer = KafkaConsumer(bootstrap_servers=server.kafka, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out = []
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            for records in consumer.poll(timeout_ms=1000).values():
                out += [(r.key, dict(r.headers)["alert_id"].decode(), json.loads(r.value)) for r in records]
        return out
    finally:
        consumer.close()


def health(site: Site) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{site.rx_port}/healthz", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def days(server) -> set[tuple[str, str]]:
    return {(k, str(d)) for k, d in server.query("SELECT kind, day FROM market_days")}


def test_alerts_reach_kafka_and_the_table_once_across_a_death_before_the_mark(site, kafka, pg_dsn, mirror):
    server = market_server(site, kafka, pg_dsn, mirror)
    broken = json.loads((MARKET / "prices-2026-07-26-hourly.json").read_text().replace("2026-07-26", "2026-07-25"))
    broken["included"][1]["attributes"]["values"][5]["value"] = 1e9  # the spot series, 05:00
    mirror.answers[("prices", "2026-07-25")] = (200, json.dumps(broken).encode())
    try:
        start(site, server, EDGE_FAULT_EXIT_BEFORE_MARK="1")
        proc = site.processes["server"]
        assert proc.wait(timeout=60) == 86, (site.tmp / "server.log").read_text()[-3000:]
        stored = server.query("SELECT alert_key, sent_at, send_marks IS NOT NULL FROM alerts ORDER BY alert_key")
        assert len(stored) == 4 and all(sent is None and marked for _, sent, marked in stored)
        assert len(kafka_alerts(server)) == 4  # in Kafka, not marked sent: the window the fault hit

        start(site, server)  # without the fault: finds them in Kafka instead of sending again
        wait_until(lambda: server.query("SELECT count(*) FROM alerts WHERE sent_at IS NULL")[0][0] == 0, 60,
                   "every alert marked sent")
        assert site.metrics("server")["edge_market_alerts_found_total"] == 4
        assert site.metrics("server").get('edge_market_alerts_sent_total{alert_type="NEGATIVE_PRICE"}', 0) == 0
        site.kill("server")
        start(site, server)  # and once more: nothing new to send
        wait_until(lambda: ("spot", "2026-07-26") in days(server), 60, "a round after the second restart")
        time.sleep(1)
        records = kafka_alerts(server)
        ids = [alert_id for _, alert_id, _ in records]
        assert sorted(ids) == sorted(key for key, _, _ in stored), records  # each once: none sent twice
        assert {key for key, _, _ in records} == {b"BZN|ES"}
        assert sorted(v["alert_type"] for _, _, v in records) == [
            "ARBITRAGE_OPPORTUNITY", "DECOUPLING_LIKELY", "HIGH_PRICE", "NEGATIVE_PRICE"]
        negative = next(v for _, _, v in records if v["alert_type"] == "NEGATIVE_PRICE")
        assert (negative["price"], negative["starts_at"]) == (-15.0, "2026-07-26T12:00:00+00:00")

        # The broken answer: spot of the 25th refused and kept once, its PVPC stored, the rest whole.
        assert days(server) == {(k, d) for k in KINDS for d in ("2026-07-25", "2026-07-26")} - {("spot", "2026-07-25")}
        assert server.query("SELECT kind, day::text, reason FROM market_rejects") == [
            ("spot", "2026-07-25", "out_of_range")]
        assert server.query("SELECT series, count(*) FROM market_prices WHERE start < '2026-07-25T22:00Z' "
                            "GROUP BY 1") == [("pvpc", 24)]
        assert health(site)[0] == 200
    finally:
        server.drop()


def test_the_api_down_then_the_process_down_across_days_leave_no_gap_and_no_double(site, kafka, pg_dsn, mirror):
    server = market_server(site, kafka, pg_dsn, mirror, backfill_days=3)
    mirror.down = True
    try:
        start(site, server)
        wait_until(lambda: "HTTP 500" in json.loads(health(site)[1])["conditions"].get("market", ""), 30,
                   "degraded by the API")
        assert health(site)[0] == 503
        time.sleep(2)
        assert days(server) == set()
        mirror.down = False
        want = {(k, f"2026-07-{d}") for k in KINDS for d in (24, 25, 26)}
        wait_until(lambda: days(server) == want, 60, "the window backfilled after the outage")
        wait_until(lambda: health(site)[0] == 200, 30, "healthy again")

        site.kill("server")
        set_clock(server, datetime(2026, 7, 29, 7, tzinfo=UTC))  # down for three days
        mirror.requests.clear()
        start(site, server)
        want |= {(k, f"2026-07-{d}") for k in KINDS for d in (27, 28, 29)}
        wait_until(lambda: days(server) == want, 60, "the days missed while down")
        asked = {r.split("start_date=")[1][:10] for r in mirror.requests}
        assert asked == {"2026-07-27", "2026-07-28", "2026-07-29"}  # days already whole are not asked again
        # Every series covers each day exactly once: an hour stored twice (hourly and in
        # quarters) or missing shows here. The 27th's spot comes in quarter hours.
        cover = server.query(
            "SELECT series, (start AT TIME ZONE 'Europe/Madrid')::date::text AS day, "
            "justify_hours(sum(resolution))::text, count(*) FROM market_prices GROUP BY 1, 2 ORDER BY 1, 2")
        assert [(s, d, total) for s, d, total, _ in cover] == [
            (s, f"2026-07-{d}", "1 day") for s in ("pvpc", "spot") for d in range(24, 30)]
        assert ("spot", "2026-07-27", "1 day", 96) in cover
        flows = server.query("SELECT border, count(*), justify_hours(sum(resolution))::text "
                             "FROM interconnection_flows GROUP BY 1")
        assert sorted(flows) == [(b, 6 * 24, "6 days") for b in ("AD", "FR", "MA", "PT")]
        # Alerts only for today and tomorrow: the 26th's (then today) and the 29th's, each once.
        kinds = server.query("SELECT kind, (starts_at AT TIME ZONE 'Europe/Madrid')::date::text "
                             "FROM alerts ORDER BY 2, 1")
        assert {d for _, d in kinds} == {"2026-07-26", "2026-07-29"}
        assert len(kinds) == 8
    finally:
        server.drop()
