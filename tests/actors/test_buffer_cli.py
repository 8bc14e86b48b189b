"""`edge buffer`: JSON views of a buffer, read-only while the gateway writes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import msgpack

from edge.actors.buffer import PRIORITY_HIGH, PRIORITY_TELEMETRY, BufferDB, Entry
from edge.codecs.records import Measurement, Status
from edge.codecs.uplink import to_wire

EDGE = shutil.which("edge", path=str(Path(sys.executable).parent)) or "edge"
T = datetime(2026, 7, 26, 10, tzinfo=UTC)


def edge(*args):
    return subprocess.run([EDGE, *args], capture_output=True, text=True, timeout=60)


def test_stats_peek_export_and_purge(tmp_path):
    path = tmp_path / "buffer.db"
    (tmp_path / "gw.toml").write_text(f'[buffer]\npath = "{path}"\n')
    db = BufferDB(str(path))  # stays open, as a running gateway's would
    m = Measurement(T, "pm-1", None, None, None, "voltage_dc", 756.3, "V", "iot/pm-1/telemetry")
    s = Status(T, "pm-1", "iot/pm-1/status", 4, "offline")
    db.append((Entry(PRIORITY_TELEMETRY, msgpack.packb(to_wire(m))),) * 3
             + (Entry(PRIORITY_HIGH, msgpack.packb(to_wire(s))),), {}, 1, 1)
    config = str(tmp_path / "gw.toml")

    stats = json.loads(edge("buffer", "stats", "--config", config).stdout)
    assert stats["depth"] == 4 and stats["by_priority"]["0"]["records"] == 1
    assert stats["boot_epoch"] == 1 and stats["next_seq"] == 5

    peek = [json.loads(line) for line in edge("buffer", "peek", "--config", config,
                                              "--limit", "2").stdout.splitlines()]
    assert [p["seq"] for p in peek] == [4, 1]  # priority class first
    assert peek[0]["record"]["type"] == "status" and peek[1]["record"]["value"] == 756.3

    exported = edge("buffer", "export", "--config", config).stdout.splitlines()
    assert len(exported) == 4

    refused = edge("buffer", "purge", "--config", config)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    done = edge("buffer", "purge", "--config", config, "--yes")
    assert json.loads(done.stdout)["purged"] == 4
    db.close()


def test_a_missing_buffer_is_a_clear_error(tmp_path):
    (tmp_path / "gw.toml").write_text(f'[buffer]\npath = "{tmp_path / "none.db"}"\n')
    result = edge("buffer", "stats", "--config", str(tmp_path / "gw.toml"))
    assert result.returncode == 2 and result.stderr.startswith("edge buffer: cannot open")


def test_purge_gives_the_space_back_and_dead_letters_are_listed(tmp_path):
    path = tmp_path / "buffer.db"
    (tmp_path / "gw.toml").write_text(f'[buffer]\npath = "{path}"\n')
    db = BufferDB(str(path))
    m = Measurement(T, "pm-1", None, None, None, "voltage_dc", 756.3, "V", "iot/pm-1/telemetry" + "x" * 400)
    db.append((Entry(PRIORITY_TELEMETRY, msgpack.packb(to_wire(m))),) * 5000, {}, 1, 1)
    db.dead_letter((7,), "unframable: test")
    config = str(tmp_path / "gw.toml")
    (dead,) = [json.loads(line) for line in edge("buffer", "dead", "--config", config).stdout.splitlines()]
    assert dead["seq"] == 7 and dead["reason"] == "unframable: test" and dead["record"]["value"] == 756.3
    assert json.loads(edge("buffer", "stats", "--config", config).stdout)["dead_letters"] == 1
    db.close()
    done = json.loads(edge("buffer", "purge", "--config", config, "--yes").stdout)
    assert done["purged"] == 4999 and done["bytes_freed"] > 1_000_000
