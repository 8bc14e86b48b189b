"""The ``edge`` command: parses arguments and calls ``edge.app`` (the graphs) or a tool.

Subcommands arrive with the features behind them; none exists before it works. Errors
from the tree in ``edge.errors`` end a command with one line on stderr and the exit code
``EXIT_CODES`` gives them (no traceback): 2 bad input (config, arguments, files, schema),
69 a needed service is unreachable, 70 the runtime failed (a crash loop).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge import __version__, config
from edge.codecs.errors import CodecError
from edge.errors import ConfigError, EdgeError, InputError, MigrationError, RuntimeFailure, SchemaNotReady, ServiceError

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a service the command needs is not reachable
EXIT_SOFTWARE = 70  # EX_SOFTWARE: the runtime failed (a crash loop)

# The one place where errors become exit codes: the first class that matches.
EXIT_CODES: tuple[tuple[type[EdgeError], int], ...] = (
    (ConfigError, EXIT_BAD_INPUT),
    (InputError, EXIT_BAD_INPUT),
    (CodecError, EXIT_BAD_INPUT),
    (SchemaNotReady, EXIT_BAD_INPUT),
    (MigrationError, EXIT_BAD_INPUT),
    (ServiceError, EXIT_UNAVAILABLE),
    (RuntimeFailure, EXIT_SOFTWARE),
)


def exit_code(exc: EdgeError) -> int:
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), EXIT_SOFTWARE)


def _config_check(args: argparse.Namespace) -> int:
    try:
        config.load(args.file)
    except ConfigError as exc:
        print(f"edge: {args.file} is invalid: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{args.file}: ok")
    return EXIT_OK


def _config_show(args: argparse.Namespace) -> int:
    cfg = config.load(args.file) if args.file else config.Config()
    sys.stdout.write(config.dump(cfg))
    return EXIT_OK


def _decode(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime

    from edge.codecs import registry as registry_mod
    from edge.codecs.dispatch import Dispatcher
    from edge.codecs.errors import CodecError
    from edge.codecs.limits import safe_text

    def fail(message: str) -> int:
        print(f"edge decode: {safe_text(message, 4000)}", file=sys.stderr)
        return EXIT_BAD_INPUT

    reg = registry_mod.Registry()
    if args.registry:
        try:
            with open(args.registry, encoding="utf-8") as f:
                reg = registry_mod.loads(f.read())
        except OSError as exc:
            return fail(f"cannot read registry {args.registry}: {exc.strerror}")
        except UnicodeDecodeError as exc:
            return fail(f"registry {args.registry} is not UTF-8 text: {exc}")
        except CodecError as exc:
            return fail(f"registry {args.registry}: {exc.message}")
    if args.payload == "-":
        payload = sys.stdin.buffer.read()
    else:
        payload = args.payload.encode("utf-8")
    if args.hex:
        try:
            payload = bytes.fromhex(payload.decode("ascii", "replace"))
        except ValueError as exc:
            return fail(f"--hex payload is not hex: {exc}")
    received_at = datetime.now(UTC)
    if args.received_at:
        try:
            received_at = datetime.fromisoformat(args.received_at).astimezone(UTC)
        except ValueError:
            return fail(f"--received-at {args.received_at!r} is not an ISO 8601 time")
    try:
        result = Dispatcher(reg).decode(args.topic, payload, received_at)
    except CodecError as exc:
        return fail(exc.describe())
    for record in result.records:
        print(json.dumps(record.to_json(), ensure_ascii=False))
    for error in result.errors:
        fail(error.describe())
    return EXIT_BAD_INPUT if result.errors else EXIT_OK


def _load(path: str) -> config.Config:
    from edge.runtime import log

    cfg = config.load(path)
    log.setup(cfg.log.level, cfg.log.format)
    return cfg


def _gateway(args: argparse.Namespace) -> int:
    from edge import app

    return app.run_gateway(_load(args.config))


def _receiver(args: argparse.Namespace) -> int:
    from edge import app

    return app.run_receiver(_load(args.config))


def _server(args: argparse.Namespace) -> int:
    from edge import app

    cfg = _load(args.config)
    if args.action == "migrate":
        return _migrate(cfg)
    return app.run_server(cfg)


def _migrate(cfg: config.Config) -> int:
    from edge.io import pg

    notices: list[str] = []
    with pg.connect(cfg.postgres, autocommit=True, statement_timeout=False) as conn:
        with pg.translated("migrating"):
            applied = pg.migrate(conn, storage=cfg.postgres.storage, notices=notices)
            storage = pg.recorded_storage(conn)
            version = pg.timescale_version(conn) if storage == "timescaledb" else None
    for m in applied:
        print(f"applied {m.version:04d}_{m.name} ({m.variant})")
    for notice in notices:  # what the server said while migrating (a WARNING is worth reading)
        print(f"server said, in {notice}", file=sys.stderr)
    print(f"database {cfg.postgres.dbname}: up to date, {len(applied)} applied now, "
          f"storage {storage or '?'}{f' (TimescaleDB {version})' if version else ''}")
    return EXIT_OK


def _battery(spec: str):
    from edge.market.battery import parse_battery

    try:
        return parse_battery(spec)
    except ValueError as exc:
        raise InputError(f"--battery: {exc}") from None


def _market_plan(args: argparse.Namespace) -> int:
    import json

    from edge.codecs.redata import read_prices
    from edge.market.plan import PlanError, plan

    if args.asset:
        if args.prices or args.battery or not (args.date and args.config):
            raise InputError("--asset plans from the database: give --date and --config, not --prices or --battery")
        prices, battery, note = _asset_plan_inputs(args)
    else:
        if not (args.prices and args.battery):
            raise InputError("give --prices FILE and --battery K=V,... (or --asset ID --date D --config F)")
        battery = _battery(args.battery)
        try:
            with open(args.prices, "rb") as f:
                body = f.read(64 * 1024 * 1024 + 1)
        except OSError as exc:
            raise InputError(f"cannot read {args.prices}: {exc.strerror}") from exc
        if len(body) > 64 * 1024 * 1024:
            raise InputError(f"{args.prices}: larger than 64 MiB, not a prices answer")
        try:
            prices = read_prices(body, args.series)
        except CodecError as exc:
            raise InputError(f"{args.prices}: {exc}") from exc
        note = None
    try:
        result = plan(prices, battery, levels=args.levels, end_soc_kwh=args.end_soc_kwh)
    except PlanError as exc:
        raise InputError(str(exc)) from exc
    if args.json:
        print(json.dumps(result.as_dict()))
        return EXIT_OK
    if note:
        print(note)
    print(f"{'start (UTC)':<26} {'€/MWh':>9} {'power kW':>10} {'soc kWh':>10}")
    for s in result.steps:
        print(f"{s.start.isoformat():<26} {s.price:>9.2f} {s.power_kw:>10.3f} {s.soc_kwh:>10.3f}")
    print(f"profit: {result.profit_eur:.2f} EUR over {len(result.steps)} steps")
    return EXIT_OK


def _asset_plan_inputs(args: argparse.Namespace):
    """(prices of the day, the asset's battery, a line saying where its state of charge came
    from) for ``edge market plan --asset``."""
    from edge.io import market_db, pg
    from edge.market.assets import AssetError, battery, soc_kwh
    from edge.market.schedule import day_bounds

    cfg = _load(args.config)
    start, end = day_bounds(args.date)
    with pg.connect_migrated(cfg.postgres) as conn, pg.translated("reading the asset and prices"):
        asset = market_db.asset(conn, args.asset)
        if asset is None:
            known = [r[0] for r in conn.execute("SELECT asset_id FROM assets ORDER BY 1").fetchall()]
            raise InputError(f"no asset {args.asset!r} in the registry (known: {', '.join(known) or 'none'}; "
                             "`edge registry load` a file with [[assets]])")
        prices = market_db.prices(conn, cfg.market.zone, args.series, start, end)
        reading = None if args.soc_kwh is not None else market_db.latest_value(conn, asset.device, asset.soc_label)
    if not prices:
        raise InputError(f"no {args.series} prices stored for {args.date} ({cfg.market.zone}): the market actor "
                         f"fetches them, or `edge market fetch --date {args.date} --store CONFIG`")
    if args.soc_kwh is not None:
        soc, note = args.soc_kwh, f"{asset.id}: state of charge {args.soc_kwh:g} kWh (given)"
    elif reading is not None:
        soc = soc_kwh(asset, reading[1])
        note = (f"{asset.id}: state of charge {soc:g} kWh from {asset.device} {asset.soc_label} = {reading[1]:g} "
                f"{asset.soc_unit} at {reading[0].isoformat()}")
    else:
        soc, note = asset.soc_min_kwh, (f"{asset.id}: no {asset.soc_label} reading from {asset.device}: "
                                        f"planned from soc_min_kwh ({asset.soc_min_kwh:g} kWh)")
    try:
        return prices, battery(asset, soc), note
    except AssetError as exc:
        raise InputError(str(exc)) from exc


def _date(text: str):
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _market_fetch(args: argparse.Namespace) -> int:
    import json

    from edge.codecs.redata import read_prices
    from edge.errors import ServiceRefused
    from edge.io.redata import REData
    from edge.market.alerts import Thresholds, arbitrage_alert, price_alerts

    battery = _battery(args.battery)
    flows: list = []
    with REData(args.base_url, timeout_s=args.timeout, attempts=args.attempts) as api:
        try:
            body = api.prices(args.date)
            if args.flows:
                flows = _fetch_flows(api, args)
        except ServiceRefused as exc:
            raise InputError(str(exc)) from exc
    try:
        steps = read_prices(body, args.series)
    except CodecError as exc:
        raise InputError(f"REData's answer for {args.date}: {exc}") from exc
    thresholds = Thresholds(high_eur_per_mwh=args.high)
    alerts = price_alerts(steps, args.zone, thresholds)
    arbitrage = arbitrage_alert(steps, battery, args.zone, thresholds)
    alerts += [arbitrage] if arbitrage else []
    if flows:
        from edge.market.flows import decoupling_alerts

        alerts += decoupling_alerts(flows, args.decoupling, args.zone)
    stored = _market_store(args.store, args.zone, args.series, steps, alerts) if args.store else None
    if args.json:
        doc = {"series": args.series, "steps": [{"start": s.start.isoformat(), "hours": s.hours, "price": s.price}
                                                for s in steps], "alerts": alerts}
        if stored is not None:
            doc["stored"] = {"prices": stored[0], "alerts": stored[1]}
        if args.flows:
            doc["flows"] = [{"border": f.border, "at_time": f.at_time.isoformat(), "hours": f.hours,
                             "flow_direction": f.flow_direction, "physical_flow_mw": f.physical_flow_mw,
                             "scheduled_flow_mw": f.scheduled_flow_mw, "ntc_mw": f.ntc_mw,
                             "saturation_percentage": f.saturation_percentage} for f in flows]
        print(json.dumps(doc))
        return EXIT_OK
    print(f"{args.series} {args.date} ({len(steps)} steps, UTC):")
    for s in steps:
        print(f"  {s.start.isoformat()}  {s.price:9.2f} EUR/MWh")
    for border in sorted({f.border for f in flows}):
        mine = [f for f in flows if f.border == border]
        top = max(mine, key=lambda f: f.saturation_percentage or 0)
        print(f"  flows {border}: {len(mine)} steps, most saturated {top.flow_direction} {top.physical_flow_mw:g} MW"
              + (f" = {top.saturation_percentage:g} % of {top.ntc_mw:g}" if top.ntc_mw else " (no NTC)")
              + f" at {top.at_time.isoformat()}")
    for alert in alerts:
        print(f"alert {alert['alert_type']}: " + ", ".join(
            f"{k}={v}" for k, v in alert.items() if k not in ("alert_type", "alert_id")))
    if not alerts:
        print("no alerts")
    if stored is not None:
        print(f"stored: {stored[0]} of {len(steps)} prices new or changed, {stored[1]} of {len(alerts)} alerts new")
    return EXIT_OK


def _fetch_flows(api, args: argparse.Namespace) -> list:
    """The day's cross-border flows (physical joined with scheduled, NTC from --ntc)."""
    from edge.codecs.redata import read_exchanges
    from edge.market.flows import join, parse_ntc

    try:
        ntc = parse_ntc(args.ntc)
    except ValueError as exc:
        raise InputError(f"--ntc: {exc}") from exc
    read = []
    for kind in ("physical", "scheduled"):
        try:
            exchanges, problems = read_exchanges(api.exchanges(args.date, kind))
        except CodecError as exc:
            raise InputError(f"REData's {kind} exchanges for {args.date}: {exc}") from exc
        for problem in problems:
            print(f"{kind} exchanges: {problem} (that border left out)", file=sys.stderr)
        read.append(exchanges)
    return join(read[0], read[1], ntc)


