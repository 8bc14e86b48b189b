-- device_state moves forward only: firmware, last sequence and last event are those of the
-- newest event by device time (then sequence), not of the one that arrived last. An older
-- hello that arrives late (a backlog, a redelivery) no longer sets the firmware back.
ALTER TABLE device_state ADD COLUMN event_at timestamptz;  -- device time of last_event, last_seq
ALTER TABLE device_state ADD COLUMN fw_at timestamptz;     -- device time of the hello of fw_version
UPDATE device_state SET event_at = last_seen WHERE last_event IS NOT NULL;
UPDATE device_state SET fw_at = last_seen WHERE fw_version IS NOT NULL;
