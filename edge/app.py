"""The concrete actor graphs: which actors a gateway and a receiver run, in what order.

Start order follows the data backwards, so nothing flows before its destination is up:
buffer, commands, decoder, uplink, then the source. Stop runs the other way: the source stops
taking messages first, the buffer closes last.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edge.actors.buffer import Buffer
from edge.actors.commands import CommandRouter
from edge.actors.decoder import Decoder
from edge.actors.receiver import UplinkReceiver
from edge.actors.source import MqttSource
from edge.actors.uplink import Uplink
from edge.config import Config
from edge.errors import ConfigError, ConfigProblem
from edge.link import Link, LocalLink, MqttLink
from edge.runtime import ActorSpec
from edge.store import RecordStore, SqliteStore


def read_registry(cfg: Config) -> str:
    try:
        return Path(cfg.decoder.registry).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem("decoder.registry", f"cannot read {cfg.decoder.registry}: "
                                         f"{exc.strerror}")]) from exc


def gateway_specs(cfg: Config) -> list[ActorSpec]:
    registry_text = read_registry(cfg)
    b, gw = cfg.buffer, cfg.node.id
    client_id = cfg.site_broker.client_id or f"edge-{gw}-source"
    return [
        ActorSpec("buffer", lambda ctx: Buffer.start(ctx, b.path, b.durability, b.quota_bytes, b.policy,
                                                           b.ttl_s)),
        ActorSpec("commands", lambda ctx: CommandRouter.start(
            ctx, cfg.site_broker, f"{client_id}-commands", cfg.commands.path,
            cfg.commands.offline_after_s), after=("buffer",)),
        ActorSpec("decoder", lambda ctx: Decoder.start(ctx, registry_text, processes=cfg.decoder.processes),
                  after=("buffer", "commands")),
        ActorSpec("uplink", lambda ctx: Uplink.start(ctx, uplink_link(cfg), cfg.uplink, gw),
                  after=("buffer", "commands")),
        ActorSpec("source", lambda ctx: MqttSource.start(ctx, cfg.site_broker, cfg.source, client_id),
                  after=("decoder", "uplink")),
    ]


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
        ctx, cfg.central_broker, cfg.receiver, store, client_id))]


def kafka_client_base(cfg: Config) -> str:
    """Prefix of this process's Kafka client ids: ``[kafka] client_id``, or one per node."""
    return cfg.kafka.client_id if cfg.kafka.client_id != "edge" else f"edge-{cfg.node.id}"


def server_specs(cfg: Config, store: RecordStore | None) -> list[ActorSpec]:
    """The distributed server's actors that ``[server]`` turns on, data backwards: the sink
    first, then the stream decoder, then what takes MQTT in (receiver, bridge). ``store`` is
    the receiver's Kafka store (None when the receiver is off)."""
    from edge.actors.bridge import DirectBridge
    from edge.actors.sink import TimescaleSink
    from edge.actors.stream_decoder import StreamDecoder

    node, on = cfg.node.id, cfg.server
    base = kafka_client_base(cfg)
    specs: list[ActorSpec] = []
    if on.sink:
        specs.append(ActorSpec("sink", lambda ctx: TimescaleSink.start(
            ctx, cfg.kafka, cfg.postgres, cfg.sink, f"{base}-sink")))
    if on.decoder:
        specs.append(ActorSpec("stream_decoder", lambda ctx: StreamDecoder.start(
            ctx, cfg.kafka, cfg.postgres, cfg.stream_decoder, f"{base}-decoder")))
    if on.receiver:
        assert store is not None
        specs += receiver_specs(cfg, store)
    if on.bridge:
        client_id = f"{cfg.central_broker.client_id or f'edge-{node}'}-bridge"
        specs.append(ActorSpec("bridge", lambda ctx: DirectBridge.start(
            ctx, cfg.central_broker, cfg.kafka, cfg.bridge, client_id)))
    if not specs:
        raise ConfigError([ConfigProblem("server", "every server actor is turned off")])
    return specs
