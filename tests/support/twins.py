"""Two distinct readings with one key, for each device family: the second message of each
pair has the first's device, time and labels and other values (and, where the family
has one, another identity: v2 ``seq``, asset ``event_id``). A store must keep both or
count the conflict; never drop one silently."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from edge.codecs import registry
from edge.codecs.dispatch import Dispatcher
from edge.codecs.records import Measurement

REPO = Path(__file__).resolve().parents[2]
DISPATCHER = Dispatcher(registry.loads((REPO / "fixtures" / "registry.toml").read_text()))
RECEIVED = datetime(2026, 7, 26, 12, tzinfo=UTC)


class Twins(NamedTuple):
    family: str
    topic: str
    first: bytes
    second: bytes
    differing: int  # readings of the second message whose value differs from the first's


def _v2() -> Twins:
    doc = json.loads((REPO / "fixtures/codecs/v2-telemetry/payload").read_bytes())
    other = json.loads(json.dumps(doc))
    other["seq"] += 1
    other["measurements"][0]["val"] += 1.0  # same ts, another seq, one value differs
    return Twins("v2", "iot/pm-dc-001/telemetry", json.dumps(doc).encode(), json.dumps(other).encode(), 1)


def _asset() -> Twins:
    doc = json.loads((REPO / "fixtures/codecs/asset-telemetry/payload").read_bytes())
    other = json.loads(json.dumps(doc))
    other["header"]["event_id"] = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
    other["measurements"] = {k: v + 1.0 for k, v in doc["measurements"].items()}
    return Twins("asset", "site/inverters/INV-ES-GRA-001/telemetry", json.dumps(doc).encode(),
                 json.dumps(other).encode(), len(doc["measurements"]))


def _f2() -> Twins:
    topic = "stat/f2-123456abcdef/sensor-mode/4/sensor-3"
    first = {"timestamp": "2023-05-25 15:13:10.543400", "data": "0A2813880190"}
    second = {**first, "data": "0A3213880190"}  # temperature 26.0 -> 26.1, humidity as it was
    return Twins("f2", topic, json.dumps(first).encode(), json.dumps(second).encode(), 1)


def _homelab() -> Twins:
    doc = json.loads((REPO / "fixtures/codecs/homelab-energy-meter/payload").read_bytes())
    return Twins("homelab", "homelab/energy/meter1", json.dumps(doc).encode(),
                 json.dumps({**doc, "power_kw": doc["power_kw"] + 0.5}).encode(), 1)


TWINS = [_v2(), _asset(), _f2(), _homelab()]


def readings(topic: str, payload: bytes) -> list[Measurement]:
    result = DISPATCHER.decode(topic, payload, RECEIVED)
    assert not result.errors, result.errors
    return [r for r in result.records if isinstance(r, Measurement)]
