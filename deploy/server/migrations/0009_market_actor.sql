-- The market actor's schedule, flows and outbox (docs/market.md).
--
-- market_days: a day (Madrid calendar) of one kind (spot, pvpc, flows) stored whole; the
-- actor fetches what its backfill window lacks here, so an outage of the API or of the
-- process leaves no gap once it is over.
CREATE TABLE market_days (
    zone       text NOT NULL,
    kind       text NOT NULL,
    day        date NOT NULL,
    steps      integer NOT NULL,
    fetched_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (zone, kind, day)
);

-- Cross-border flows per border and step: the physical flow's direction and size, the
-- scheduled flow in that direction, the capacity (NTC, from config) and how full it is.
CREATE TABLE interconnection_flows (
    border                text NOT NULL,
    at_time               timestamptz NOT NULL,
    resolution            interval NOT NULL,
    flow_direction        text NOT NULL,
    physical_flow_mw      double precision NOT NULL,
    scheduled_flow_mw     double precision,
    ntc_mw                double precision,
    saturation_percentage double precision,
    fetched_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (border, at_time, resolution)
);

-- Answers the actor could not read, kept once each (by their digest) for whoever mends
-- the mirror or reports the API.
CREATE TABLE market_rejects (
    digest      text PRIMARY KEY,
    kind        text NOT NULL,
    day         date NOT NULL,
    reason      text NOT NULL,
    detail      text NOT NULL,
    body        bytea NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now()
);

-- The alerts outbox: an alert is stored first, then sent to Kafka, then marked sent.
-- send_marks holds each partition's end offset taken before the first try, so a process
-- that died between Kafka's ack and the mark finds its record there instead of sending
-- it again.
ALTER TABLE alerts
    ADD COLUMN send_marks      jsonb,
    ADD COLUMN sent_at         timestamptz;
CREATE INDEX alerts_unsent ON alerts (id) WHERE alert_key IS NOT NULL AND sent_at IS NULL;
