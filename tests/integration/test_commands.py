"""Commands from the server to a device and back, through real Mosquitto, Kafka and
PostgreSQL: `edge command send` -> device_commands -> the command actor -> central broker
-> gateway -> device -> its ack -> gateway -> receiver -> Kafka -> sink -> the row. A
gateway offline past the deadline: `expired`, and the device never sees the command. The
kill switch holds everything back; a device no gateway has heard is refused at once."""

from __future__ import annotations

import json
import queue
import subprocess
import time
import uuid

import pytest
from devices import FakeDevice
from harness import EDGE, make_server, wait_until

pytestmark = [pytest.mark.integration]


@pytest.fixture
def server(site, kafka, pg_dsn):
    srv = make_server(site, kafka, pg_dsn, server={"commands": True},
                      dispatch={"poll_s": 0.2, "answer_grace_s": 3.0})
    yield srv
    srv.drop()


def command(server, *args: str) -> str:
    out = subprocess.run([EDGE, "command", *args, "--config", str(server.site.tmp / "server.toml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def send(server, device: str, *args: str) -> str:
    return command(server, "send", device, *args).split()[0]


def state(server, cmd_id: str) -> tuple:
    return server.query("SELECT status, detail, sent_at IS NOT NULL FROM device_commands WHERE cmd_id = %s",
                        cmd_id)[0]


def test_a_command_travels_down_and_its_answers_come_back_onto_its_row(site, server, site_mqtt):
    meter = f"{site.name}-bat"
    site.start("server")
    site.start("gateway")
    device = FakeDevice(site_mqtt.port, meter, f"iot/{meter}/command")
    try:
        device.publish("hello", fw_version="2.4.1", uptime_s=3, broker_connections=1, buf_usage_pct=0.0)
        wait_until(lambda: server.query("SELECT gateway_id FROM device_state WHERE device_id = %s", meter)
                   == [(site.name,)], 60, "the device known with its gateway")

        cmd_id = send(server, meter, "set_power", "--param", "power_kw=-50", "--param", "valid_until=\"x\"",
                      "--valid-for", "60s")
        topic, doc = device.got.get(timeout=20)
        assert topic == f"iot/{meter}/command"
        assert (doc["cmd_id"], doc["cmd"], doc["params"]["power_kw"]) == (cmd_id, "set_power", -50)
        wait_until(lambda: state(server, cmd_id)[0] == "accepted", 60, "the device's ack on the row")
        assert state(server, cmd_id) == ("accepted", "applied", True)
        delivered = server.query("SELECT count(*) FROM device_events WHERE type = 'command_ack' "
                                 "AND body->>'cmd_id' = %s AND body->>'result' = 'delivered'", cmd_id)
        assert delivered == [(1,)]  # the gateway's own answer went up too
        listed = json.loads(command(server, "list", "--device", meter, "--json"))
        assert [(r["cmd_id"], r["status"]) for r in listed] == [(cmd_id, "accepted")]

        # The kill switch: nothing leaves while paused; resumed, it goes.
        command(server, "pause")
        held = send(server, meter, "request_status", "--valid-for", "60s")
        time.sleep(2)
        assert state(server, held)[0] == "pending" and device.got.empty()
        command(server, "resume")
        wait_until(lambda: state(server, held)[0] == "accepted", 60, "the held command after resume")
        assert device.got.get(timeout=5)[1]["cmd_id"] == held

        # A device no gateway has heard: refused at once, never retried.
        nowhere = send(server, f"{site.name}-nowhere", "reboot")
        wait_until(lambda: state(server, nowhere)[0] == "error", 30, "the unroutable command refused")
        assert "no gateway has heard this device" in state(server, nowhere)[1]

        # An ack for a command the server never sent: kept as an event, counted, nothing else.
        device.publish("command_ack", cmd_id=str(uuid.uuid4()), result="accepted")
        wait_until(lambda: site.metrics("server").get(
            'edge_sink_command_answers_unmatched_total{why="unknown_command"}', 0) == 1, 60, "the stray ack counted")

        # The gateway offline past the deadline: the command expires and the device never sees it.
        site.kill("gateway")
        late = send(server, meter, "reboot", "--valid-for", "4s")
        wait_until(lambda: state(server, late)[0] == "sent", 30, "the broker holding it for the gateway")
        wait_until(lambda: state(server, late)[0] == "expired", 30, "expired by its deadline")
        site.start("gateway")
        device.publish("hello", fw_version="2.4.1", uptime_s=9, broker_connections=2, buf_usage_pct=0.0)
        with pytest.raises(queue.Empty):
            device.got.get(timeout=6)
        assert state(server, late)[0] == "expired"
    finally:
        device.close()


def test_the_market_loop_a_negative_hour_becomes_a_setpoint_the_battery_obeys(site, kafka, pg_dsn, site_mqtt):
    """REData (a mirror) with this hour at -15 EUR/MWh and tomorrow at 150 -> the market
    actor's NEGATIVE_PRICE alert, once -> the command actor's set_power for the registry's
    battery, from its reported state of charge -> gateway -> the simulated battery charges and
    acks -> the row `accepted`."""
    from datetime import UTC, datetime, timedelta

    from mirror import Mirror, prices_answer

    from edge.config import MqttConfig
    from edge.market.battery import parse_battery
    from edge.market.schedule import MADRID, day_bounds
    from edge.tools.battery import SimBattery

    now = datetime.now(UTC)
    today = now.astimezone(MADRID).date()
    tomorrow = today + timedelta(days=1)
    start, end = day_bounds(today)
    hour = int((now - start).total_seconds() // 3600)
    n_today = int((end - start).total_seconds() // 3600)
    n_tomorrow = int((day_bounds(tomorrow)[1] - day_bounds(tomorrow)[0]).total_seconds() // 3600)
    mirror = Mirror().serve()
    mirror.answers[("prices", str(today))] = (200, prices_answer(
        str(today), [-15.0 if h == hour else 40.0 for h in range(n_today)]))
    mirror.answers[("prices", str(tomorrow))] = (200, prices_answer(str(tomorrow), [150.0] * n_tomorrow))
    device = f"{site.name}-bat"
    server = make_server(site, kafka, pg_dsn, server={"commands": True, "market": True},
                         dispatch={"poll_s": 0.2, "setpoints_s": 1.0},
                         market={"base_url": mirror.url, "backfill_days": 1, "day_ahead_at": "00:00", "flows": False,
                                 "attempts": 1, "alerts_topic": f"{site.name}.market-alerts"})
    registry = site.tmp / "assets.toml"
    registry.write_text(f'[[assets]]\nid = "{site.name}-bat"\nkind = "battery"\ndevice = "{device}"\n'
                        'capacity_kwh = 200.0\npower_kw = 100.0\nefficiency = 0.9\nsoc_min_kwh = 20.0\n'
                        'soc_max_kwh = 190.0\nsoc_label = "soc"\nsoc_unit = "%"\n')
    command(server, "pause")  # nothing moves until the battery has reported its charge
    subprocess.run([EDGE, "registry", "load", str(registry), "--config", str(site.tmp / "server.toml")], check=True,
                   capture_output=True, timeout=60)
    battery = SimBattery(MqttConfig(port=site_mqtt.port), device, parse_battery(
        "capacity_kwh=200,power_kw=100,efficiency=0.9,soc_kwh=40,soc_min_kwh=20,soc_max_kwh=190"), send_s=1.0)
    try:
        site.start("server")
        site.start("gateway")
        battery.start()
        wait_until(lambda: server.query("SELECT count(*) FROM iot_measurements WHERE device_id = %s "
                                        "AND label = 'soc'", device)[0][0] > 0, 60, "the battery's charge stored")
        wait_until(lambda: server.query("SELECT count(*) FROM alerts WHERE kind = 'NEGATIVE_PRICE' "
                                        "AND sent_at IS NOT NULL")[0][0] == 1, 60, "the negative hour's alert sent")
        command(server, "resume")
        mine = f"FROM device_commands WHERE source = 'market' AND asset_id = '{site.name}-bat'"
        wait_until(lambda: server.query(f"SELECT status {mine}") == [("accepted",)], 60,
                   "the market's setpoint accepted")
        (params, deadline), = server.query(f"SELECT params, deadline {mine}")
        assert 99 <= params["power_kw"] <= 100  # full charge at -15 for 150 tomorrow
        valid_from = datetime.fromisoformat(params["valid_from"])
        assert (deadline, deadline - valid_from) == (datetime.fromisoformat(params["valid_until"]), timedelta(hours=1))
        assert valid_from <= datetime.now(UTC) < deadline + timedelta(seconds=5)  # valid for this hour only
        wait_until(lambda: battery.power_kw > 0, 10, "the battery charging")
        time.sleep(3)  # more setpoint rounds: the same decision is not written again
        assert server.query(f"SELECT count(*) {mine}") == [(1,)]
        # The fixture registry's PV inverter is curtailed too, and refused: no gateway heard it.
        assert server.query("SELECT status, params->>'max_kw' FROM device_commands WHERE asset_id = 'pv-roof-1'"
                            ) == [("error", "0.0")]
    finally:
        battery.stop()
        mirror.close()
        server.drop()


def test_a_command_actor_that_dies_after_the_broker_took_a_command_sends_it_again_and_the_device_gets_it_once(
        site, server, site_mqtt):
    """The window between the central broker's PUBACK and the row's `sent`: the process
    dies there (EDGE_FAULT_EXIT_BEFORE_SENT), the row is still pending, the next process
    sends it again; the gateway keys commands by cmd_id, so the device gets it once."""
    meter = f"{site.name}-pm"
    site.start("gateway")
    site.start("server", env={"EDGE_FAULT_EXIT_BEFORE_SENT": "1"}, healthy=False)
    device = FakeDevice(site_mqtt.port, meter, f"iot/{meter}/command")
    try:
        device.publish("hello", fw_version="2.4.1", uptime_s=3, broker_connections=1, buf_usage_pct=0.0)
        wait_until(lambda: server.query("SELECT gateway_id FROM device_state WHERE device_id = %s", meter)
                   == [(site.name,)], 60, "the device known with its gateway")
        cmd_id = send(server, meter, "request_status", "--valid-for", "120s")
        assert site.processes["server"].wait(timeout=60) == 86  # died in the window
        assert state(server, cmd_id)[:1] == ("pending",)
        first = device.got.get(timeout=20)  # the broker had it: the gateway delivered it
        site.start("server")
        wait_until(lambda: state(server, cmd_id)[0] == "accepted", 60, "the command answered")
        assert server.query("SELECT attempts FROM device_commands WHERE cmd_id = %s", cmd_id) == [(1,)]
        with pytest.raises(queue.Empty):
            device.got.get(timeout=5)  # sent twice to the gateway, delivered to the device once
        assert first[1]["cmd_id"] == cmd_id
        acks = server.query("SELECT count(*) FROM device_events WHERE type = 'command_ack' AND body->>'cmd_id' = %s "
                            "AND body->>'result' = 'accepted'", cmd_id)
        assert acks == [(1,)]
    finally:
        device.close()


def test_a_device_on_the_central_broker_gets_its_command_there_and_its_ack_comes_back_through_the_bridge(
        site, kafka, pg_dsn, central_mqtt):
    from harness import to_toml

    server = make_server(site, kafka, pg_dsn, server={"commands": True, "bridge": True, "receiver": False},
                         dispatch={"poll_s": 0.2})
    server.config["bridge"]["mappings"].insert(0, f"iot/# -> {server.topics['raw']}")
    (site.tmp / "server.toml").write_text(to_toml(server.config))
    meter = f"{site.name}-direct"
    site.start("server")
    device = FakeDevice(central_mqtt.port, meter, f"iot/{meter}/command")
    try:
        device.publish("hello", fw_version="2.4.1", uptime_s=3, broker_connections=1, buf_usage_pct=0.0)
        wait_until(lambda: server.query("SELECT gateway_id FROM device_state WHERE device_id = %s", meter)
                   == [(None,)], 60, "the device known, through no gateway")
        cmd_id = send(server, meter, "update_config", "--param", "send_interval_s=5", "--valid-for", "60s")
        topic, doc = device.got.get(timeout=20)
        assert topic == f"iot/{meter}/command"
        assert (doc["v"], doc["cmd_id"], doc["cmd"], doc["params"]) == (2, cmd_id, "update_config",
                                                                        {"send_interval_s": 5})
        wait_until(lambda: state(server, cmd_id)[0] == "accepted", 60, "the ack through bridge and decoder")
        assert server.query("SELECT gateway_id FROM device_commands WHERE cmd_id = %s", cmd_id) == [(None,)]
    finally:
        device.close()
        server.drop()
