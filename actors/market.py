"""MarketActor: REData prices and cross-border flows into PostgreSQL, market alerts into the
``alerts`` table and Kafka ``market-alerts``, each once.

A round (at start, every ``interval_s``, and at the day-ahead publication, ``day_ahead_at``
Madrid time) keeps the last ``backfill_days`` days whole (edge/market/schedule.py): a past
day missing from ``market_days`` for a kind (spot, pvpc, flows) is fetched again, today and
tomorrow are fetched every round so revised prices replace the first ones. An outage of the
API or of this process leaves no gap once it is over, and a day is stored in one
transaction: prices, flows, the day marked whole, and its alerts.

Alerts are raised for today and tomorrow only (a negative hour of last week is history, not
news): NEGATIVE_PRICE and HIGH_PRICE per run of the ``alert_series`` within a day,
ARBITRAGE_OPPORTUNITY per day for ``battery``, DECOUPLING_LIKELY per run of saturated steps
of a border. Each has its identity (zone, type, window): stored once (``alerts.alert_key``),
then sent from that outbox to Kafka with key = zone and the header ``alert_id``, then marked
sent. Before the first try the topic's end offsets are kept with the alert; a process that
died after Kafka's ack and before the mark reads the topic from there on its next round and
finds the record instead of sending it twice.

What the API sends that cannot be read (a broken answer, a 400 for a day, a price of 1e9) is
refused with the field at fault, counted (``edge_market_refused_total``), kept once in
``market_rejects`` and logged; the day stays incomplete and is asked again next round, the
other days and kinds go on. The API, PostgreSQL or Kafka away: the round stops, health is
degraded naming the cause, and the next round comes sooner (``retry_initial_s``, doubling
up to ``interval_s``).

Several ``edge server`` processes may turn the market on: the one holding a PostgreSQL
session advisory lock runs the rounds, the others check every ``retry_initial_s`` and take
over when its connection goes (so two never send the same alert).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, date, datetime
from datetime import time as clock_time
from typing import Any

from prometheus_client import Counter, Gauge

from edge.codecs import redata as codec
from edge.codecs.errors import CodecError
from edge.codecs.stream import Outgoing
from edge.config import KafkaConfig, MarketConfig, PostgresConfig
from edge.errors import ServiceError, ServiceRefused, ServiceUnavailable, Stopped
from edge.io import market_db, pg
from edge.io.kafka import Delivery, TopicReader, producer
from edge.io.redata import REData
from edge.market import flows as flows_mod
from edge.market import schedule
from edge.market.alerts import Thresholds, arbitrage_alert, price_alerts
from edge.market.battery import parse_battery
from edge.runtime import clock as clocks
from edge.runtime import faults, log
from edge.runtime.actor import ActorContext, EdgeActor
from edge.runtime.health import CONDITIONS

_log = log.get(__name__)

ROUNDS = Counter("edge_market_rounds", "Market rounds, by how they ended", ["outcome"])
FETCHED = Counter("edge_market_fetched", "Answers fetched and stored, by kind", ["kind"])
REFUSED = Counter("edge_market_refused", "Answers refused (kept in market_rejects), by kind and reason",
                  ["kind", "reason"])
ALERTS_SENT = Counter("edge_market_alerts_sent", "Market alerts Kafka acknowledged", ["alert_type"])
ALERTS_FOUND = Counter("edge_market_alerts_found", "Alerts found in Kafka after a restart, not sent again")
UNSENT = Gauge("edge_market_alerts_unsent", "Market alerts stored and not yet in Kafka")
LAST_ROUND = Gauge("edge_market_last_round_timestamp_seconds", "When the last whole round ended")

CONDITION = "market"


class _Round:
    """Time for a round (from the ticker)."""


class MarketActor(EdgeActor):
    receives = (_Round,)

    def __init__(self, ctx: ActorContext, cfg: MarketConfig, kafka: KafkaConfig, postgres: PostgresConfig,
                 client_id: str) -> None:
        super().__init__(ctx)
        self.cfg, self.kafka, self.postgres, self.client_id = cfg, kafka, postgres, client_id
        self.battery = parse_battery(cfg.battery)
        self.ntc = flows_mod.parse_ntc(cfg.ntc_mw)
        self.thresholds = Thresholds(high_eur_per_mwh=cfg.high_eur_per_mwh,
                                     arbitrage_min_profit_eur=cfg.arbitrage_min_profit_eur)
        hours, minutes = cfg.day_ahead_at.split(":")
        self.day_ahead_at = clock_time(int(hours), int(minutes))
        self.kinds = [*cfg.series, *(["flows"] if cfg.flows else [])]
        self.stopping = threading.Event()
        self.api: REData | None = None
        self.conn: Any = None
        self.delivery: Delivery | None = None
        self.reader: TopicReader | None = None
        self.next_at = 0.0  # wall time of the next round
        self.queued = threading.Event()
        self.failures = 0
        self.last_round: float | None = None
        self.leading: bool | None = None
        self.lock_conn: Any = None  # the session holding the market lock

    def on_start(self) -> None:
        self.api = REData(self.cfg.base_url, self.cfg.timeout_s, self.cfg.attempts, sleep=self._sleep)
        threading.Thread(target=self._tick, name=f"{self.name}-ticker", daemon=True).start()

    def close(self) -> None:
        self.stopping.set()
        if self.api is not None:
            self.api.close()
            self.api = None
        if self.delivery is not None:
            self.delivery.close()
            self.delivery = None
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self._drop_db()
        CONDITIONS.clear(CONDITION, quiet=True)

    def health(self) -> dict[str, Any]:
        return {"state": "running" if not self.failures else "retrying", "leading": self.leading,
                "failed_rounds": self.failures,
                "last_round": self.last_round, "next_round": self.next_at}

    def _sleep(self, seconds: float) -> None:
        if self.stopping.wait(seconds):
            raise Stopped("stopping while waiting to ask REData again")

    def _tick(self) -> None:
        while not self.stopping.wait(0.2):
            if not self.queued.is_set() and clocks.wall() >= self.next_at:
                self.queued.set()
                if not self.tell_self(_Round()):
                    return

    def handle(self, message: Any) -> Any:
        match message:
            case _Round():
                try:
                    self._round()
                finally:
                    self.queued.clear()
        return None

    # -- a round ---------------------------------------------------------------------------

    def _round(self) -> None:
        now = datetime.fromtimestamp(clocks.wall(), UTC)
        try:
            if not self._leading():
                self.next_at = now.timestamp() + self.cfg.retry_initial_s
                return
            refused = self._fetch(now)
            self._publish()
        except Stopped:
            return
        except ServiceError as exc:
            self.failures += 1
            wait = min(self.cfg.interval_s, self.cfg.retry_initial_s * 2 ** min(self.failures - 1, 20))
            self.next_at = now.timestamp() + wait
            CONDITIONS.problem(CONDITION, f"{type(exc).__name__}: {exc}"[:300], retry_in_s=round(wait, 1))
            ROUNDS.labels("failed").inc()
            if isinstance(exc, ServiceUnavailable) and "PostgreSQL" in str(exc):
                self._drop_db()
            return
        self.failures = 0
        self.last_round = now.timestamp()
        self.next_at = schedule.next_round(now, self.cfg.interval_s, self.day_ahead_at).timestamp()
        CONDITIONS.clear(CONDITION)
        LAST_ROUND.set(time.time())
        ROUNDS.labels("refusals" if refused else "ok").inc()

    def _db(self) -> Any:
        if self.conn is None or self.conn.closed:
            self.conn = pg.connect_migrated(self.postgres)
        return self.conn

    def _leading(self) -> bool:
        """Whether this process is the deployment's market actor: the one holding the
        session advisory lock (several `edge server` processes may turn the market on; one
        fetches and sends, the others wait and take over when its connection goes)."""
        conn = self._db()
        if self.leading and self.lock_conn is conn:
            return True  # held by this very session
        with pg.translated("taking the market lock"):
            held = conn.execute("SELECT pg_try_advisory_lock(hashtext('edge-market'))").fetchone()[0]
        self.lock_conn = conn if held else None
        if held != self.leading:
            self.leading = held
            _log.info("market_leading" if held else "market_standby",
                      detail="this process fetches and sends" if held else "another process holds the market lock")
        return held

    def _drop_db(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is gone anyway
                pass
            self.conn = None
            self.leading = None

    def _fetch(self, now: datetime) -> int:
        """Fetch and store what the window lacks; returns how many answers were refused."""
        wanted = schedule.wanted(now, self.cfg.backfill_days, self.day_ahead_at)
        with pg.translated("reading the market days stored"):
            stored = market_db.whole_days(self._db(), self.cfg.zone, wanted[0])
        refused = 0
        today = schedule.today(now)
        for day, kinds in schedule.to_fetch(now, self.cfg.backfill_days, self.day_ahead_at, self.kinds, stored):
            prices: dict[str, list[codec.PriceStep]] = {}
            flows: list[flows_mod.Flow] | None = None
            whole: list[str] = []
            series = [k for k in kinds if k != "flows"]
            if series:
                body = self._ask("prices", day, self.api.prices)  # type: ignore[union-attr]
                for name in series if body is not None else ():
                    steps = self._read(name, day, body, lambda b, n=name: codec.read_prices(b, n))
                    if steps is not None:
                        prices[name] = [s for s in steps if _on(day, s.start)]
                        whole += [name] if schedule.whole([(s.start, s.hours) for s in prices[name]], day) else []
                refused += len(series) - len(prices)
            if "flows" in kinds:
                flows = self._flows(day)
                if flows is not None and _flows_whole(flows, day):
                    whole.append("flows")
                refused += flows is None
            alerts = self._alerts(day, prices.get(self.cfg.alert_series), flows, "flows" in whole) \
                if day >= today else []
            if not prices and flows is None:
                continue
            with pg.translated(f"storing the market day {day}"):
                changed, new = market_db.store_day(self._db(), self.cfg.zone, day, prices, flows, whole, alerts)
            for kind in [*prices, *(["flows"] if flows is not None else [])]:
                FETCHED.labels(kind).inc()
            _log.info("market_day_stored", day=str(day), kinds=",".join(whole) or "none whole",
                      rows_changed=changed, alerts_new=len(new))
        return refused

    def _ask(self, kind: str, day: date, request: Any) -> bytes | None:
        """``request(day)``'s bytes, or None when the API refused it (kept, counted).
        ``ServiceUnavailable`` (retries exhausted) ends the round."""
        try:
            return request(day)
        except ServiceRefused as exc:
            self._refuse(kind, day, exc.code, exc.detail, b"")
            return None

    def _read(self, kind: str, day: date, body: bytes, read: Any) -> Any:
        try:
            return read(body)
        except CodecError as exc:
            self._refuse(kind, day, exc.reason, str(exc), body)
            return None

    def _refuse(self, kind: str, day: date, reason: str, detail: str, body: bytes) -> None:
        REFUSED.labels(kind, reason).inc()
        with pg.translated("keeping a refused market answer"):
            new = market_db.store_reject(self._db(), kind, day, reason, detail, body)
        if new:  # once per distinct answer, not once per round
            _log.warning("market_answer_refused", kind=kind, day=str(day), reason=reason, detail=detail[:300],
                         action="kept in market_rejects; asked again next round")

    def _flows(self, day: date) -> list[flows_mod.Flow] | None:
        api = self.api
        assert api is not None
        physical = self._ask("flows", day, lambda d: api.exchanges(d, "physical"))
        scheduled = self._ask("flows", day, lambda d: api.exchanges(d, "scheduled"))
        if physical is None or scheduled is None:
            return None
        read = self._read("flows", day, physical, codec.read_exchanges)
        planned = self._read("flows", day, scheduled, codec.read_exchanges)
        if read is None or planned is None:
            return None
        for (_, problems), body in ((read, physical), (planned, scheduled)):
            for problem in problems:  # a broken border: the others are kept
                self._refuse("flows", day, problem.reason, str(problem), body)
        return [f for f in flows_mod.join(read[0], planned[0], self.ntc) if _on(day, f.at_time)]

    def _alerts(self, day: date, steps: list[codec.PriceStep] | None,
                flows: list[flows_mod.Flow] | None, flows_whole: bool) -> list[dict]:
        out: list[dict] = []
        if steps:
            out += price_alerts(steps, self.cfg.zone, self.thresholds)
            arbitrage = arbitrage_alert(steps, self.battery, self.cfg.zone, self.thresholds)
            out += [arbitrage] if arbitrage else []
        if flows:
            out += flows_mod.decoupling_alerts(flows, self.cfg.decoupling_percent, self.cfg.zone, flows_whole)
        return out

    # -- the outbox ------------------------------------------------------------------------

    def _publish(self) -> None:
        """Send every stored alert Kafka is not known to have, then mark it sent."""
        with pg.translated("reading unsent market alerts"):
            unsent = market_db.unsent_alerts(self._db())
        UNSENT.set(len(unsent))
        if not unsent:
            return
        reader = self._reader()
        tried = [(key, marks) for key, _, marks in unsent if marks is not None]
        if tried:
            since: dict[int, int] = {}
            for _, marks in tried:
                for partition, offset in marks.items():
                    since[partition] = min(offset, since.get(partition, offset))
            found = reader.find(since, "alert_id", {key for key, _ in tried})
            if found:
                ALERTS_FOUND.inc(len(found))
                _log.info("market_alerts_found_in_kafka", alerts=len(found), action="marked sent, not sent again")
                with pg.translated("marking market alerts sent"):
                    market_db.mark_sent(self._db(), sorted(found))
            unsent = [u for u in unsent if u[0] not in found]
        fresh = [key for key, _, marks in unsent if marks is None]
        if fresh:
            marks = reader.end_offsets()
            with pg.translated("marking market alerts tried"):
                market_db.mark_attempt(self._db(), fresh, marks)
        if not unsent:
            UNSENT.set(0)
            return
        delivery = self._delivery()
        delivery.deliver([Outgoing(self.cfg.alerts_topic, self.cfg.zone.encode(),
                                   json.dumps(body, separators=(",", ":")).encode(),
                                   [("alert_id", key.encode())]) for key, body, _ in unsent])
        faults.BEFORE_MARK.maybe(actor=self.name, alerts=len(unsent))  # tests only
        with pg.translated("marking market alerts sent"):
            market_db.mark_sent(self._db(), [key for key, _, _ in unsent])
        for _, body, _ in unsent:
            ALERTS_SENT.labels(body.get("alert_type", "?")).inc()
        UNSENT.set(0)
        _log.info("market_alerts_sent", alerts=len(unsent), topic=self.cfg.alerts_topic,
                  types=",".join(sorted({b.get("alert_type", "?") for _, b, _ in unsent})))

    def _reader(self) -> TopicReader:
        if self.reader is None:
            self.reader = TopicReader(self.kafka, f"{self.client_id}-reader", self.cfg.alerts_topic)
        return self.reader

    def _delivery(self) -> Delivery:
        if self.delivery is None:
            self.delivery = Delivery(lambda: producer(self.kafka, self.client_id), name="market",
                                     bootstrap=self.kafka.bootstrap_servers)
            if self.stopping.is_set():
                self.delivery.stopping.set()
        return self.delivery


def _on(day: date, at: datetime) -> bool:
    """Whether a step starting at ``at`` belongs to Madrid day ``day`` (an answer may carry
    more than the day asked)."""
    start, end = schedule.day_bounds(day)
    return start <= at < end


def _flows_whole(flows: list[flows_mod.Flow], day: date) -> bool:
    borders: dict[str, list[tuple[datetime, float]]] = {}
    for f in flows:
        borders.setdefault(f.border, []).append((f.at_time, f.hours))
    return bool(borders) and all(schedule.whole(sorted(steps), day) for steps in borders.values())
