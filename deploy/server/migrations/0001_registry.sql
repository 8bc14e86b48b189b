-- The device registry, as the field systems keep it: device types, templates with their
-- data points (and icons), devices, a controller's connectors and the pins that carry a
-- sensor, plus the topic -> codec mappings. `edge registry load FILE` fills it from the
-- registry TOML; the server's decoder reads it back (edge/io/registry_db.py).
--
-- Every row has a natural key, so loading the same file twice changes nothing.

CREATE TABLE device_types (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    description text NOT NULL DEFAULT ''
);

CREATE TABLE data_point_icons (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE
);

CREATE TABLE device_templates (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    device_type_id  bigint NOT NULL REFERENCES device_types (id),
    framing         text NOT NULL DEFAULT 'none' CHECK (framing IN ('none', 'modbus-rtu')),
    payload         text NOT NULL DEFAULT 'hex' CHECK (payload IN ('hex', 'binary')),
    modbus_address  integer NOT NULL DEFAULT 1,
    modbus_function integer NOT NULL DEFAULT 3
);

-- How to cut one value out of a sensor's bytes (codecs/registry.py: DataPoint).
CREATE TABLE data_points (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    template_id  bigint NOT NULL REFERENCES device_templates (id) ON DELETE CASCADE,
    ordinal      integer NOT NULL,               -- order within the template
    label        text NOT NULL,
    encoding     text NOT NULL,
    "offset"     integer NOT NULL CHECK ("offset" >= 0),
    length       integer NOT NULL CHECK (length > 0),
    decimals     integer NOT NULL DEFAULT 0 CHECK (decimals BETWEEN 0 AND 9),
    prepend      text NOT NULL DEFAULT '',
    append       text NOT NULL DEFAULT '',
    whole_number boolean NOT NULL DEFAULT false,
    data_format  text NOT NULL DEFAULT 'number',
    byte_order   text NOT NULL DEFAULT 'big' CHECK (byte_order IN ('big', 'little', 'word-swapped')),
    bit_offset   integer NOT NULL DEFAULT 0,
    bit_length   integer NOT NULL DEFAULT 0,
    enum         jsonb NOT NULL DEFAULT '{}',    -- raw integer (as text) -> name
    icon_id      bigint REFERENCES data_point_icons (id),
    UNIQUE (template_id, label)
);

-- Controllers (key = MAC) and the sensors on their pins (key = mac/connector/position).
-- Devices that are not in the registry (v2 meters, homelab meters) appear in
-- device_state when they are first seen.
CREATE TABLE devices (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key         text NOT NULL UNIQUE,
    name        text NOT NULL,
    template_id bigint REFERENCES device_templates (id),
    serial      text NOT NULL DEFAULT '',
    uuid        uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    mac         text UNIQUE CHECK (mac ~ '^[0-9a-f]{12}$'),
    ip          text NOT NULL DEFAULT '',
    pcb_version text NOT NULL DEFAULT ''
);

CREATE TABLE connectors (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    controller_id bigint NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    number        integer NOT NULL CHECK (number BETWEEN 1 AND 4),
    type          text NOT NULL DEFAULT 'RS-485',
    UNIQUE (controller_id, number)
);

CREATE TABLE pins (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connector_id bigint NOT NULL REFERENCES connectors (id) ON DELETE CASCADE,
    position     integer NOT NULL,
    device_id    bigint NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    UNIQUE (connector_id, position)
);

CREATE TABLE topic_mappings (
    filter  text PRIMARY KEY,
    codec   text NOT NULL CHECK (codec IN ('f2', 'v2', 'homelab', 'asset')),
    ordinal integer NOT NULL
);

-- One row: bumped by every load that changed something; the decoder polls it.
CREATE TABLE registry_state (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    version   bigint NOT NULL,
    sha256    text NOT NULL,
    source    text NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);
