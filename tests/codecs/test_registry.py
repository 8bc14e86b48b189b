"""The registry file: field templates load, and every problem is named with its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.codecs import registry
from edge.codecs.errors import RegistryError

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_registry_has_the_field_installation():
    reg = registry.loads((REPO / "fixtures" / "registry.toml").read_text())
    env = reg.template("Environmental Sensor")
    assert [(p.label, p.encoding, p.offset, p.length, p.decimals, p.unit) for p in env.data_points] == [
        ("Temperature", "Int16", 0, 2, 2, "°C"), ("Humidity", "Uint16", 2, 2, 2, "%"),
        ("CO2", "Uint16", 4, 2, 0, "ppm")]
    power = reg.template("Power Monitor")
    assert [(p.label, p.encoding, p.decimals, p.unit) for p in power.data_points] == [
        ("Voltage", "Uint16", 1, "V"), ("Current", "Int16", 3, "A")]
    assert reg.pin("E4FD45F654BE", 1, 1).device == "Living Room Env Sensor"
    assert reg.pin("abc123def456", 2, 2).template == "Power Monitor"
    assert reg.pin("123456abcdef", 4, 3).device == "Bedroom Env Sensor"
    assert reg.pin("123456abcdef", 4, 4) is None
    encodings = {p.encoding for t in reg.templates for p in t.data_points}
    assert encodings == {"Int8", "Uint8", "Int16", "Uint16", "Int32", "Uint32", "Float32", "Bits"}
    orders = {p.byte_order for t in reg.templates for p in t.data_points}
    assert orders == {"big", "little", "word-swapped"}


def test_every_problem_in_a_registry_is_named_with_its_path():
    text = """
[[templates]]
name = "Broken"
framing = "modbus"
  [[templates.data_points]]
  label = "A"
  encoding = "Int16"
  offset = 0
  length = 4
  [[templates.data_points]]
  label = "A"
  encoding = "Int24"
  offset = -1
  length = 3
  decimals = 12
  colour = "red"

[[controllers]]
mac = "e4:fd:45:f6:54:be"
  [[controllers.connectors]]
  number = 7
    [[controllers.connectors.pins]]
    position = 1
    device = "x"
    template = "Missing"
"""
    with pytest.raises(RegistryError) as info:
        registry.loads(text)
    message = str(info.value)
    for expected in [
        "templates[Broken].framing: must be one of none, modbus-rtu, got 'modbus'",
        "templates[Broken].data_points[0].length: Int16 is 2 bytes, length says 4",
        "templates[Broken].data_points[1].encoding: must be one of Int8",
        "templates[Broken].data_points[1].offset: must be 0 to 262144, got -1",
        "templates[Broken].data_points[1].decimals: must be 0 to 9, got 12",
        "templates[Broken].data_points[1].colour: unknown key",
        "templates[Broken].data_points: label 'A' is used twice",
        "controllers[0].mac: must be 12 hex digits without separators",
        ".connectors[0].number: must be 1 to 4, got 7",
        ".pins[1].template: unknown template 'Missing'",
    ]:
        assert expected in message, expected


def test_a_modbus_template_may_not_read_its_header():
    text = """
[[templates]]
name = "M"
framing = "modbus-rtu"
  [[templates.data_points]]
  label = "A"
  encoding = "Uint16"
  offset = 1
  length = 2
"""
    with pytest.raises(RegistryError, match=r"offset 1 is inside the Modbus header"):
        registry.loads(text)


def test_a_registry_that_is_not_toml_is_a_registry_error():
    with pytest.raises(RegistryError, match="not valid TOML"):
        registry.loads("[[templates]\n")


@pytest.mark.parametrize("text, problem", [
    ('templates = "abc"', "templates: expected an array of tables ([[templates]]), got str"),
    ("templates = [1]", "templates[0]: expected a table, got int"),
    ('[[controllers]]\nmac = "aabbccddeeff"\nconnectors = [1]',
     "controllers[aabbccddeeff].connectors[0]: expected a table, got int"),
    ('[[templates]]\nname = "t"\n[[templates.data_points]]\nlabel = "a"\nencoding = "Uint8"\n'
     "offset = 99999999999\nlength = 1", "offset: must be 0 to 262144, got 99999999999"),
    ('[[templates]]\nname = "t"\n[[templates.data_points]]\nlabel = "a\\u0000"\nencoding = "Uint8"\n'
     "offset = 0\nlength = 1", "label contains NUL"),
    ('[[topics]]\nfilter = "a/#/b"\ncodec = "homelab"', "'a/#/b' is not an MQTT topic filter"),
])
def test_a_registry_of_the_wrong_shape_is_a_problem_with_its_path_never_a_traceback(text, problem):
    with pytest.raises(RegistryError) as info:
        registry.loads(text)
    assert problem in str(info.value)


def test_assets_load_with_their_defaults_and_every_mistake_is_named():
    reg = registry.loads((REPO / "fixtures" / "registry.toml").read_text())
    battery, pv = reg.assets
    assert (battery.id, battery.kind, battery.device, battery.capacity_kwh, battery.charge_kw,
            battery.soc_min_kwh, battery.soc_label, battery.soc_unit) == (
        "bat-site-1", "battery", "bat-0001", 200.0, 100.0, 20.0, "soc", "%")
    assert (pv.kind, pv.max_kw) == ("pv", 250.0)
    short = registry.loads('[[assets]]\nid = "b"\nkind = "battery"\ndevice = "d"\ncapacity_kwh = 10\n'
                           'power_kw = 5\nefficiency = 0.8\n').assets[0]
    assert (short.charge_kw, short.discharge_kw, short.soc_min_kwh, short.soc_max_kwh, short.cooldown_s) == (
        5.0, 5.0, 0.0, 10.0, 600.0)
    text = """
[[assets]]
id = "b"
kind = "battery"
device = "d"
gateway = "gw/+"
capacity_kwh = 100
power_kw = 50
charge_kw = 3
efficiency = 1.5
soc_max_kwh = 200
soc_unit = "Wh"
colour = "red"

[[assets]]
id = "b"
kind = "windmill"
device = "e"

[[assets]]
id = "p"
kind = "pv"
device = "f"
max_kw = -1
"""
    with pytest.raises(RegistryError) as caught:
        registry.loads(text)
    message = str(caught.value)
    for expected in ("assets[0].colour: unknown key", "assets[b].gateway: 'gw/+' is not a gateway id",
                     "assets[b].power_kw: give power_kw, or charge_kw and discharge_kw, not both",
                     "assets[b].efficiency: must be 0 to 1, got 1.5",
                     "assets[b].soc_max_kwh: must hold soc_min_kwh (0) <= soc_max_kwh (200) <= capacity_kwh (100)",
                     "assets[b].soc_unit: must be % or kWh", "assets[b].kind: must be one of battery, pv",
                     "assets[p].max_kw: must be 0 to 1e+06, got -1", "assets[b]: asset id used twice"):
        assert expected in message, (expected, message)
