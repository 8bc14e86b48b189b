"""The device registry: device types, templates with data points, controllers with
connectors and pins, and topic mappings. One model for the gateway (a TOML file) and the
server (loaded into PostgreSQL by ``edge registry load``): the dataclasses and the loader
live here and nowhere else.

A DataPoint says how to cut one value out of a sensor's bytes, as the field systems
define it: ``offset`` counts from the first byte of the data (a Modbus header is *not*
skipped), ``length`` bytes, ``encoding``, ``decimals`` (value = raw / 10**decimals),
``prepend``/``append`` (the unit, stripped), ``whole_number`` (round the value).

``loads(text)`` parses and checks a registry and raises ``RegistryError`` listing every
problem with its path. It does no I/O: callers read the file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.codecs.errors import RegistryError
from edge.codecs.limits import MAX_PAYLOAD, TEXT_BYTES, text_problem

ENCODINGS = {  # name -> (struct code, size); Bits reads an unsigned field of `length` bytes
    "Int8": ("b", 1), "Uint8": ("B", 1), "Int16": ("h", 2), "Uint16": ("H", 2),
    "Int32": ("i", 4), "Uint32": ("I", 4), "Float32": ("f", 4), "Bits": (None, None),
}
BYTE_ORDERS = ("big", "little", "word-swapped")
FRAMINGS = ("none", "modbus-rtu")
PAYLOADS = ("hex", "binary")
CODECS = ("f2", "v2", "homelab", "asset")
MODBUS_HEADER = 3  # address, function, byte count
_MAC = re.compile(r"^[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class DataPoint:
    label: str
    encoding: str
    offset: int
    length: int
    decimals: int = 0
    prepend: str = ""
    append: str = ""
    whole_number: bool = False
    data_format: str = "number"
    byte_order: str = "big"
    bit_offset: int = 0
    bit_length: int = 0
    enum: Mapping[int, str] = field(default_factory=dict)
    icon: str = ""

    @property
    def unit(self) -> str | None:
        return (self.append.strip() or self.prepend.strip()) or None


@dataclass(frozen=True, slots=True)
class DeviceType:
    name: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class DeviceTemplate:
    name: str
    device_type: str
    data_points: tuple[DataPoint, ...]
    framing: str = "none"
    payload: str = "hex"
    modbus_address: int = 1
    modbus_function: int = 3


@dataclass(frozen=True, slots=True)
class Pin:
    position: int
    device: str
    template: str
    serial: str = ""


@dataclass(frozen=True, slots=True)
class Connector:
    number: int
    type: str = "RS-485"
    pins: tuple[Pin, ...] = ()


@dataclass(frozen=True, slots=True)
class Controller:
    mac: str
    name: str
    template: str = "F2 Smart Controller"
    ip: str = ""
    pcb_version: str = ""
    connectors: tuple[Connector, ...] = ()


@dataclass(frozen=True, slots=True)
class TopicMapping:
    filter: str
    codec: str


ASSET_KINDS = ("battery", "pv")


@dataclass(frozen=True, slots=True)
class Asset:
    """Something the server may command for the market (docs/commands.md): a battery (its
    limits for the planner, the telemetry label that reports its state of charge) or a PV
    inverter (curtailed while prices are negative). Quantities in kW, kWh, €/MWh."""

    id: str
    kind: str  # battery | pv
    device: str  # the device that takes its commands and reports its telemetry
    gateway: str = ""  # "" : the gateway that last heard the device
    capacity_kwh: float = 0.0
    charge_kw: float = 0.0
    discharge_kw: float = 0.0
    efficiency: float = 1.0  # round trip
    soc_min_kwh: float = 0.0
    soc_max_kwh: float = 0.0
    cost_eur_per_mwh: float = 0.0  # degradation per MWh sold
    soc_label: str = "soc"  # the telemetry label of its state of charge ...
    soc_unit: str = "%"  # ... in percent of capacity_kwh, or kWh
    max_kw: float = 0.0  # a PV inverter's rating
    cooldown_s: float = 600.0  # at least this long between two setpoints that differ


@dataclass(frozen=True, slots=True)
class Registry:
    device_types: tuple[DeviceType, ...] = ()
    templates: tuple[DeviceTemplate, ...] = ()
    controllers: tuple[Controller, ...] = ()
    topics: tuple[TopicMapping, ...] = ()
    assets: tuple[Asset, ...] = ()

    def template(self, name: str) -> DeviceTemplate:
        for t in self.templates:
            if t.name == name:
                return t
        raise RegistryError(f"no template named {name!r}", reason="unknown_template")

    pin_index: dict[tuple[str, int, int], Pin] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        index = {
            (c.mac, conn.number, p.position): p
            for c in self.controllers for conn in c.connectors for p in conn.pins
        }
        object.__setattr__(self, "pin_index", index)

    def pin(self, mac: str, connector: int, position: int) -> Pin | None:
        """The sensor at (controller MAC, connector number, pin position), if registered."""
        return self.pin_index.get((mac.lower(), connector, position))


def loads(text: str) -> Registry:
    """Parse and check a registry; ``RegistryError`` lists every problem found."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"registry is not valid TOML: {exc}") from exc
    loader = _Loader()
    registry = loader.registry(doc)
    if loader.problems:
        raise RegistryError(
            f"{len(loader.problems)} registry problem(s): " + "; ".join(loader.problems)
        )
    return registry


