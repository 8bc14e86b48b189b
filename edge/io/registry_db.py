"""The device registry in PostgreSQL: ``load`` writes it from a parsed registry file,
``read`` builds the same ``Registry`` back for the server's decoder.

Loading is idempotent and file-scoped: what the file names is inserted or updated (a
template's data points and a controller's connectors and pins are replaced by the file's),
what it does not name is left alone (several sites may load their own files). The
version in ``registry_state`` moves only when the content changed, which is what the
decoder polls to refresh its cache.
"""

from __future__ import annotations

import hashlib
import json

import psycopg

from edge.codecs.registry import (
    Asset,
    Connector,
    Controller,
    DataPoint,
    DeviceTemplate,
    DeviceType,
    Pin,
    Registry,
    TopicMapping,
)


def load(conn: psycopg.Connection, registry: Registry, source: str, text: str) -> tuple[bool, int]:
    """Write ``registry`` (parsed from ``text``); return (changed, version). One transaction."""
    digest = _digest(registry)
    with conn.transaction():
        conn.execute("LOCK TABLE registry_state IN EXCLUSIVE MODE")
        row = conn.execute("SELECT version, sha256 FROM registry_state").fetchone()
        # The digest covers this file's content; a database holding several files' rows
        # compares against the last load, so reloading the last file is a no-op.
        if row is not None and row[1] == digest:
            return False, row[0]
        for t in registry.device_types:
            conn.execute("INSERT INTO device_types (name, description) VALUES (%s, %s) "
                         "ON CONFLICT (name) DO UPDATE SET description = EXCLUDED.description",
                         (t.name, t.description))
        for tpl in registry.templates:
            _template(conn, tpl)
        for c in registry.controllers:
            _controller(conn, c)
        for i, m in enumerate(registry.topics):
            conn.execute("INSERT INTO topic_mappings (filter, codec, ordinal) VALUES (%s, %s, %s) "
                         "ON CONFLICT (filter) DO UPDATE SET codec = EXCLUDED.codec, "
                         "ordinal = EXCLUDED.ordinal", (m.filter, m.codec, i))
        for a in registry.assets:
            model = {f: getattr(a, f) for f in Asset.__dataclass_fields__}
            conn.execute("INSERT INTO assets (asset_id, kind, device_id, model) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT (asset_id) DO UPDATE SET kind = EXCLUDED.kind, device_id = EXCLUDED.device_id, "
                         "model = EXCLUDED.model, loaded_at = now()", (a.id, a.kind, a.device, json.dumps(model)))
        version = (row[0] if row else 0) + 1
        conn.execute("INSERT INTO registry_state (version, sha256, source) VALUES (%s, %s, %s) "
                     "ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, sha256 = "
                     "EXCLUDED.sha256, source = EXCLUDED.source, loaded_at = now()",
                     (version, digest, source))
    return True, version


def _digest(registry: Registry) -> str:
    return hashlib.sha256(repr((registry.device_types, registry.templates, registry.controllers,
                                registry.topics, registry.assets)).encode()).hexdigest()


def _id(conn: psycopg.Connection, sql: str, params: tuple) -> int:
    return conn.execute(sql, params).fetchone()[0]


def _template(conn: psycopg.Connection, tpl: DeviceTemplate) -> None:
    type_id = _id(conn, "INSERT INTO device_types (name) VALUES (%s) ON CONFLICT (name) "
                  "DO UPDATE SET name = EXCLUDED.name RETURNING id", (tpl.device_type,))
    tpl_id = _id(conn, "INSERT INTO device_templates (name, device_type_id, framing, payload, "
                 "modbus_address, modbus_function) VALUES (%s, %s, %s, %s, %s, %s) "
                 "ON CONFLICT (name) DO UPDATE SET device_type_id = EXCLUDED.device_type_id, "
                 "framing = EXCLUDED.framing, payload = EXCLUDED.payload, modbus_address = "
                 "EXCLUDED.modbus_address, modbus_function = EXCLUDED.modbus_function RETURNING id",
                 (tpl.name, type_id, tpl.framing, tpl.payload, tpl.modbus_address, tpl.modbus_function))
    conn.execute("DELETE FROM data_points WHERE template_id = %s", (tpl_id,))
    for i, dp in enumerate(tpl.data_points):
        icon_id = None
        if dp.icon:
            icon_id = _id(conn, "INSERT INTO data_point_icons (name) VALUES (%s) ON CONFLICT (name) "
                          "DO UPDATE SET name = EXCLUDED.name RETURNING id", (dp.icon,))
        conn.execute(
            'INSERT INTO data_points (template_id, ordinal, label, encoding, "offset", length, '
            "decimals, prepend, append, whole_number, data_format, byte_order, bit_offset, "
            "bit_length, enum, icon_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "%s, %s, %s, %s)",
            (tpl_id, i, dp.label, dp.encoding, dp.offset, dp.length, dp.decimals, dp.prepend,
             dp.append, dp.whole_number, dp.data_format, dp.byte_order, dp.bit_offset,
             dp.bit_length, json.dumps({str(k): v for k, v in dp.enum.items()}), icon_id))


