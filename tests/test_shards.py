"""Sharding: each key on exactly one database, fan-out operations on every one of them.

Three databases on one server (Postgres, MariaDB) and across the two local servers (Postgres,
MariaDB, Postgres); the placement itself (rendezvous hashing) with 10,000 keys.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import text
from sqlalchemy.engine import make_url

from langchain_sqlcache import SQLCache, transfer
from langchain_sqlcache.cli import main
from langchain_sqlcache.errors import CacheUnavailableError, ConfigurationError
from langchain_sqlcache.topology import Shard
from tests.conftest import SERVER_BACKENDS, _answers, cli_runner, skip_or_fail, sync_engine
from tests.conftest import unique_namespace as new_namespace
from tests.servers import refused_port
from tests.wire import WARM_UP, WireTap

LLM = "shard-llm"
KEYS = 120
SHARD_DATABASES = [f"sqlcache_shard_{i}" for i in range(4)]
# Which server each of the four databases is on, per layout.
LAYOUTS = {
    "postgresql": ["postgresql"] * 4,
    "mysql": ["mysql"] * 4,
    "across": ["postgresql", "mysql", "postgresql", "mysql"],
}


def value_of(number: int) -> list[Generation]:
    return [Generation(text=f"answer {number} " + "x" * (number % 7))]


def server_url(name: str) -> str:
    env_var, default = SERVER_BACKENDS[name]
    url = os.environ.get(env_var, default)
    reason = _answers(url)
    if reason is not None:
        skip_or_fail(f"{name} at {url} does not answer ({reason}); set {env_var}")
    return url


def create_database(server: str, name: str) -> str:
    """The URL of database ``name`` on ``server``'s server, created if missing."""
    url = make_url(server_url(server))
    admin = sync_engine(str(url.render_as_string(hide_password=False)))
    admin = admin.execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            if server == "mysql":
                connection.execute(text(f"CREATE DATABASE IF NOT EXISTS {name}"))
            elif not connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first():
                connection.execute(text(f"CREATE DATABASE {name}"))
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="module", params=list(LAYOUTS))
def shard_urls(request: pytest.FixtureRequest) -> list[str]:
    """Four databases laid out as the parameter says; the tests use the first three."""
    layout: list[str] = LAYOUTS[request.param]
    return [
        create_database(server, name) for server, name in zip(layout, SHARD_DATABASES, strict=True)
    ]


@pytest.fixture
def namespace() -> str:
    return new_namespace()


@pytest.fixture
def sharded(shard_urls: list[str], namespace: str) -> Iterator[SQLCache]:
    cache = SQLCache(shards=shard_urls[:3], namespace=namespace)
    yield cache
    cache.clear()
    cache.close()


def stored_keys(url: str, namespace: str) -> set[str]:
    """The key hashes a database holds for a namespace, read straight from its table."""
    engine = sync_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT key_hash FROM llm_cache_entry WHERE namespace = :namespace"),
                {"namespace": namespace},
            )
            return {row[0] for row in rows}
    finally:
        engine.dispose()


