"""TTL, caps, pruning, scoped clear, delete, timestamps, hits and stats, on every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from sqlalchemy import Engine, select, update

from langchain_sqlcache import ConfigurationError, SQLCache, hits
from langchain_sqlcache.codec import entry_key, model_of
from langchain_sqlcache.fastpath import driver_query
from langchain_sqlcache.hits import MAX_PENDING_KEYS
from langchain_sqlcache.models import entry_table, generation_table
from tests.conftest import Backend, sync_engine, unique_namespace
from tests.helpers import get, put, wipe
from tests.test_engines import StatementLog

LLM = "[('model', 'fake-model'), ('temperature', 0.0)]"
VALUE = [Generation(text="cached")]
HOUR = timedelta(hours=1)


@pytest.fixture
async def make_cache(backend: Backend) -> AsyncIterator[Callable[..., SQLCache]]:
    """Build caches with options on the backend under test; cleans them up afterwards."""
    made: list[SQLCache] = []

    def make(**options: Any) -> SQLCache:
        cache = SQLCache(backend.url, namespace=unique_namespace(), **options)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.aclear()
        await cache.aclose()


def entry_rows(backend: Backend, cache: SQLCache) -> list[Any]:
    engine = sync_engine(backend.url)
    try:
        with engine.connect() as connection:
            return list(
                connection.execute(
                    select(entry_table)
                    .where(entry_table.c.namespace == cache.namespace)
                    .order_by(entry_table.c.id)
                ).all()
            )
    finally:
        engine.dispose()


def set_entry(backend: Backend, cache: SQLCache, prompt: str, **values: Any) -> None:
    engine = sync_engine(backend.url)
    try:
        with engine.begin() as connection:
            connection.execute(
                update(entry_table)
                .where(entry_table.c.key_hash == entry_key(cache.namespace, prompt, LLM))
                .values(**values)
            )
    finally:
        engine.dispose()


def prompts_left(backend: Backend, cache: SQLCache) -> list[str]:
    return [row.prompt for row in entry_rows(backend, cache)]


OTHER_LLM = "[('model', 'other-model')]"


async def neighbour(backend: Backend, make_cache: Callable[..., SQLCache], family: str) -> SQLCache:
    """Another namespace in the same tables, whose entries every cap and filter would take.

    Written first (the oldest ids), with both llm strings, last written in 2019 and
    expired: a prune or a clear that forgot the namespace would delete them before any other.
    """
    other = make_cache()
    await put(other, family, "n0", LLM, VALUE)
    await put(other, family, "n1", OTHER_LLM, VALUE)
    engine = sync_engine(backend.url)
    try:
        with engine.begin() as connection:
            connection.execute(
                update(entry_table)
                .where(entry_table.c.namespace == other.namespace)
                .values(
                    updated_at=datetime(2019, 1, 1, tzinfo=timezone.utc),
                    expires_at=datetime(2019, 1, 2, tzinfo=timezone.utc),
                )
            )
    finally:
        engine.dispose()
    return other


@pytest.mark.parametrize(
    ("ttl", "lifetime"),
    [(3600, HOUR), (timedelta(minutes=90), timedelta(minutes=90))],
    ids=["seconds", "timedelta"],
)
async def test_ttl_sets_expiry_and_an_expired_entry_is_a_miss_at_once(
    backend: Backend,
    make_cache: Callable[..., SQLCache],
    family: str,
    ttl: float | timedelta,
    lifetime: timedelta,
) -> None:
    cache = make_cache(ttl=ttl)
    before = datetime.now(timezone.utc)
    await put(cache, family, "p", LLM, VALUE)
    (row,) = entry_rows(backend, cache)
    assert before + lifetime <= row.expires_at <= datetime.now(timezone.utc) + lifetime
    assert await get(cache, family, "p", LLM) == VALUE
    set_entry(backend, cache, "p", expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    # Not deleted yet, already a miss.
    assert await get(cache, family, "p", LLM) is None
    assert len(entry_rows(backend, cache)) == 1
    assert cache.stats().expired == 1
    assert (cache.prune() if family == "sync" else await cache.aprune()) == 1
    assert entry_rows(backend, cache) == []


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-1), 0, -5])
def test_ttl_must_be_positive(ttl: float | timedelta) -> None:
    with pytest.raises(ConfigurationError, match="ttl must be positive"):
        SQLCache("sqlite:///never-opened.db", ttl=ttl)


async def test_without_ttl_entries_never_expire(
    backend: Backend, make_cache: Callable[..., SQLCache]
) -> None:
    cache = make_cache()
    cache.update("p", LLM, VALUE)
    assert entry_rows(backend, cache)[0].expires_at is None
    assert cache.prune() == 0
    assert cache.lookup("p", LLM) == VALUE


async def test_max_entries_evicts_the_oldest(
    backend: Backend, make_cache: Callable[..., SQLCache], family: str
) -> None:
    other = await neighbour(backend, make_cache, family)
    cache = make_cache(max_entries=5, prune_every=None)
    for i in range(8):
        await put(cache, family, f"p{i}", LLM, VALUE)
    # Rewriting an old key keeps its place in the queue (FIFO by first write).
    await put(cache, family, "p0", LLM, [Generation(text="rewritten")])
    assert (cache.prune() if family == "sync" else await cache.aprune()) == 3
    assert prompts_left(backend, cache) == [f"p{i}" for i in range(3, 8)]
    assert cache.prune() == 0
    assert prompts_left(backend, other) == ["n0", "n1"]


async def test_max_bytes_evicts_the_oldest_until_under(
    backend: Backend, make_cache: Callable[..., SQLCache], family: str
) -> None:
    cache = make_cache(prune_every=None)
    for i in range(6):
        await put(cache, family, f"p{i}", LLM, [Generation(text="x" * 1000)])
    sizes = [row.size_bytes for row in entry_rows(backend, cache)]
    assert all(size >= 1000 + len(LLM) for size in sizes)
    capped = SQLCache(backend.url, namespace=cache.namespace, max_bytes=sum(sizes[:3]))
    try:
        assert (capped.prune() if family == "sync" else await capped.aprune()) == 3
    finally:
        await capped.aclose()
    assert prompts_left(backend, cache) == ["p3", "p4", "p5"]
    assert sum(row.size_bytes for row in entry_rows(backend, cache)) <= sum(sizes[:3])


async def test_prune_deletes_in_bounded_batches(
    backend: Backend, make_cache: Callable[..., SQLCache]
) -> None:
    cache = make_cache(batch_size=3, prune_every=None)
    for i in range(10):
        cache.update(f"p{i}", LLM, VALUE)
    past = datetime.now(timezone.utc) - HOUR
    for i in range(10):
        set_entry(backend, cache, f"p{i}", expires_at=past)
    assert cache.store.engines is not None
    log = StatementLog(cache.store.engines.writer)
    assert cache.prune() == 10
    deletes = [s for s, _ in log.statements if s.startswith("DELETE FROM llm_cache_entry")]
    assert len(deletes) == 4  # 3 + 3 + 3 + 1, each in its own transaction


async def test_prune_counts_the_namespace_once(
    backend: Backend, make_cache: Callable[..., SQLCache]
) -> None:
    cache = make_cache(max_entries=3, batch_size=2, prune_every=None)
    for i in range(10):
        cache.update(f"p{i}", LLM, VALUE)
    assert cache.store.engines is not None
    engines = cache.store.engines
    # A reader that shares the writer's pool also fires the writer's listeners.
    shared = engines.reader.pool is engines.writer.pool
    log = StatementLog(*((engines.writer,) if shared else (engines.writer, engines.reader)))
    assert cache.prune() == 7
    counts = [s for s, _ in log.statements if "count(*)" in s.lower()]
    deletes = [s for s, _ in log.statements if s.startswith("DELETE FROM llm_cache_entry")]
    # Recounting before every batch made pruning a large excess quadratic.
    assert len(counts) == 1
    assert len(deletes) == 4  # 2 + 2 + 2 + 1
    assert prompts_left(backend, cache) == ["p7", "p8", "p9"]


async def test_automatic_pruning_costs_an_update_one_small_batch(
    backend: Backend, make_cache: Callable[..., SQLCache], family: str
) -> None:
    cache = make_cache(max_entries=3, prune_every=5, batch_size=2)
    counts = []
    for i in range(10):
        await put(cache, family, f"p{i}", LLM, VALUE)
        counts.append(len(entry_rows(backend, cache)))
    # Every 5th write deletes one batch of at most 2 entries, never more.
    assert counts == [1, 2, 3, 4, 3, 4, 5, 6, 7, 6]


async def test_delete_one_entry(
    backend: Backend, make_cache: Callable[..., SQLCache], family: str
) -> None:
    cache = make_cache()
    await put(cache, family, "gone", LLM, VALUE)
    await put(cache, family, "kept", LLM, VALUE)
    delete = cache.delete if family == "sync" else None
    deleted = delete("gone", LLM) if delete else await cache.adelete("gone", LLM)
    assert deleted is True
    again = delete("gone", LLM) if delete else await cache.adelete("gone", LLM)
    assert again is False
    assert await get(cache, family, "gone", LLM) is None
    assert await get(cache, family, "kept", LLM) == VALUE


async def clear(cache: SQLCache, family: str, **filters: Any) -> None:
    if family == "sync":
        cache.clear(**filters)
    else:
        await cache.aclear(**filters)


async def test_clear_filters(
    backend: Backend, make_cache: Callable[..., SQLCache], family: str
) -> None:
    other = await neighbour(backend, make_cache, family)
    cache = make_cache(batch_size=2, prune_every=None)
    other_llm = OTHER_LLM
    for i in range(3):
        await put(cache, family, f"a{i}", LLM, VALUE)
        await put(cache, family, f"b{i}", other_llm, VALUE)
    await clear(cache, family, llm_string=other_llm)
    assert prompts_left(backend, cache) == ["a0", "a1", "a2"]
    set_entry(backend, cache, "a0", updated_at=datetime.now(timezone.utc) - 2 * HOUR)
    await clear(cache, family, older_than=HOUR)
    assert prompts_left(backend, cache) == ["a1", "a2"]
    set_entry(backend, cache, "a1", updated_at=datetime(2020, 1, 1, tzinfo=timezone.utc))
    await clear(cache, family, older_than=datetime(2021, 1, 1, tzinfo=timezone.utc))
    assert prompts_left(backend, cache) == ["a2"]
    await put(cache, family, "e", LLM, VALUE)
    set_entry(backend, cache, "e", expires_at=datetime.now(timezone.utc) - HOUR)
    await clear(cache, family, expired_only=True)
    assert prompts_left(backend, cache) == ["a2"]
    for i in range(5):
        await put(cache, family, f"c{i}", LLM, VALUE)
    await clear(cache, family)  # no filter: the whole namespace, 2 entries a transaction
    assert prompts_left(backend, cache) == []
    # The other namespace matched every filter and kept every entry.
    assert prompts_left(backend, other) == ["n0", "n1"]


async def test_clear_deletes_in_batches_each_in_its_own_transaction(
    backend: Backend, make_cache: Callable[..., SQLCache], family: str
) -> None:
    cache = make_cache(batch_size=2, prune_every=None)
    for i in range(5):
        await put(cache, family, f"p{i}", LLM, VALUE)
    log = traffic(cache)
    await clear(cache, family)
    assert prompts_left(backend, cache) == []

    def entry_deletes(statements: list[Any]) -> list[Any]:
        return [e for e in statements if e.statement.startswith("DELETE FROM llm_cache_entry")]

    # 5 entries, 2 a batch: 3 DELETEs of 2, 2 and 1 ids ...
    deletes = entry_deletes(log.executed)
    assert [len(e.parameters) for e in deletes] == [2, 2, 1], deletes
    # ... each committed on its own, so no transaction holds more than a batch of rows.
    batches = [t for t in log.transactions() if entry_deletes(t)]
    assert [len(entry_deletes(t)) for t in batches] == [1, 1, 1]
    # A last transaction finds nothing left to delete and ends the loop.
    assert log.commits == len(batches) + 1


async def test_clear_rejects_bad_arguments(make_cache: Callable[..., SQLCache]) -> None:
    cache = make_cache()
    with pytest.raises(TypeError, match="unexpected keyword arguments: bogus"):
        cache.clear(bogus=1)
    with pytest.raises(TypeError, match="unexpected keyword arguments: bogus"):
        await cache.aclear(bogus=1)
    with pytest.raises(TypeError, match="aware datetime"):
        cache.clear(older_than=datetime(2020, 1, 1))
    with pytest.raises(TypeError, match="datetime or a timedelta"):
        cache.clear(older_than=3600)


async def test_timestamps_are_utc_and_updated_at_moves(
    backend: Backend, make_cache: Callable[..., SQLCache], family: str
) -> None:
    cache = make_cache()
    await put(cache, family, "p", LLM, VALUE)
    (first,) = entry_rows(backend, cache)
    assert first.created_at.tzinfo is not None
    assert first.created_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - first.created_at) < timedelta(minutes=1)
    set_entry(backend, cache, "p", created_at=first.created_at - HOUR,
              updated_at=first.updated_at - HOUR)  # fmt: skip
    await put(cache, family, "p", LLM, [Generation(text="new")])
    (second,) = entry_rows(backend, cache)
    assert second.created_at == first.created_at - HOUR
    assert second.updated_at > first.updated_at - HOUR


async def test_model_and_token_columns(
    backend: Backend, make_cache: Callable[..., SQLCache], family: str
) -> None:
    cache = make_cache()
    usage = {"input_tokens": 11, "output_tokens": 22, "total_tokens": 33}
    value: list[Generation] = [
        ChatGeneration(message=AIMessage(content="a", usage_metadata=usage)),
        Generation(text="b"),
    ]
    await put(cache, family, "p", LLM, value)
    await put(cache, family, "q", "no model here", VALUE)
    rows = {row.prompt: row for row in entry_rows(backend, cache)}
    assert rows["p"].llm_model == "fake-model"
    assert rows["p"].llm_string == LLM
    assert rows["q"].llm_model is None
    assert (rows["p"].generation_count, rows["q"].generation_count) == (2, 1)
    engine = sync_engine(backend.url)
    try:
        with engine.connect() as connection:
            tokens = connection.execute(
                select(generation_table.c.input_tokens, generation_table.c.output_tokens)
                .where(generation_table.c.entry_id == rows["p"].id)
                .order_by(generation_table.c.idx)
            ).all()
    finally:
        engine.dispose()
    assert [tuple(t) for t in tokens] == [(11, 22), (None, None)]


@pytest.mark.parametrize(
    ("llm_string", "model"),
    [
        ('{"lc": 1, "kwargs": {"model_name": "gpt-4o-mini"}}---[(\'stop\', None)]', "gpt-4o-mini"),
        (
            "[('_type', 'ollama-chat'), ('model', 'llama3.1:8b'), ('temperature', 0.2)]",
            "llama3.1:8b",
        ),
        ('{"model": "claude-3-5-sonnet", "max_tokens": 1024}', "claude-3-5-sonnet"),
        ("[('_type', 'generic-fake-chat-model'), ('stop', None)]", None),
    ],
)
def test_model_is_found_in_llm_strings(llm_string: str, model: str | None) -> None:
    assert model_of(llm_string) == model


async def test_hits_are_counted_in_batches(
    backend: Backend, make_cache: Callable[..., SQLCache], family: str
) -> None:
    cache = make_cache(record_hits=True)
    await put(cache, family, "hot", LLM, VALUE)
    await put(cache, family, "cold", LLM, VALUE)
    for _ in range(5):
        assert await get(cache, family, "hot", LLM) == VALUE
    assert await get(cache, family, "missing", LLM) is None
    stats = cache.stats() if family == "sync" else await cache.astats()
    assert stats.hits == 5
    rows = {row.prompt: row for row in entry_rows(backend, cache)}
    assert (rows["hot"].hit_count, rows["cold"].hit_count) == (5, 0)
    assert rows["hot"].last_hit_at is not None
    assert rows["cold"].last_hit_at is None


def traffic(cache: SQLCache) -> StatementLog:
    """Log what both families of the cache send, each statement once.

    Listening on the engines the cache built catches their autocommit copies too (which
    share the engine's events), so no statement is counted twice.
    """
    assert cache.store.engines is not None
    assert cache.store.async_engines is not None
    engines: list[Engine] = [*cache.store.engines.owned]
    engines += [engine.sync_engine for engine in cache.store.async_engines.owned]
    return StatementLog(*engines)


def patient_hits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Caches made after this flush hits only on the key limit or on demand, never on time."""
    monkeypatch.setattr(hits, "MAX_PENDING_SECONDS", 3600.0)


async def test_hits_send_only_selects_until_stats_writes_one_update_per_key(
    backend: Backend,
    make_cache: Callable[..., SQLCache],
    family: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    patient_hits(monkeypatch)
    cache = make_cache(record_hits=True)
    reads = {"a": 5, "b": 3, "c": 1}
    for prompt in reads:
        await put(cache, family, prompt, LLM, VALUE)
    log = traffic(cache)
    for prompt, times in reads.items():
        for _ in range(times):
            assert await get(cache, family, prompt, LLM) == VALUE
    # The hits cost the lookups nothing: no write on the read path. (Lookups go straight
    # to the driver, so this log does not see them; tests/test_round_trips.py counts each
    # as one round trip with hit recording on. A hit write would go through the engines
    # logged here.)
    assert log.executed == []
    log.clear()
    stats = cache.stats() if family == "sync" else await cache.astats()
    assert stats.hits == sum(reads.values())
    updates = [e for e in log.executed if e.statement.lstrip().upper().startswith("UPDATE")]
    # One UPDATE statement for the batch, one row of parameters (one UPDATE) per key.
    assert len(updates) == 1, log.executed
    assert updates[0].rows == len(reads)
    assert {row.prompt: row.hit_count for row in entry_rows(backend, cache)} == reads


async def test_hits_flush_when_distinct_keys_reach_the_limit(
    backend: Backend, make_cache: Callable[..., SQLCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert MAX_PENDING_KEYS == 256  # the figure README.md and docs/lifecycle.md give
    patient_hits(monkeypatch)
    cache = make_cache(record_hits=True, prune_every=None)
    prompts = [f"p{i}" for i in range(MAX_PENDING_KEYS + 1)]
    for prompt in prompts:
        cache.update(prompt, LLM, VALUE)
    log = traffic(cache)
    for prompt in prompts[: MAX_PENDING_KEYS - 1]:
        assert cache.lookup(prompt, LLM) == VALUE
        assert cache.lookup(prompt, LLM) == VALUE  # a key hit twice is still one key
    assert log.executed == []  # no write yet (lookups themselves bypass this log)
    assert {row.hit_count for row in entry_rows(backend, cache)} == {0}
    # The limit-th distinct key flushes the batch from within its lookup.
    assert cache.lookup(prompts[MAX_PENDING_KEYS - 1], LLM) == VALUE
    updates = [e for e in log.executed if e.statement.lstrip().upper().startswith("UPDATE")]
    assert [u.rows for u in updates] == [MAX_PENDING_KEYS]
    counts = {row.prompt: row.hit_count for row in entry_rows(backend, cache)}
    assert counts == {**{p: 2 for p in prompts[: MAX_PENDING_KEYS - 1]},
                      prompts[MAX_PENDING_KEYS - 1]: 1, prompts[-1]: 0}  # fmt: skip
    # The buffer starts over: the next hit waits for the next flush.
    log.clear()
    assert cache.lookup(prompts[-1], LLM) == VALUE
    assert not [e for e in log.executed if e.statement.lstrip().upper().startswith("UPDATE")]
    cache.close()
    assert {row.prompt: row.hit_count for row in entry_rows(backend, cache)}[prompts[-1]] == 1


async def test_hot_key_hit_counts_under_threads(
    backend: Backend, make_cache: Callable[..., SQLCache]
) -> None:
    cache = make_cache(record_hits=True, pool_size=16)
    cache.update("hot", LLM, VALUE)

    def read(_: int) -> None:
        for _ in range(50):
            assert cache.lookup("hot", LLM) == VALUE

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(read, range(16)))
    cache.close()  # writes what is pending
    assert [row.hit_count for row in entry_rows(backend, cache)] == [800]


async def test_hits_are_not_recorded_by_default(
    backend: Backend, make_cache: Callable[..., SQLCache]
) -> None:
    cache = make_cache()
    cache.update("p", LLM, VALUE)
    for _ in range(3):
        cache.lookup("p", LLM)
    cache.close()
    assert entry_rows(backend, cache)[0].hit_count == 0


async def test_stats_by_model(
    backend: Backend, make_cache: Callable[..., SQLCache], family: str
) -> None:
    cache = make_cache(record_hits=True)
    other = "{'model_name': 'other-model'}"
    await put(cache, family, "a", LLM, [Generation(text="1"), Generation(text="2")])
    await put(cache, family, "b", LLM, VALUE)
    await put(cache, family, "c", other, VALUE)
    await put(cache, family, "d", "unknown", VALUE)
    set_entry(backend, cache, "b", expires_at=datetime.now(timezone.utc) - HOUR)
    await get(cache, family, "a", LLM)
    stats = cache.stats() if family == "sync" else await cache.astats()
    assert (stats.entries, stats.generations, stats.expired, stats.hits) == (4, 5, 1, 1)
    assert stats.bytes == sum(row.size_bytes for row in entry_rows(backend, cache))
    assert set(stats.models) == {"fake-model", "other-model", None}
    fake = stats.models["fake-model"]
    assert (fake.entries, fake.generations, fake.expired, fake.hits) == (2, 3, 1, 1)
    assert stats.as_dict()["models"]["other-model"]["entries"] == 1
    await wipe(cache, family)
    empty = cache.stats()
    assert (empty.entries, empty.bytes, empty.models) == (0, 0, {})


async def test_stats_reads_only_its_covering_index(
    backend: Backend, make_cache: Callable[..., SQLCache]
) -> None:
    """stats() is answered from ix_llm_cache_entry_stats alone, never from the table's rows.

    At a million entries that is the difference between reading the prompts and reading a
    narrow index (docs/lifecycle.md). Postgres is told not to scan the table, and the other
    indexes on the namespace are dropped in the transaction that asks for the plan (and
    rolled back), so that a small test table shows whether the index covers the query, not
    which plan is cheaper: with the suite's rows of other namespaces around, the planner
    has preferred a plain scan of another index, even after a VACUUM.
    """
    cache = make_cache()
    cache.update("p", LLM, VALUE)
    engine = cache.store.ready().writer
    query = driver_query("stats_by_model", engine.dialect, None)
    values = {"namespace": cache.namespace, "now": datetime.now(timezone.utc)}
    explain = "EXPLAIN QUERY PLAN " if backend.name == "sqlite" else "EXPLAIN "
    covering = {
        "sqlite": "COVERING INDEX",
        "postgresql": "Index Only Scan",
        "mysql": "Using index",
    }[backend.name]

    def plan_of_stats() -> str:
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            if backend.name == "postgresql":
                cursor.execute("SET enable_seqscan = off")
                cursor.execute("SET enable_bitmapscan = off")
                # Transactional DDL: gone for this EXPLAIN only. A lock another session holds
                # fails the test in seconds rather than hanging it.
                cursor.execute("SET LOCAL lock_timeout = '5s'")
                cursor.execute(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'llm_cache_entry' "
                    "AND schemaname = current_schema() AND indexname <> 'ix_llm_cache_entry_stats' "
                    "AND indexdef LIKE '%(namespace%'"
                )
                for (other,) in cursor.fetchall():
                    cursor.execute(f'DROP INDEX "{other}"')
            cursor.execute(explain + query.sql, query.parameters(values))
            plan = " ".join(str(row) for row in cursor.fetchall())
            cursor.close()
            connection.rollback()
        finally:
            connection.invalidate()  # its session settings go with it
        return plan

    plan = plan_of_stats()
    if backend.name == "postgresql" and covering not in plan:
        # An index-only scan is costed by the visibility map: right after the suite's many
        # writes (before autovacuum has run) the planner once preferred a plain index scan
        # of another index. VACUUM sets the map, and the plan is asked for again.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as autocommit:
            autocommit.exec_driver_sql("VACUUM llm_cache_entry")
        plan = plan_of_stats()
    assert "ix_llm_cache_entry_stats" in plan, plan
    assert covering in plan, plan
