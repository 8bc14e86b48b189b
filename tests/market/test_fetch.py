"""The REData client and `edge market fetch` against a local HTTP server serving the recorded
answers of fixtures/market: retries on 5xx and timeouts, no retry on 400, alerts printed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
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
    text = fetch("--date", "2026-03-29", "--base-url", mirror.url)
    assert text.returncode == 0 and "(23 steps, UTC)" in text.stdout


def test_edge_market_fetch_exits_2_on_a_refusal_and_69_when_unreachable(mirror):
    out = fetch("--date", "2030-01-01", "--base-url", mirror.url)
    assert out.returncode == 2 and "Parámetros incorrectos" in out.stderr
    out = fetch("--date", "2026-07-26", "--base-url", "http://127.0.0.1:9", "--attempts", "1")
    assert out.returncode == 69 and "REData at http://127.0.0.1:9" in out.stderr
    assert "Traceback" not in out.stderr


def test_edge_market_fetch_store_keeps_prices_and_alerts_once_across_runs(mirror, storage_dsn, unique, tmp_path):
    """Two runs of the same day (a restart, a re-fetch): the second stores nothing new."""
    import psycopg

    with psycopg.connect(storage_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{unique}"')
    try:
        userinfo, hostpart = storage_dsn.split("://", 1)[1].split("@", 1)
        host, port = hostpart.split("/", 1)[0].rsplit(":", 1)
        toml = tmp_path / "server.toml"
        toml.write_text(f'[postgres]\nhost = "{host}"\nport = {port}\ndbname = "{unique}"\nuser = "{userinfo}"\n')
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
    finally:
        with psycopg.connect(storage_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{unique}" WITH (FORCE)')
