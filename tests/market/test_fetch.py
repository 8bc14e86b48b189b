"""The REData client and `edge market fetch` against a local HTTP server serving the recorded
answers of fixtures/market: retries on 5xx and timeouts, no retry on 400, alerts printed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from mirror import DAYS, MARKET, Mirror

from edge.errors import ServiceRefused, ServiceUnavailable
from edge.io.redata import REData

EDGE = shutil.which("edge", path=str(Path(sys.executable).parent)) or "edge"


@pytest.fixture
def mirror():
    server = Mirror().serve()
    yield server
    server.close()


def test_a_day_is_asked_in_madrid_time_and_a_500_is_retried_with_backoff(mirror):
    mirror.fail = 2
    waits: list[float] = []
    with REData(mirror.url, attempts=4, backoff_s=1.0, sleep=waits.append) as api:
        body = api.prices(date(2026, 7, 26))
    assert body == (MARKET / DAYS["2026-07-26"]).read_bytes()
    assert len(mirror.requests) == 3
    assert "start_date=2026-07-26T00%3A00" in mirror.requests[0] and "end_date=2026-07-26T23%3A59" in mirror.requests[0]
    assert len(waits) == 2 and 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0  # doubling, jittered


def test_a_400_is_refused_at_once_with_the_apis_words(mirror):
    with REData(mirror.url, sleep=lambda s: None) as api:
        with pytest.raises(ServiceRefused, match="HTTP 400: Parámetros incorrectos: La fecha de inicio"):
            api.prices(date(2030, 1, 1))
    assert len(mirror.requests) == 1  # a deterministic refusal is not retried


def test_retries_end_and_say_why(mirror):
    mirror.fail = 99
    with REData(mirror.url, attempts=3, sleep=lambda s: None) as api:
        with pytest.raises(ServiceUnavailable, match=r"HTTP 500 \(3 attempts\)"):
            api.prices(date(2026, 7, 26))
    mirror.fail, mirror.stall_s = 0, 1.0
    with REData(mirror.url, attempts=2, timeout_s=0.2, sleep=lambda s: None) as api:
        with pytest.raises(ServiceUnavailable, match=r"timed out .*\(2 attempts\)"):
            api.prices(date(2026, 7, 26))


def fetch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EDGE, "market", "fetch", *args], capture_output=True, text=True, timeout=60)


def test_edge_market_fetch_prints_the_day_and_its_alerts(mirror):
    out = fetch("--date", "2026-07-26", "--base-url", mirror.url, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert len(doc["steps"]) == 24 and doc["steps"][0]["start"] == "2026-07-25T22:00:00+00:00"
    assert [a["alert_type"] for a in doc["alerts"]] == ["NEGATIVE_PRICE", "HIGH_PRICE", "ARBITRAGE_OPPORTUNITY"]
    flows = json.loads(fetch("--date", "2026-07-26", "--base-url", mirror.url, "--flows", "--json").stdout)
    assert len(flows["flows"]) == 96 and {f["border"] for f in flows["flows"]} == {"FR", "PT", "MA", "AD"}
    assert [a["alert_type"] for a in flows["alerts"]][-1] == "DECOUPLING_LIKELY"
    tight = json.loads(fetch("--date", "2026-07-26", "--base-url", mirror.url, "--flows", "--json", "--ntc",
                             "ES>PT=1000").stdout)  # Portugal above 90 %; France, without an NTC, never
    assert [a["flow_direction"] for a in tight["alerts"] if a["alert_type"] == "DECOUPLING_LIKELY"] == ["ES>PT"]
    text = fetch("--date", "2026-03-29", "--base-url", mirror.url)
    assert text.returncode == 0 and "(23 steps, UTC)" in text.stdout


def test_edge_market_fetch_exits_2_on_a_refusal_and_69_when_unreachable(mirror):
    out = fetch("--date", "2030-01-01", "--base-url", mirror.url)
    assert out.returncode == 2 and "Parámetros incorrectos" in out.stderr
    out = fetch("--date", "2026-07-26", "--base-url", "http://127.0.0.1:9", "--attempts", "1")
    assert out.returncode == 69 and "REData at http://127.0.0.1:9" in out.stderr
    assert "Traceback" not in out.stderr


def server_config(dsn: str, name: str, tmp_path: Path) -> Iterator[Path]:
    """A fresh database ``name`` on the cluster of ``dsn`` and a config naming it; dropped after."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        userinfo, hostpart = dsn.split("://", 1)[1].split("@", 1)
        host, port = hostpart.split("/", 1)[0].rsplit(":", 1)
        toml = tmp_path / "server.toml"
        toml.write_text(f'[postgres]\nhost = "{host}"\nport = {port}\ndbname = "{name}"\nuser = "{userinfo}"\n')
        yield toml
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def stored(storage_dsn, unique, tmp_path):
    yield from server_config(storage_dsn, unique, tmp_path)


