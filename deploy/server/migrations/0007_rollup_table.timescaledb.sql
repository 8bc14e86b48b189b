-- A TimescaleDB database migrated with the first 0002_measurements takes the current shape:
--
-- - The hourly rollup was a continuous aggregate (WITH NO DATA, materialized only,
--   refreshed every 15 minutes for 31 days back, up to an hour ago): right after a commit
--   it held nothing of it, and it never held late rows older than 31 days. It becomes the
--   table plain PostgreSQL has, kept by the sink in the transaction of the rows it inserts,
--   filled here from every stored row (under a SHARE lock: no insert slips between).
-- - connector_mode and pin_position join the compression order (TimescaleDB warned that
--   key columns should be in segmentby or orderby); chunks compressed before keep theirs.
--
-- On a database made with the current 0002 this changes nothing.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates
               WHERE view_name = 'iot_measurements_hourly') THEN
        LOCK TABLE iot_measurements IN SHARE MODE;
        DROP MATERIALIZED VIEW iot_measurements_hourly;  -- its refresh policy goes with it
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
        INSERT INTO iot_measurements_hourly (bucket, device_id, connector_mode, pin_position, label,
                                             n, sum, min, max)
        SELECT date_trunc('hour', time, 'UTC'), device_id, connector_mode, pin_position, label,
               count(*), sum(value), min(value), max(value)
        FROM iot_measurements GROUP BY 1, 2, 3, 4, 5;
        ALTER TABLE iot_measurements SET (
            timescaledb.compress_segmentby = 'device_id',
            timescaledb.compress_orderby = 'label, connector_mode, pin_position, time DESC'
        );
    END IF;
END $$;
