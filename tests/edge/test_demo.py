"""`edge demo` and the single-node deployment it shows."""

from __future__ import annotations

import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EDGE = shutil.which("edge", path=str(Path(sys.executable).parent)) or "edge"
pytestmark = pytest.mark.slow


def test_the_demo_runs_an_outage_drains_it_and_balances_its_ledger(tmp_path):
    result = subprocess.run([EDGE, "demo", "--no-ui", "--duration", "30", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=180)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "uplink down (scripted outage until 20 s)" in out
    restored = re.search(r"uplink restored: draining ([\d,]+) buffered records", out)
    assert restored and int(restored.group(1).replace(",", "")) > 1000  # it visibly grew
    assert re.search(r"buffer drained in [\d.]+ s", out)
    ledger = re.search(r"records expected ([\d,]+) \| stored ([\d,]+) \| lost 0 \| duplicated 0", out)
    assert ledger and ledger.group(1) == ledger.group(2)
    assert out.strip().endswith("ledger balanced: nothing lost, nothing stored twice")


def test_bad_demo_arguments_are_one_clear_line():
    result = subprocess.run([EDGE, "demo", "--outage", "20:10"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == "edge demo: --outage '20:10': want START:END seconds with START < END"


@pytest.mark.integration
def test_single_node_mode_survives_kill_9_with_the_ledger_balanced(tmp_path, site_mqtt, unique):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
    from harness import Site, integrity, tally, wait_until

    site = Site(tmp_path, unique, site_mqtt.port, 1,  # no central broker in single-node mode
                overrides={"uplink": {"mode": "local", "store_path": str(tmp_path / "store.db")}})
    try:
        site.start("gateway")
        sim = site.simulate(count=300 * 20, rate=300, kind="mix")
        rng = random.Random(3)
        for _ in range(4):
            time.sleep(rng.uniform(1.0, 3.0))
            site.kill("gateway", signal.SIGKILL)
            site.start("gateway")
        assert sim.wait(timeout=90) == 0
        wait_until(lambda: not tally(site.ledger, site.store_db).missing, 90, "every record stored")
        t = tally(site.ledger, site.store_db)
        assert t.doubled == [] and t.stored_rows == t.expected_rows > 0
        assert integrity(site.buffer_db) == "ok"
    finally:
        site.stop_all()
