"""deploy/server/compose.yaml is consistent with the sample configs it mounts.

No Docker engine runs here: the file is parsed and cross-checked. What a typo would break
at `docker compose up` is checked: services and dependencies, the files mounted, named
volumes, every ${VARIABLE} documented in .env.example, and the server config's hosts,
ports and secrets lining up with the services and environment compose gives it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from edge import config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "server"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_every_service_the_server_needs_is_there_with_health_checks_and_restarts(compose):
    services = compose["services"]
    assert set(services) == {"mosquitto", "kafka", "timescaledb", "migrate", "edge-server",
                             "prometheus", "grafana"}
    for name, svc in services.items():
        if name != "migrate":
            assert svc.get("restart") == "unless-stopped", name
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    deps = services["edge-server"]["depends_on"]
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert {"mosquitto", "kafka"} <= set(deps)
    assert services["migrate"]["command"][:2] == ["server", "migrate"]


def test_the_timescaledb_image_is_the_version_the_tests_build(compose):
    """compose runs what CI tests: the TimescaleDB that scripts/services builds from the
    vendored source, on the PostgreSQL major version of the test clusters."""
    services = (DEPLOY.parents[1] / "scripts" / "services").read_text()
    built = re.search(r"^TIMESCALEDB_VERSION=(\S+)$", services, re.M)[1]
    major = re.search(r"^PG_BIN=/usr/lib/postgresql/(\d+)/bin$", services, re.M)[1]
    image = compose["services"]["timescaledb"]["image"]
    assert image == f"timescale/timescaledb:{built}-pg{major}"
    from edge.io.pg import timescale_problem

    assert timescale_problem(built) is None  # and not one that loses rows


def test_mounted_files_exist_and_named_volumes_are_declared(compose):
    declared = set(compose["volumes"])
    used = set()
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                used.add(source)
        build = svc.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file()
            for line in (context / build["dockerfile"]).read_text().splitlines():
                if line.startswith("COPY ") and "--from" not in line:
                    for src in line.split()[1:-1]:
                        assert (context / src).exists(), f"Dockerfile copies {src}, missing"
    assert used == declared


def test_every_variable_compose_uses_is_documented_in_the_env_example(compose):
    text = (DEPLOY / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    example = (DEPLOY / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*(EDGE_\w+)=", example, re.M))
    assert used == documented, (used ^ documented)
    required = set(re.findall(r"\$\{(\w+):\?", text))
    for var in required:  # required secrets are left empty in the example, never filled in
        assert re.search(rf"^{var}=(change-me|gw-1:change-me.*)?$", example, re.M), var


def test_server_config_matches_the_services_ports_and_secrets(compose):
    cfg = config.load(DEPLOY / "server.toml")
    services = compose["services"]
    assert cfg.central_broker.host == "mosquitto" and cfg.central_broker.port == 1883
    assert services["mosquitto"]["ports"][0].endswith(":1883")
    assert cfg.kafka.bootstrap_servers == ("kafka:9092",)
    assert "PLAINTEXT://kafka:9092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    db_env = services["timescaledb"]["environment"]
    assert (cfg.postgres.host, cfg.postgres.port) == ("timescaledb", 5432)
    assert (cfg.postgres.dbname, cfg.postgres.user) == (db_env["POSTGRES_DB"], db_env["POSTGRES_USER"])
    env = services["edge-server"]["environment"]
    # Secrets reach the server through EDGE_<SECTION>_<KEY> overrides of empty config values.
    assert not cfg.postgres.password and not cfg.central_broker.password
    assert env["EDGE_POSTGRES_PASSWORD"] == db_env["POSTGRES_PASSWORD"]
    loaded = config.from_mapping(tomllib.loads((DEPLOY / "server.toml").read_text()),
                                 env={k: "x" for k in env})
    assert loaded.postgres.password.reveal() == "x" and loaded.central_broker.password.reveal() == "x"
    assert cfg.metrics.host == "0.0.0.0" and str(cfg.metrics.port) in services["edge-server"]["expose"]
    assert f"{cfg.metrics.port}/healthz" in " ".join(services["edge-server"]["healthcheck"]["test"])


def test_prometheus_scrapes_the_server_and_loads_the_alert_rules(compose):
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg = config.load(DEPLOY / "server.toml")
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "edge-server"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["edge-server"] and sd["port"] == cfg.metrics.port
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_grafana_provisions_the_datasource_the_dashboard_uses(compose):
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["url"] == "http://prometheus:9090"
    dashboard = (DEPLOY / "grafana" / "dashboards" / "edge-overview.json").read_text()
    uids = set(re.findall(r'"uid":\s*"(\w+)"', dashboard)) - {"edge-overview"}
    assert uids == {source["uid"]}
    providers = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "edge.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in compose["services"]["grafana"]["volumes"]


def test_the_acl_confines_each_gateway_to_its_own_prefix():
    acl = (DEPLOY / "mosquitto" / "acl").read_text()
    patterns = [line for line in acl.splitlines() if line.startswith("pattern ")]
    writes = [p for p in patterns if p.startswith("pattern write")]
    assert writes and all(" edge/%u/" in p for p in writes)  # each writes only under its own id
    assert "pattern write edge/%u/up" in patterns
    # Everyone may read what the receivers announce (nothing else outside its own prefix).
    assert [p for p in patterns if " edge/%u/" not in p] == ["pattern read edge/receivers/+/status"]
    cfg = config.load(DEPLOY / "server.toml")
    assert f"user {cfg.central_broker.username}" in acl
    conf = (DEPLOY / "mosquitto" / "central.conf").read_text()
    assert "allow_anonymous false" in conf and "acl_file /mosquitto/config/acl" in conf
