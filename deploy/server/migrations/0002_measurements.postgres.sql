-- iot_measurements on plain PostgreSQL (no timescaledb extension): native range
-- partitions by UTC day, created ahead by edge_ensure_partition() (the migration makes
-- yesterday .. a week ahead; the sink makes any day a batch needs before writing it).
-- The hourly rollup is a table the sink keeps in the same transaction as the rows it
-- inserts, so a replayed batch (conflicts, nothing inserted) adds nothing to it.
--
-- Key columns cannot be NULL in a primary key: connector_mode '' and pin_position 0 stand
-- for "not a connector/pin" (v2 meters, homelab meters).

CREATE TABLE iot_measurements (
    time           timestamptz NOT NULL,
    device_id      text NOT NULL,
    connector_mode text NOT NULL DEFAULT '',
    connector      smallint,
    pin_position   integer NOT NULL DEFAULT 0,
    label          text NOT NULL,
    value          double precision NOT NULL,
    unit           text,
    topic          text,
    source         text,      -- gateway/boot_epoch/seq, or kafka:topic/partition/offset
    PRIMARY KEY (device_id, connector_mode, pin_position, label, time)
) PARTITION BY RANGE (time);

CREATE INDEX iot_measurements_time ON iot_measurements (time DESC);

CREATE FUNCTION edge_ensure_partition(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    name text := 'iot_measurements_' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(name) IS NULL THEN
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF iot_measurements '
                       'FOR VALUES FROM (%L) TO (%L)',
                       name, day::text || ' 00:00:00+00', (day + 1)::text || ' 00:00:00+00');
    END IF;
END $$;

-- Retention on this path: drop whole days (cheap, no vacuum). Not scheduled by the
-- server; run it from cron or by hand: SELECT edge_drop_partitions_before('2025-01-01');
CREATE FUNCTION edge_drop_partitions_before(day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'iot_measurements'::regclass
          AND c.relname ~ '^iot_measurements_[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < day
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;

SELECT edge_ensure_partition(d::date)
FROM generate_series(current_date - 1, current_date + 7, interval '1 day') AS d;

CREATE TABLE iot_measurements_hourly (
    bucket         timestamptz NOT NULL,
    device_id      text NOT NULL,
    connector_mode text NOT NULL,
    pin_position   integer NOT NULL,
    label          text NOT NULL,
    n              bigint NOT NULL,
    sum            double precision NOT NULL,
    min            double precision NOT NULL,
    max            double precision NOT NULL,
    PRIMARY KEY (device_id, connector_mode, pin_position, label, bucket)
);

INSERT INTO edge_settings (key, value) VALUES ('storage', 'postgres')
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
