"""The ``edge`` command.

Subcommands arrive with the features behind them; none exists before it works.
Exit codes: 0 success, 2 bad input (config, arguments), 69 a needed service is unreachable,
70 crash loop of the runtime.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge import __version__, config
from edge.errors import ConfigError, ServiceError

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a service the command needs is not reachable


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
    try:
        cfg = config.load(args.file) if args.file else config.Config()
    except ConfigError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
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


def _load(path: str) -> config.Config | None:
    try:
        return config.load(path)
    except ConfigError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return None


def _gateway(args: argparse.Namespace) -> int:
    from edge import app
    from edge.runtime import log
    from edge.runtime.graph import run_graph

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_BAD_INPUT
    log.setup(cfg.log.level, cfg.log.format)
    try:
        specs = app.gateway_specs(cfg)
    except ConfigError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_graph(specs, cfg)


def _receiver(args: argparse.Namespace) -> int:
    from edge import app
    from edge.runtime import log
    from edge.runtime.graph import run_graph
    from edge.io.store import SqliteStore

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_BAD_INPUT
    log.setup(cfg.log.level, cfg.log.format)
    try:
        app.preflight(cfg, "receiver")
    except ConfigError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    store = SqliteStore(cfg.receiver.store_path, cfg.receiver.durability)
    try:
        return run_graph(app.receiver_specs(cfg, store), cfg)
    finally:
        store.close()


def _server(args: argparse.Namespace) -> int:
    from edge.runtime import log

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_BAD_INPUT
    log.setup(cfg.log.level, cfg.log.format)
    if args.action == "migrate":
        return _migrate(cfg)
    from edge import app
    from edge.actors.bridge import parse_mappings
    from edge.io.kafka import KafkaStore, ensure_topics
    from edge.runtime.graph import run_graph

    base = app.kafka_client_base(cfg)
    store = None
    try:
        app.preflight(cfg, "server")
        ensure_topics(cfg.kafka, f"{base}-admin",
                      [t for _, t in parse_mappings(cfg.bridge.mappings)] + list(cfg.stream_decoder.topics))
        if cfg.server.receiver:
            store = KafkaStore(cfg.kafka, f"{base}-receiver")
        return run_graph(app.server_specs(cfg, store), cfg)
    except ConfigError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ServiceError as exc:
        print(f"edge server: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        if store is not None:
            store.close()


def _migrate(cfg: config.Config) -> int:
    import psycopg

    from edge.io import pg

    try:
        with pg.connect(cfg.postgres, autocommit=True, statement_timeout=False) as conn:
            applied = pg.migrate(conn)
            storage = conn.execute("SELECT value FROM edge_settings WHERE key = 'storage'").fetchone()
    except psycopg.OperationalError as exc:
        print(f"edge server migrate: cannot reach PostgreSQL at {cfg.postgres.host}:{cfg.postgres.port}"
              f"/{cfg.postgres.dbname}: {str(exc).strip()}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except pg.MigrationError as exc:
        print(f"edge server migrate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for m in applied:
        print(f"applied {m.version:04d}_{m.name} ({m.variant})")
    print(f"database {cfg.postgres.dbname}: up to date, {len(applied)} applied now, "
          f"storage {storage[0] if storage else '?'}")
    return EXIT_OK


def _registry(args: argparse.Namespace) -> int:
    import psycopg

    from edge.io import pg, registry_db
    from edge.codecs import registry as registry_mod
    from edge.codecs.errors import CodecError

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_BAD_INPUT
    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
        registry = registry_mod.loads(text)
    except OSError as exc:
        print(f"edge registry load: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CodecError as exc:
        print(f"edge registry load: {args.file}: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        with pg.connect(cfg.postgres, autocommit=True) as conn:
            if pg.pending(conn):
                print("edge registry load: the database lacks migrations: run `edge server migrate`",
                      file=sys.stderr)
                return EXIT_BAD_INPUT
            changed, version = registry_db.load(conn, registry, args.file, text)
    except psycopg.OperationalError as exc:
        print(f"edge registry load: cannot reach PostgreSQL: {str(exc).strip()}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    n_pins = sum(len(c.pins) for ctl in registry.controllers for c in ctl.connectors)
    print(f"{args.file}: {'loaded' if changed else 'unchanged'}, registry version {version} "
          f"({len(registry.templates)} templates, {len(registry.controllers)} controllers, "
          f"{n_pins} pins, {len(registry.topics)} topic mappings)")
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    import contextlib
    import uuid

    from edge.config import MqttConfig
    from edge.tools.simulate import Traffic, run

    host, _, port = args.broker.rpartition(":")
    if not host or not port.isdigit():
        print(f"edge simulate: --broker {args.broker!r} is not HOST:PORT", file=sys.stderr)
        return EXIT_BAD_INPUT
    registry_text = None
    if args.registry:
        try:
            with open(args.registry, encoding="utf-8") as f:
                registry_text = f.read()
        except OSError as exc:
            print(f"edge simulate: cannot read {args.registry}: {exc.strerror}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        traffic = Traffic(args.kind, args.devices, registry_text, args.seed, args.malformed,
                          device_prefix=args.device_prefix)
    except ValueError as exc:
        print(f"edge simulate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    with contextlib.ExitStack() as stack:
        ledger = stack.enter_context(open(args.ledger, "a", encoding="utf-8")) if args.ledger else None
        acked = run(MqttConfig(host=host, port=int(port)), traffic, args.rate, args.count, ledger,
                    args.client_id or f"edge-sim-{uuid.uuid4().hex[:8]}", lwt=args.lwt)
    print(f"published {acked} messages acknowledged by {args.broker}")
    return EXIT_OK


def _buffer(args: argparse.Namespace) -> int:
    """Read the buffer through a read-only connection: safe while the gateway runs (WAL)."""
    import json
    import sqlite3
    import time
    from pathlib import Path

    import msgpack

    from edge.codecs.uplink import from_wire

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_BAD_INPUT
    path = cfg.buffer.path
    if args.action == "purge" and not args.yes:
        print("edge buffer purge: this deletes records that were never confirmed upstream; "
              "repeat with --yes to do it", file=sys.stderr)
        return EXIT_BAD_INPUT
    mode = "rw" if args.action == "purge" else "ro"
    try:
        conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=30)
        conn.execute("SELECT 1 FROM records LIMIT 1")
    except sqlite3.Error as exc:
        print(f"edge buffer: cannot open {path}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    def rows(limit: int | None):
        sql = "SELECT seq, boot_epoch, priority, body, stored_at FROM records ORDER BY priority, seq"
        cursor = conn.execute(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
        for seq, boot, priority, body, stored_at in cursor:
            yield {"seq": seq, "boot_epoch": boot, "priority": priority, "stored_at": stored_at,
                   "record": readable(body)}

    def readable(body: bytes) -> dict:
        try:
            return from_wire(msgpack.unpackb(body, raw=False)).to_json()
        except Exception as exc:  # noqa: BLE001 - a row of another version is shown, not fatal
            return {"unreadable": repr(exc)[:200], "body_hex": body[:256].hex()}

    def dead_letters():
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'dead_letters'").fetchone() is None:
            return
        for seq, boot, reason, dead_at, body in conn.execute(
                "SELECT seq, boot_epoch, reason, dead_at, body FROM dead_letters ORDER BY seq"):
            yield {"seq": seq, "boot_epoch": boot, "reason": reason, "dead_at": dead_at,
                   "record": readable(body)}

    if args.action == "stats":
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        by_class = {str(p): {"records": n, "bytes": b} for p, n, b in conn.execute(
            "SELECT priority, count(*), coalesce(sum(size), 0) FROM records GROUP BY priority")}
        row = conn.execute("SELECT stored_at FROM records ORDER BY seq LIMIT 1").fetchone()
        oldest = row[0] if row else None
        print(json.dumps({
            "path": path, "depth": sum(c["records"] for c in by_class.values()),
            "bytes": sum(c["bytes"] for c in by_class.values()), "by_priority": by_class,
            "oldest_age_s": round(time.time() - oldest, 3) if oldest else 0.0,
            "boot_epoch": meta.get("boot_epoch"), "next_seq": meta.get("next_seq"),
            "dropped_total": meta.get("dropped_total", 0), "quota_bytes": cfg.buffer.quota_bytes,
            "policy": cfg.buffer.policy, "dead_letters": sum(1 for _ in dead_letters())}, indent=2))
    elif args.action in ("peek", "export"):
        for doc in rows(args.limit if args.action == "peek" else None):
            print(json.dumps(doc, ensure_ascii=False, default=str))
    elif args.action == "dead":
        for doc in dead_letters():
            print(json.dumps(doc, ensure_ascii=False, default=str))
    else:
        with conn:
            removed = conn.execute("DELETE FROM records").rowcount
        size = Path(path).stat().st_size
        conn.execute("VACUUM")  # give the space back to the file system (a full SD card) ...
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # ... from the WAL too
        print(json.dumps({"purged": removed, "path": path, "bytes_freed": size - Path(path).stat().st_size}))
    conn.close()
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge.tools import demo

    outage = None
    if args.outage != "none":
        try:
            outage = demo.parse_outage(args.outage)
        except ValueError as exc:
            print(f"edge demo: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    registry = Path(args.registry) if args.registry else demo.REPO_REGISTRY
    if not registry.exists():
        print(f"edge demo: no registry at {registry}; pass --registry", file=sys.stderr)
        return EXIT_BAD_INPUT
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
    check.set_defaults(func=_config_check)
    show = cfg_sub.add_parser("show", help="print the effective config, secrets masked")
    show.add_argument("file", nargs="?", help="TOML config file (defaults only when omitted)")
    show.set_defaults(func=_config_show)

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
    decode.set_defaults(func=_decode)

    gateway = sub.add_parser("gateway", help="run the gateway: site broker -> SQLite buffer -> uplink")
    gateway.add_argument("--config", required=True, help="gateway config (see deploy/pi/gateway.toml)")
    gateway.set_defaults(func=_gateway)

    receiver = sub.add_parser("receiver", help="run the uplink receiver into the single-node store")
    receiver.add_argument("--config", required=True, help="config with [central_broker] and [receiver]")
    receiver.set_defaults(func=_receiver)

    srv = sub.add_parser("server", help="run the server actors (receiver, bridge, decoder, sink), "
                         "or `migrate` the database")
    srv.add_argument("action", nargs="?", choices=["run", "migrate"], default="run",
                     help="run (default) or migrate: apply the SQL migrations, idempotently")
    srv.add_argument("--config", required=True, help="server config file (TOML)")
    srv.set_defaults(func=_server)

    reg = sub.add_parser("registry", help="the device registry in PostgreSQL")
    reg_sub = reg.add_subparsers(dest="registry_command", required=True)
    reg_load = reg_sub.add_parser("load", help="load a registry TOML file (idempotent)")
    reg_load.add_argument("file")
    reg_load.add_argument("--config", required=True, help="server config file (TOML): [postgres]")
    reg_load.set_defaults(func=_registry)

    sim = sub.add_parser("simulate", help="publish realistic device traffic to a broker, with a ledger")
    sim.add_argument("--broker", required=True, metavar="HOST:PORT")
    sim.add_argument("--devices", type=int, default=10)
    sim.add_argument("--rate", type=float, default=10.0, help="messages/s in all; 0 = as fast as possible")
    sim.add_argument("--count", type=int, help="stop after this many messages (default: run until killed)")
    sim.add_argument("--kind", choices=["f2", "v2", "homelab", "mix"], default="mix")
    sim.add_argument("--registry", metavar="FILE", help="registry for F2 templates (fixtures/registry.toml)")
    sim.add_argument("--ledger", metavar="FILE", help="append one JSON line per acknowledged message")
    sim.add_argument("--malformed", type=float, default=0.0, metavar="PCT", help="percent of garbage messages")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--device-prefix", default="pm-dc", help="v2 device ids are PREFIX-0000, ...")
    sim.add_argument("--lwt", action="store_true",
                     help="one connection per v2 device, with a retained offline Last Will")
    sim.add_argument("--client-id")
    sim.set_defaults(func=_simulate)

    buf = sub.add_parser("buffer", help="inspect the gateway's buffer (safe while it runs)")
    buf.add_argument("action", choices=["stats", "peek", "export", "dead", "purge"],
                     help="dead: the records that can never travel (too large for a frame), with why")
    buf.add_argument("--config", required=True, help="the gateway's config ([buffer] path)")
    buf.add_argument("--limit", type=int, default=10, help="records for peek (default 10)")
    buf.add_argument("--yes", action="store_true", help="confirm purge")
    buf.set_defaults(func=_buffer)

    dm = sub.add_parser("demo", help="the whole runtime in one process: devices, gateway, outage, ledger")
    dm.add_argument("--duration", type=float, default=40.0, help="seconds of device traffic")
    dm.add_argument("--devices", type=int, default=12)
    dm.add_argument("--rate", type=float, default=300.0, help="messages/s from all devices")
    dm.add_argument("--outage", default="10:20", metavar="START:END",
                    help="seconds during which the uplink is down ('none' for no outage)")
    dm.add_argument("--data-dir", default=".edge-demo", help="buffer, store and log go here")
    dm.add_argument("--registry", help="device registry (default: fixtures/registry.toml)")
    dm.add_argument("--no-ui", action="store_true", help="plain periodic lines instead of the live view")
    dm.set_defaults(func=_demo)

    st = sub.add_parser("status", help="summary of a running gateway or server (exit 0 ok, 1 degraded, 2 down)")
    st.add_argument("--url", default="http://127.0.0.1:9108", help="its metrics address")
    st.set_defaults(func=_status)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # The reader went away (`edge decode ... | head`): stop quietly, as Unix tools do.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
