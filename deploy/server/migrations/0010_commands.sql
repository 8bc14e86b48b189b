-- Commands from the server to the devices (docs/commands.md): the row is written first
-- (an operator's `edge command send`, later the market's setpoints), the command actor
-- sends it to its gateway (edge/<gateway>/down), and the answers that travel back up the
-- normal path move it on:
--   pending -> sent (the central broker has it) -> delivered (the gateway published it to
--   the device) -> accepted | rejected | error | unsupported (the device's ack)
--   | expired (the deadline passed before the device could be reached).
ALTER TABLE device_commands DROP CONSTRAINT device_commands_status_check;
ALTER TABLE device_commands ADD CONSTRAINT device_commands_status_check
    CHECK (status IN ('pending', 'sent', 'delivered', 'accepted', 'rejected', 'error', 'unsupported', 'expired'));
ALTER TABLE device_commands
    ADD COLUMN kind         text NOT NULL DEFAULT 'v2' CHECK (kind IN ('v2', 'f2')),
    ADD COLUMN topic        text,                 -- an F2 command's cmnd/ topic
    ADD COLUMN source       text NOT NULL DEFAULT 'operator',
    ADD COLUMN asset_id     text,
    ADD COLUMN attempts     integer NOT NULL DEFAULT 0,
    ADD COLUMN sent_at      timestamptz,
    ADD COLUMN status_at    timestamptz,
    ADD COLUMN ota_state    text,
    ADD COLUMN ota_progress double precision;
DROP INDEX device_commands_pending;
CREATE INDEX device_commands_open ON device_commands (deadline) WHERE status IN ('pending', 'sent', 'delivered');
CREATE INDEX device_commands_device ON device_commands (device_id, created_at DESC);

-- Assets the server commands for the market, from the registry's [[assets]] (edge registry
-- load): the asset's kind, its device (and gateway, if fixed) and its model as JSON (a
-- battery's capacity, power limits, efficiency, state-of-charge window and telemetry label;
-- a PV inverter's rating).
CREATE TABLE assets (
    asset_id  text PRIMARY KEY,
    kind      text NOT NULL CHECK (kind IN ('battery', 'pv')),
    device_id text NOT NULL,
    model     jsonb NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);
