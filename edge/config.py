"""Typed configuration from TOML.

Every section is a frozen dataclass with defaults. ``load()`` reads a file with
``tomllib``, checks it against the dataclasses and reports *every* problem at once, each
with its dotted path (``metrics.port``) and a "did you mean" for near-miss keys. Secrets
are ``Secret`` values: they print as ``********`` everywhere (logs, ``repr``, ``edge
config show``) and can be overridden from the environment as ``EDGE_<SECTION>_<KEY>``
(for example ``EDGE_POSTGRES_PASSWORD``), so they need not live in the file at all.

Later features add their sections here; the loader itself is generic over the
dataclasses and needs no change for that.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge.errors import ConfigError, ConfigProblem

MASK = "********"


class Secret:
    """A string that never prints. Call ``reveal()`` where the real value is needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK if self._value else ''!r})"

    def __str__(self) -> str:
        return MASK if self._value else ""


def _check_port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"must be a TCP port (1-65535), got {value}"


def _check_positive(value: float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value}"


def _check_non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value}"


def _check_non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _checked(default: Any, check: Callable[[Any], str | None]) -> Any:
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Who this process is. ``id`` names the gateway in topics (``edge/<id>/up``)."""

    id: str = _checked("edge-1", _check_non_empty)
    role: Literal["gateway", "server"] = "gateway"


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["kv", "json"] = "kv"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus exposition and ``/healthz``; loopback by default."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = _checked(9108, _check_port)


@dataclass(frozen=True, slots=True)
class SupervisionConfig:
    """Restart policy: at most ``max_restarts`` per actor within ``window_s``, then exit."""

    max_restarts: int = _checked(5, _check_positive)
    window_s: float = _checked(60.0, _check_positive)
    backoff_initial_s: float = _checked(0.5, _check_non_negative)
    backoff_max_s: float = _checked(30.0, _check_non_negative)
    start_timeout_s: float = _checked(10.0, _check_positive)
    stop_timeout_s: float = _checked(10.0, _check_positive)


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """One MQTT broker connection (the site broker on a gateway, the central one upstream)."""

    host: str = "127.0.0.1"
    port: int = _checked(1883, _check_port)
    client_id: str = ""
    username: str = ""
    password: Secret = field(default_factory=Secret)
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive_s: int = _checked(30, _check_positive)


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """Kafka clients of the server, and the names of its topics (see codecs/stream.py)."""

    bootstrap_servers: tuple[str, ...] = ("127.0.0.1:9092",)
    client_id: str = "edge"
    tls: bool = False
    ca_file: str = ""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str = ""
    sasl_password: Secret = field(default_factory=Secret)
    linger_ms: int = _checked(5, _check_non_negative)
    compression: Literal["none", "gzip", "lz4", "zstd"] = "none"
    # A consumer that dies is replaced after this long. Long batches (a refused batch written
    # record by record) must stay well inside it.
    session_timeout_ms: int = _checked(30_000, _check_positive)
    partitions: int = _checked(6, _check_positive)  # topics the server creates at start
    replication_factor: int = _checked(1, _check_positive)
    decoded_topic: str = _checked("decoded_iot_data", _check_non_empty)
    raw_topic: str = _checked("raw_iot_data", _check_non_empty)
    events_topic: str = _checked("device_events", _check_non_empty)


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """Connection settings; the password may come from ``EDGE_POSTGRES_PASSWORD``."""

    host: str = "127.0.0.1"
    port: int = _checked(5432, _check_port)
    dbname: str = "edge"
    user: str = "edge"
    password: Secret = field(default_factory=Secret)


DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """[source] The gateway's subscription on the site broker (``[site_broker]``)."""

    topics: tuple[str, ...] = (
        "cmnd/#", "stat/#", "tele/#", "iot/+/telemetry", "iot/+/hello", "iot/+/status",
        "iot/+/command/ack", "iot/+/ota/status", "homelab/#",
    )
    session_expiry_s: int = _checked(7 * DAY_S, _check_positive)
    receive_maximum: int = _checked(1000, _check_positive)
    batch_max: int = _checked(500, _check_positive)
    batch_ms: float = _checked(5.0, _check_positive)
    ack_timeout_s: float = _checked(30.0, _check_positive)
    reconnect_min_s: float = _checked(0.5, _check_positive)
    reconnect_max_s: float = _checked(30.0, _check_positive)


