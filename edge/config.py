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
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge.errors import ConfigError, ConfigProblem
from edge.market.battery import REFERENCE_BATTERY, parse_battery
from edge.market.flows import DEFAULT_NTC_MW, parse_ntc

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


_TOPIC_LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def _check_topic_level(value: str) -> str | None:
    """An id that is one MQTT topic level everywhere it goes (edge/<id>/up) and a Kafka
    client id: no "/", "+", "#", "$" or spaces, at most 64 characters."""
    if _TOPIC_LEVEL.match(value):
        return None
    return (f"must be 1 to 64 letters, digits, '-', '_' or '.' (one MQTT topic level), starting "
            f"with a letter or digit, got {value!r}")


def _check_group(value: str) -> str | None:
    return None if value == "" or _TOPIC_LEVEL.match(value) else _check_topic_level(value)


def _check_kafka_topic(value: str) -> str | None:
    return None if _KAFKA_TOPIC.match(value) else \
        f"must be a Kafka topic name (letters, digits, '.', '_', '-'; at most 200), got {value!r}"


def _check_client_id(value: str) -> str | None:
    if "\x00" in value or len(value.encode()) > 256 or any(c in value for c in "/+#"):
        return f"must be at most 256 bytes without NUL, '/', '+' or '#', got {value[:80]!r}"
    return None


def _check_path(value: str) -> str | None:
    if not value.strip() or "\x00" in value:
        return "must be a file path"
    if value.endswith("/"):
        return f"must name a file, not a directory: {value!r}"
    return None


def _check_receive_maximum(value: int) -> str | None:
    return None if 1 <= value <= 65_535 else f"must be 1 to 65535 (the MQTT field), got {value}"


def _check_session_expiry(value: int) -> str | None:
    return None if 1 <= value <= 2**32 - 1 else f"must be 1 to 4294967295 s (the MQTT field), got {value}"


def _checked(default: Any, check: Callable[[Any], str | None]) -> Any:
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Who this process is. ``id`` names the gateway in topics (``edge/<id>/up``)."""

    id: str = _checked("edge-1", _check_topic_level)
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
    # An actor busy with one message for longer than this makes /healthz degraded (and is
    # logged once): a database or broker that stopped answering, seen from outside.
    stall_s: float = _checked(30.0, _check_positive)


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """One MQTT broker connection (the site broker on a gateway, the central one upstream)."""

    host: str = "127.0.0.1"
    port: int = _checked(1883, _check_port)
    client_id: str = _checked("", _check_client_id)
    username: str = ""
    password: Secret = field(default_factory=Secret)
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive_s: int = _checked(30, lambda v: None if 1 <= v <= 65_535 else
                                f"must be 1 to 65535 (the MQTT field), got {v}")
    # Reconnect backoff: paho doubles the wait from about reconnect_min_s (jittered up to
    # twice that) to reconnect_max_s while the broker is away.
    reconnect_min_s: float = _checked(0.5, _check_positive)
    reconnect_max_s: float = _checked(10.0, _check_positive)


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
    # How long a client waits for the first answer of a broker: `edge server` exits 69 with
    # one line when Kafka is not reachable within it at start.
    connect_timeout_s: float = _checked(30.0, _check_positive)
    # max.message.bytes of the topics the server creates (Kafka's default, 1 MiB, at least):
    # every message edge produces is below half of it (edge.codecs.stream.MAX_MESSAGE).
    max_message_bytes: int = _checked(1024 * 1024, lambda v: None if 1024 * 1024 <= v <= 64 * 1024**2
                                      else f"must be 1048576 to 67108864 bytes, got {v}")
    compression: Literal["none", "gzip", "lz4", "zstd"] = "none"
    # A consumer that dies is replaced after this long. Long batches (a refused batch written
    # record by record) must stay well inside it.
    session_timeout_ms: int = _checked(30_000, _check_positive)
    partitions: int = _checked(6, _check_positive)  # topics the server creates at start
    replication_factor: int = _checked(1, _check_positive)
    decoded_topic: str = _checked("decoded_iot_data", _check_kafka_topic)
    raw_topic: str = _checked("raw_iot_data", _check_kafka_topic)
    events_topic: str = _checked("device_events", _check_kafka_topic)


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """Connection settings; the password may come from ``EDGE_POSTGRES_PASSWORD``."""

    host: str = "127.0.0.1"
    port: int = _checked(5432, _check_port)
    dbname: str = "edge"
    user: str = "edge"
    password: Secret = field(default_factory=Secret)
    connect_timeout_s: int = _checked(10, _check_positive)
    # The server's statements are cancelled after this long (a lock held for good, a
    # database that stopped making progress): the write is retried, never waited on forever.
    # TCP keepalives and a user timeout also end a connection whose peer vanished.
    statement_timeout_s: float = _checked(120.0, _check_positive)
    # Where measurements go, decided at a database's first migration and kept: "auto"
    # (TimescaleDB when the server preloads it, else plain PostgreSQL), "timescaledb" or
    # "postgres" (docs/operations.md, storage).
    storage: Literal["auto", "timescaledb", "postgres"] = "auto"


DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """[source] The gateway's subscription on the site broker (``[site_broker]``)."""

    topics: tuple[str, ...] = (
        "cmnd/#", "stat/#", "tele/#", "iot/+/telemetry", "iot/+/hello", "iot/+/status",
        "iot/+/command/ack", "iot/+/ota/status", "homelab/#",
    )
    session_expiry_s: int = _checked(7 * DAY_S, _check_session_expiry)
    receive_maximum: int = _checked(1000, _check_receive_maximum)
    batch_max: int = _checked(500, _check_positive)
    batch_bytes: int = _checked(1024 * 1024, _check_positive)
    batch_ms: float = _checked(5.0, _check_positive)
    ack_timeout_s: float = _checked(30.0, _check_positive)
    # A full buffer (policy reject): the source reads nothing until the buffer has room,
    # or at the latest after a backoff doubling from 1 s to this.
    full_backoff_max_s: float = _checked(30.0, _check_positive)


