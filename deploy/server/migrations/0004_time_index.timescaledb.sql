-- Version 4 on TimescaleDB changes nothing: the plain-PostgreSQL path replaced its B-tree
-- time index with a BRIN index (0004_time_index.postgres.sql). A hypertable keeps the
-- B-tree time index TimescaleDB creates in each chunk: chunks are a day, so that index
-- stays small, and chunk exclusion and compression rely on it.

SELECT 1;