@dataclass(frozen=True, slots=True)
class DecoderConfig:
    """[decoder] ``registry``: the device registry file (see fixtures/registry.toml).
    ``processes``: 0 decodes on the decoder actor's thread, in the gateway's process (the
    smallest footprint); N >= 1 decodes in N separate processes (edge/decode_pool.py), so
    decoding does not share the GIL with paho: more ingest, and more memory (measured: one
    process and multiprocessing's resource tracker, 33.5 MB)."""

    registry: str = "/etc/edge/registry.toml"
    processes: int = _checked(0, _check_non_negative)


@dataclass(frozen=True, slots=True)
class BufferConfig:
    """[buffer] SQLite store-and-forward.

    durability: ``power-safe`` (synchronous=FULL: a committed, acknowledged message
    survives a power cut) or ``crash-safe`` (synchronous=NORMAL: survives a crash of the
    process, but a power cut may lose the last commits, which the site broker was
    already told were safe).
    policy when ``quota_bytes`` is reached: ``reject`` (stop acking the site broker, which
    keeps the messages: back-pressure) or ``drop-oldest`` (delete the oldest telemetry,
    count it, send a gap record upstream; rows the uplink has in flight are never dropped,
    so the quota can be exceeded by its window). ``ttl_s`` > 0 also drops telemetry older
    than that (by wall clock, which jumps on a Pi at boot: off by default).
    """

    path: str = "/var/lib/edge/buffer.db"
    durability: Literal["power-safe", "crash-safe"] = "power-safe"
    quota_bytes: int = _checked(1024**3, _check_positive)
    policy: Literal["reject", "drop-oldest"] = "reject"
    ttl_s: float = _checked(0.0, _check_non_negative)  # 0: off


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """[uplink] Batches to the central broker (``[central_broker]``) on edge/<node.id>/up,
    or, with ``mode = "local"`` (a single-node site), to an in-process receiver writing
    the single-node store at ``store_path``."""

    mode: Literal["mqtt", "local"] = "mqtt"
    store_path: str = "/var/lib/edge/store.db"
    batch_records: int = _checked(500, _check_positive)
    window: int = _checked(16, _check_positive)
    confirm_timeout_s: float = _checked(15.0, _check_positive)
    max_records_per_s: float = _checked(0.0, _check_non_negative)  # 0: no bound
    heartbeat_s: float = _checked(30.0, _check_positive)
    compress: bool = False
    session_expiry_s: int = _checked(7 * DAY_S, _check_positive)


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    """[commands] Downlink commands: stored here, delivered to online devices before
    their deadline. A device is offline after ``offline_after_s`` without a message
    (protocols.md: 2 x max(send interval, hello interval))."""

    path: str = "/var/lib/edge/commands.db"
    offline_after_s: float = _checked(60.0, _check_positive)


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """[receiver] The server's end of the uplink: shared subscription, single-node store."""

    share_group: str = "edge-receivers"
    store_path: str = "/var/lib/edge/store.db"
    durability: Literal["power-safe", "crash-safe"] = "power-safe"


def _check_mappings(value: tuple[str, ...]) -> str | None:
    for item in value:
        filt, arrow, topic = item.partition("->")
        if not arrow or not filt.strip() or not topic.strip():
            return f'each mapping is "<mqtt topic filter> -> <kafka topic>", got {item!r}'
    return None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Which server actors this process runs; a deployment can split them over processes."""

    receiver: bool = True
    bridge: bool = True
    decoder: bool = True
    sink: bool = True


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """Devices publishing straight to the central broker: MQTT topic filter -> Kafka topic."""

    mappings: tuple[str, ...] = _checked((
        "cmnd/# -> raw_iot_data",
        "stat/# -> raw_iot_data",
        "tele/# -> raw_iot_data",
        "iot/# -> raw_iot_data",
        "homelab/energy/# -> homelab.energy",
        "homelab/heatpump/# -> homelab.heatpump",
        "homelab/temperature/# -> homelab.temperature",
    ), _check_mappings)
    share_group: str = "edge-bridges"  # "" for a plain (unshared) subscription
    session_expiry_s: int = _checked(7 * 86_400, _check_positive)
    receive_maximum: int = _checked(1000, _check_positive)


@dataclass(frozen=True, slots=True)
class StreamDecoderConfig:
    """The server's decoder: raw topics -> decoded_iot_data, with the registry in PostgreSQL."""

    group: str = "edge-decoder"
    topics: tuple[str, ...] = ("raw_iot_data", "homelab.energy", "homelab.heatpump",
                               "homelab.temperature")
    registry_refresh_s: float = _checked(30.0, _check_positive)
    batch_max: int = _checked(2000, _check_positive)


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """decoded_iot_data and device_events -> PostgreSQL/TimescaleDB. ``writers``: batches
    written at once, each in its own transaction on its own connection (offsets are still
    committed in order); 1 writes one batch at a time."""

    group: str = "edge-sink"
    batch_rows: int = _checked(10_000, _check_positive)
    batch_ms: float = _checked(500.0, _check_positive)
    writers: int = _checked(2, _check_positive)
    max_attempts: int = _checked(3, _check_positive)
    retry_initial_s: float = _checked(0.5, _check_positive)
    retry_max_s: float = _checked(15.0, _check_positive)


