-- A reading that arrives with the key of a stored one (device, connector mode, pin, label,
-- time) and another value is a different reading, not a replay: it is kept here instead of
-- being dropped by ON CONFLICT DO NOTHING, and counted (edge_conflicting_readings_total).
-- One row per distinct value, so a replayed batch adds nothing.
CREATE TABLE measurement_conflicts (
    time           timestamptz NOT NULL,
    device_id      text NOT NULL,
    connector_mode text NOT NULL,
    connector      smallint,
    pin_position   integer NOT NULL,
    label          text NOT NULL,
    value          double precision NOT NULL,  -- the reading that did not go in
    stored_value   double precision NOT NULL,  -- the one iot_measurements holds
    unit           text,
    topic          text,
    source         text,                       -- where the refused reading came from
    seen_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, connector_mode, pin_position, label, time, value)
);
