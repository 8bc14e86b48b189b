"""Typed config: every problem at once, with its path; secrets never print."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from pathlib import Path

import pytest

from edge import config
from edge.errors import ConfigError
from edge.runtime import log

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ", ".join(sorted(f.name for f in dataclasses.fields(config.Config)))


def problems(data, **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.from_mapping(data, **kw)
    return [str(p) for p in info.value.problems]


def test_an_empty_config_is_all_defaults():
    cfg = config.from_mapping({})
    assert cfg == config.Config()
    assert cfg.metrics.host == "127.0.0.1"


@pytest.mark.parametrize("path", ["deploy/pi/gateway.toml", "deploy/server/server.toml"])
def test_the_sample_configs_are_valid(path):
    cfg = config.load(REPO / path)
    assert cfg.node.id


def test_every_problem_is_reported_at_once_with_its_path():
    found = problems({
        "metrics": {"prot": 9000, "port": "9108"},
        "log": {"level": "verbose"},
        "nod": {"id": "x"},
        "supervision": {"max_restarts": 0, "window_s": True},
        "kafka": {"bootstrap_servers": "k:9092"},
    })
    assert found == [
        f"nod: unknown key; did you mean 'node'? (known: {SECTIONS})",
        "log.level: must be one of 'debug', 'info', 'warning', 'error', got 'verbose'",
        "metrics.prot: unknown key; did you mean 'port'? (known: enabled, host, port)",
        "metrics.port: expected an integer, got string '9108'",
        "supervision.max_restarts: must be greater than 0, got 0",
        "supervision.window_s: expected a number, got boolean True",
        "kafka.bootstrap_servers: expected a list, got string 'k:9092'",
    ]


def test_range_checks_and_section_types_are_reported():
    assert problems({"site_broker": {"port": 70000}, "log": "debug"}) == [
        "log: expected a table, got string 'debug'",
        "site_broker.port: must be a TCP port (1-65535), got 70000",
    ]


def test_a_file_that_is_not_toml_names_the_file_and_the_line(tmp_path):
    bad = tmp_path / "gw.toml"
    bad.write_text("[metrics]\nport = \n")
    with pytest.raises(ConfigError) as info:
        config.load(bad)
    assert str(bad) in str(info.value)
    assert "not valid TOML" in str(info.value) and "line 2" in str(info.value)


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read file"):
        config.load(tmp_path / "nope.toml")


def test_secrets_never_print_in_repr_dump_or_logs():
    cfg = config.from_mapping({"postgres": {"password": "hunter2"},
                               "central_broker": {"password": "s3cret"}})
    assert cfg.postgres.password.reveal() == "hunter2"
    stream = io.StringIO()
    log.setup("info", "kv", stream=stream)
    log.get("test").info("config_loaded", config=cfg)
    logging.getLogger().handlers.clear()
    for text in (repr(cfg), str(cfg), config.dump(cfg), stream.getvalue()):
        assert "hunter2" not in text and "s3cret" not in text
        assert "********" in text


def test_environment_variables_override_secrets_only():
    cfg = config.from_mapping(
        {"postgres": {"password": "from-file", "user": "file-user"}},
        env={"EDGE_POSTGRES_PASSWORD": "from-env", "EDGE_POSTGRES_USER": "env-user",
             "EDGE_CENTRAL_BROKER_PASSWORD": "broker"},
    )
    assert cfg.postgres.password.reveal() == "from-env"
    assert cfg.postgres.user == "file-user"
    assert cfg.central_broker.password.reveal() == "broker"


def test_dump_is_toml_that_loads_back_to_the_same_config():
    import tomllib

    cfg = config.from_mapping({"central_broker": {"username": 'gw "quoted"'},
                               "kafka": {"bootstrap_servers": ["a:1", "b:2"]}})
    again = config.from_mapping(tomllib.loads(config.dump(cfg)))
    assert again == cfg


@pytest.mark.parametrize("section, key, value, says", [
    ("node", "id", "site/01", "one MQTT topic level"),
    ("node", "id", "+", "one MQTT topic level"),
    ("node", "id", "a" * 300, "one MQTT topic level"),
    ("node", "id", "$SYS", "one MQTT topic level"),
    ("central_broker", "reconnect_max_s", float("inf"), "finite number"),
    ("supervision", "stop_timeout_s", float("inf"), "finite number"),
    ("supervision", "stop_timeout_s", float("nan"), "finite number"),
    ("uplink", "confirm_timeout_s", 1e300, "finite number of at most"),
    ("source", "receive_maximum", 70_000, "1 to 65535"),
    ("site_broker", "keepalive_s", 100_000, "1 to 65535"),
    ("source", "session_expiry_s", 2**40, "4294967295"),
    ("buffer", "path", "", "file path"),
    ("buffer", "path", "/var/lib/edge/", "not a directory"),
    ("receiver", "share_group", "a/b", "one MQTT topic level"),
    ("kafka", "raw_topic", "raw topic", "Kafka topic name"),
    ("bridge", "mappings", ["cmnd/# -> no such/topic"], "Kafka topic"),
    ("uplink", "max_frame_bytes", 100 * 1024**2, "65536 to 4194304"),
    ("kafka", "max_message_bytes", 1000, "1048576 to"),
])
def test_values_the_runtime_cannot_run_with_are_refused_with_their_path(section, key, value, says):
    with pytest.raises(ConfigError) as info:
        config.from_mapping({section: {key: value}})
    (problem,) = info.value.problems
    assert problem.path == f"{section}.{key}" and says in problem.message, problem


def test_paths_and_tls_files_are_checked_on_the_machine_before_anything_starts(tmp_path):
    from edge import app

    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    cfg = config.from_mapping({
        "buffer": {"path": str(readonly / "sub" / "buffer.db")},
        "commands": {"path": str(tmp_path)},
        "site_broker": {"tls": True, "ca_file": str(tmp_path / "missing.crt")},
    })
    with pytest.raises(ConfigError) as info:
        app.preflight(cfg, "gateway")
    paths = {p.path: p.message for p in info.value.problems}
    if os.getuid() != 0:  # root writes anywhere
        assert "cannot create or write" in paths.pop("buffer.path")
    paths.pop("buffer.path", None)
    assert paths == {"commands.path": f"{tmp_path} is a directory",
                     "site_broker.ca_file": f"{tmp_path / 'missing.crt'} is missing or not readable"}
    app.preflight(config.from_mapping({"buffer": {"path": str(tmp_path / "a" / "b.db")},
                                       "commands": {"path": str(tmp_path / "c.db")}}), "gateway")
