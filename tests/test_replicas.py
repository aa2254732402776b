"""Read replicas on a real Postgres primary and hot standby (tests/standby.py).

Lookups go to the standby and everything that writes to the primary, as counted on the wire
by a proxy in front of each; a standby stopped mid-load costs the callers nothing (lookups
fall back to the primary); a write to a standby fails fast; a promoted standby takes writes
without a restart.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Iterator

import pytest
from langchain_core.outputs import Generation

from langchain_sqlcache import Shard, SQLCache, migrations
from langchain_sqlcache.errors import ReadOnlyDatabaseError
from tests.conftest import SERVER_BACKENDS, started_postgres_pair, sync_engine, unique_namespace
from tests.standby import PostgresPair
from tests.wire import WireTap

pytestmark = pytest.mark.cluster

LLM = "replica-llm"
KEYS = 20


def value_of(number: int, version: int = 0) -> list[Generation]:
    return [Generation(text=f"answer {number} v{version}")]


@pytest.fixture(scope="module")
def pair(postgres_pair: PostgresPair) -> PostgresPair:
    """The module's primary and standby, the cache's tables migrated on the primary."""
    migrations.upgrade(postgres_pair.primary_url)
    postgres_pair.wait_caught_up()
    return postgres_pair


@pytest.fixture
def taps(pair: PostgresPair) -> Iterator[tuple[WireTap, WireTap]]:
    """A round-trip counting proxy in front of the primary and one in front of the standby."""
    primary, standby = WireTap(pair.primary_url), WireTap(pair.standby_url)
    yield primary, standby
    primary.close()
    standby.close()


def replicated_cache(pair: PostgresPair, primary: WireTap, standby: WireTap) -> SQLCache:
    """A cache on the primary with the standby as its replica, KEYS values written, replayed.

    Without read-your-writes, so that every lookup is the standby's to answer.
    """
    cache = SQLCache(
        primary.url, replicas=[standby.url], namespace=unique_namespace(), read_your_writes=0
    )
    for number in range(KEYS):
        cache.update(f"prompt {number}", LLM, value_of(number))
    pair.wait_caught_up()
    return cache


def test_lookups_go_to_the_standby_and_writes_to_the_primary(
    pair: PostgresPair, taps: tuple[WireTap, WireTap]
) -> None:
    primary, standby = taps
    cache = replicated_cache(pair, primary, standby)

    async def async_lookups() -> None:
        for number in range(KEYS):
            assert await cache.alookup(f"prompt {number}", LLM) == value_of(number)
        # The pools on the standby close as the loop ends (closing the primary's sync ones
        # would count on its wire).

    for lookups in ("sync", "async"):
        primary.reset()
        standby.reset()
        if lookups == "sync":
            for number in range(KEYS):
                assert cache.lookup(f"prompt {number}", LLM) == value_of(number)
        else:
            asyncio.run(async_lookups())
        assert standby.round_trips >= KEYS, lookups
        assert primary.round_trips == 0, lookups

    primary.reset()
    standby.reset()
    cache.update("written", LLM, value_of(0))
    assert cache.delete("written", LLM)
    assert cache.stats().entries == KEYS
    cache.clear()
    assert primary.round_trips > 0
    assert standby.round_trips == 0
    cache.close()


def test_a_process_reads_its_own_writes_and_the_lag_others_see(
    pair: PostgresPair, taps: tuple[WireTap, WireTap]
) -> None:
    primary, standby = taps
    namespace = unique_namespace()
    # Read your writes (the default): each new version is seen at once, from the primary.
    cache = SQLCache(primary.url, replicas=[standby.url], namespace=namespace)
    for version in range(10):
        cache.update("prompt", LLM, value_of(0, version))
        assert cache.lookup("prompt", LLM) == value_of(0, version)
    cache.close()
    # Without it, as another process sees a write: the standby's lag, measured.
    lagging = SQLCache(primary.url, replicas=[standby.url], namespace=namespace, read_your_writes=0)
    lags = []
    for version in range(10, 40):
        lagging.update("prompt", LLM, value_of(0, version))
        began = time.perf_counter()
        while lagging.lookup("prompt", LLM) != value_of(0, version):
            assert time.perf_counter() - began < 10, "the standby never replayed the write"
        lags.append(time.perf_counter() - began)
    print(  # the figure the README quotes
        f"\nreplica lag seen by lookups: median {statistics.median(lags) * 1000:.2f} ms, "
        f"max {max(lags) * 1000:.2f} ms over {len(lags)} writes"
    )
    assert statistics.median(lags) < 1.0
    lagging.clear()
    lagging.close()


def test_a_standby_stopped_mid_load_costs_the_callers_nothing(
    pair: PostgresPair, taps: tuple[WireTap, WireTap]
) -> None:
    primary, standby = taps
    cache = replicated_cache(pair, primary, standby)
    errors: list[BaseException] = []
    misses = [0]
    stop = threading.Event()

    def sync_caller(offset: int) -> None:
        number = offset
        while not stop.is_set():
            try:
                if cache.lookup(f"prompt {number % KEYS}", LLM) is None:
                    misses[0] += 1
                if number % 5 == 0:
                    cache.update(f"other {number}", LLM, value_of(number))
            except BaseException as exc:  # noqa: BLE001 - what reached a caller is the finding
                errors.append(exc)
            number += 1

    def async_caller() -> None:
        async def run() -> None:
            number = 0
            while not stop.is_set():
                try:
                    if await cache.alookup(f"prompt {number % KEYS}", LLM) is None:
                        misses[0] += 1
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)
                number += 1
            await cache.aclose()

        asyncio.run(run())

    callers = [threading.Thread(target=sync_caller, args=(i,)) for i in range(2)]
    callers.append(threading.Thread(target=async_caller))
    for caller in callers:
        caller.start()
    try:
        time.sleep(0.5)
        pair.stop_standby()
        time.sleep(1.5)
        standby.reset()
        served_by_primary = primary.round_trips
        time.sleep(0.5)
        # While the standby is down the primary answers every lookup.
        assert primary.round_trips > served_by_primary
        pair.start_standby()
        time.sleep(3)  # the breaker's probe finds the standby back within 2 s
    finally:
        stop.set()
        for caller in callers:
            caller.join()
    assert errors == []
    assert misses[0] == 0  # every lookup was answered, by the standby or the primary
    stats = cache.stats()
    assert stats.failures == 0
    assert stats.replica_fallbacks > 0
    # Back in use: lookups reach the standby again.
    standby.reset()
    for number in range(KEYS):
        assert cache.lookup(f"prompt {number}", LLM) == value_of(number)
    assert standby.round_trips > 0
    cache.clear()
    cache.close()


def test_a_standby_refuses_writes_fast_then_takes_them_once_promoted() -> None:
    with started_postgres_pair() as pair:
        migrations.upgrade(pair.primary_url)
        pair.wait_caught_up()
        namespace = unique_namespace()
        writer = SQLCache(pair.primary_url, namespace=namespace)
        writer.update("prompt", LLM, value_of(1))
        writer.close()
        pair.wait_caught_up()
        # Pointed at the standby (as an application whose DNS now names it).
        cache = SQLCache(pair.standby_url, namespace=namespace, on_error="raise")
        assert cache.lookup("prompt", LLM) == value_of(1)
        began = time.perf_counter()
        with pytest.raises(ReadOnlyDatabaseError):
            cache.update("prompt", LLM, value_of(2))
        refused_in = time.perf_counter() - began
        print(f"\nan update on the standby refused in {refused_in * 1000:.1f} ms")
        assert refused_in < 1.0
        pair.promote()
        cache.update("prompt", LLM, value_of(3))  # no restart, no new cache
        assert cache.lookup("prompt", LLM) == value_of(3)
        cache.clear()
        cache.close()


def test_a_replica_given_as_an_engine_and_hits_counted_on_the_primary(
    pair: PostgresPair, taps: tuple[WireTap, WireTap]
) -> None:
    primary, standby = taps
    replica = sync_engine(str(standby.url.render_as_string(hide_password=False)))
    cache = SQLCache(
        primary.url,
        replicas=[replica],
        namespace=unique_namespace(),
        read_your_writes=0,
        record_hits=True,
    )
    cache.update("prompt", LLM, value_of(1))
    pair.wait_caught_up()
    primary.reset()
    standby.reset()
    for _ in range(3):
        assert cache.lookup("prompt", LLM) == value_of(1)
    assert standby.round_trips > 0
    assert primary.round_trips == 0

    async def async_lookup() -> None:
        # The replica has no async engine: async lookups go to the primary.
        assert await cache.alookup("prompt", LLM) == value_of(1)

    asyncio.run(async_lookup())
    assert primary.round_trips > 0
    # Hit counts are written on the primary (a standby would refuse them), before stats().
    assert cache.stats().hits == 4
    assert cache.stats().failures == 0
    cache.clear()
    cache.close()
    replica.dispose()


def test_each_shard_has_its_own_replicas(pair: PostgresPair, taps: tuple[WireTap, WireTap]) -> None:
    primary, standby = taps
    env_var, default = SERVER_BACKENDS["postgresql"]
    other = os.environ.get(env_var, default)
    namespace = unique_namespace()
    cache = SQLCache(
        shards=[Shard(url=primary.url, replicas=[standby.url], name="with-standby"), other],
        namespace=namespace,
        read_your_writes=0,
    )
    numbers = {cache.settings.key_hash(f"prompt {n}", LLM): n for n in range(KEYS * 2)}
    for number in numbers.values():
        cache.update(f"prompt {number}", LLM, value_of(number))
    pair.wait_caught_up()
    on_pair = [
        n for key, n in numbers.items() if cache.topology.for_key(key).name == "with-standby"
    ]
    assert 0 < len(on_pair) < len(numbers)
    primary.reset()
    standby.reset()
    for number in numbers.values():
        assert cache.lookup(f"prompt {number}", LLM) == value_of(number)
    # The pair's keys were read on its standby; the other shard's never touched the pair.
    assert standby.round_trips >= len(on_pair)
    assert primary.round_trips == 0
    assert cache.stats().entries == len(numbers)
    cache.clear()
    cache.close()