@pytest.fixture
def plain(pg_dsn, unique, tmp_path):
    yield from server_config(pg_dsn, unique, tmp_path)


def test_edge_market_fetch_store_keeps_prices_and_alerts_once_across_runs(mirror, stored, storage_dsn, unique):
    """Two runs of the same day (a restart, a re-fetch): the second stores nothing new."""
    import psycopg

    toml = stored
    out = fetch("--date", "2026-07-26", "--base-url", mirror.url, "--store", str(toml))
    assert out.returncode == 2 and "edge server migrate" in out.stderr  # not migrated: says so
    assert subprocess.run([EDGE, "server", "migrate", "--config", str(toml)], capture_output=True).returncode == 0
    first = fetch("--date", "2026-07-26", "--base-url", mirror.url, "--store", str(toml), "--json")
    again = fetch("--date", "2026-07-26", "--base-url", mirror.url, "--store", str(toml), "--json")
    assert json.loads(first.stdout)["stored"] == {"prices": 24, "alerts": 3}, first.stderr
    assert json.loads(again.stdout)["stored"] == {"prices": 0, "alerts": 0}, again.stderr
    with psycopg.connect(storage_dsn.rsplit("/", 1)[0] + "/" + unique) as conn:
        assert conn.execute("SELECT count(*) FROM market_prices").fetchone() == (24,)
        assert conn.execute("SELECT count(*) FROM alerts WHERE alert_key IS NOT NULL").fetchone() == (3,)


def test_edge_market_plan_asset_plans_a_registry_battery_from_the_stored_day_and_its_telemetry(
        mirror, plain, pg_dsn, unique):
    """The same plan as the file-based planner given the same prices and battery: the asset's
    model from the registry, its prices from market_prices, its state of charge from its
    latest `soc` reading (percent of capacity)."""
    import psycopg

    toml = plain
    for args in (["server", "migrate"], ["registry", "load", str(MARKET.parents[0] / "registry.toml")]):
        assert subprocess.run([EDGE, *args, "--config", str(toml)], capture_output=True).returncode == 0
    plan = ["market", "plan", "--asset", "bat-site-1", "--date", "2026-07-26", "--config", str(toml)]
    none = subprocess.run([EDGE, *plan], capture_output=True, text=True)
    assert none.returncode == 2 and "no spot prices stored for 2026-07-26" in none.stderr
    assert fetch("--date", "2026-07-26", "--base-url", mirror.url, "--store", str(toml)).returncode == 0
    with psycopg.connect(pg_dsn.rsplit("/", 1)[0] + "/" + unique, autocommit=True) as conn:
        conn.execute("SELECT edge_ensure_partition('2026-07-25')")
        conn.execute("INSERT INTO iot_measurements (time, device_id, label, value, unit) VALUES "
                     "('2026-07-25T21:00Z', 'bat-0001', 'soc', 80, '%'), "
                     "('2026-07-25T21:59Z', 'bat-0001', 'soc', 35, '%')")  # the latest: 70 kWh of 200
    text = subprocess.run([EDGE, *plan], capture_output=True, text=True)
    assert text.returncode == 0, text.stderr
    assert "state of charge 70 kWh from bat-0001 soc = 35 %" in text.stdout
    from_db = json.loads(subprocess.run([EDGE, *plan, "--json"], capture_output=True, text=True).stdout)
    battery = ("capacity_kwh=200,charge_kw=100,discharge_kw=100,efficiency=0.9,soc_kwh=70,soc_min_kwh=20,"
               "soc_max_kwh=190,cost_eur_per_mwh=10")
    from_file = json.loads(subprocess.run(
        [EDGE, "market", "plan", "--prices", str(MARKET / DAYS["2026-07-26"]), "--battery", battery, "--json"],
        capture_output=True, text=True).stdout)
    assert from_db == from_file and from_db["profit_eur"] > 0
    unknown = subprocess.run([EDGE, "market", "plan", "--asset", "nope", "--date", "2026-07-26", "--config",
                              str(toml)], capture_output=True, text=True)
    assert unknown.returncode == 2 and "known: bat-site-1, pv-roof-1" in unknown.stderr
    pv = subprocess.run([EDGE, "market", "plan", "--asset", "pv-roof-1", "--date", "2026-07-26", "--config",
                         str(toml)], capture_output=True, text=True)
    assert pv.returncode == 2 and "is a pv, not a battery" in pv.stderr