@dataclass(frozen=True, slots=True)
class DecoderConfig:
    """[decoder] ``registry``: the device registry file (see fixtures/registry.toml).
    ``processes``: 0 decodes on the decoder actor's thread, in the gateway's process (the
    smallest footprint); N >= 1 decodes in N separate processes (edge/io/decode_pool.py), so
    decoding does not share the GIL with paho: more ingest, and more memory (measured: one
    process and multiprocessing's resource tracker, 33.5 MB)."""

    registry: str = "/etc/edge/registry.toml"
    processes: int = _checked(0, _check_non_negative)
    # The plausibility window of a device's time around when the gateway received the
    # message (0: open on that side). Outside it a record is quarantined implausible_time:
    # a meter without a clock sending 1970, or one whose clock ran off. Mind the gateway's
    # own clock: a Pi without RTC may run behind until NTP sets it.
    max_age_s: float = _checked(366 * DAY_S, _check_non_negative)
    max_ahead_s: float = _checked(DAY_S, _check_non_negative)


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
    than that (off by default). Ages are measured on a steady clock: a step of the system
    clock (NTP after a Pi booted on a stale time, an operator) neither expires the backlog
    nor keeps it longer; a step while the gateway is stopped counts as time passed.
    """

    path: str = _checked("/var/lib/edge/buffer.db", _check_path)
    durability: Literal["power-safe", "crash-safe"] = "power-safe"
    quota_bytes: int = _checked(1024**3, _check_positive)
    policy: Literal["reject", "drop-oldest"] = "reject"
    ttl_s: float = _checked(0.0, _check_non_negative)  # 0: off
    # A file of this size beside the buffer, held while twice as much is free and given back
    # when the disk is full, so confirmed rows can still be deleted (0: none).
    reserve_bytes: int = _checked(8 * 1024 * 1024, _check_non_negative)


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """[uplink] Batches to the central broker (``[central_broker]``) on edge/<node.id>/up,
    or, with ``mode = "local"`` (a single-node site), to an in-process receiver writing
    the single-node store at ``store_path``."""

    mode: Literal["mqtt", "local"] = "mqtt"
    store_path: str = _checked("/var/lib/edge/store.db", _check_path)
    batch_records: int = _checked(500, _check_positive)
    # Bytes of records in one frame at most: below the central broker's packet limit and
    # Kafka's message size (a frame the server refuses is kept whole in a dead letter).
    max_frame_bytes: int = _checked(512 * 1024, lambda v: None if 64 * 1024 <= v <= 4 * 1024**2 else
                                    f"must be 65536 to 4194304 bytes, got {v}")
    window: int = _checked(16, _check_positive)
    confirm_timeout_s: float = _checked(15.0, _check_positive)
    max_records_per_s: float = _checked(0.0, _check_non_negative)  # 0: no bound
    heartbeat_s: float = _checked(30.0, _check_positive)
    compress: bool = False
    session_expiry_s: int = _checked(7 * DAY_S, _check_session_expiry)


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    """[commands] Downlink commands: stored here, delivered to online devices before
    their deadline. A device is offline after ``offline_after_s`` without a message
    (docs/protocols.md, "Device presence": 2 x max(send interval, hello interval))."""

    path: str = _checked("/var/lib/edge/commands.db", _check_path)
    offline_after_s: float = _checked(60.0, _check_positive)


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """[receiver] The server's end of the uplink: shared subscription, single-node store."""

    share_group: str = _checked("edge-receivers", _check_topic_level)
    store_path: str = _checked("/var/lib/edge/store.db", _check_path)
    durability: Literal["power-safe", "crash-safe"] = "power-safe"


