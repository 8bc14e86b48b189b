"""Alert rules and the Grafana dashboard: valid, and naming only metrics that exist."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import subprocess
from pathlib import Path

from prometheus_client import REGISTRY

import edge.actors

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "server" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "server" / "grafana" / "dashboards" / "edge-overview.json"


def exported_metrics() -> set[str]:
    for module in pkgutil.iter_modules(edge.actors.__path__):
        importlib.import_module(f"edge.actors.{module.name}")
    importlib.import_module("edge.runtime.metrics")
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
                "summary": ("_sum", "_count")}
    return {family.name + suffix for family in REGISTRY.collect()
            for suffix in suffixes.get(family.type, ("",))}


def named_metrics(text: str) -> set[str]:
    return set(re.findall(r"\bedge_[a-z_]+\b", text))


def test_promtool_accepts_the_alert_rules():
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 15 rules found" in result.stdout


def test_rules_and_dashboard_name_only_metrics_the_runtime_exports():
    known = exported_metrics()
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    for text in (RULES.read_text(), *exprs):
        missing = named_metrics(text) - known
        assert not missing, f"unknown metrics {missing} in: {text[:120]}"


def test_the_dashboard_covers_what_an_operator_watches():
    titles = " | ".join(p["title"] for p in json.loads(DASHBOARD.read_text())["panels"])
    for topic in ("Ingest", "Buffer depth", "Oldest buffered", "Dropped", "Uplink connected",
                  "Quarantined", "Devices online", "restarts"):
        assert topic in titles
