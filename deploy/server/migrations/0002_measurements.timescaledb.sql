-- iot_measurements on TimescaleDB (what compose runs): a hypertable in daily chunks,
-- compressed after 30 days, kept two years. TimescaleDB 2.18.1 or newer: older versions
-- lose the new rows of a replay that meets a compressed chunk (edge/io/pg.py refuses them).
--
-- Same columns and key as the plain-PostgreSQL path (0002_measurements.postgres.sql), and
-- the same hourly rollup: a table the sink keeps in the transaction of the rows it inserts,
-- exact at any moment and under replays (a continuous aggregate lags its refresh policy).
--
-- (This file's first content made the rollup a continuous aggregate and left connector_mode
-- and pin_position out of the compression settings; 0007_rollup_table converts databases
-- migrated with it.)

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
    source         text,
    PRIMARY KEY (device_id, connector_mode, pin_position, label, time)
);

SELECT create_hypertable('iot_measurements', 'time', chunk_time_interval => interval '1 day');

-- Segments per device; within one, rows ordered by series then time: every key column is
-- in segmentby or orderby, so a replay's conflict check reads one segment's min/max.
ALTER TABLE iot_measurements SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'label, connector_mode, pin_position, time DESC'
);
SELECT add_compression_policy('iot_measurements', compress_after => interval '30 days');
SELECT add_retention_policy('iot_measurements', drop_after => interval '730 days');

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

-- Partitions are TimescaleDB's business here: the sink's call is a no-op.
CREATE FUNCTION edge_ensure_partition(day date) RETURNS void
LANGUAGE sql AS $$ SELECT $$;

INSERT INTO edge_settings (key, value) VALUES ('storage', 'timescaledb')
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
