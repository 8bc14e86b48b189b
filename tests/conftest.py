"""Fixtures shared by the whole suite.

Integration tests talk to the real services that ``scripts/services up`` starts. Their
addresses come from the environment (``scripts/services env``); when a service is not
reachable the test *fails*: a skipped integration test would hide a broken harness.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _service_env() -> dict[str, str]:
    keys = ("EDGE_TEST_SITE_MQTT", "EDGE_TEST_CENTRAL_MQTT", "EDGE_TEST_KAFKA", "EDGE_TEST_PG_DSN",
            "EDGE_TEST_TSDB_DSN")
    if all(k in os.environ for k in keys):
        return dict(os.environ)
    out = subprocess.run(
        [str(REPO / "scripts" / "services"), "env"], capture_output=True, text=True, check=True
    ).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env.setdefault(key, value)
    return env


def _endpoint(key: str) -> Endpoint:
    value = _service_env()[key]
    if value.startswith("postgresql://"):
        hostport = value.split("@", 1)[1].split("/", 1)[0]
    else:
        hostport = value
    host, _, port = hostport.rpartition(":")
    endpoint = Endpoint(host, int(port))
    try:
        socket.create_connection((endpoint.host, endpoint.port), timeout=2).close()
    except OSError as exc:
        pytest.fail(
            f"{key}={value} is not reachable ({exc}); start the services: scripts/services up",
            pytrace=False,
        )
    return endpoint


@pytest.fixture(scope="session")
def site_mqtt() -> Endpoint:
    return _endpoint("EDGE_TEST_SITE_MQTT")


@pytest.fixture(scope="session")
def central_mqtt() -> Endpoint:
    return _endpoint("EDGE_TEST_CENTRAL_MQTT")


@pytest.fixture(scope="session")
def kafka() -> Endpoint:
    return _endpoint("EDGE_TEST_KAFKA")


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    _endpoint("EDGE_TEST_PG_DSN")
    return _service_env()["EDGE_TEST_PG_DSN"]


@pytest.fixture(scope="session")
def tsdb_dsn() -> str:
    """The second cluster: the same PostgreSQL with TimescaleDB preloaded."""
    _endpoint("EDGE_TEST_TSDB_DSN")
    return _service_env()["EDGE_TEST_TSDB_DSN"]


STORAGES = {"postgres": "EDGE_TEST_PG_DSN", "timescaledb": "EDGE_TEST_TSDB_DSN"}


@pytest.fixture(params=list(STORAGES))
def storage_dsn(request) -> str:
    """A test that touches the server's storage runs on both: plain PostgreSQL (native
    partitions) and TimescaleDB (hypertable), each its own cluster."""
    _endpoint(STORAGES[request.param])
    return _service_env()[STORAGES[request.param]]


@pytest.fixture
def unique() -> str:
    """A name no other test uses: for topics, schemas, client ids, consumer groups."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _no_conditions_left_over():
    """edge.runtime.health.CONDITIONS is process-wide (as in a real process): each test starts clean."""
    from edge.runtime.health import CONDITIONS

    CONDITIONS.reset()
    yield
    CONDITIONS.reset()


SERVICE_FIXTURES = {"site_mqtt", "central_mqtt", "kafka", "pg_dsn", "tsdb_dsn", "storage_dsn"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a real service is an integration test, wherever it lives: marked
    so, whether or not its module says it (``-m "not integration"`` then runs without the
    services, and never talks to a broker another run is using)."""
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
