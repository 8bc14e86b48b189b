"""Fixtures of the integration tests: a Site (gateway and receiver configs in tmp_path, on
the test brokers), stopped with everything it started."""

from __future__ import annotations

import pytest
from harness import Site


@pytest.fixture
def site(tmp_path, site_mqtt, central_mqtt, unique, request):
    """``@pytest.mark.gateway_config({...})`` overrides sections of the gateway's config."""
    marker = request.node.get_closest_marker("gateway_config")
    s = Site(tmp_path, unique, site_mqtt.port, central_mqtt.port, overrides=marker.args[0] if marker else {})
    yield s
    s.stop_all()
