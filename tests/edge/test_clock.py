"""The steady clock: durations that a step of the system clock does not move."""

from __future__ import annotations

import pytest
from fakes import Clocks

from edge.runtime import clock


def test_the_steady_clock_follows_time_passing_and_ignores_steps_of_the_system_clock():
    clocks = Clocks()
    steady = clocks.steady()
    start = steady()
    assert start == clocks.system
    clocks.advance(10)
    clocks.step(-3_600)
    clocks.advance(5)
    assert steady() == start + 15 and steady.wall() == clocks.system


def test_a_step_is_reported_once_with_its_size_and_slewing_is_not_a_step(caplog):
    clocks = Clocks()
    steady = clocks.steady()
    steps = clock.STEPS._value.get()
    clocks.step(1.5)  # below the tolerance: NTP slewing, a late tick
    assert steady.step("test") == 0.0
    clocks.step(86_400 - 1.5)
    assert steady.step("test") == pytest.approx(86_400)
    assert steady.step("test") == 0.0  # told once
    clocks.step(-90_000)
    assert steady.step("test") == pytest.approx(-90_000)
    assert clock.STEPS._value.get() == steps + 2
    assert clock.SKEW._value.get() == pytest.approx(-3_600)
    assert [r.getMessage().count("clock_stepped") for r in caplog.records].count(1) == 2


def test_catching_up_moves_the_clock_forward_only():
    clocks = Clocks()
    steady = clocks.steady()
    steady.catch_up(clocks.system - 100)  # stored earlier: nothing to do
    assert steady() == clocks.system
    steady.catch_up(clocks.system + 3_600)  # stored later (the clock was set back while stopped)
    assert steady() == clocks.system + 3_600
    clocks.advance(1)
    assert steady() == clocks.system + 3_600
    assert steady.step("test") == 0.0  # the catch-up is not a step seen while running


def test_a_test_can_step_the_clock_of_a_running_process_through_a_file(tmp_path, monkeypatch):
    offset = tmp_path / "offset"
    offset.write_text("-3600")
    wall = clock._FaultOffset(str(offset))
    assert wall() == pytest.approx(clock.time.time() - 3_600, abs=1)
    offset.write_text("86400")
    monkeypatch.setattr(wall, "read_at", -1.0)  # the next read is due
    assert wall() == pytest.approx(clock.time.time() + 86_400, abs=1)
