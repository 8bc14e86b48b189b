"""The ledger compares by identity and by value: a count alone misses a collapse."""

from __future__ import annotations

import pytest
from harness import REPO

from edge.tools import ledger
from edge.tools.simulate import Traffic


def line(device: str, time: str, **values: float) -> dict:
    return {"device_id": device, "time": time, "records": len(values), "values": values}


SENT = [line("m1", "t1", power=1.0, voltage=230.0), line("m1", "t2", power=2.0, voltage=230.0),
        {"device_id": "m1", "time": "t3", "records": 0, "events": 1}]


def test_every_record_once_with_its_value_balances():
    rows = [("m1", "t1", "power", 1.0), ("m1", "t1", "voltage", 230), ("m1", "t2", "power", 2.0),
            ("m1", "t2", "voltage", 230.0), ("other", "t1", "power", 9.0)]  # not the ledger's: ignored
    b = ledger.compare(SENT, rows)
    assert b.balanced and (b.expected, b.stored) == (4, 4)


def test_a_value_stored_in_place_of_another_fails_where_a_count_passes():
    rows = [("m1", "t1", "power", 1.0), ("m1", "t1", "voltage", 230.0), ("m1", "t2", "power", 1.0),
            ("m1", "t2", "voltage", 230.0)]  # t2's power is t1's: four rows, as many as sent
    b = ledger.compare(SENT, rows)
    assert not b.balanced and b.stored == 3
    assert b.missing == [("m1", "t2", 2, 2)]
    assert b.wrong == [("m1", "t2", [("power", 2.0), ("voltage", 230.0)], [("power", 1.0), ("voltage", 230.0)])]


def test_a_row_stored_twice_and_one_lost_are_both_told():
    rows = [("m1", "t1", "power", 1.0), ("m1", "t1", "power", 1.0), ("m1", "t1", "voltage", 230.0),
            ("m1", "t2", "voltage", 230.0)]
    b = ledger.compare(SENT, rows)
    assert b.doubled == [("m1", "t1", 2, 3)] and b.missing == [("m1", "t2", 2, 1)] and b.wrong == []


@pytest.mark.parametrize("kind", ["f2", "v2", "ac", "homelab"])
def test_the_simulator_writes_a_value_for_every_record(kind):
    traffic = iter(Traffic(kind, 5, (REPO / "fixtures" / "registry.toml").read_text()))
    for _ in range(30):
        entry = next(traffic).ledger
        assert len(entry.get("values", {})) == entry["records"]


def test_the_ac_meter_decodes_to_its_ledger_values_within_the_protocols_ranges():
    from edge.codecs import registry as registry_mod
    from edge.codecs.dispatch import Dispatcher

    dispatcher = Dispatcher(registry_mod.loads((REPO / "fixtures" / "registry.toml").read_text()))
    traffic = iter(Traffic("ac", 3, None))
    seen = 0
    for _ in range(60):
        message = next(traffic)
        result = dispatcher.decode(message.topic, message.payload)
        values = {r.label: r.value for r in result.records if hasattr(r, "label")}
        assert not result.errors
        assert values == message.ledger.get("values", {})
        if values:
            seen += 1
            assert 24_000 <= values["voltage_ac"] <= 26_000 and 100 <= values["current_ac"] <= 200
            assert 49.9 <= values["frequency"] <= 50.1 and 0.92 <= values["pf"] <= 0.99
    assert seen > 30