@dataclass(frozen=True, slots=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)
    site_broker: MqttConfig = field(default_factory=MqttConfig)
    central_broker: MqttConfig = field(default_factory=MqttConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    postgres: PostgresConfig = field(default_factory=PostgresConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    receiver: ReceiverConfig = field(default_factory=ReceiverConfig)
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    stream_decoder: StreamDecoderConfig = field(default_factory=StreamDecoderConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)


ENV_PREFIX = "EDGE_"


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and check a TOML config file; raise ``ConfigError`` listing every problem."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigProblem("", f"cannot read file: {exc.strerror}")], source) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem("", f"not UTF-8 text: {exc}")], source) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem("", f"not valid TOML: {exc}")], source) from exc
    return from_mapping(data, env=os.environ if env is None else env, source=source)


def from_mapping(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None, source: str | None = None
) -> Config:
    """Build a ``Config`` from parsed TOML; environment overrides apply to secrets only."""
    problems: list[ConfigProblem] = []
    config = _build(Config, data, "", problems, env or {})
    if problems:
        raise ConfigError(problems, source)
    return config


def _build(
    cls: type, data: Any, path: str, problems: list[ConfigProblem], env: Mapping[str, str]
) -> Any:
    if not isinstance(data, Mapping):
        problems.append(ConfigProblem(path, f"expected a table, got {_describe(data)}"))
        data = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            known = ", ".join(sorted(fields))
            problems.append(ConfigProblem(_join(path, key), f"unknown key{hint} (known: {known})"))
    values: dict[str, Any] = {}
    for name, f in fields.items():
        here = _join(path, name)
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, data.get(name, {}), here, problems, env)
            continue
        env_key = ENV_PREFIX + here.replace(".", "_").upper()
        if hint is Secret and env_key in env:
            values[name] = Secret(env[env_key])
            continue
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(ConfigProblem(here, "missing value"))
            continue
        value, error = _coerce(hint, data[name])
        if error:
            problems.append(ConfigProblem(here, error))
            continue
        check = f.metadata.get("check")
        if check and (message := check(value)):
            problems.append(ConfigProblem(here, message))
            continue
        values[name] = value
    try:
        return cls(**values)
    except TypeError:
        # Only reachable when a required value was missing: already reported above.
        return None


def _coerce(hint: Any, value: Any) -> tuple[Any, str | None]:
    origin = typing.get_origin(hint)
    if hint is Secret:
        if isinstance(value, str):
            return Secret(value), None
        return None, f"expected a string, got {_describe(value)}"
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value, None
        near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint_text = f"; did you mean {near[0]!r}?" if near else ""
        allowed = ", ".join(repr(c) for c in choices)
        return None, f"must be one of {allowed}, got {value!r}{hint_text}"
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(args[0], value)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list):
            return None, f"expected a list, got {_describe(value)}"
        items = []
        for i, v in enumerate(value):
            coerced, error = _coerce(item, v)
            if error:
                return None, f"item {i}: {error}"
            items.append(coerced)
        return tuple(items), None
    if hint is bool:
        return (value, None) if isinstance(value, bool) else (None, _expected("a boolean", value))
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (value, None) if ok else (None, _expected("an integer", value))
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return (float(value), None) if ok else (None, _expected("a number", value))
    if hint is str:
        return (value, None) if isinstance(value, str) else (None, _expected("a string", value))
    raise TypeError(f"config loader cannot handle type {hint!r}")  # a bug in a section


def _expected(what: str, value: Any) -> str:
    return f"expected {what}, got {_describe(value)}"


def _describe(value: Any) -> str:
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list"}
    kind = "table" if isinstance(value, Mapping) else kinds.get(type(value), type(value).__name__)
    return f"{kind} {value!r}" if not isinstance(value, Mapping | list) else kind


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def dump(config: Any) -> str:
    """Render a config as TOML, with secrets masked. Used by ``edge config show``."""
    lines: list[str] = []
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        lines.append(f"[{f.name}]")
        for sf in dataclasses.fields(section):
            lines.append(f"{sf.name} = {_toml_value(getattr(section, sf.name))}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, Secret):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
