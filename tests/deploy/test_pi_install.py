"""deploy/pi/install.sh against a temporary root: install, check, upgrade, uninstall."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.config import MqttConfig, Secret
from edge.io.mqtt import make_client

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "pi" / "install.sh"
pytestmark = pytest.mark.slow


def run(*args, **kw):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kw)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    (root / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        if Path("/etc", name).exists():
            shutil.copy(Path("/etc", name), root / "etc" / name)
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, REPO)
    (wheel,) = dist.glob("*.whl")
    out = run("bash", INSTALL, "install", "--root", root, "--wheel", wheel, "--no-systemctl",
              "--no-apt", "--python", sys.executable)
    return root, wheel, out.stdout


def test_install_lays_out_user_venv_config_state_and_unit(installed):
    root, _, out = installed
    assert "edge:" in (root / "etc" / "passwd").read_text()
    edge = root / "opt" / "edge" / "venv" / "bin" / "edge"
    config = root / "etc" / "edge" / "gateway.toml"
    assert 'registry = "/etc/edge/registry.toml"' in config.read_text()
    assert (root / "etc" / "edge" / "registry.toml").exists()
    assert (root / "var" / "lib" / "edge").is_dir()
    env = root / "etc" / "edge" / "gateway.env"
    assert env.stat().st_mode & 0o777 == 0o600
    assert run(edge, "config", "check", config).stdout.strip().endswith(": ok")
    assert (root / "etc" / "systemd" / "system" / "edge-gateway.service").exists()
    # The gateway's dependencies only: no Kafka client, no PostgreSQL driver on the Pi.
    python = root / "opt" / "edge" / "venv" / "bin" / "python"
    probe = ("import importlib.util as u; print([m for m in ('pykka', 'paho', 'msgpack', 'sqlite_utils', "
             "'construct', 'kafka', 'psycopg') if u.find_spec(m)])")
    assert run(python, "-c", probe).stdout.strip() == "['pykka', 'paho', 'msgpack', 'sqlite_utils', 'construct']"


def test_the_unit_passes_systemd_analyze_verify(installed):
    root, _, _ = installed
    unit = root / "etc" / "systemd" / "system" / "edge-gateway.service"
    system = root / "usr" / "lib" / "systemd" / "system"  # the OS's own units, as on a Pi
    if not system.exists():
        shutil.copytree("/lib/systemd/system", system, symlinks=True)
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", str(unit)],
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines()
                if "edge-gateway.service" in line and "mosquitto.service" not in line]
    assert problems == [], result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_site_broker_config_runs_and_its_acl_holds_devices_to_their_topics(installed, tmp_path):
    root, _, _ = installed
    mosq = root / "etc" / "mosquitto"
    run("mosquitto_passwd", "-b", mosq / "edge-site.passwd", "pm-dc-0001", "device-secret")
    port = _free_port()
    site = (mosq / "conf.d" / "edge-site.conf").read_text()
    site = site.replace("listener 1883", f"listener {port} 127.0.0.1").replace("/etc/mosquitto/", f"{mosq}/")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "edge-site.conf").write_text(site)
    (tmp_path / "data").mkdir()
    # The distribution's main config, as on the Pi, including our conf.d.
    (tmp_path / "mosquitto.conf").write_text(
        f"persistence true\npersistence_location {tmp_path}/data/\nlog_dest file {tmp_path}/log\n"
        f"include_dir {tmp_path}/conf.d\nuser root\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "mosquitto.conf")])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        password = (root / "etc" / "edge" / "gateway.env").read_text().split("EDGE_SITE_BROKER_PASSWORD=")[1].strip()
        gateway = _connect(port, "edge-gateway", password)
        got = []
        gateway.on_message = lambda c, u, m: got.append(m.topic)
        gateway.subscribe("#", qos=1)
        time.sleep(0.3)
        device = _connect(port, "pm-dc-0001", "device-secret")
        own = device.publish("iot/pm-dc-0001/telemetry", b"{}", qos=1)
        other = device.publish("iot/pm-dc-0002/telemetry", b"{}", qos=1)
        own.wait_for_publish(5)
        other.wait_for_publish(5)
        time.sleep(0.5)
        assert got == ["iot/pm-dc-0001/telemetry"]  # the other device's topic was refused
        with pytest.raises(ConnectionError):
            _connect(port, "pm-dc-0001", "wrong")
        for c in (gateway, device):
            c.disconnect()
            c.loop_stop()
    finally:
        broker.terminate()
        broker.wait(10)


def _connect(port: int, user: str, password: str) -> mqtt.Client:
    client = make_client(MqttConfig(port=port, username=user, password=Secret(password)),
                         f"{user}-{time.monotonic_ns()}")
    result = {}
    done = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: (result.setdefault("rc", rc), done.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    done.wait(5)
    if not done.is_set() or result["rc"].is_failure:
        client.loop_stop()
        raise ConnectionError(f"{user}: {result.get('rc')}")
    return client


def test_upgrade_keeps_config_secrets_and_buffer_and_uninstall_keeps_data(installed):
    root, wheel, _ = installed
    config = root / "etc" / "edge" / "gateway.toml"
    config.write_text(config.read_text() + "\n# edited by the operator\n")
    env_before = (root / "etc" / "edge" / "gateway.env").read_text()
    buffer = root / "var" / "lib" / "edge" / "buffer.db"
    buffer.write_bytes(b"records that are not confirmed yet")
    out = run("bash", INSTALL, "install", "--root", root, "--wheel", wheel, "--no-systemctl",
              "--no-apt", "--python", sys.executable).stdout
    assert "kept" in out and "# edited by the operator" in config.read_text()
    assert (root / "etc" / "edge" / "gateway.env").read_text() == env_before
    assert buffer.read_bytes() == b"records that are not confirmed yet"

    out = run("bash", INSTALL, "uninstall", "--root", root, "--no-systemctl").stdout
    assert not (root / "opt" / "edge").exists()
    assert not (root / "etc" / "systemd" / "system" / "edge-gateway.service").exists()
    assert buffer.exists() and config.exists() and "kept" in out
    run("bash", INSTALL, "uninstall", "--root", root, "--no-systemctl", "--purge")
    assert not buffer.exists() and not config.exists()