def _template_id(conn: psycopg.Connection, name: str) -> int | None:
    row = conn.execute("SELECT id FROM device_templates WHERE name = %s", (name,)).fetchone()
    return row[0] if row else None


def _controller(conn: psycopg.Connection, c: Controller) -> None:
    ctl_id = _id(conn, "INSERT INTO devices (key, name, template_id, mac, ip, pcb_version) "
                 "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET name = "
                 "EXCLUDED.name, template_id = EXCLUDED.template_id, mac = EXCLUDED.mac, "
                 "ip = EXCLUDED.ip, pcb_version = EXCLUDED.pcb_version RETURNING id",
                 (c.mac, c.name, _template_id(conn, c.template), c.mac, c.ip, c.pcb_version))
    conn.execute("DELETE FROM connectors WHERE controller_id = %s", (ctl_id,))
    for conn_ in c.connectors:
        connector_id = _id(conn, "INSERT INTO connectors (controller_id, number, type) "
                           "VALUES (%s, %s, %s) RETURNING id", (ctl_id, conn_.number, conn_.type))
        for p in conn_.pins:
            device_id = _id(conn, "INSERT INTO devices (key, name, template_id, serial) "
                            "VALUES (%s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET name = "
                            "EXCLUDED.name, template_id = EXCLUDED.template_id, serial = "
                            "EXCLUDED.serial RETURNING id",
                            (f"{c.mac}/{conn_.number}/{p.position}", p.device,
                             _template_id(conn, p.template), p.serial))
            conn.execute("INSERT INTO pins (connector_id, position, device_id) VALUES (%s, %s, %s)",
                         (connector_id, p.position, device_id))


def version(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT version FROM registry_state").fetchone()
    return row[0] if row else 0


def read(conn: psycopg.Connection) -> tuple[int, Registry]:
    """The whole registry as the codecs use it, with its version (0: never loaded)."""
    with conn.transaction():  # one snapshot (REPEATABLE READ not needed: loads lock)
        v = version(conn)
        types = tuple(DeviceType(n, d) for n, d in conn.execute(
            "SELECT name, description FROM device_types ORDER BY id"))
        points: dict[int, list[DataPoint]] = {}
        for row in conn.execute(
                'SELECT dp.template_id, dp.label, dp.encoding, dp."offset", dp.length, dp.decimals, '
                "dp.prepend, dp.append, dp.whole_number, dp.data_format, dp.byte_order, dp.bit_offset, "
                "dp.bit_length, dp.enum, coalesce(i.name, '') FROM data_points dp "
                "LEFT JOIN data_point_icons i ON i.id = dp.icon_id ORDER BY dp.template_id, dp.ordinal"):
            tpl_id, *fields = row
            enum = {int(k): v for k, v in fields[12].items()}
            points.setdefault(tpl_id, []).append(DataPoint(*fields[:12], enum, fields[13]))
        templates = tuple(
            DeviceTemplate(name, type_name, tuple(points.get(tid, ())), framing, payload, addr, fn)
            for tid, name, type_name, framing, payload, addr, fn in conn.execute(
                "SELECT t.id, t.name, dt.name, t.framing, t.payload, t.modbus_address, "
                "t.modbus_function FROM device_templates t JOIN device_types dt ON dt.id = "
                "t.device_type_id ORDER BY t.id"))
        pins: dict[tuple[int, int], list[Pin]] = {}
        for ctl_id, number, position, name, tpl, serial in conn.execute(
                "SELECT c.controller_id, c.number, p.position, d.name, coalesce(t.name, ''), d.serial "
                "FROM pins p JOIN connectors c ON c.id = p.connector_id JOIN devices d ON "
                "d.id = p.device_id LEFT JOIN device_templates t ON t.id = d.template_id "
                "ORDER BY c.controller_id, c.number, p.position"):
            pins.setdefault((ctl_id, number), []).append(Pin(position, name, tpl, serial))
        connectors: dict[int, list[Connector]] = {}
        for ctl_id, number, type_ in conn.execute(
                "SELECT controller_id, number, type FROM connectors ORDER BY controller_id, number"):
            connectors.setdefault(ctl_id, []).append(
                Connector(number, type_, tuple(pins.get((ctl_id, number), ()))))
        controllers = tuple(
            Controller(mac, name, tpl or "", ip, pcb, tuple(connectors.get(cid, ())))
            for cid, mac, name, tpl, ip, pcb in conn.execute(
                "SELECT d.id, d.mac, d.name, coalesce(t.name, ''), d.ip, d.pcb_version FROM devices d "
                "LEFT JOIN device_templates t ON t.id = d.template_id WHERE d.mac IS NOT NULL "
                "ORDER BY d.id"))
        topics = tuple(TopicMapping(f, c) for f, c in conn.execute(
            "SELECT filter, codec FROM topic_mappings ORDER BY ordinal, filter"))
        assets = tuple(Asset(**model) for (model,) in conn.execute("SELECT model FROM assets ORDER BY asset_id"))
    return v, Registry(types, templates, controllers, topics, assets)
