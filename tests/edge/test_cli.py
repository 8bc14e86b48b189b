"""The `edge` command as installed: subcommands, exit codes, messages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EDGE = shutil.which("edge", path=str(Path(sys.executable).parent)) or "edge"


def edge(*args, **kw):
    return subprocess.run([EDGE, *args], capture_output=True, text=True, timeout=60, **kw)


def test_help_lists_only_commands_that_exist():
    from edge.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if a.dest == "command"]
    assert sorted(commands.choices) == ["buffer", "command", "config", "decode", "demo", "gateway", "market",
                                       "receiver", "registry", "server", "simulate", "status", "version"]
    assert edge("--help").returncode == 0
    result = edge("api")
    assert result.returncode == 2 and "invalid choice: 'api'" in result.stderr
    (market,) = [a for a in commands.choices["market"]._actions if a.dest == "market_command"]
    assert sorted(market.choices) == ["fetch", "plan"]
    (verbs,) = [a for a in commands.choices["command"]._actions if a.dest == "command_action"]
    assert sorted(verbs.choices) == ["list", "pause", "resume", "send"]


@pytest.mark.parametrize("path", ["deploy/pi/gateway.toml", "deploy/server/server.toml"])
def test_config_check_accepts_the_samples(path):
    result = edge("config", "check", str(REPO / path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{REPO / path}: ok"


def test_config_check_lists_every_problem_and_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[metrics]\nprot = 1\n[log]\nformat = "xml"\n')
    result = edge("config", "check", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"edge: {bad} is invalid: 2 problem(s)",
        "  log.format: must be one of 'kv', 'json', got 'xml'",
        "  metrics.prot: unknown key; did you mean 'port'? (known: enabled, host, port)",
    ]
    assert "Traceback" not in result.stderr


def test_config_show_masks_secrets_including_those_from_the_environment():
    env = {"EDGE_POSTGRES_PASSWORD": "hunter2", "PATH": "/usr/bin:/bin"}
    result = edge("config", "show", str(REPO / "deploy/server/server.toml"), env=env)
    assert result.returncode == 0
    assert "hunter2" not in result.stdout
    assert '[postgres]' in result.stdout and 'password = "********"' in result.stdout


def test_version():
    from edge import __version__

    assert edge("version").stdout.strip() == f"edge {__version__}"


@pytest.mark.parametrize("sections, says", [
    ('[decoder]\nregistry = "/bin/ls"\n', "decoder.registry: /bin/ls is not UTF-8 text"),
    ('[decoder]\nregistry = "REG"\n[buffer]\npath = "/proc/edge/buffer.db"\n',
     "buffer.path: cannot create or write /proc/edge/buffer.db"),
    ('[decoder]\nregistry = "REG"\n[buffer]\npath = "TMP"\n', "buffer.path: TMP is a directory"),
])
def test_a_gateway_that_cannot_run_with_its_config_says_why_in_one_message_and_exits_2(tmp_path, sections, says):
    sections = sections.replace("REG", str(REPO / "fixtures" / "registry.toml")).replace("TMP", str(tmp_path))
    config = tmp_path / "gw.toml"
    config.write_text(f'[metrics]\nenabled = false\n[commands]\npath = "{tmp_path}/c.db"\n' + sections)
    result = edge("gateway", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert says.replace("TMP", str(tmp_path)) in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["send", "pm-1", "launch"], "'launch' is not a v2 command"),
    (["send", "pm-1", "set_power"], "set_power needs --param power_kw=<kW>"),
    (["send", "pm-1", "set_power", "--param", "power_kw=lots"], "set_power needs --param power_kw=<kW>"),
    (["send", "pm/1", "reboot"], "'pm/1' is not a device id"),
    (["send", "f2-1", "strike", "--kind", "f2", "--topic", "cmnd/f2-2/x"], "needs --topic cmnd/f2-1/"),
    (["send", "pm-1", "reboot", "--param", "novalue"], "--param 'novalue' is not KEY=VALUE"),
    (["send", "pm-1", "reboot", "--valid-for", "0s"], "a duration from 1 s to 30 days"),
    (["send", "pm-1", "reboot", "--valid-for", "soon"], "not a duration"),
])
def test_a_command_that_cannot_be_sent_is_refused_before_the_database(args, message, tmp_path):
    config = tmp_path / "server.toml"
    config.write_text('[postgres]\nport = 9\n')  # nothing listens: refused before it is asked
    result = edge("command", *args, "--config", str(config))
    assert result.returncode == 2 and message in result.stderr, result.stderr
