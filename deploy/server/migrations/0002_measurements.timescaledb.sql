-- iot_measurements on TimescaleDB (what compose runs): a hypertable in daily chunks,
-- compressed after 30 days (longer than the longest offline window a gateway buffers
-- through, so late rows from a recovering site land in uncompressed chunks), kept two
-- years, with an hourly continuous aggregate refreshed every 15 minutes.
--
-- Same columns and key as the plain-PostgreSQL path (0002_measurements.postgres.sql).

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

ALTER TABLE iot_measurements SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'label, time DESC'
);
SELECT add_compression_policy('iot_measurements', compress_after => interval '30 days');
SELECT add_retention_policy('iot_measurements', drop_after => interval '730 days');

CREATE MATERIALIZED VIEW iot_measurements_hourly
WITH (timescaledb.continuous) AS
SELECT time_bucket(interval '1 hour', time) AS bucket,
       device_id, connector_mode, pin_position, label,
       count(*) AS n, sum(value) AS sum, min(value) AS min, max(value) AS max
FROM iot_measurements
GROUP BY bucket, device_id, connector_mode, pin_position, label
WITH NO DATA;

SELECT add_continuous_aggregate_policy('iot_measurements_hourly',
    start_offset => interval '31 days', end_offset => interval '1 hour',
    schedule_interval => interval '15 minutes');

-- Partitions are TimescaleDB's business here: the sink's call is a no-op.
CREATE FUNCTION edge_ensure_partition(day date) RETURNS void
LANGUAGE sql AS $$ SELECT $$;

INSERT INTO edge_settings (key, value) VALUES ('storage', 'timescaledb')
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
