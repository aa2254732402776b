"""The Postgres primary and hot standby the harness starts (tests/standby.py): the standby
replays what the primary writes, refuses writes itself, survives a stop and a crash, can be
promoted, and every process of the pair is gone afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import started_postgres_pair, unique_identifier
from tests.standby import POSTGRES_BIN_ENV_VAR, PostgresPair, alive

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
READ_ONLY_SQL_TRANSACTION = "25006"


def write_rows(pair: PostgresPair, rows: int) -> str:
    """A new table on the primary holding ``rows`` rows; return its name."""
    table = unique_identifier("standby")
    with pair.primary.connect() as connection:
        connection.execute(f"CREATE TABLE {table} (n integer PRIMARY KEY)")
        connection.execute(
            f"INSERT INTO {table} SELECT generate_series(1, %s)",
            (rows,),
        )
    return table


def count_on_standby(pair: PostgresPair, table: str) -> int:
    return int(pair.standby.scalar(f"SELECT count(*) FROM {table}"))


def test_the_standby_replays_what_the_primary_writes(postgres_pair: PostgresPair) -> None:
    assert not postgres_pair.primary.in_recovery()
    assert postgres_pair.standby.in_recovery()
    table = write_rows(postgres_pair, 100_000)
    lag = postgres_pair.replication_lag()
    waited = postgres_pair.wait_caught_up()
    print(f"\nreplication lag after 100k rows: {lag} bytes, caught up in {waited * 1000:.0f} ms")
    assert count_on_standby(postgres_pair, table) == 100_000
    assert postgres_pair.replication_lag() == 0


def test_the_standby_refuses_writes(postgres_pair: PostgresPair) -> None:
    with (
        psycopg.connect(postgres_pair.standby_url, autocommit=True) as connection,
        pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as refused,
    ):
        connection.execute("CREATE TABLE refused (n integer)")
    assert refused.value.sqlstate == READ_ONLY_SQL_TRANSACTION


def test_a_stopped_standby_catches_up_once_started(postgres_pair: PostgresPair) -> None:
    postgres_pair.stop_standby()
    with pytest.raises(psycopg.OperationalError):
        postgres_pair.standby.connect()
    table = write_rows(postgres_pair, 10)
    postgres_pair.start_standby()
    postgres_pair.wait_caught_up()
    assert postgres_pair.standby.in_recovery()
    assert count_on_standby(postgres_pair, table) == 10


def test_a_killed_standby_recovers_once_started(postgres_pair: PostgresPair) -> None:
    killed = postgres_pair.standby.pids()
    postgres_pair.kill_standby()
    assert [pid for pid in killed if alive(pid)] == []
    assert postgres_pair.primary.pids(), "killing the standby killed the primary"
    table = write_rows(postgres_pair, 10)
    postgres_pair.start_standby()
    postgres_pair.wait_caught_up()
    assert postgres_pair.standby.in_recovery()
    assert count_on_standby(postgres_pair, table) == 10


def test_a_promoted_standby_takes_writes_and_destroy_leaves_nothing() -> None:
    with started_postgres_pair() as pair:
        table = write_rows(pair, 10)
        pair.wait_caught_up()
        pair.promote()
        assert not pair.standby.in_recovery()
        with pair.standby.connect() as connection:
            connection.execute(f"INSERT INTO {table} VALUES (11)")
        assert count_on_standby(pair, table) == 11
        pids, root = pair.pids(), pair.root
        assert len(pids) > 2  # both postmasters and their children
    assert [pid for pid in pids if alive(pid)] == []
    assert not root.exists()


@pytest.mark.parametrize(("ci", "fails"), [(None, False), ("true", True)])
def test_missing_binaries_skip_locally_and_fail_under_ci(ci: str | None, fails: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env[POSTGRES_BIN_ENV_VAR] = "/nonexistent"
    if ci is not None:
        env["CI"] = ci
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rs",
            "tests/test_standby_harness.py::test_the_standby_refuses_writes",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "need initdb, pg_ctl and pg_basebackup" in output
    if fails:
        assert result.returncode == 1, output
        assert "CI=true and" in output
    else:
        assert result.returncode == 0, output
        assert "1 skipped" in output