def _check_mappings(value: tuple[str, ...]) -> str | None:
    for item in value:
        filt, arrow, topic = item.partition("->")
        if not arrow or not filt.strip() or not topic.strip():
            return f'each mapping is "<mqtt topic filter> -> <kafka topic>", got {item!r}'
        if problem := _check_kafka_topic(topic.strip()):
            return f"{item!r}: the Kafka topic {problem}"
    return None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Which server actors this process runs; a deployment can split them over processes."""

    receiver: bool = True
    bridge: bool = True
    decoder: bool = True
    sink: bool = True
    market: bool = False  # fetches from the internet (or [market] base_url): turned on where wanted
    commands: bool = False  # device_commands -> edge/<gateway>/down on the central broker


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
    share_group: str = _checked("edge-bridges", _check_group)  # "" for a plain (unshared) subscription
    session_expiry_s: int = _checked(7 * 86_400, _check_session_expiry)
    receive_maximum: int = _checked(1000, _check_receive_maximum)


@dataclass(frozen=True, slots=True)
class StreamDecoderConfig:
    """The server's decoder: raw topics -> decoded_iot_data, with the registry in PostgreSQL."""

    group: str = _checked("edge-decoder", _check_topic_level)
    topics: tuple[str, ...] = ("raw_iot_data", "homelab.energy", "homelab.heatpump",
                               "homelab.temperature")
    registry_refresh_s: float = _checked(30.0, _check_positive)
    batch_max: int = _checked(2000, _check_positive)
    max_age_s: float = _checked(366 * DAY_S, _check_non_negative)  # as [decoder]'s
    max_ahead_s: float = _checked(DAY_S, _check_non_negative)


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """decoded_iot_data and device_events -> PostgreSQL/TimescaleDB. ``writers``: batches
    written at once, each in its own transaction on its own connection (offsets are still
    committed in order); 1 writes one batch at a time."""

    group: str = _checked("edge-sink", _check_topic_level)
    batch_rows: int = _checked(10_000, _check_positive)
    batch_ms: float = _checked(500.0, _check_positive)
    writers: int = _checked(2, _check_positive)
    max_attempts: int = _checked(3, _check_positive)
    retry_initial_s: float = _checked(0.5, _check_positive)
    retry_max_s: float = _checked(15.0, _check_positive)