class _Loader:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def get(self, table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: str,
            default: Any = ...) -> Any:
        if key not in table:
            if default is ...:
                self.fail(f"{path}.{key}", "missing value")
            return None if default is ... else default
        value = table[key]
        if isinstance(value, bool) and kind is not bool:
            ok = False
        else:
            ok = isinstance(value, kind)
        if not ok:
            self.fail(f"{path}.{key}", f"expected {getattr(kind, '__name__', kind)}, got {value!r}")
            return None if default is ... else default
        return value

    def known(self, table: Mapping[str, Any], keys: set[str], path: str) -> None:
        for key in table:
            if key not in keys:
                self.fail(f"{path}.{key}", f"unknown key (known: {', '.join(sorted(keys))})")

    def tables(self, doc: Mapping[str, Any], key: str, path: str) -> list[tuple[str, Mapping[str, Any]]]:
        """The tables of an array of tables (``[[key]]``), each with its path; anything
        else there is a problem, never an exception."""
        items = doc.get(key, [])
        here = f"{path}.{key}" if path else key
        if not isinstance(items, list):
            self.fail(here, f"expected an array of tables ([[{key}]]), got {type(items).__name__}")
            return []
        out = []
        for i, item in enumerate(items):
            if isinstance(item, dict):
                out.append((f"{here}[{i}]", item))
            else:
                self.fail(f"{here}[{i}]", f"expected a table, got {type(item).__name__}")
        return out

    def int_in(self, table: Mapping[str, Any], key: str, path: str, low: int, high: int,
               default: Any = ...) -> int:
        value = self.get(table, key, int, path, default)
        if value is None:
            return low
        if not low <= value <= high:
            self.fail(f"{path}.{key}", f"must be {low} to {high}, got {value}")
            return low
        return value

    def text(self, value: str, path: str, field: str) -> str:
        problem = text_problem(value, TEXT_BYTES.get(field, 256))
        if problem is not None:
            self.fail(path, f"{field} {problem}")
        return value

    def registry(self, doc: Mapping[str, Any]) -> Registry:
        self.known(doc, {"device_types", "templates", "controllers", "topics", "assets"}, "registry")
        types = tuple(self.device_type(t, p) for p, t in self.tables(doc, "device_types", ""))
        templates = tuple(self.template(t, p) for p, t in self.tables(doc, "templates", ""))
        controllers = tuple(self.controller(c, p) for p, c in self.tables(doc, "controllers", ""))
        topics = tuple(self.topic(t, p) for p, t in self.tables(doc, "topics", ""))
        assets = tuple(self.asset(a, p) for p, a in self.tables(doc, "assets", ""))
        ids = [a.id for a in assets]
        for asset_id in sorted({x for x in ids if ids.count(x) > 1}):
            self.fail(f"assets[{asset_id}]", "asset id used twice")
        type_names = {t.name for t in types}
        template_names = {t.name for t in templates}
        for t in templates:
            if type_names and t.device_type not in type_names:
                self.fail(f"templates[{t.name}].device_type", f"unknown device type {t.device_type!r}")
        for c in controllers:
            for conn in c.connectors:
                for p in conn.pins:
                    if p.template not in template_names:
                        self.fail(f"controllers[{c.mac}].connectors[{conn.number}].pins[{p.position}]"
                                  ".template", f"unknown template {p.template!r}")
        return Registry(types, templates, controllers, topics, assets)

    def device_type(self, t: Mapping[str, Any], path: str) -> DeviceType:
        self.known(t, {"name", "description"}, path)
        return DeviceType(self.get(t, "name", str, path) or "?",
                          self.get(t, "description", str, path, ""))

    def template(self, t: Mapping[str, Any], path: str) -> DeviceTemplate:
        self.known(t, {"name", "device_type", "data_points", "framing", "payload",
                       "modbus_address", "modbus_function"}, path)
        name = self.get(t, "name", str, path) or "?"
        path = f"templates[{name}]"
        framing = self.get(t, "framing", str, path, "none")
        if framing not in FRAMINGS:
            self.fail(f"{path}.framing", f"must be one of {', '.join(FRAMINGS)}, got {framing!r}")
        payload = self.get(t, "payload", str, path, "hex")
        if payload not in PAYLOADS:
            self.fail(f"{path}.payload", f"must be one of {', '.join(PAYLOADS)}, got {payload!r}")
        points = tuple(self.data_point(dp, p, framing) for p, dp in self.tables(t, "data_points", path))
        labels = [p.label for p in points]
        for label in {x for x in labels if labels.count(x) > 1}:
            self.fail(f"{path}.data_points", f"label {label!r} is used twice")
        if not points:
            self.fail(f"{path}.data_points", "a template needs at least one data point")
        return DeviceTemplate(
            name, self.get(t, "device_type", str, path, "Sensor"), points, framing, payload,
            self.int_in(t, "modbus_address", path, 0, 255, 1),
            self.int_in(t, "modbus_function", path, 0, 255, 3),
        )

    def data_point(self, dp: Mapping[str, Any], path: str, framing: str) -> DataPoint:
        self.known(dp, {"label", "encoding", "offset", "length", "decimals", "prepend", "append",
                        "whole_number", "data_format", "byte_order", "bit_offset", "bit_length",
                        "enum", "icon"}, path)
        label = self.text(self.get(dp, "label", str, path) or "?", f"{path}.label", "label")
        encoding = self.get(dp, "encoding", str, path) or "Uint8"
        # A frame comes from one payload: nothing past MAX_PAYLOAD can ever be read.
        offset = self.int_in(dp, "offset", path, 0, MAX_PAYLOAD)
        length = self.int_in(dp, "length", path, 0, 8)
        decimals = self.get(dp, "decimals", int, path, 0)
        byte_order = self.get(dp, "byte_order", str, path, "big")
        bit_offset = self.get(dp, "bit_offset", int, path, 0)
        bit_length = self.get(dp, "bit_length", int, path, 0)
        enum_raw = self.get(dp, "enum", dict, path, {})
        for key in ("prepend", "append"):
            self.text(self.get(dp, key, str, path, ""), f"{path}.{key}", "unit")
        if encoding not in ENCODINGS:
            self.fail(f"{path}.encoding", f"must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
        else:
            size = ENCODINGS[encoding][1]
            if size is not None and length != size:
                self.fail(f"{path}.length", f"{encoding} is {size} bytes, length says {length}")
            if encoding == "Bits":
                if not 1 <= length <= 4:
                    self.fail(f"{path}.length", f"a bit field reads 1 to 4 bytes, got {length}")
                if bit_length < 1 or bit_offset < 0 or bit_offset + bit_length > 8 * length:
                    self.fail(f"{path}.bit_length", f"bits {bit_offset}+{bit_length} do not fit in "
                              f"{length} byte(s)")
        if framing == "modbus-rtu" and offset < MODBUS_HEADER:
            self.fail(f"{path}.offset", f"offset {offset} is inside the Modbus header (bytes 0-2)")
        if not 0 <= decimals <= 9:
            self.fail(f"{path}.decimals", f"must be 0 to 9, got {decimals}")
        if byte_order not in BYTE_ORDERS:
            self.fail(f"{path}.byte_order", f"must be one of {', '.join(BYTE_ORDERS)}, got {byte_order!r}")
        elif byte_order == "word-swapped" and length != 4:
            self.fail(f"{path}.byte_order", "word-swapped applies to 4-byte values only")
        enum: dict[int, str] = {}
        for key, name in enum_raw.items():
            try:
                enum[int(key)] = str(name)
            except ValueError:
                self.fail(f"{path}.enum.{key}", "enum keys are the raw integer values")
        return DataPoint(
            label, encoding, offset, length, decimals,
            self.get(dp, "prepend", str, path, ""), self.get(dp, "append", str, path, ""),
            self.get(dp, "whole_number", bool, path, False),
            self.get(dp, "data_format", str, path, "number"), byte_order, bit_offset, bit_length,
            enum, self.get(dp, "icon", str, path, ""),
        )

    def controller(self, c: Mapping[str, Any], path: str) -> Controller:
        self.known(c, {"mac", "name", "template", "ip", "pcb_version", "connectors"}, path)
        mac = (self.get(c, "mac", str, path) or "").lower()
        if not _MAC.match(mac):
            self.fail(f"{path}.mac", f"must be 12 hex digits without separators, got {mac!r}")
        path = f"controllers[{mac}]"
        connectors = []
        for cpath, conn in self.tables(c, "connectors", path):
            self.known(conn, {"number", "type", "pins"}, cpath)
            number = self.get(conn, "number", int, cpath) or 0
            if not 1 <= number <= 4:
                self.fail(f"{cpath}.number", f"must be 1 to 4, got {number}")
            pins = []
            for ppath, p in self.tables(conn, "pins", cpath):
                self.known(p, {"position", "device", "template", "serial"}, ppath)
                pins.append(Pin(self.int_in(p, "position", ppath, 0, 65_535),
                                self.get(p, "device", str, ppath) or "?",
                                self.get(p, "template", str, ppath) or "?",
                                self.get(p, "serial", str, ppath, "")))
            connectors.append(Connector(number, self.get(conn, "type", str, cpath, "RS-485"),
                                        tuple(pins)))
        return Controller(mac, self.get(c, "name", str, path, mac),
                          self.get(c, "template", str, path, "F2 Smart Controller"),
                          self.get(c, "ip", str, path, ""), self.get(c, "pcb_version", str, path, ""),
                          tuple(connectors))

    def topic(self, t: Mapping[str, Any], path: str) -> TopicMapping:
        self.known(t, {"filter", "codec"}, path)
        codec = self.get(t, "codec", str, path) or "?"
        if codec not in CODECS:
            self.fail(f"{path}.codec", f"must be one of {', '.join(CODECS)}, got {codec!r}")
        filt = self.get(t, "filter", str, path) or "#"
        levels = filt.split("/")
        if any(("#" in x and (x != "#" or i != len(levels) - 1)) or ("+" in x and x != "+")
               for i, x in enumerate(levels)) or text_problem(filt, 512):
            self.fail(f"{path}.filter", f"{filt!r} is not an MQTT topic filter")
        return TopicMapping(filt, codec)

    def number(self, table: Mapping[str, Any], key: str, path: str, low: float, high: float,
               default: Any = ...) -> float:
        value = self.get(table, key, (int, float), path, default)
        if value is None:
            return low
        if not (low <= value <= high):  # NaN fails too
            self.fail(f"{path}.{key}", f"must be {low:g} to {high:g}, got {value}")
            return low
        return float(value)

    def asset(self, a: Mapping[str, Any], path: str) -> Asset:
        kind = self.get(a, "kind", str, path) or "?"
        common = {"id", "kind", "device", "gateway"}
        battery = {"capacity_kwh", "charge_kw", "discharge_kw", "power_kw", "efficiency", "soc_min_kwh",
                   "soc_max_kwh", "cost_eur_per_mwh", "soc_label", "soc_unit", "cooldown_s"}
        self.known(a, common | (battery if kind == "battery" else {"max_kw", "cooldown_s"}), path)
        asset_id = self.text(self.get(a, "id", str, path) or "?", f"{path}.id", "device")
        path = f"assets[{asset_id}]"
        device = self.text(self.get(a, "device", str, path) or "?", f"{path}.device", "device")
        gateway = self.get(a, "gateway", str, path, "")
        if any(c in gateway for c in "/+#\x00"):
            self.fail(f"{path}.gateway", f"{gateway!r} is not a gateway id (one topic level)")
        cooldown = self.number(a, "cooldown_s", path, 0, 86_400, 600.0)
        if kind == "pv":
            return Asset(asset_id, kind, device, gateway, max_kw=self.number(a, "max_kw", path, 0, 1e6),
                         cooldown_s=cooldown)
        if kind != "battery":
            self.fail(f"{path}.kind", f"must be one of {', '.join(ASSET_KINDS)}, got {kind!r}")
            return Asset(asset_id, kind, device, gateway)
        capacity = self.number(a, "capacity_kwh", path, 0, 1e7)
        if capacity <= 0 and a.get("capacity_kwh") == 0:
            self.fail(f"{path}.capacity_kwh", "must be more than 0")
        power = a.get("power_kw")
        if power is not None and ("charge_kw" in a or "discharge_kw" in a):
            self.fail(f"{path}.power_kw", "give power_kw, or charge_kw and discharge_kw, not both")
        default_power = self.number(a, "power_kw", path, 0, 1e6) if power is not None else ...
        charge = self.number(a, "charge_kw", path, 0, 1e6, default_power)
        discharge = self.number(a, "discharge_kw", path, 0, 1e6, default_power)
        efficiency = self.number(a, "efficiency", path, 0, 1)
        if efficiency <= 0 and a.get("efficiency") == 0:
            self.fail(f"{path}.efficiency", "must be more than 0 (a round trip, up to 1)")
        soc_min = self.number(a, "soc_min_kwh", path, 0, 1e7, 0.0)
        soc_max = self.number(a, "soc_max_kwh", path, 0, 1e7, capacity)
        if not soc_min <= soc_max <= capacity:
            self.fail(f"{path}.soc_max_kwh", f"must hold soc_min_kwh ({soc_min:g}) <= soc_max_kwh ({soc_max:g}) "
                      f"<= capacity_kwh ({capacity:g})")
        unit = self.get(a, "soc_unit", str, path, "%")
        if unit not in ("%", "kWh"):
            self.fail(f"{path}.soc_unit", f"must be % or kWh, got {unit!r}")
        label = self.text(self.get(a, "soc_label", str, path, "soc"), f"{path}.soc_label", "label")
        return Asset(asset_id, kind, device, gateway, capacity, charge, discharge, efficiency, soc_min, soc_max,
                     self.number(a, "cost_eur_per_mwh", path, 0, 1e5, 0.0), label, unit, cooldown_s=cooldown)
