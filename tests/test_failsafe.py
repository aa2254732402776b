"""One failsafe: the failure policy applied to every failure, and the circuit breaker.

A value the database refuses is a counted no-op under "warn" and a DatabaseRefusedError under
"raise"; a database found unavailable is skipped at once while one probe at a time, after a
capped backoff, finds when it is back.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from langchain_sqlcache import (
    CacheUnavailableError,
    CircuitOpenError,
    DatabaseRefusedError,
    SQLCache,
    UnstorableValueError,
    ValueTooLargeError,
)
from langchain_sqlcache import store as store_module
from langchain_sqlcache.failsafe import CircuitBreaker, kind_of
from tests.conftest import Backend, sync_engine, unique_identifier, unique_namespace
from tests.helpers import get, put

LLM = "failsafe-llm"
VALUE = [Generation(text="kept")]
REFUSED_PROMPT = "a prompt the database refuses"
# Port 9 (discard) on loopback: nothing listens, connections are refused at once.
REFUSED_PORT = {
    "postgresql": "postgresql://postgres@127.0.0.1:9/test",
    "mysql": "mysql://root@127.0.0.1:9/test",
}


# -- the breaker on its own, on a clock of the test's ------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker_on(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker("test db", first_delay=0.25, max_delay=2.0, clock=clock, jitter=lambda: 1)


def state(breaker: CircuitBreaker) -> str:
    """The breaker's state, read afresh (mypy would narrow the property between reads)."""
    return breaker.state


def down() -> ConnectionRefusedError:
    return ConnectionRefusedError("refused")


def test_an_unavailable_server_opens_the_breaker_and_an_answer_closes_it() -> None:
    clock = Clock()
    breaker = breaker_on(clock)
    assert breaker.admit() is False
    assert state(breaker) == "closed"
    breaker.settle(False, down())
    assert state(breaker) == "open"
    with pytest.raises(CircuitOpenError, match="test db") as raised:
        breaker.admit()
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    clock.now = 0.25
    assert breaker.admit() is True
    assert state(breaker) == "probing"
    breaker.settle(True, None)
    assert state(breaker) == "closed"
    assert breaker.delay == 0
    assert breaker.admit() is False


def test_only_unavailability_opens_it() -> None:
    clock = Clock()
    breaker = breaker_on(clock)
    refused = DBAPIError("INSERT", {}, ValueError("out of range"))
    for answer in (refused, ValueTooLargeError("big"), UnstorableValueError("enum"), TypeError()):
        breaker.settle(False, answer)
        assert state(breaker) == "closed"
    # A refusal is an answer: a probe that meets one closes it.
    breaker.settle(False, down())
    clock.now = 1
    assert breaker.admit() is True
    breaker.settle(True, refused)
    assert state(breaker) == "closed"


def test_failed_probes_double_the_backoff_up_to_its_cap() -> None:
    clock = Clock()
    breaker = breaker_on(clock)
    breaker.settle(False, down())
    delays = []
    for _ in range(6):
        delays.append(breaker.delay)
        clock.now += breaker.delay - 0.001
        with pytest.raises(CircuitOpenError):
            breaker.admit()
        clock.now += 0.001
        assert breaker.admit() is True
        breaker.settle(True, down())
    assert delays == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    # Failures of calls that started before it opened do not push the probe back.
    deadline = clock.now + breaker.delay
    breaker.settle(False, down())
    clock.now = deadline
    assert breaker.admit() is True


def test_a_probe_that_ends_without_an_answer_lets_the_next_caller_probe() -> None:
    clock = Clock()
    breaker = breaker_on(clock)
    breaker.settle(False, down())
    clock.now = 1
    assert breaker.admit() is True
    breaker.settle(True, asyncio.CancelledError())
    assert state(breaker) == "open"
    assert breaker.delay == 0.25
    assert breaker.admit() is True


def test_one_probe_at_a_time_across_threads() -> None:
    breaker = CircuitBreaker(first_delay=0.0)
    breaker.settle(False, down())
    start, release = threading.Barrier(8), threading.Event()
    outcomes: list[str] = []

    def caller() -> None:
        start.wait()
        try:
            probe = breaker.admit()
        except CircuitOpenError:
            outcomes.append("skipped")
            return
        outcomes.append("probe" if probe else "closed")
        release.wait(5)  # the probe's operation, still running while the others come
        breaker.settle(probe, None)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(outcomes) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["probe"] + ["skipped"] * 7
    assert state(breaker) == "closed"


async def test_one_probe_at_a_time_across_tasks() -> None:
    breaker = CircuitBreaker(first_delay=0.0)
    breaker.settle(False, down())
    release = asyncio.Event()

    async def caller() -> str:
        try:
            probe = breaker.admit()
        except CircuitOpenError:
            return "skipped"
        await release.wait()
        breaker.settle(probe, None)
        return "probe" if probe else "closed"

    tasks = [asyncio.create_task(caller()) for _ in range(8)]
    await asyncio.sleep(0.05)
    release.set()
    assert sorted(await asyncio.gather(*tasks)) == ["probe"] + ["skipped"] * 7
    assert state(breaker) == "closed"


