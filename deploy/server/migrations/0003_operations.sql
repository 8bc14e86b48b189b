-- What the server learns while it runs: device presence and state, device events,
-- sequence gaps, and the operational tables of the registry (device configs, alerts,
-- commands).

-- One row per device ever seen (registry devices and others alike). The sink keeps it.
CREATE TABLE device_state (
    device_id   text PRIMARY KEY,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    status      text CHECK (status IN ('online', 'offline')),
    status_at   timestamptz,
    fw_version  text,
    last_seq    bigint,
    last_event  text,
    gateway_id  text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- hello, status, command_ack, ota_status, card_read, quarantined messages, gaps: one
-- row each, keyed by the record's identity (gateway/boot/seq or kafka coordinates).
CREATE TABLE device_events (
    event_key  text PRIMARY KEY,
    time       timestamptz NOT NULL,
    device_id  text NOT NULL,
    type       text NOT NULL,
    gateway_id text,
    body       jsonb NOT NULL
);
CREATE INDEX device_events_device_time ON device_events (device_id, time DESC);

-- Records a gateway had to drop (quota, drop-oldest policy): the loss is on record.
CREATE TABLE sequence_gaps (
    gateway_id text NOT NULL,
    boot_epoch bigint NOT NULL,
    first_seq  bigint NOT NULL,
    last_seq   bigint NOT NULL,
    count      bigint NOT NULL,
    reason     text NOT NULL,
    time       timestamptz NOT NULL,
    PRIMARY KEY (gateway_id, boot_epoch, first_seq)
);

CREATE TABLE device_configs (
    device_id  text NOT NULL,
    version    integer NOT NULL,
    config     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, version)
);

CREATE TABLE alerts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  text,
    kind       text NOT NULL,
    severity   text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    message    text NOT NULL,
    raised_at  timestamptz NOT NULL DEFAULT now(),
    cleared_at timestamptz
);

CREATE TABLE device_commands (
    cmd_id      uuid PRIMARY KEY,
    device_id   text NOT NULL,
    gateway_id  text,
    cmd         text NOT NULL,
    params      jsonb NOT NULL DEFAULT '{}',
    deadline    timestamptz NOT NULL,
    status      text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sent', 'accepted', 'rejected', 'error',
                                  'unsupported', 'expired')),
    detail      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    answered_at timestamptz
);
CREATE INDEX device_commands_pending ON device_commands (device_id) WHERE status = 'pending';