def _check_battery(value: str) -> str | None:
    try:
        parse_battery(value)
    except ValueError as exc:
        return str(exc)
    return None


def _check_ntc(value: tuple[str, ...]) -> str | None:
    try:
        parse_ntc(value)
    except ValueError as exc:
        return str(exc)
    return None


def _check_clock_time(value: str) -> str | None:
    hours, sep, minutes = value.partition(":")
    ok = sep and hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60
    return None if ok else f"must be a time of day HH:MM (Madrid), got {value!r}"


def _check_series(value: tuple[str, ...]) -> str | None:
    unknown = [v for v in value if v not in ("spot", "pvpc")]
    return f"series are spot and pvpc, got {unknown}" if unknown or not value else None


@dataclass(frozen=True, slots=True)
class MarketConfig:
    """The market actor (docs/market.md): REData prices and cross-border flows for one zone,
    fetched every ``interval_s`` and at ``day_ahead_at`` (Madrid time, when the next day is
    published), the last ``backfill_days`` days kept whole; alerts to ``alerts_topic``."""

    base_url: str = _checked("https://apidatos.ree.es", _check_non_empty)
    zone: str = _checked("BZN|ES", _check_non_empty)
    series: tuple[str, ...] = _checked(("spot", "pvpc"), _check_series)
    alert_series: Literal["spot", "pvpc"] = "spot"
    flows: bool = True
    interval_s: float = _checked(3600.0, _check_positive)
    day_ahead_at: str = _checked("14:00", _check_clock_time)
    backfill_days: int = _checked(7, lambda v: None if 1 <= v <= 366 else f"must be 1 to 366 days, got {v}")
    timeout_s: float = _checked(10.0, _check_positive)
    attempts: int = _checked(4, _check_positive)
    retry_initial_s: float = _checked(30.0, _check_positive)  # after a failed round, doubling to interval_s
    high_eur_per_mwh: float = 120.0
    arbitrage_min_profit_eur: float = _checked(1.0, _check_non_negative)
    battery: str = _checked(REFERENCE_BATTERY, _check_battery)
    decoupling_percent: float = _checked(90.0, _check_positive)
    ntc_mw: tuple[str, ...] = _checked(DEFAULT_NTC_MW, _check_ntc)
    alerts_topic: str = _checked("market-alerts", _check_kafka_topic)


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    """The server's command actor (docs/commands.md): ``device_commands`` polled every
    ``poll_s``, up to ``batch`` commands a poll, each acknowledged by the central broker
    within ``publish_timeout_s``; a sent or delivered command unanswered ``answer_grace_s``
    after its deadline is closed. With ``setpoints_s``, the registry's assets get the
    market's setpoints (edge/market/setpoints.py) that often."""

    poll_s: float = _checked(1.0, _check_positive)
    batch: int = _checked(200, _check_positive)
    publish_timeout_s: float = _checked(5.0, _check_positive)
    answer_grace_s: float = _checked(300.0, _check_non_negative)
    setpoints_s: float = _checked(0.0, _check_non_negative)  # market setpoints every S seconds; 0: off
    zone: str = _checked("BZN|ES", _check_non_empty)  # whose prices the setpoints follow
    series: Literal["spot", "pvpc"] = "spot"


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
    market: MarketConfig = field(default_factory=MarketConfig)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)


ENV_PREFIX = "EDGE_"
# Numbers beyond this are refused: a duration of 1e300 s (or inf) overflows the waits that
# use it; ten years is longer than anything here needs.
MAX_NUMBER = 10 * 366 * 86_400


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
        if ok and abs(value) > 2**62:
            return None, f"must be at most {2**62}, got {value}"
        return (value, None) if ok else (None, _expected("an integer", value))
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            return None, _expected("a number", value)
        if not math.isfinite(value) or abs(value) > MAX_NUMBER:
            return None, f"must be a finite number of at most {MAX_NUMBER:g}, got {value!r}"
        return float(value), None
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
