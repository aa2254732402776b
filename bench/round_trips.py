"""Round trips per update, by generation count, counted below the driver."""

from __future__ import annotations

# The round-trip counter the tests use (tests/wire.py), from the repository's root.
from tests.wire import SQLiteTrace, WireTap

from bench.backends import Backend
from bench.plan import LLM, ROUND_TRIP_GENERATIONS, TRIPS_NS
from bench.results import BackendResult, Trips
from bench.workload import answer
from langchain_sqlcache import SQLCache


def update_round_trips(backend: Backend, result: BackendResult) -> None:
    """Round trips of one update by generation count, counted below the driver.

    Postgres and MariaDB: a proxy on loopback counts the requests the server answers
    (tests/wire.py's WireTap, which the tests use too). SQLite is in-process: its trace
    callback lists the statements it runs.
    """
    # prune_every=None: the default runs one pruning batch in its own transaction every 100th
    # update, which is not part of an update.
    result.trips = []
    tap = WireTap(backend.url) if backend.name != "sqlite" else None
    cache = SQLCache(
        tap.url if tap else backend.url, namespace=TRIPS_NS, on_error="raise", prune_every=None
    )
    engines = cache.store.engines
    trace = SQLiteTrace(*engines.owned) if engines and not tap else None
    try:
        # Drivers prepare a statement on its first use (asyncpg) or fifth (psycopg).
        for n in range(6):
            cache.update(f"warm-up {n}", LLM, answer(n, 1 + n % 2))
        for generations in ROUND_TRIP_GENERATIONS:
            for replace in (False, True):
                if tap:
                    tap.reset()
                if trace:
                    trace.clear()
                cache.update(f"trips {generations}", LLM, answer(replace, generations))
                result.trips.append(
                    Trips(
                        generations=generations,
                        replace=replace,
                        round_trips=tap.round_trips if tap else None,
                        statements=list(trace.statements) if trace else [],
                    )
                )
    finally:
        cache.clear()
        cache.close()
        if tap:
            tap.close()
