-- The time index of iot_measurements on plain PostgreSQL becomes a BRIN index.
--
-- Rows reach a day's partition in nearly time order (live data, and a recovering
-- gateway's backlog oldest first), which is what BRIN is for: one small summary per 128
-- pages instead of a B-tree entry per row. Measured with the sink's batches of 10,000
-- rows, the B-tree on time was about a quarter of the insert work (sink writes 160,000
-- against 210,000 to 240,000 rows/s with BRIN here). Time-range queries still use an
-- index; autosummarize summarizes each page range as it fills, so recent rows are not
-- left for the next vacuum. The primary key (device_id, ..., time) serves per-device
-- queries as before. New partitions (edge_ensure_partition) inherit the index.

DROP INDEX iot_measurements_time;
CREATE INDEX iot_measurements_time ON iot_measurements USING brin (time) WITH (autosummarize = on);
