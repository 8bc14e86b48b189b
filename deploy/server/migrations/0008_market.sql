-- The market actor's tables (docs/market.md).
--
-- market_prices: one row per zone, series (spot, pvpc), step start (UTC) and step length; a
-- re-fetched step with a revised price updates its row (fetched_at moves), one with the
-- same price changes nothing. Both lengths of one series can be kept (spot came hourly,
-- then in quarter hours).
CREATE TABLE market_prices (
    zone       text NOT NULL,
    series     text NOT NULL,
    start      timestamptz NOT NULL,
    resolution interval NOT NULL,
    price      double precision NOT NULL,  -- EUR/MWh
    fetched_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (zone, series, start, resolution)
);

-- Market alerts go to the alerts table with their identity (zone, type, window): an alert
-- already stored is not stored or sent again, across restarts too.
ALTER TABLE alerts
    ADD COLUMN alert_key text UNIQUE,
    ADD COLUMN zone      text,
    ADD COLUMN starts_at timestamptz,
    ADD COLUMN ends_at   timestamptz,
    ADD COLUMN body      jsonb;