def _market_store(path: str, zone: str, series: str, steps, alerts) -> tuple[int, int]:
    from edge.io import market_db, pg

    cfg = _load(path)
    with pg.connect_migrated(cfg.postgres) as conn, pg.translated("storing market data"):
        return market_db.store_prices(conn, zone, series, steps), len(market_db.store_alerts(conn, alerts))


def _registry(args: argparse.Namespace) -> int:
    from edge.codecs import registry as registry_mod
    from edge.io import pg, registry_db

    cfg = _load(args.config)
    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise InputError(f"cannot read {args.file}: {exc.strerror}") from exc
    try:
        registry = registry_mod.loads(text)
    except CodecError as exc:
        raise InputError(f"{args.file}: {exc.message}") from exc
    with pg.connect_migrated(cfg.postgres) as conn, pg.translated("loading the registry"):
        changed, version = registry_db.load(conn, registry, args.file, text)
    n_pins = sum(len(c.pins) for ctl in registry.controllers for c in ctl.connectors)
    print(f"{args.file}: {'loaded' if changed else 'unchanged'}, registry version {version} "
          f"({len(registry.templates)} templates, {len(registry.controllers)} controllers, "
          f"{n_pins} pins, {len(registry.topics)} topic mappings)")
    return EXIT_OK


