"""The storage decision and the TimescaleDB version floor: logic only (the real servers'
side is in test_pg.py)."""

from __future__ import annotations

import pytest

from edge.io.pg import MigrationError, decide_storage, timescale_problem


@pytest.mark.parametrize(("wanted", "available", "preloaded", "storage"), [
    ("auto", False, False, "postgres"),
    ("auto", True, True, "timescaledb"),
    ("postgres", True, True, "postgres"),
    ("postgres", True, False, "postgres"),
    ("timescaledb", True, True, "timescaledb"),
])
def test_a_new_database_takes_what_is_asked_and_what_the_server_can_do(wanted, available, preloaded, storage):
    assert decide_storage(None, wanted, available, preloaded) == storage


def test_installed_but_not_preloaded_is_an_error_that_says_how_to_preload_or_choose_plain():
    with pytest.raises(MigrationError) as err:
        decide_storage(None, "auto", True, False)
    assert "installed but not preloaded" in str(err.value)
    assert "shared_preload_libraries = 'timescaledb'" in str(err.value)
    assert 'storage = "postgres"' in str(err.value)
    with pytest.raises(MigrationError, match="not installed"):
        decide_storage(None, "timescaledb", False, False)


@pytest.mark.parametrize("server", [(False, False), (True, False), (True, True)])
def test_a_recorded_storage_is_followed_whatever_the_server_has_now(server):
    assert decide_storage("postgres", "auto", *server) == "postgres"
    assert decide_storage("postgres", "postgres", *server) == "postgres"
    with pytest.raises(MigrationError, match="keeps its storage"):
        decide_storage("postgres", "timescaledb", *server)


def test_a_timescaledb_database_on_a_server_that_no_longer_preloads_it_says_so():
    assert decide_storage("timescaledb", "auto", True, True) == "timescaledb"
    with pytest.raises(MigrationError, match="does not preload.*shared_preload_libraries"):
        decide_storage("timescaledb", "auto", True, False)
    with pytest.raises(MigrationError, match="keeps its storage"):
        decide_storage("timescaledb", "postgres", True, True)


@pytest.mark.parametrize(("version", "refused"), [
    ("2.17.2", True), ("2.18.0", True), ("2.9.3", True), ("1.7.5", True),
    ("2.18.1", False), ("2.22.1", False), ("2.23.0-dev", False), ("3.0.0", False), ("", False)])
def test_versions_before_2_18_1_are_refused_naming_the_bug(version, refused):
    problem = timescale_problem(version)
    assert (problem is not None) == refused
    if refused:
        assert "timescale/timescaledb#7672" in problem and "ALTER EXTENSION timescaledb UPDATE" in problem
