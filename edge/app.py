"""The wiring: the one place where the actor graphs are built and run.

- ``run_gateway``: source -> decoder -> buffer -> uplink (and the command router), with an
  MQTT link to the central broker or, for a single-node site, an in-process one;
- ``run_receiver``: the uplink receiver into the single-node SQLite store;
- ``run_server``: the server actors ``[server]`` turns on (sink, market, command dispatch,
  stream decoder, receiver into Kafka, bridge);
- the demo (``edge.tools.demo``) runs ``gateway_specs`` with a simulated source.

Who sends what to whom: ``GATEWAY_EDGES`` below, given to each actor's spec as
``sends_to``; an actor can send only along its edges (``ActorContext.peer``):

    source   --Incoming-->                          decoder
    decoder  --Append, GetSeqState-->               buffer     (SeqState comes back)
    decoder  --Presence, DeviceAck-->               commands
    buffer   --Committed, Refused, Room-->          source
    buffer   --Leased-->                            uplink
    buffer   --LocalAppended-->                     commands
    uplink   --LeaseRequest, Confirm, DeadLetter, Rewind, GetStats-->  buffer  (Stats back)
    uplink   --Downlink-->                          commands
    commands --AppendLocal-->                       buffer

Start order follows the data backwards, so nothing flows before its destination is up:
buffer, commands, decoder, uplink, then the source. Stop runs the other way: the source stops
taking messages first, the buffer closes last.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.actors.buffer import Buffer
from edge.actors.commands import CommandRouter
from edge.actors.decoder import Decoder
from edge.actors.receiver import UplinkReceiver
from edge.actors.source import MqttSource
from edge.actors.uplink import Uplink
from edge.codecs import registry as registry_mod
from edge.codecs.errors import CodecError
from edge.config import Config, MqttConfig
from edge.errors import ConfigError, ConfigProblem
from edge.io.link import Link, LocalLink, MqttLink
from edge.io.mqtt import share_property_tables
from edge.io.store import RecordStore, SqliteStore
from edge.runtime.actor import ActorContext
from edge.runtime.graph import ActorSpec, run_graph


def read_registry(cfg: Config) -> str:
    """The registry file's text, checked: a registry the decoder could not load is a config
    problem reported at once (exit 2), not an actor that fails to start."""
    path = cfg.decoder.registry
    try:
        text = Path(path).read_text(encoding="utf-8")
        registry_mod.loads(text)
    except OSError as exc:
        raise ConfigError([ConfigProblem("decoder.registry", f"cannot read {path}: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem("decoder.registry", f"{path} is not UTF-8 text: {exc}")]) from exc
    except CodecError as exc:
        raise ConfigError([ConfigProblem("decoder.registry", f"{path}: {exc.message}")]) from exc
    return text


def writable_file(path: str) -> str | None:
    """Why ``path`` cannot be created or written by this process, or None. Tried for real
    (the directories are made, a file opened): permissions alone say nothing for root, or
    on a read-only mount."""
    target = Path(path)
    if target.is_dir():
        return f"{path} is a directory"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            with open(target, "ab"):
                pass
        else:
            with tempfile.TemporaryFile(dir=target.parent):
                pass
    except OSError as exc:
        return f"cannot create or write {path}: {exc.strerror or exc}"
    return None


def tls_files(name: str, broker: MqttConfig) -> list[ConfigProblem]:
    problems = []
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(broker, key)
        if broker.tls and path and not os.access(path, os.R_OK):
            problems.append(ConfigProblem(f"{name}.{key}", f"{path} is missing or not readable"))
    if broker.tls and bool(broker.cert_file) != bool(broker.key_file):
        problems.append(ConfigProblem(f"{name}.key_file", "cert_file and key_file go together"))
    return problems


def preflight(cfg: Config, role: str) -> None:
    """What the config names on this machine: files that must be writable, TLS files that
    must be there. Checked before any actor starts, so the process exits 2 with every
    problem in one message instead of an actor failing to start."""
    files = {"gateway": [("buffer.path", cfg.buffer.path), ("commands.path", cfg.commands.path)]
             + ([("uplink.store_path", cfg.uplink.store_path)] if cfg.uplink.mode == "local" else []),
             "receiver": [("receiver.store_path", cfg.receiver.store_path)], "server": []}[role]
    problems = [ConfigProblem(key, why) for key, path in files if (why := writable_file(path))]
    problems += tls_files("central_broker", cfg.central_broker)
    if role == "gateway":
        problems += tls_files("site_broker", cfg.site_broker)
    if role == "server" and cfg.kafka.tls and cfg.kafka.ca_file and not os.access(cfg.kafka.ca_file, os.R_OK):
        problems.append(ConfigProblem("kafka.ca_file", f"{cfg.kafka.ca_file} is missing or not readable"))
    if problems:
        raise ConfigError(problems)


# The gateway's message edges: actor -> the actors it sends to (the table above).
GATEWAY_EDGES: dict[str, tuple[str, ...]] = {
    "source": ("decoder",),
    "decoder": ("buffer", "commands"),
    "buffer": ("source", "uplink", "commands"),
    "uplink": ("buffer", "commands"),
    "commands": ("buffer",),
}


def wired(specs: list[ActorSpec], edges: dict[str, tuple[str, ...]]) -> list[ActorSpec]:
    """The specs with their ``sends_to`` from ``edges``, limited to the actors present (the
    demo's graph has no command router)."""
    present = {s.name for s in specs}
    return [dataclasses.replace(s, sends_to=tuple(p for p in edges.get(s.name, ()) if p in present))
            for s in specs]


def gateway_specs(cfg: Config) -> list[ActorSpec]:
    preflight(cfg, "gateway")
    registry_text = read_registry(cfg)
    b, gw = cfg.buffer, cfg.node.id
    client_id = cfg.site_broker.client_id or f"edge-{gw}-source"
    return wired([
        ActorSpec("buffer", lambda ctx: Buffer.start(ctx, b.path, b.durability, b.quota_bytes, b.policy,
                                                           b.ttl_s, reserve_bytes=b.reserve_bytes)),
        ActorSpec("commands", lambda ctx: CommandRouter.start(
            ctx, cfg.site_broker, f"{client_id}-commands", cfg.commands.path,
            cfg.commands.offline_after_s), after=("buffer",)),
        ActorSpec("decoder", lambda ctx: Decoder.start(
            ctx, registry_text, processes=cfg.decoder.processes,
            window=(cfg.decoder.max_age_s, cfg.decoder.max_ahead_s),
            recent=max(8192, 2 * cfg.source.receive_maximum)),
                  after=("buffer", "commands")),
        ActorSpec("uplink", lambda ctx: Uplink.start(ctx, uplink_link(cfg), cfg.uplink, gw),
                  after=("buffer", "commands")),
        ActorSpec("source", lambda ctx: MqttSource.start(ctx, cfg.site_broker, cfg.source, client_id),
                  after=("decoder", "uplink")),
    ], GATEWAY_EDGES)


def demo_specs(cfg: Config, buffer_path: str, registry_text: str, link: Link,
               start_source: Callable[[ActorContext], Any]) -> list[ActorSpec]:
    """``edge demo``'s gateway: the real buffer, decoder and uplink (over ``link``, the
    in-process one), fed by the demo's simulated source instead of the site broker."""
    return wired([
        ActorSpec("buffer", lambda ctx: Buffer.start(ctx, buffer_path, "power-safe", 1024**3, "reject")),
        ActorSpec("decoder", lambda ctx: Decoder.start(ctx, registry_text), after=("buffer",)),
        ActorSpec("uplink", lambda ctx: Uplink.start(ctx, lambda will: link, cfg.uplink, "demo-gw"),
                  after=("buffer",)),
        ActorSpec("source", start_source, after=("decoder", "uplink")),
    ], GATEWAY_EDGES)


def uplink_link(cfg: Config) -> Callable[[bytes], Link]:
    """The uplink's link factory: MQTT to the central broker, or the in-process receiver
    of a single-node site (one store for every restart of the uplink)."""
    if cfg.uplink.mode == "local":
        store = SqliteStore(cfg.uplink.store_path, cfg.buffer.durability)
        return lambda will: LocalLink(store)
    return lambda will: MqttLink(cfg.central_broker, cfg.node.id, cfg.uplink.session_expiry_s, will)


def receiver_specs(cfg: Config, store: RecordStore) -> list[ActorSpec]:
    client_id = cfg.central_broker.client_id or f"edge-{cfg.node.id}-receiver"
    return [ActorSpec("receiver", lambda ctx: UplinkReceiver.start(
        ctx, cfg.central_broker, cfg.receiver, store, client_id), sends_to=())]


def kafka_client_base(cfg: Config) -> str:
    """Prefix of this process's Kafka client ids: ``[kafka] client_id``, or one per node."""
    return cfg.kafka.client_id if cfg.kafka.client_id != "edge" else f"edge-{cfg.node.id}"


def server_specs(cfg: Config, store: RecordStore | None) -> list[ActorSpec]:
    """The distributed server's actors that ``[server]`` turns on, data backwards: the sink
    first, then the stream decoder, then what takes MQTT in (receiver, bridge). ``store`` is
    the receiver's Kafka store (None when the receiver is off)."""
    from edge.actors.bridge import DirectBridge
    from edge.actors.dispatch import CommandActor
    from edge.actors.market import MarketActor
    from edge.actors.sink import TimescaleSink
    from edge.actors.stream_decoder import StreamDecoder

    node, on = cfg.node.id, cfg.server
    base = kafka_client_base(cfg)
    specs: list[ActorSpec] = []
    if on.sink:
        specs.append(ActorSpec("sink", lambda ctx: TimescaleSink.start(
            ctx, cfg.kafka, cfg.postgres, cfg.sink, f"{base}-sink"), sends_to=()))
    if on.market:
        specs.append(ActorSpec("market", lambda ctx: MarketActor.start(
            ctx, cfg.market, cfg.kafka, cfg.postgres, f"{base}-market"), sends_to=()))
    if on.commands:
        commands_id = f"{cfg.central_broker.client_id or f'edge-{node}'}-commands"
        specs.append(ActorSpec("dispatch", lambda ctx: CommandActor.start(
            ctx, cfg.central_broker, cfg.postgres, cfg.dispatch, commands_id), sends_to=()))
    if on.decoder:
        specs.append(ActorSpec("stream_decoder", lambda ctx: StreamDecoder.start(
            ctx, cfg.kafka, cfg.postgres, cfg.stream_decoder, f"{base}-decoder"), sends_to=()))
    if on.receiver:
        assert store is not None
        specs += receiver_specs(cfg, store)
    if on.bridge:
        client_id = f"{cfg.central_broker.client_id or f'edge-{node}'}-bridge"
        specs.append(ActorSpec("bridge", lambda ctx: DirectBridge.start(
            ctx, cfg.central_broker, cfg.kafka, cfg.bridge, client_id), sends_to=()))
    if not specs:
        raise ConfigError([ConfigProblem("server", "every server actor is turned off")])
    return specs


def run_gateway(cfg: Config) -> int:
    share_property_tables()
    return run_graph(gateway_specs(cfg), cfg)


def run_receiver(cfg: Config) -> int:
    share_property_tables()
    preflight(cfg, "receiver")
    store = SqliteStore(cfg.receiver.store_path, cfg.receiver.durability)
    try:
        return run_graph(receiver_specs(cfg, store), cfg)
    finally:
        store.close()


def run_server(cfg: Config) -> int:
    """``ServiceUnavailable`` when Kafka cannot be reached within ``[kafka]
    connect_timeout_s`` (the topics are created first)."""
    from edge.actors.bridge import parse_mappings
    from edge.io.kafka import KafkaStore, ensure_topics

    share_property_tables()
    preflight(cfg, "server")
    base = kafka_client_base(cfg)
    ensure_topics(cfg.kafka, f"{base}-admin",
                  [t for _, t in parse_mappings(cfg.bridge.mappings)] + list(cfg.stream_decoder.topics)
                  + ([cfg.market.alerts_topic] if cfg.server.market else []))
    store = KafkaStore(cfg.kafka, f"{base}-receiver") if cfg.server.receiver else None
    try:
        return run_graph(server_specs(cfg, store), cfg)
    finally:
        if store is not None:
            store.close()