def test_failures_are_sorted_into_kinds() -> None:
    assert kind_of(down()) == "unavailable"
    assert kind_of(TimeoutError()) == "timeout"
    assert kind_of(DBAPIError("SELECT", {}, ValueError("out of range"))) == "refused"
    assert kind_of(ValueTooLargeError()) == "too_large"
    assert kind_of(UnstorableValueError()) == "unstorable"
    assert kind_of(CircuitOpenError()) == "circuit_open"
    assert kind_of(KeyError()) == "error"
    assert kind_of(TypeError()) is None


# -- a value the database refuses, on every backend ---------------------------------------


@pytest.fixture
async def refusing_url(backend: Backend, tmp_path: Path) -> AsyncIterator[tuple[str, str | None]]:
    """A cache database (URL, schema) of the test's own whose tables refuse REFUSED_PROMPT.

    A CHECK constraint (a trigger on SQLite) stands for any value the server will not store:
    a number out of a column's range, a JSON document MariaDB rejects, ...
    """
    if backend.name == "sqlite":
        url, schema = f"sqlite:///{tmp_path / 'refusing.db'}", None
        plant = (
            "CREATE TRIGGER refuse BEFORE INSERT ON llm_cache_entry "
            f"WHEN NEW.prompt = '{REFUSED_PROMPT}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    else:
        url, schema = backend.url, unique_identifier("sqlcache_refusing")
        plant = (
            f"ALTER TABLE {schema}.llm_cache_entry ADD CONSTRAINT refuse "
            f"CHECK (prompt <> '{REFUSED_PROMPT}')"
        )
    admin = sync_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    if backend.name == "mysql":
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {schema} CHARACTER SET utf8mb4"))
    creator = SQLCache(url, schema=schema, on_error="raise")
    creator.lookup("p", LLM)  # the first use creates the tables
    creator.close()
    with admin.connect() as connection:
        connection.execute(text(plant))
    yield url, schema
    if schema is not None:
        drop = "SCHEMA" if backend.name == "postgresql" else "DATABASE"
        cascade = " CASCADE" if backend.name == "postgresql" else ""
        with admin.connect() as connection:
            connection.execute(text(f"DROP {drop} IF EXISTS {schema}{cascade}"))
    admin.dispose()


async def test_a_value_the_database_refuses_is_a_counted_no_op_under_warn(
    refusing_url: tuple[str, str | None], family: str
) -> None:
    url, schema = refusing_url
    cache = SQLCache(url, schema=schema, namespace=unique_namespace())
    try:
        await put(cache, family, REFUSED_PROMPT, LLM, VALUE)  # no exception
        assert await get(cache, family, REFUSED_PROMPT, LLM) is None
        await put(cache, family, "p", LLM, VALUE)
        assert await get(cache, family, "p", LLM) == VALUE
        stats = cache.stats()
        assert stats.failures == 1
        assert stats.failures_by_kind == {"refused": 1}
    finally:
        await cache.aclose()


async def test_a_value_the_database_refuses_raises_database_refused_under_raise(
    refusing_url: tuple[str, str | None], family: str
) -> None:
    url, schema = refusing_url
    cache = SQLCache(url, schema=schema, namespace=unique_namespace(), on_error="raise")
    try:
        with pytest.raises(DatabaseRefusedError, match="refused") as raised:
            await put(cache, family, REFUSED_PROMPT, LLM, VALUE)
        assert isinstance(raised.value.__cause__, DBAPIError)
        # The database answered: the breaker stays closed.
        await put(cache, family, "p", LLM, VALUE)
        assert await get(cache, family, "p", LLM) == VALUE
    finally:
        await cache.aclose()


async def test_a_return_val_of_no_generations_raises_type_error_under_warn(
    async_cache: SQLCache, family: str
) -> None:
    with pytest.raises(TypeError):
        await put(async_cache, family, "p", LLM, ["not a generation"])  # type: ignore[list-item]
    assert await get(async_cache, family, "p", LLM) is None


# -- a refused port: the first operation pays, the later ones cost microseconds ------------


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
@pytest.mark.parametrize("on_error", ["warn", "raise"])
async def test_a_refused_port_costs_only_the_first_operation(
    backend: Backend, family: str, on_error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backoffs: list[int] = []
    real_backoff: Callable[[int], float] = store_module._backoff

    def counted_backoff(attempt: int) -> float:
        backoffs.append(attempt)
        return real_backoff(attempt)

    monkeypatch.setattr(store_module, "_backoff", counted_backoff)
    cache = SQLCache(REFUSED_PORT[backend.name], on_error=on_error)  # type: ignore[arg-type]

    async def operation() -> None:
        if on_error == "warn":
            assert await get(cache, family, "p", LLM) is None
            await put(cache, family, "p", LLM, VALUE)
            return
        with pytest.raises(CacheUnavailableError) as raised:
            await get(cache, family, "p", LLM)
        assert isinstance(raised.value.__cause__, (DBAPIError, OSError))

    await operation()
    # A connection that cannot be opened is not retried: a connect timeout is paid once.
    assert backoffs == []
    durations = []
    for _ in range(20):
        started = time.perf_counter()
        await operation()
        durations.append(time.perf_counter() - started)
    assert statistics.median(durations) < 0.005, durations
    if on_error == "warn":
        by_kind = cache.store.failures.by_kind
        assert by_kind.get("unavailable", 0) >= 1
        assert by_kind["circuit_open"] >= 30  # most of the 40 skipped the server
    await cache.aclose()
