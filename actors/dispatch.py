"""CommandActor: the server's commands, from ``device_commands`` down to the gateways.

The table is the outbox: a command is a row first (``edge command send``, later the
market's setpoints), written by whoever decides it. Every ``poll_s`` this actor claims the
pending rows still valid (``FOR UPDATE SKIP LOCKED``: several server processes share the
work without sending one command twice at once), publishes each at QoS 1 to
``edge/<gateway>/down`` on the central broker with an MQTT v5 message expiry at its
deadline, and marks it ``sent`` once the broker acknowledged it. The gateway's
CommandRouter stores it, delivers it to the device while both are valid, and answers
``delivered`` and ``expired`` itself; the device's own ack follows; the sink writes those
answers onto the row (edge/io/sink_db.py). A gateway offline past the deadline never hands
the command over: the broker drops the expired message, or the gateway answers ``expired``.

- The gateway is the row's, else the one that last heard the device (``device_state``).
  A device heard on the central broker itself (through the bridge, no gateway) gets the
  command there, on ``iot/<device>/command`` (an F2 controller on its ``cmnd/`` topic),
  with the same expiry; its ack comes back through the bridge and the stream decoder.
  Never heard, or not a topic level: the command is ``error`` at once, not retried.
- Broker or database away: nothing is marked, the next poll tries again, until the
  deadline and never after (``claim`` takes only valid rows). A command the broker took
  twice (an ack lost on the way) is one command to the gateway: it keys by ``cmd_id``.
- ``expire`` closes what the deadline left open (never sent: ``expired``; sent and no
  gateway answer, or delivered and no device answer, ``answer_grace_s`` after it).
- The kill switch: ``edge command pause`` (``edge_settings.commands_paused``). Paused,
  nothing is sent; pending commands wait and expire at their deadlines. ``resume``.

Market setpoints (``setpoints_s`` > 0): that often, each registry asset gets the decision
of edge/market/setpoints.py over the stored prices of ``zone`` and its latest state of
charge: a ``set_power`` for the current step, written as a row like any other command
(``source = 'market'``), identified by asset and step so a decision made twice is one row.
Paused, no setpoint is written either.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge

from edge.config import DispatchConfig, MqttConfig, PostgresConfig
from edge.errors import ServiceError
from edge.io import device_commands as table
from edge.io import pg
from edge.io.mqtt import MqttSession, Session, SessionFactory
from edge.runtime import faults, log
from edge.runtime.actor import ActorContext, EdgeActor
from edge.runtime.health import CONDITIONS

_log = log.get(__name__)

SENT = Counter("edge_dispatch_sent", "Commands the central broker acknowledged for a gateway")
UNROUTABLE = Counter("edge_dispatch_unroutable", "Commands refused at once: no gateway known for the device")
CLOSED = Counter("edge_dispatch_closed", "Commands closed by their deadline, by the state they were left in",
                 ["was"])
SETPOINTS = Counter("edge_dispatch_setpoints", "Market setpoints written for the registry's assets")
PAUSED = Gauge("edge_dispatch_paused", "1 while the kill switch holds every command back")

CONDITION = "commands"
SOC_MAX_AGE_S = 900.0  # a state of charge older than this is not known


class _Tick:
    """Time to poll the table (from the ticker)."""


class CommandActor(EdgeActor):
    receives = (_Tick,)

    def __init__(self, ctx: ActorContext, broker: MqttConfig, postgres: PostgresConfig, cfg: DispatchConfig,
                 client_id: str, session: SessionFactory = Session) -> None:
        super().__init__(ctx)
        self.broker, self.postgres, self.cfg, self.client_id = broker, postgres, cfg, client_id
        self.make_session = session
        self.session: MqttSession | None = None
        self.conn: Any = None
        self.stopping = threading.Event()
        self.queued = threading.Event()
        self.paused: bool | None = None
        self.next_setpoints = 0.0  # monotonic

    def on_start(self) -> None:
        self.session = self.make_session(self.broker, self.client_id, "central broker (commands)")
        self.session.start()
        threading.Thread(target=self._tick, name=f"{self.name}-ticker", daemon=True).start()

    def close(self) -> None:
        self.stopping.set()
        if self.session is not None:
            self.session.stop()
            self.session = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        CONDITIONS.clear(CONDITION, quiet=True)

    def health(self) -> dict[str, Any]:
        return {"state": "paused" if self.paused else "running"}

    def _tick(self) -> None:
        while not self.stopping.wait(self.cfg.poll_s):
            if not self.queued.is_set():
                self.queued.set()
                if not self.tell_self(_Tick()):
                    return

    def handle(self, message: Any) -> Any:
        match message:
            case _Tick():
                try:
                    self._poll()
                except ServiceError as exc:
                    CONDITIONS.problem(CONDITION, f"{type(exc).__name__}: {exc}"[:300])
                    if self.conn is not None:
                        self.conn.close()
                        self.conn = None
                else:
                    CONDITIONS.clear(CONDITION)
                finally:
                    self.queued.clear()
        return None

    def _db(self) -> Any:
        if self.conn is None or self.conn.closed:
            self.conn = pg.connect_migrated(self.postgres)
        return self.conn

    def _poll(self) -> None:
        conn = self._db()
        with pg.translated("polling device_commands"):
            paused = table.paused(conn)
            if paused != self.paused:
                self.paused = paused
                PAUSED.set(1 if paused else 0)
                _log.warning("commands_paused", detail="kill switch on: nothing is sent") if paused else \
                    _log.info("commands_running")
            closed = table.expire(conn, self.cfg.answer_grace_s)
            for was, n in closed.items():
                if n:
                    CLOSED.labels(was).inc(n)
                    _log.warning("commands_closed_by_deadline", was=was, commands=n)
            if paused:
                return
            if self.cfg.setpoints_s and time.monotonic() >= self.next_setpoints:
                self.next_setpoints = time.monotonic() + self.cfg.setpoints_s
                self._setpoints(conn)
            if self.session is None or not self.session.is_connected():
                return
            self._send(conn)

    def _setpoints(self, conn: Any) -> None:
        from edge.io import market_db
        from edge.market.assets import AssetError, soc_kwh
        from edge.market.plan import PlanError
        from edge.market.setpoints import Last, decide

        now = datetime.now(UTC)
        assets = market_db.assets(conn)
        if not assets:
            return
        prices = market_db.prices(conn, self.cfg.zone, self.cfg.series, now - timedelta(hours=1),
                                  now + timedelta(days=2))
        for asset in assets:
            reading = market_db.latest_value(conn, asset.device, asset.soc_label) if asset.kind == "battery" else None
            if reading is not None and (now - reading[0]).total_seconds() > SOC_MAX_AGE_S:
                reading = None  # a battery whose charge is not known now is not driven
            last_row = table.last_market(conn, asset.id)
            last = None
            if last_row is not None:
                params = last_row[1]
                last = Last(last_row[0], float(params.get("power_kw", params.get("max_kw", 0.0))),
                            datetime.fromisoformat(params["valid_until"]))
            try:
                sp = decide(asset, prices, now, None if reading is None else soc_kwh(asset, reading[1]), last)
            except (AssetError, PlanError) as exc:
                _log.warning("setpoint_impossible", asset=asset.id, error=str(exc))
                continue
            if sp is None:
                continue
            if table.create(conn, sp.device_id, "set_power", sp.params, sp.valid_until,
                            gateway_id=asset.gateway or None, source="market", asset_id=asset.id,
                            cmd_id=sp.cmd_id) is not None:
                SETPOINTS.inc()
                _log.info("setpoint", asset=asset.id, device=asset.device, cmd_id=sp.cmd_id,
                          expected_profit_eur=sp.expected_profit_eur, **{k: v for k, v in sp.params.items()})

    def _send(self, conn: Any) -> None:
        assert self.session is not None
        with conn.transaction():
            commands = table.claim(conn, self.cfg.batch)
            infos = []
            now = datetime.now(UTC)
            for c in commands:
                left = max(1, int((c.deadline - now).total_seconds()))
                level = c.device_id if c.direct else c.gateway_id
                if not level or any(ch in level for ch in "/+#\x00"):
                    table.refuse(conn, c.cmd_id, f"{level!r} is not a topic level" if level else
                                 "no gateway has heard this device, nor the central broker: pass --gateway, or "
                                 "wait until it is heard")
                    UNROUTABLE.inc()
                    _log.warning("command_unroutable", cmd_id=c.cmd_id, device=c.device_id)
                    continue
                topic, payload = c.direct_message(now) if c.direct else (f"edge/{c.gateway_id}/down", c.downlink())
                infos.append((c, self.session.publish(topic, payload, qos=1, expiry_s=left)))
            deadline = time.monotonic() + self.cfg.publish_timeout_s
            sent, unsent = [], []
            for c, info in infos:
                try:
                    info.wait_for_publish(max(0.01, deadline - time.monotonic()))
                except (RuntimeError, ValueError):
                    pass  # not queued (disconnected): tried again next poll
                (sent if info.is_published() else unsent).append(c)
            if sent:
                faults.BEFORE_SENT.maybe(actor=self.name, commands=len(sent))  # tests only
            table.mark_sent(conn, [(c.cmd_id, c.gateway_id) for c in sent])
            table.count_attempt(conn, [c.cmd_id for c in unsent])
        SENT.inc(len(sent))
        for c in sent:
            _log.info("command_sent", cmd_id=c.cmd_id, device=c.device_id, gateway=c.gateway_id, cmd=c.cmd)
        if unsent:
            _log.warning("commands_unacknowledged", commands=len(unsent), action="sent again next poll")