V2_COMMANDS = ("update_config", "start_ota", "reboot", "factory_reset", "request_status", "set_power")


def _duration(text: str) -> float:
    """``90s``, ``10m``, ``2h``, ``1d`` or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (90s, 10m, 2h, 1d): {text!r}") from None
    if not 0 < seconds <= 30 * 86400:
        raise argparse.ArgumentTypeError(f"a duration from 1 s to 30 days, got {text!r}")
    return seconds


def _params(items: list[str]) -> dict:
    import json

    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise InputError(f"--param {item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(text)  # numbers, true/false, lists, objects
        except ValueError:
            out[key] = text
    return out


def _command(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime, timedelta

    from edge.io import device_commands as table
    from edge.io import pg

    if args.command_action == "send":
        if not args.device or any(c in args.device for c in "/+#\x00") or len(args.device.encode()) > 256:
            raise InputError(f"device {args.device!r} is not a device id (one topic level, at most 256 bytes)")
        params = _params(args.param)
        if args.kind == "v2" and args.cmd not in V2_COMMANDS:
            raise InputError(f"{args.cmd!r} is not a v2 command ({', '.join(V2_COMMANDS)})")
        if args.cmd == "set_power":
            power = params.get("power_kw")
            if isinstance(power, bool) or not isinstance(power, int | float) or abs(power) > 1e6:
                raise InputError("set_power needs --param power_kw=<kW> (> 0 charges, < 0 discharges)")
        if args.kind == "f2" and not (args.topic or "").startswith(f"cmnd/{args.device}/"):
            raise InputError(f"an F2 command needs --topic cmnd/{args.device}/...")
    cfg = _load(args.config)
    with pg.connect_migrated(cfg.postgres) as conn, pg.translated("commands"):
        if args.command_action in ("pause", "resume"):
            table.set_paused(conn, args.command_action == "pause")
            print("commands paused: nothing is sent until `edge command resume`" if args.command_action == "pause"
                  else "commands running")
            return EXIT_OK
        if args.command_action == "list":
            rows = table.listing(conn, args.device, args.state, args.limit)
            if args.json:
                print(json.dumps(rows, default=str))
                return EXIT_OK
            for r in rows:
                print(f"{r['cmd_id']}  {r['status']:<11} {r['device_id']:<24} {r['cmd']:<14} "
                      f"deadline {r['deadline'].isoformat()}  {r['detail'] or ''}")
            if not rows:
                print("no commands")
            return EXIT_OK
        deadline = datetime.now(UTC) + timedelta(seconds=args.valid_for)
        cmd_id = table.create(conn, args.device, args.cmd, params, deadline, kind=args.kind, topic=args.topic,
                              gateway_id=args.gateway)
    print(f"{cmd_id} pending: {args.cmd} for {args.device}, valid until {deadline.isoformat()}")
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    import contextlib
    import uuid

    from edge.config import MqttConfig
    from edge.tools.simulate import Traffic, run

    host, _, port = args.broker.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--broker {args.broker!r} is not HOST:PORT")
    if args.kind == "battery":
        return _simulate_batteries(args, MqttConfig(host=host, port=int(port)))
    registry_text = None
    if args.registry:
        try:
            with open(args.registry, encoding="utf-8") as f:
                registry_text = f.read()
        except OSError as exc:
            raise InputError(f"cannot read {args.registry}: {exc.strerror}") from exc
    try:
        traffic = Traffic(args.kind, args.devices, registry_text, args.seed, args.malformed,
                          device_prefix=args.device_prefix)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    with contextlib.ExitStack() as stack:
        ledger = stack.enter_context(open(args.ledger, "a", encoding="utf-8")) if args.ledger else None
        acked = run(MqttConfig(host=host, port=int(port)), traffic, args.rate, args.count, ledger,
                    args.client_id or f"edge-sim-{uuid.uuid4().hex[:8]}", lwt=args.lwt)
    print(f"published {acked} messages acknowledged by {args.broker}")
    return EXIT_OK


def _simulate_batteries(args: argparse.Namespace, broker) -> int:
    """``edge simulate --kind battery``: batteries that obey set_power, until --count
    telemetry rounds or interrupted."""
    import signal
    import threading

    from edge.tools.battery import SimBattery

    battery = _battery(args.battery)
    prefix = "bat" if args.device_prefix == "pm-dc" else args.device_prefix
    sims = [SimBattery(broker, f"{prefix}-{i:04d}", battery, args.send_s, args.time_scale).start()
            for i in range(args.devices)]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    try:
        stop.wait(args.count * args.send_s if args.count else None)
    except KeyboardInterrupt:
        pass
    finally:
        for b in sims:
            b.stop()
    answered = sum(len(b.acks) for b in sims)
    print(f"{len(sims)} batteries answered {answered} commands; state of charge: "
          + ", ".join(f"{b.device_id} {b.soc_pct:g} %" for b in sims))
    return EXIT_OK


def _buffer(args: argparse.Namespace) -> int:
    """Read the buffer through a read-only connection: safe while the gateway runs (WAL)."""
    import json

    from edge.io.buffer_db import BufferReader

    cfg = config.load(args.config)
    if args.action == "purge" and not args.yes:
        raise InputError("purge deletes records that were never confirmed upstream; "
                         "repeat with --yes to do it")
    buffer = BufferReader(cfg.buffer.path, writable=args.action == "purge")
    try:
        if args.action == "stats":
            stats = buffer.stats()
            stats.update(quota_bytes=cfg.buffer.quota_bytes, policy=cfg.buffer.policy)
            print(json.dumps(stats, indent=2))
        elif args.action in ("peek", "export"):
            for doc in buffer.records(args.limit if args.action == "peek" else None):
                print(json.dumps(doc, ensure_ascii=False, default=str))
        elif args.action == "dead":
            for doc in buffer.dead_letters():
                print(json.dumps(doc, ensure_ascii=False, default=str))
        else:
            print(json.dumps(buffer.purge()))
    finally:
        buffer.close()
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge.tools import demo

    outage = None
    if args.outage != "none":
        try:
            outage = demo.parse_outage(args.outage)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    registry = Path(args.registry) if args.registry else demo.REPO_REGISTRY
    if not registry.exists():
        raise InputError(f"no registry at {registry}; pass --registry")
    print(f"edge demo: {args.devices} devices at {args.rate:g} msg/s for {args.duration:g} s"
          + (f", uplink outage {outage[0]:g}-{outage[1]:g} s" if outage else "")
          + f"; data in {args.data_dir}, log in {args.data_dir}/demo.log", flush=True)
    return demo.run(args.duration, args.devices, args.rate, outage, Path(args.data_dir), registry,
                    ui=not args.no_ui)


def _status(args: argparse.Namespace) -> int:
    from edge.tools import status

    return status.render(args.url, sys.stdout)


def _version(args: argparse.Namespace) -> int:
    print(f"edge {__version__}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge",
        description="Actor-based IoT edge runtime: gateway, server and tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cfg = sub.add_parser("config", help="check or show a config file")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = cfg_sub.add_parser("check", help="validate a config file; exit 2 listing every problem")
    check.add_argument("file", help="TOML config file")
    check.set_defaults(func=_config_check, prog=check.prog)
    show = cfg_sub.add_parser("show", help="print the effective config, secrets masked")
    show.add_argument("file", nargs="?", help="TOML config file (defaults only when omitted)")
    show.set_defaults(func=_config_show, prog=show.prog)

    decode = sub.add_parser(
        "decode", help="decode one message as it travels on the wire; one JSON record per line",
        description="Decode one message. Exit 0 when everything decoded; 2 on bad input, with "
        "one line per problem on stderr naming the reason, the field and the byte offset.")
    decode.add_argument("topic", help="the MQTT topic the message arrived on")
    decode.add_argument("payload", help="the payload as on the wire; - reads raw bytes from stdin")
    decode.add_argument("--registry", metavar="FILE", help="device registry (TOML), e.g. fixtures/registry.toml")
    decode.add_argument("--hex", action="store_true", help="PAYLOAD is a binary payload written as hex")
    decode.add_argument("--received-at", metavar="TIME",
                        help="receive time for messages without their own timestamp (default: now)")
    decode.set_defaults(func=_decode, prog=decode.prog)

    gateway = sub.add_parser("gateway", help="run the gateway: site broker -> SQLite buffer -> uplink")
    gateway.add_argument("--config", required=True, help="gateway config (see deploy/pi/gateway.toml)")
    gateway.set_defaults(func=_gateway, prog=gateway.prog)

    receiver = sub.add_parser("receiver", help="run the uplink receiver into the single-node store")
    receiver.add_argument("--config", required=True, help="config with [central_broker] and [receiver]")
    receiver.set_defaults(func=_receiver, prog=receiver.prog)

    srv = sub.add_parser("server", help="run the server actors (receiver, bridge, decoder, sink, commands, market), "
                         "or `migrate` the database")
    srv.add_argument("action", nargs="?", choices=["run", "migrate"], default="run",
                     help="run (default) or migrate: apply the SQL migrations, idempotently")
    srv.add_argument("--config", required=True, help="server config file (TOML)")
    srv.set_defaults(func=_server, prog=srv.prog)

    reg = sub.add_parser("registry", help="the device registry in PostgreSQL")
    reg_sub = reg.add_subparsers(dest="registry_command", required=True)
    reg_load = reg_sub.add_parser("load", help="load a registry TOML file (idempotent)")
    reg_load.add_argument("file")
    reg_load.add_argument("--config", required=True, help="server config file (TOML): [postgres]")
    reg_load.set_defaults(func=_registry, prog=reg_load.prog)

    cmd = sub.add_parser("command", help="commands to devices: send, list, pause (the kill switch), resume")
    cmd_sub = cmd.add_subparsers(dest="command_action", required=True)
    send = cmd_sub.add_parser("send", help="write a command; the server's command actor sends it to its gateway",
                              description="Write a command into device_commands (pending); `edge server` with "
                              "[server] commands = true sends it to the device's gateway, which delivers it while "
                              "the device is online and the deadline not passed. Prints its cmd_id.")
    send.add_argument("device")
    send.add_argument("cmd", help=f"v2: {', '.join(V2_COMMANDS)}; F2: a name for the record")
    send.add_argument("--param", action="append", default=[], metavar="K=V", help="a parameter (JSON values)")
    send.add_argument("--valid-for", type=_duration, default=600.0, metavar="DURATION",
                      help="deadline from now: 90s, 10m (default), 2h")
    send.add_argument("--kind", choices=["v2", "f2"], default="v2")
    send.add_argument("--topic", help="an F2 command's cmnd/<device>/... topic (the params are its payload)")
    send.add_argument("--gateway", help="the device's gateway (default: the one that last heard it)")
    lst = cmd_sub.add_parser("list", help="the latest commands and their states")
    lst.add_argument("--device")
    lst.add_argument("--state", choices=["pending", "sent", "delivered", "accepted", "rejected", "error",
                                         "unsupported", "expired"])
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--json", action="store_true")
    pause = cmd_sub.add_parser("pause", help="the kill switch: send nothing until resumed")
    resume = cmd_sub.add_parser("resume", help="send again")
    for p in (send, lst, pause, resume):
        p.add_argument("--config", required=True, help="server config file (TOML): [postgres]")
        p.set_defaults(func=_command, prog=p.prog)

    sim = sub.add_parser("simulate", help="publish realistic device traffic to a broker, with a ledger")
    sim.add_argument("--broker", required=True, metavar="HOST:PORT")
    sim.add_argument("--devices", type=int, default=10)
    sim.add_argument("--rate", type=float, default=10.0, help="messages/s in all; 0 = as fast as possible")
    sim.add_argument("--count", type=int, help="stop after this many messages (default: run until killed)")
    sim.add_argument("--kind", choices=["f2", "v2", "ac", "homelab", "mix", "battery"], default="mix",
                     help="v2: DC power meters (pm-dc-*); ac: AC power meters (pm-ac-*); battery: batteries "
                     "(bat-*) that obey set_power and report their state of charge (--battery, --time-scale)")
    sim.add_argument("--battery", default="capacity_kwh=200,power_kw=100,efficiency=0.9,soc_kwh=100",
                     metavar="K=V,...", help="with --kind battery: each battery (edge market plan's keys)")
    sim.add_argument("--send-s", type=float, default=10.0, help="with --kind battery: telemetry every S seconds")
    sim.add_argument("--time-scale", type=float, default=1.0,
                     help="with --kind battery: energy clock speed (60: an hour a minute)")
    sim.add_argument("--registry", metavar="FILE", help="registry for F2 templates (fixtures/registry.toml)")
    sim.add_argument("--ledger", metavar="FILE", help="append one JSON line per acknowledged message")
    sim.add_argument("--malformed", type=float, default=0.0, metavar="PCT", help="percent of garbage messages")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--device-prefix", default="pm-dc", help="v2 device ids are PREFIX-0000, ...")
    sim.add_argument("--lwt", action="store_true",
                     help="one connection per v2 device, with a retained offline Last Will")
    sim.add_argument("--client-id")
    sim.set_defaults(func=_simulate, prog=sim.prog)

    buf = sub.add_parser("buffer", help="inspect the gateway's buffer (safe while it runs)")
    buf.add_argument("action", choices=["stats", "peek", "export", "dead", "purge"],
                     help="dead: the records that can never travel (too large for a frame), with why")
    buf.add_argument("--config", required=True, help="the gateway's config ([buffer] path)")
    buf.add_argument("--limit", type=int, default=10, help="records for peek (default 10)")
    buf.add_argument("--yes", action="store_true", help="confirm purge")
    buf.set_defaults(func=_buffer, prog=buf.prog)

    dm = sub.add_parser("demo", help="the whole runtime in one process: devices, gateway, outage, ledger")
    dm.add_argument("--duration", type=float, default=40.0, help="seconds of device traffic")
    dm.add_argument("--devices", type=int, default=12)
    dm.add_argument("--rate", type=float, default=300.0, help="messages/s from all devices")
    dm.add_argument("--outage", default="10:20", metavar="START:END",
                    help="seconds during which the uplink is down ('none' for no outage)")
    dm.add_argument("--data-dir", default=".edge-demo", help="buffer, store and log go here")
    dm.add_argument("--registry", help="device registry (default: fixtures/registry.toml)")
    dm.add_argument("--no-ui", action="store_true", help="plain periodic lines instead of the live view")
    dm.set_defaults(func=_demo, prog=dm.prog)

    st = sub.add_parser("status", help="summary of a running gateway or server (exit 0 ok, 1 degraded, 2 down)")
    st.add_argument("--url", default="http://127.0.0.1:9108", help="its metrics address")
    st.set_defaults(func=_status, prog=st.prog)

    market = sub.add_parser("market", help="the electricity market: plan a battery's dispatch over known prices")
    market_sub = market.add_subparsers(dest="market_command", required=True)
    mplan = market_sub.add_parser(
        "plan", help="the schedule that earns the most for a battery over a REData prices answer",
        description="Plan one battery over the prices of FILE (a REData prices answer, protocols.md §4), or a "
        "registry battery (--asset) over the prices of a day stored by the market actor, under "
        "the energy model of docs/market.md: dynamic programming over state-of-charge levels, exact for "
        "its levels. Exit 2 on a bad answer, battery or end state.")
    mplan.add_argument("--prices", metavar="FILE", help="a REData prices answer (JSON)")
    mplan.add_argument("--series", choices=["spot", "pvpc"], default="spot")
    mplan.add_argument("--asset", metavar="ID", help="instead: a registry battery, its prices of --date and its "
                       "state of charge from the database of --config")
    mplan.add_argument("--date", type=_date, metavar="YYYY-MM-DD", help="with --asset: the Madrid day to plan")
    mplan.add_argument("--config", metavar="F", help="with --asset: the server config ([postgres], [market] zone)")
    mplan.add_argument("--soc-kwh", type=float, metavar="X", help="with --asset: plan from this state of charge "
                       "instead of the latest reading")
    mplan.add_argument("--battery", metavar="K=V,...",
                       help="capacity_kwh, power_kw (or charge_kw and discharge_kw), efficiency (round "
                       "trip), soc_kwh, soc_min_kwh, soc_max_kwh, cost_eur_per_mwh (degradation per MWh sold)")
    mplan.add_argument("--end-soc-kwh", type=float, metavar="X", help="end with at least X kWh (default: free)")
    mplan.add_argument("--levels", type=int, default=201, help="state-of-charge levels, at most (default 201)")
    mplan.add_argument("--json", action="store_true", help='print {"profit_eur": P, "steps": [...]}')
    mplan.set_defaults(func=_market_plan, prog=mplan.prog)

    fetch = market_sub.add_parser(
        "fetch", help="one day's prices from REData and the alerts they would raise",
        description="Fetch one day (Madrid time) from the REData API or a mirror of it, print its price steps "
        "in UTC and the alerts they would raise (NEGATIVE_PRICE, HIGH_PRICE, ARBITRAGE_OPPORTUNITY for "
        "the reference battery). Exit 2 when the API refuses the request or answers nonsense, 69 when it "
        "cannot be reached after its retries.")
    fetch.add_argument("--date", required=True, type=_date, metavar="YYYY-MM-DD")
    fetch.add_argument("--base-url", default="https://apidatos.ree.es", help="the API or a local mirror")
    fetch.add_argument("--series", choices=["spot", "pvpc"], default="spot")
    fetch.add_argument("--zone", default="BZN|ES")
    fetch.add_argument("--high", type=float, default=120.0, metavar="EUR_PER_MWH",
                       help="HIGH_PRICE above this (default 120)")
    from edge.market.battery import REFERENCE_BATTERY

    fetch.add_argument("--battery", default=REFERENCE_BATTERY, metavar="K=V,...",
                       help=f"the battery ARBITRAGE_OPPORTUNITY is computed for (default {REFERENCE_BATTERY})")
    from edge.market.flows import DEFAULT_NTC_MW

    fetch.add_argument("--flows", action="store_true",
                       help="also the cross-border flows: saturation per border and DECOUPLING_LIKELY")
    fetch.add_argument("--ntc", nargs="+", default=list(DEFAULT_NTC_MW), metavar="DIR=MW",
                       help=f"with --flows: capacities per direction (default {' '.join(DEFAULT_NTC_MW)})")
    fetch.add_argument("--decoupling", type=float, default=90.0, metavar="PCT",
                       help="with --flows: DECOUPLING_LIKELY above this saturation (default 90)")
    fetch.add_argument("--timeout", type=float, default=10.0, metavar="S", help="per request (default 10)")
    fetch.add_argument("--attempts", type=int, default=4, help="tries before giving up (default 4)")
    fetch.add_argument("--json", action="store_true", help='print {"steps": [...], "alerts": [...]}')
    fetch.add_argument("--store", metavar="CONFIG",
                       help="also store the prices and the new alerts in the server's database ([postgres] of CONFIG)")
    fetch.set_defaults(func=_market_fetch, prog=fetch.prog)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_version, prog=version.prog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"{args.prog}: {exc}", file=sys.stderr)
        return exit_code(exc)
    except EdgeError as exc:
        from edge.codecs.limits import safe_text

        print(f"{args.prog}: {safe_text(str(exc), 4000)}", file=sys.stderr)
        return exit_code(exc)
    except BrokenPipeError:
        # The reader went away (`edge decode ... | head`): stop quietly, as Unix tools do.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
