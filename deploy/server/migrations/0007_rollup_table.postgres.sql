-- Version 7 on plain PostgreSQL changes nothing: its hourly rollup has always been the
-- table the sink keeps (0007_rollup_table.timescaledb.sql gives TimescaleDB the same).

SELECT 1;
