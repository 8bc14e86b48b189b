"""`edge decode`: records as JSON lines, exit 2 with one clear line on bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EDGE = shutil.which("edge", path=str(Path(sys.executable).parent)) or "edge"
REGISTRY = str(REPO / "fixtures" / "registry.toml")
FIELD_EXAMPLE = ('{"timestamp": "2023-05-25 15:13:10.543400", '
                 '"data": "01 03 0C 32 30 32 30 36 32 38 30 31 30 31 5B 18 28 01"}')


def decode(*args, stdin=None):
    return subprocess.run([EDGE, "decode", *args], capture_output=True, timeout=60, input=stdin)


def test_an_f2_sensor_frame_prints_one_record_per_data_point_with_exactly_the_keys():
    result = decode("--registry", REGISTRY, "cmnd/f2-E4FD45F654BE/sensor-mode/1/sensor-1", FIELD_EXAMPLE)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [list(r) for r in records] == [["time", "device_id", "connector_mode", "connector",
                                           "pin_position", "label", "value", "unit", "topic"]] * 3
    assert records[0] | {"label": None, "value": None, "unit": None} == {
        "time": "2023-05-25T15:13:10.543400Z", "device_id": "f2-e4fd45f654be",
        "connector_mode": "sensor-mode", "connector": 1, "pin_position": 1, "label": None,
        "value": None, "unit": None, "topic": "cmnd/f2-E4FD45F654BE/sensor-mode/1/sensor-1"}
    assert [(r["label"], r["value"], r["unit"]) for r in records] == [
        ("Temperature", 2.59, "°C"), ("Humidity", 31.22, "%"), ("CO2", 12338.0, "ppm")]


def test_a_bad_crc_exits_2_with_one_line_naming_field_and_offset():
    result = decode("--registry", REGISTRY, "tele/f2-0a1b2c3d4e5f/sensor-mode/J1/sensor-1", FIELD_EXAMPLE)
    assert result.returncode == 2 and result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("edge decode: bad_crc: CRC-16/MODBUS mismatch")
    assert "field=crc, offset=16" in lines[0] and "Traceback" not in lines[0]


def test_binary_payloads_come_as_hex_or_on_stdin():
    topic = "tele/f2-0a1b2c3d4e5f/alarm-mode/J2/sensor-2"
    as_hex = decode("--registry", REGISTRY, "--hex", "--received-at", "2026-01-01T00:00:00Z", topic, "0b024d20")
    raw = decode("--registry", REGISTRY, "--received-at", "2026-01-01T00:00:00Z", topic, "-",
                 stdin=bytes.fromhex("0b024d20"))
    assert as_hex.returncode == raw.returncode == 0
    assert as_hex.stdout == raw.stdout
    assert b'"label": "Battery Voltage", "value": 12.34' in raw.stdout


def test_events_print_their_fields_and_type():
    payload = json.dumps({"v": 2, "device_id": "m1", "ts": "2026-07-26T10:00:00Z", "seq": 3,
                          "msg_type": "status", "status": "online"})
    result = decode("iot/m1/status", payload)
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"type": "status", "time": "2026-07-26T10:00:00Z",
                                         "device_id": "m1", "topic": "iot/m1/status", "seq": 3,
                                         "status": "online"}


def test_garbage_is_one_line_never_a_traceback():
    for args in (["homelab/energy/m", "not json"], ["x/y", "{}"], ["--hex", "iot/a/hello", "zz"],
                 ["--registry", "/nonexistent.toml", "x/y", "{}"]):
        result = decode(*args)
        assert result.returncode == 2, args
        err = result.stderr.decode()
        assert len(err.splitlines()) == 1 and err.startswith("edge decode: ") and "Traceback" not in err


HUGE = "1" + "0" * 400
F2_EXIT = "tele/f2-e4fd45f654be/alarm-mode/J1/exit-buttons"
V2_HELLO = ('{"v":2,"device_id":"pm-1","ts":"2026-01-01T00:00:00Z","seq":1,"msg_type":"hello",'
            '"fw_version":"1","uptime_s":UPTIME,"broker_connections":1,"buf_usage_pct":1}')


def test_values_no_later_hop_can_carry_exit_2_naming_reason_and_field(tmp_path):
    cases = [
        (["iot/pm-1/hello", V2_HELLO.replace("UPTIME", "1e20")], "out_of_range", "uptime_s"),
        (["iot/pm-1/hello", V2_HELLO.replace("UPTIME", HUGE)], "bad_type", "uptime_s"),
        (["--registry", REGISTRY, F2_EXIT, '{"button_pressed":true,"button_id":18446744073709551616}'],
         "out_of_range", "pin_position"),
        (["homelab/energy/m", '{"power_\\ud800": 1}'], "bad_text", "label"),
        (["homelab/energy/m", '{"power": ' + HUGE + "}"], "bad_value", "power"),
        (["iot/pm-1/telemetry", '{"v":2,"device_id":"pm-1","ts":"2026-01-01T00:00:00Z","seq":1,'
          '"msg_type":"telemetry","measurements":[{"type":"v","val":' + HUGE + "}]}"],
         "bad_value", "measurements[0].val"),
        (["--registry", REGISTRY, "tele/f2-e4fd45f654be/access-control-mode/J1/reader-1",
          '{"card_id":"A1","signal_strength":' + HUGE + "}"], "bad_value", "signal_strength"),
    ]
    for args, reason, field in cases:
        result = decode(*args)
        err = result.stderr.decode()
        assert result.returncode == 2, (args, err)
        assert f"edge decode: {reason}: " in err and f"field={field}" in err, (args, err)
        assert "Traceback" not in err


def test_a_registry_the_decoder_cannot_use_is_one_line_never_a_traceback(tmp_path):
    bad = {"not-utf8.toml": b"\xff\xfe name = 1", "abc.toml": b'templates = "abc"',
           "list.toml": b"templates = [1]", "connectors.toml": b'[[controllers]]\nmac = "aabbccddeeff"\n'
           b"connectors = [1]", "offset.toml": b'[[templates]]\nname = "t"\n[[templates.data_points]]\n'
           b'label = "a"\nencoding = "Uint8"\noffset = 99999999999\nlength = 1\n'}
    for name, text in bad.items():
        (tmp_path / name).write_bytes(text)
        result = decode("--registry", str(tmp_path / name), "homelab/a/b", '{"x": 1}')
        err = result.stderr.decode()
        assert result.returncode == 2 and len(err.splitlines()) == 1, (name, err)
        assert err.startswith("edge decode: registry ") and "Traceback" not in err, (name, err)
