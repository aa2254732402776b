"""One round trip per lookup and a fixed number per update, counted below the driver.

On Postgres and MariaDB a proxy counts what crosses the wire; on SQLite the library's trace
callback lists every statement it runs. Both see what the driver sends on its own (BEGIN,
ROLLBACK on return to the pool, pings), which SQLAlchemy's events never showed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration

from langchain_sqlcache import SQLCache, hits
from langchain_sqlcache.backends.sqlite import ROWS_PER_INSERT as SQLITE_ROWS_PER_INSERT
from tests.conftest import Backend, unique_namespace
from tests.helpers import get, put
from tests.wire import WARM_UP, SQLiteTrace, WireTap

LLM = "[('model', 'fake-model'), ('temperature', 0.0)]"


def answer(generations: int) -> list[ChatGeneration]:
    return [
        ChatGeneration(
            message=AIMessage(
                content=f"answer {i}",
                usage_metadata={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
            )
        )
        for i in range(generations)
    ]


@dataclass
class Meter:
    """Round trips (servers) or statements (SQLite) since the last reset."""

    tap: WireTap | None = None
    trace: SQLiteTrace | None = None

    def count(self) -> int:
        if self.tap is not None:
            return self.tap.round_trips
        assert self.trace is not None
        return len(self.trace.statements)

    def seen(self) -> Any:
        return self.trace.statements if self.trace is not None else "(on the wire)"

    def reset(self) -> None:
        if self.tap is not None:
            self.tap.reset()
        if self.trace is not None:
            self.trace.clear()


@pytest.fixture
async def metered(
    backend: Backend, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[SQLCache, Meter]]:
    """A cache whose traffic is counted: through a proxy on servers, traced on SQLite.

    Parametrized indirectly with True, the cache records hits, flushing them only on the
    key limit or on demand, never on time mid-test.
    """
    record_hits = bool(getattr(request, "param", False))
    monkeypatch.setattr(hits, "MAX_PENDING_SECONDS", 3600.0)
    options: dict[str, Any] = {"prune_every": None, "record_hits": record_hits}
    if backend.name == "sqlite":
        cache = SQLCache(backend.url, namespace=unique_namespace(), **options)
        assert cache.store.engines is not None
        assert cache.store.async_engines is not None
        engines = [
            *cache.store.engines.owned,
            *(e.sync_engine for e in cache.store.async_engines.owned),
        ]
        meter = Meter(trace=SQLiteTrace(*engines))
        yield cache, meter
    else:
        tap = WireTap(backend.url)
        cache = SQLCache(tap.url, namespace=unique_namespace(), **options)
        yield cache, Meter(tap=tap)
        await cache.aclear()
        await cache.aclose()
        tap.close()
        return
    await cache.aclear()
    await cache.aclose()


@pytest.mark.parametrize(
    "metered", [False, True], ids=["record_hits=False", "record_hits=True"], indirect=True
)
async def test_a_lookup_is_one_round_trip(
    backend: Backend, metered: tuple[SQLCache, Meter], family: str
) -> None:
    cache, meter = metered
    await put(cache, family, "warm", LLM, answer(1))  # schema check, pools filled
    for prompt in ("missing", "warm") * WARM_UP:
        await get(cache, family, prompt, LLM)
    for prompt, expected in (("missing", None), ("warm", answer(1))):
        meter.reset()
        assert await get(cache, family, prompt, LLM) == expected
        # No BEGIN, no ROLLBACK on return to the pool, no ping: the SELECT alone.
        assert meter.count() == 1, meter.seen()
        if backend.name == "sqlite":
            assert meter.seen()[0].startswith("SELECT"), meter.seen()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
async def test_an_update_is_a_fixed_number_of_round_trips(
    backend: Backend, metered: tuple[SQLCache, Meter], family: str
) -> None:
    cache, meter = metered
    for n in range(WARM_UP):
        await put(cache, family, f"warm {n}", LLM, answer(1 + n % 2))
    counts = {}
    for generations in (1, 4, 16):
        for key in (f"new {generations}", "warm 0"):  # an insert, then a replacement
            meter.reset()
            await put(cache, family, key, LLM, answer(generations))
            counts[(generations, key)] = meter.count()
            assert await get(cache, family, key, LLM) == answer(generations)
    # Postgres: one statement in autocommit. MySQL: its transaction's statements in one
    # packet (START TRANSACTION ... COMMIT).
    assert set(counts.values()) == {1}, counts


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_an_update_is_one_immediate_transaction_on_sqlite(
    metered: tuple[SQLCache, Meter], family: str
) -> None:
    cache, meter = metered
    await put(cache, family, "warm", LLM, answer(1))
    many = SQLITE_ROWS_PER_INSERT + 1
    for generations in (1, 4, 16, many):
        meter.reset()
        await put(cache, family, "warm", LLM, answer(generations))
        statements = meter.seen()
        verbs = [statement.split(None, 1)[0].upper() for statement in statements]
        # The write lock first (a writer waits out the busy timeout rather than fail when
        # another holds it), then an upsert (never a SELECT first), the old generations
        # deleted, the new ones inserted: in one multi-row INSERT, or past its limit through
        # a Connection's executemany, which sqlite3 runs row by row.
        inserts = 1 if generations < many else generations
        assert verbs == ["BEGIN", "INSERT", "DELETE", *["INSERT"] * inserts, "COMMIT"]
        assert statements[0] == "BEGIN IMMEDIATE"
        assert "ON CONFLICT (key_hash) DO UPDATE" in statements[1]
        assert await get(cache, family, "warm", LLM) == answer(generations)
