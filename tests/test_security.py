"""Identifiers, keyed hashes, oversize values and failover, on the backends they concern."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import event, text

from langchain_sqlcache import SQLCache
from langchain_sqlcache.cli import EXIT_ERROR, main
from langchain_sqlcache.codec import KEY_FORMAT_VERSION, entry_key
from langchain_sqlcache.errors import IdentifierError, ReadOnlyDatabaseError, ValueTooLargeError
from tests.conftest import Backend, cli_runner, sync_engine, unique_namespace

LLM = "security-llm"
VALUE = [Generation(text="v")]
HOSTILE_NAMES = ['x"; DROP TABLE sqlcache_sentinel; --', "two words", "quote'd", "a.b", ""]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_schema_names_are_refused_and_nothing_is_dropped(
    backend: Backend, name: str
) -> None:
    engine = sync_engine(backend.url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS sqlcache_sentinel (id INTEGER)"))
    try:
        with pytest.raises(IdentifierError):
            SQLCache(backend.url, schema=name)
        result = cli_runner().invoke(
            main, ["db", "upgrade", "--url", backend.url, "--schema", name]
        )
        assert result.exit_code == EXIT_ERROR
        assert "plain SQL name" in result.stderr
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM sqlcache_sentinel")).scalar() == 0
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE sqlcache_sentinel"))
        engine.dispose()


def test_keys_are_domain_separated_and_can_be_keyed() -> None:
    plain = entry_key("ns", "prompt", "llm")
    keyed = entry_key("ns", "prompt", "llm", b"secret")
    assert plain != keyed
    assert (
        plain
        == hashlib.sha256(
            KEY_FORMAT_VERSION
            + b"".join(len(p).to_bytes(8, "big") + p for p in (b"ns", b"prompt", b"llm"))
        ).hexdigest()
    )
    assert (
        keyed
        == hmac.new(
            b"secret",
            KEY_FORMAT_VERSION
            + b"".join(len(p).to_bytes(8, "big") + p for p in (b"ns", b"prompt", b"llm")),
            hashlib.sha256,
        ).hexdigest()
    )


async def test_a_keyed_cache_does_not_share_entries_with_a_plain_one(backend: Backend) -> None:
    namespace = unique_namespace()
    plain = SQLCache(backend.url, namespace=namespace)
    keyed = SQLCache(backend.url, namespace=namespace, key_secret="s3cret")
    try:
        keyed.update("p", LLM, VALUE)
        assert keyed.lookup("p", LLM) == VALUE
        assert await keyed.alookup("p", LLM) == VALUE
        assert plain.lookup("p", LLM) is None
    finally:
        keyed.clear()
        plain.close()
        await keyed.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
async def test_values_over_max_allowed_packet_are_refused_before_sending(
    backend: Backend,
) -> None:
    huge = [Generation(text="x" * (70 << 20))]  # over MySQL's 64 MiB packet
    warn = SQLCache(backend.url, namespace=unique_namespace())
    strict = SQLCache(backend.url, namespace=unique_namespace(), on_error="raise")
    try:
        warn.update("big", LLM, huge)  # skipped, counted, no exception
        await warn.aupdate("big", LLM, huge)
        assert warn.lookup("big", LLM) is None
        assert warn.stats().failures == 2
        warn.update("small", LLM, VALUE)  # the connection is still usable
        assert warn.lookup("small", LLM) == VALUE
        with pytest.raises(ValueTooLargeError, match="max_allowed_packet"):
            strict.update("big", LLM, huge)
        with pytest.raises(ValueTooLargeError):
            await strict.aupdate("big", LLM, huge)
    finally:
        warn.clear()
        await warn.aclose()
        await strict.aclose()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_connection_turned_read_only_is_replaced(backend: Backend) -> None:
    cache = SQLCache(backend.url, namespace=unique_namespace(), pool_size=1, max_overflow=0)
    assert cache.store.engines is not None
    cache.lookup("warm up", LLM)
    connections: dict[str, list[Any]] = {}
    # Updates are one statement on the autocommit engine; deletes a transaction on the
    # transactional one: each pool meets a standby.
    for name, engine in (
        ("autocommit", cache.store.engines.reader),
        ("writer", cache.store.engines.writer),
    ):
        engine.dispose()
        seen = connections[name] = []

        def first_one_is_a_standby(
            dbapi_connection: Any, _record: Any, seen: list[Any] = seen
        ) -> None:
            # As after a failover: the first connection lands on a read-only standby.
            if not seen:
                with dbapi_connection.cursor() as cursor:
                    cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                dbapi_connection.commit()
            seen.append(dbapi_connection)

        event.listen(engine, "connect", first_one_is_a_standby)

    cache.update("p", LLM, VALUE)
    assert cache.lookup("p", LLM) == VALUE
    assert cache.delete("p", LLM) is True
    # The read-only ones were thrown away, not retried forever.
    assert {name: len(seen) for name, seen in connections.items()} == {
        "autocommit": 2,
        "writer": 2,
    }
    assert cache.stats().failures == 0
    cache.clear()
    cache.close()


# What makes every session of a connection read-only, as on a standby or a read-only server.
READ_ONLY_SESSION = {
    "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
}


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
@pytest.mark.parametrize("family", ["sync", "async"])
async def test_a_write_to_a_read_only_server_fails_fast_once(backend: Backend, family: str) -> None:
    """Pointed at a read-only server, an update is tried on one new connection, then fails.

    Not four attempts with a reconnect each: the error says the server is read-only, the
    breaker stays closed (lookups still work), and under "warn" it is counted as read_only.
    """
    namespace = unique_namespace()
    SQLCache(backend.url, namespace=namespace).update("p", LLM, VALUE)
    opened: list[int] = []
    caches = {
        policy: SQLCache(backend.url, namespace=namespace, on_error=policy)
        for policy in ("warn", "raise")
    }
    for cache in caches.values():
        pairs = [cache.store.engines] if family == "sync" else [await cache.store.aready()]
        for pair in pairs:
            assert pair is not None
            for engine in {pair.reader, pair.writer}:
                target = engine.sync_engine if hasattr(engine, "sync_engine") else engine

                def read_only(dbapi_connection: Any, _record: Any) -> None:
                    opened.append(1)
                    cursor = dbapi_connection.cursor()
                    try:
                        cursor.execute(READ_ONLY_SESSION[backend.name])
                    finally:
                        cursor.close()

                event.listen(target, "connect", read_only)
    try:
        for cache in caches.values():
            if family == "sync":
                assert cache.lookup("p", LLM) == VALUE
            else:
                assert await cache.alookup("p", LLM) == VALUE
        before = len(opened)
        warn, strict = caches["warn"], caches["raise"]
        if family == "sync":
            warn.update("q", LLM, VALUE)
            with pytest.raises(ReadOnlyDatabaseError, match="read-only"):
                strict.update("q", LLM, VALUE)
        else:
            await warn.aupdate("q", LLM, VALUE)
            with pytest.raises(ReadOnlyDatabaseError, match="read-only"):
                await strict.aupdate("q", LLM, VALUE)
        # One new connection per update (the one that met the refusal was replaced), not three.
        assert len(opened) - before <= 2
        assert warn.stats().failures_by_kind == {"read_only": 1}
        for cache in caches.values():
            assert cache.store.breaker.state == "closed"
            assert cache.store.async_breaker.state == "closed"
            if family == "sync":
                assert cache.lookup("p", LLM) == VALUE
            else:
                assert await cache.alookup("p", LLM) == VALUE
    finally:
        for cache in caches.values():
            await cache.aclose()
        cleaner = SQLCache(backend.url, namespace=namespace)
        cleaner.clear()
        cleaner.close()