def fill(cache: SQLCache, keys: int = KEYS) -> dict[str, int]:
    """Write ``keys`` entries, half sync and half async; return each key hash's number."""
    for number in range(keys // 2):
        cache.update(f"prompt {number}", LLM, value_of(number))

    async def rest() -> None:
        for number in range(keys // 2, keys):
            await cache.aupdate(f"prompt {number}", LLM, value_of(number))
        await cache.aclose()

    asyncio.run(rest())
    return {cache.settings.key_hash(f"prompt {n}", LLM): n for n in range(keys)}


def test_every_key_lives_on_exactly_one_shard(
    sharded: SQLCache, shard_urls: list[str], namespace: str
) -> None:
    numbers = fill(sharded)
    held = [stored_keys(url, namespace) for url in shard_urls[:3]]
    # Disjoint, and together every key: each on exactly one shard, the one it hashes to.
    assert sum(len(keys) for keys in held) == KEYS
    assert set().union(*held) == set(numbers)
    for database, keys in zip(sharded.topology.databases, held, strict=True):
        assert all(sharded.topology.for_key(key) is database for key in keys)
        # Spread: each of three shards holds well over a tenth of the keys.
        assert len(keys) > KEYS / 10
    for number in range(KEYS):
        assert sharded.lookup(f"prompt {number}", LLM) == value_of(number)

    async def async_lookups() -> None:
        for number in range(KEYS):
            assert await sharded.alookup(f"prompt {number}", LLM) == value_of(number)
        await sharded.aclose()

    asyncio.run(async_lookups())


def test_fan_out_operations_cover_every_shard(
    sharded: SQLCache, shard_urls: list[str], namespace: str, tmp_path: Path
) -> None:
    fill(sharded)
    per_shard = [len(stored_keys(url, namespace)) for url in shard_urls[:3]]
    assert sharded.stats().entries == KEYS
    assert asyncio.run(sharded.astats()).entries == KEYS
    assert transfer.count(sharded, all_namespaces=False) == KEYS
    assert len(list(transfer.export_records(sharded, all_namespaces=False))) == KEYS

    # The CLI, given the three URLs in the application's order.
    urls = [arg for url in shard_urls[:3] for arg in ("--url", url)]
    runner = cli_runner()
    shown = runner.invoke(main, ["stats", *urls, "--namespace", namespace, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["entries"] == KEYS
    exported = tmp_path / "cache.jsonl"
    result = runner.invoke(main, ["export", *urls, "--namespace", namespace, "-o", str(exported)])
    assert result.exit_code == 0, result.output
    assert len(exported.read_text().splitlines()) == KEYS
    result = runner.invoke(main, ["clear", *urls, "--namespace", namespace, "--yes"])
    assert result.exit_code == 0, result.output
    assert [len(stored_keys(url, namespace)) for url in shard_urls[:3]] == [0, 0, 0]
    result = runner.invoke(main, ["import", str(exported), *urls])
    assert result.exit_code == 0, result.output
    # Each line went back to the shard its key hashes to.
    assert [len(stored_keys(url, namespace)) for url in shard_urls[:3]] == per_shard

    # Pruning shares a cap out between the shards; clearing empties every one.
    capped = SQLCache(shards=shard_urls[:3], namespace=namespace, max_entries=30)
    assert capped.prune() == KEYS - sum(min(count, 10) for count in per_shard)
    assert all(len(stored_keys(url, namespace)) <= 10 for url in shard_urls[:3])
    capped.close()
    asyncio.run(sharded.aclear())
    assert [len(stored_keys(url, namespace)) for url in shard_urls[:3]] == [0, 0, 0]


def test_adding_a_fourth_shard_moves_about_a_quarter_of_the_keys(
    shard_urls: list[str], namespace: str
) -> None:
    three = SQLCache(shards=shard_urls[:3], namespace=namespace)
    four = SQLCache(shards=shard_urls, namespace=namespace)
    keys = [three.settings.key_hash(f"prompt {number}", LLM) for number in range(10_000)]
    before = [three.topology.for_key(key).name for key in keys]
    after = [four.topology.for_key(key).name for key in keys]
    moved = [b for a, b in zip(before, after, strict=True) if a != b]
    assert 0.15 <= len(moved) / len(keys) <= 0.35
    # Only to the new shard: keys never move between the shards that stay.
    assert set(moved) == {four.topology.databases[3].name}
    # The order the shards are given in does not matter, only their names.
    reordered = SQLCache(shards=list(reversed(shard_urls)), namespace=namespace)
    assert [reordered.topology.for_key(key).name for key in keys] == after
    for cache in (three, four, reordered):
        cache.close()


def test_the_cli_migrates_and_checks_every_shard(shard_urls: list[str]) -> None:
    urls = [arg for url in shard_urls[:3] for arg in ("--url", url)]
    runner = cli_runner()
    upgraded = runner.invoke(main, ["db", "upgrade", *urls])
    assert upgraded.exit_code == 0, upgraded.output
    checked = runner.invoke(main, ["db", "check", *urls])
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.count("up to date") == 3
    current = runner.invoke(main, ["db", "current", *urls])
    assert current.exit_code == 0, current.output
    for url in shard_urls[:3]:
        assert f"/{make_url(url).database}:" in current.stdout


def test_a_shard_that_is_down_costs_only_its_own_keys(shard_urls: list[str]) -> None:
    namespace = new_namespace()
    gone = make_url(shard_urls[0]).set(port=refused_port()).render_as_string(hide_password=False)
    # Named as the first shard is, so that the keys are placed as in a healthy cache.
    healthy = SQLCache(shards=shard_urls[:3], namespace=namespace)
    numbers = fill(healthy)
    first = healthy.topology.databases[0].name
    broken = SQLCache(
        shards=[Shard(url=gone, name=first), *shard_urls[1:3]],
        namespace=namespace,
        connect_timeout=2,
    )
    for key, number in numbers.items():
        expected = None if broken.topology.for_key(key).name == first else value_of(number)
        assert broken.lookup(f"prompt {number}", LLM) == expected
    broken.clear()  # the shards that answer are cleared; the one that does not is counted
    assert all(not stored_keys(url, namespace) for url in shard_urls[1:3])
    # stats() is a health check: a shard that is down makes it raise, under either policy.
    with pytest.raises(CacheUnavailableError):
        broken.stats()
    broken.close()
    healthy.clear()
    healthy.close()


def test_shards_are_checked_at_construction(shard_urls: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="shards"):
        SQLCache(shard_urls[0], shards=shard_urls[1:3])
    with pytest.raises(ConfigurationError, match="different"):
        SQLCache(shards=[shard_urls[0], shard_urls[0]])
    with pytest.raises(ConfigurationError, match="read_your_writes"):
        SQLCache(shard_urls[0], read_your_writes=-1)
    # A name keeps the keys in place when a shard's server moves.
    named = SQLCache(
        shards=[Shard(url=shard_urls[0], name="a"), Shard(url=shard_urls[1], name="b")]
    )
    moved = SQLCache(
        shards=[Shard(url=shard_urls[2], name="a"), Shard(url=shard_urls[3], name="b")]
    )
    keys = [named.settings.key_hash(f"p{n}", LLM) for n in range(200)]
    assert [named.topology.for_key(k).name for k in keys] == [
        moved.topology.for_key(k).name for k in keys
    ]
    named.close()
    moved.close()


def test_a_lookup_is_one_round_trip_to_one_shard(shard_urls: list[str]) -> None:
    taps = [WireTap(url) for url in shard_urls[:3]]
    cache = SQLCache(shards=[tap.url for tap in taps], namespace=new_namespace())
    try:
        numbers = fill(cache, 30)
        for _ in range(WARM_UP):  # every shard's connection has run the lookup enough
            for number in numbers.values():
                cache.lookup(f"prompt {number}", LLM)
        for key, number in numbers.items():
            for tap in taps:
                tap.reset()
            assert cache.lookup(f"prompt {number}", LLM) == value_of(number)
            trips = [tap.round_trips for tap in taps]
            home = [database.name for database in cache.topology.databases].index(
                cache.topology.for_key(key).name
            )
            assert trips == [1 if i == home else 0 for i in range(3)], trips
    finally:
        cache.clear()
        cache.close()
        for tap in taps:
            tap.close()


def test_a_shard_is_named_by_its_database_not_its_credentials() -> None:
    assert Shard(url="postgresql+psycopg://app:secret@db.internal/cache").default_name() == (
        "postgresql://db.internal:5432/cache"
    )
    assert Shard(
        url="mysql+aiomysql://migrator@db.internal:3307/cache?charset=utf8mb4"
    ).default_name() == ("mysql://db.internal:3307/cache")
    assert Shard(url="sqlite:////var/cache/one.db").default_name() == "sqlite:////var/cache/one.db"
