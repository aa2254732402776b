"""URLs, drivers, engines the application passes in, schemas and DDL, round trips."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from langchain_sqlcache import ConfigurationError, MissingEngineError, SchemaError, SQLCache
from langchain_sqlcache.engines import (
    DEFAULT_URL,
    URL_ENV_VAR,
    async_deadline,
    driver_urls,
    engine_defaults,
    session_setup,
    timeout_args,
    with_defaults,
)
from langchain_sqlcache.timeouts import Timeouts
from tests.conftest import Backend, unique_namespace
from tests.helpers import get, put

LLM = "engines-llm"
VALUE = [Generation(text="cached")]


@pytest.mark.parametrize(
    ("url", "sync_url", "async_url"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db", "postgresql+asyncpg://u@h/db"),
        (
            "postgresql+asyncpg://u@h/db",
            "postgresql+psycopg://u@h/db",
            "postgresql+asyncpg://u@h/db",
        ),
        (
            "postgresql+psycopg2://u@h/db",
            "postgresql+psycopg2://u@h/db",
            "postgresql+asyncpg://u@h/db",
        ),
        (
            "mysql://u@h/db",
            "mysql+pymysql://u@h/db?charset=utf8mb4",
            "mysql+aiomysql://u@h/db?charset=utf8mb4",
        ),
        (
            "mariadb://u@h/db",
            "mariadb+pymysql://u@h/db?charset=utf8mb4",
            "mariadb+aiomysql://u@h/db?charset=utf8mb4",
        ),
        (
            "mysql+aiomysql://u@h/db",
            "mysql+pymysql://u@h/db?charset=utf8mb4",
            "mysql+aiomysql://u@h/db?charset=utf8mb4",
        ),
        (
            "mysql://u@h/db?charset=utf8mb4&ssl_disabled=true",
            "mysql+pymysql://u@h/db?charset=utf8mb4&ssl_disabled=true",
            "mysql+aiomysql://u@h/db?charset=utf8mb4&ssl_disabled=true",
        ),
        ("sqlite:///x.db", "sqlite+pysqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+pysqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_url_gives_each_family_its_driver(url: str, sync_url: str, async_url: str) -> None:
    sync, async_ = driver_urls(make_url(url))
    assert sync.render_as_string() == sync_url
    assert async_.render_as_string() == async_url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("oracle://u@h/db", "unsupported database backend 'oracle'"),
        ("not a url", "not a database URL"),
        ("postgresql+nosuchdriver://u@h/db", "unknown driver"),
        ("sqlite://", "in-memory SQLite"),
        ("sqlite:///:memory:", "in-memory SQLite"),
    ],
)
def test_bad_urls_raise_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        SQLCache(url)


def test_backend_engines_use_the_expected_drivers(backend: Backend) -> None:
    expected = {
        "sqlite": ("pysqlite", "aiosqlite"),
        "postgresql": ("psycopg", "asyncpg"),
        "mysql": ("pymysql", "aiomysql"),
    }[backend.name]
    cache = SQLCache(backend.url)
    assert cache.store.engines is not None
    assert cache.store.async_engines is not None
    assert (cache.store.engines.writer.driver, cache.store.async_engines.writer.driver) == expected
    cache.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sqlite_connections_are_configured(backend: Backend) -> None:
    """WAL, NORMAL sync, foreign keys and a busy timeout, on every pool of both families."""
    cache = SQLCache(backend.url, namespace=unique_namespace())
    assert cache.store.engines is not None
    assert cache.store.async_engines is not None
    pragmas = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
    expected = ["wal", 1, 1, 30000]  # synchronous 1: NORMAL
    for engine in cache.store.engines.owned:
        with engine.connect() as connection:
            got = [connection.exec_driver_sql(f"PRAGMA {p}").scalar() for p in pragmas]
        assert got == expected, engine
    # The running loop's pools, which aclose() closes (the engines built with the cache are
    # handed to the first loop that asks; a pool left open is closed by the garbage collector
    # after the loop is gone, and aiosqlite's thread then reports "Event loop is closed").
    for async_engine in (await cache.store.aready()).owned:
        async with async_engine.connect() as async_connection:
            got = [
                (await async_connection.exec_driver_sql(f"PRAGMA {p}")).scalar() for p in pragmas
            ]
        assert got == expected, async_engine
    await cache.aclose()


def test_default_url_is_the_env_var_then_a_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(URL_ENV_VAR, raising=False)
    cache = SQLCache()
    cache.update("p", LLM, VALUE)
    cache.close()
    assert DEFAULT_URL == "sqlite:///.langchain_cache.db"
    assert (tmp_path / ".langchain_cache.db").exists()
    monkeypatch.setenv(URL_ENV_VAR, f"sqlite:///{tmp_path / 'from-env.db'}")
    cache = SQLCache()
    assert cache.lookup("p", LLM) is None
    cache.update("p", LLM, VALUE)
    cache.close()
    assert (tmp_path / "from-env.db").exists()


@pytest.fixture
def app_engines(backend: Backend) -> Iterator[tuple[Engine, AsyncEngine]]:
    sync_url, async_url = driver_urls(make_url(backend.url))
    engine = create_engine(sync_url)
    async_engine = create_async_engine(async_url)
    yield engine, async_engine
    engine.dispose()


async def test_application_engines_are_reused_and_left_open(
    app_engines: tuple[Engine, AsyncEngine],
) -> None:
    engine, async_engine = app_engines
    disposed: list[object] = []
    for target in (engine, async_engine.sync_engine):
        event.listen(target, "engine_disposed", disposed.append)
    cache = SQLCache(engine=engine, async_engine=async_engine, namespace=unique_namespace())
    cache.update("p", LLM, VALUE)
    assert await cache.alookup("p", LLM) == VALUE
    await cache.aclear()
    await cache.aclose()
    assert disposed == []
    await async_engine.dispose()


async def test_missing_family_names_what_to_pass(app_engines: tuple[Engine, AsyncEngine]) -> None:
    engine, async_engine = app_engines
    sync_only = SQLCache(engine=engine, namespace=unique_namespace())
    assert sync_only.lookup("p", LLM) is None
    with pytest.raises(MissingEngineError, match=r"async_engine=create_async_engine\(\.\.\.\)"):
        await sync_only.alookup("p", LLM)
    async_only = SQLCache(async_engine=async_engine, namespace=unique_namespace())
    assert await async_only.alookup("p", LLM) is None
    with pytest.raises(MissingEngineError, match=r"pass engine=create_engine\(\.\.\.\)"):
        async_only.update("p", LLM, VALUE)
    await async_engine.dispose()


def test_url_and_one_engine_derive_the_other_family(
    backend: Backend, app_engines: tuple[Engine, AsyncEngine]
) -> None:
    engine, _ = app_engines
    cache = SQLCache(backend.url, engine=engine, namespace=unique_namespace())
    assert cache.store.engines is not None
    assert cache.store.engines.writer is engine
    assert cache.store.async_engines is not None
    assert cache.store.async_engines.owned


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        SQLCache(engine=create_engine("sqlite://"), namespace="n" * 256)
    with pytest.raises(ConfigurationError, match="namespace"):
        SQLCache(engine=create_engine("sqlite://"), namespace="\x00" * 100)
    with pytest.raises(ConfigurationError, match="end with a space"):
        SQLCache(engine=create_engine("sqlite://"), namespace="tenant ")
    engine = create_engine("sqlite://")
    with pytest.raises(ConfigurationError, match="pool_size"):
        SQLCache(engine=engine, pool_size=3)
    with pytest.raises(ConfigurationError, match="transaction_pooler"):
        SQLCache(engine=engine, transaction_pooler=True)
    with pytest.raises(ConfigurationError, match="transaction_pooler is for Postgres"):
        SQLCache("mysql://root@127.0.0.1/test", transaction_pooler=True)


def test_transaction_pooler_settings_merge_with_the_users() -> None:
    psycopg_url = make_url("postgresql+psycopg://app@pgbouncer/app")
    asyncpg_url = make_url("postgresql+asyncpg://app@pgbouncer/app")
    assert engine_defaults(psycopg_url) == {}
    psycopg_defaults = engine_defaults(psycopg_url, transaction_pooler=True)
    assert psycopg_defaults == {"connect_args": {"prepare_threshold": None}}
    merged = with_defaults(psycopg_defaults, {"connect_args": {"application_name": "app"}})
    assert merged["connect_args"] == {"prepare_threshold": None, "application_name": "app"}
    asyncpg_args = engine_defaults(asyncpg_url, transaction_pooler=True)["connect_args"]
    assert asyncpg_args["statement_cache_size"] == 0
    assert asyncpg_args["prepared_statement_cache_size"] == 0
    names = {asyncpg_args["prepared_statement_name_func"]() for _ in range(100)}
    assert len(names) == 100
    cache = SQLCache("postgresql://app@127.0.0.1:9/app", transaction_pooler=True)
    assert cache.store.engines is not None
    assert cache.store.async_engines is not None
    # asyncpg lookups run on the transactional engine (prepare and execute reach one server
    # connection); psycopg keeps its autocommit reader.
    assert cache.store.async_engines.reader is cache.store.async_engines.writer
    assert cache.store.engines.reader is not cache.store.engines.writer


@dataclass(frozen=True)
class Executed:
    """One statement as the driver received it."""

    statement: str
    parameters: Any
    executemany: bool

    @property
    def rows(self) -> int:
        """How many parameter sets it carried (an executemany carries one per row)."""
        return len(self.parameters) if self.executemany else 1


COMMIT = "COMMIT"


class StatementLog:
    """Every statement an engine sends, with whether its connection was in autocommit.

    ``events`` keeps the same statements with their parameters, and the commits between
    them, in order, for tests that count rows per statement or statements per transaction.
    """

    def __init__(self, *engines: Engine) -> None:
        self.statements: list[tuple[str, bool]] = []
        self.events: list[Executed | str] = []
        for engine in engines:
            event.listen(engine, "before_cursor_execute", self._record)
            event.listen(engine, "commit", self._commit)

    def _record(
        self,
        conn: Any,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        executemany: bool,
    ) -> None:
        self.statements.append((statement, in_autocommit(conn.connection.dbapi_connection)))
        self.events.append(Executed(statement, parameters, executemany))

    def _commit(self, _conn: Any) -> None:
        self.events.append(COMMIT)

    @property
    def executed(self) -> list[Executed]:
        return [e for e in self.events if isinstance(e, Executed)]

    @property
    def commits(self) -> int:
        return self.events.count(COMMIT)

    def transactions(self) -> list[list[Executed]]:
        """The statements sent between commits, one list per committed transaction."""
        done: list[list[Executed]] = [[]]
        for item in self.events:
            if isinstance(item, Executed):
                done[-1].append(item)
            else:
                done.append([])
        assert not done[-1], f"statements after the last commit: {done[-1]}"
        return done[:-1]

    def clear(self) -> None:
        self.statements.clear()
        self.events.clear()


def in_autocommit(dbapi_connection: Any) -> bool:
    # SQLAlchemy's async adapters wrap the driver's connection; aiomysql's passes
    # get_autocommit on only from SQLAlchemy 2.1.
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    if hasattr(driver, "get_autocommit"):  # PyMySQL, aiomysql
        return bool(driver.get_autocommit())
    if isinstance(getattr(dbapi_connection, "autocommit", None), bool):  # psycopg, asyncpg
        return bool(dbapi_connection.autocommit)
    return dbapi_connection.isolation_level is None  # sqlite3, aiosqlite


DDL = re.compile(r"^\s*(CREATE|ALTER|DROP)\b", re.IGNORECASE)


async def test_create_tables_false_never_issues_ddl(
    backend: Backend, app_engines: tuple[Engine, AsyncEngine], tmp_sqlite_url: str
) -> None:
    engine, async_engine = app_engines
    SQLCache(engine=engine).lookup("ensure the tables exist", LLM)
    log = StatementLog(engine, async_engine.sync_engine)
    cache = SQLCache(
        engine=engine, async_engine=async_engine, namespace=unique_namespace(), create_tables=False
    )
    cache.update("p", LLM, VALUE)
    assert await cache.alookup("p", LLM) == VALUE
    await cache.aclear()
    assert log.statements
    assert not [s for s, _ in log.statements if DDL.match(s)]
    await async_engine.dispose()
    # On an empty database the first use fails, naming the fix, rather than create tables.
    empty = create_engine(tmp_sqlite_url)
    empty_log = StatementLog(empty)
    with pytest.raises(SchemaError, match=r"do not exist .* langchain-sqlcache db upgrade --url"):
        SQLCache(engine=empty, create_tables=False).lookup("p", LLM)
    assert not [s for s, _ in empty_log.statements if DDL.match(s)]
    assert inspect(empty).get_table_names() == []


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
async def test_schema_holds_the_tables(backend: Backend, family: str, scratch_schema: str) -> None:
    # A MySQL "schema" is a database, which the DBA creates (the fixture does); Postgres
    # schemas are created by the cache when absent.
    admin = create_engine(backend.sync_url)
    namespace = unique_namespace()
    cache = SQLCache(backend.url, schema=scratch_schema, namespace=namespace)
    try:
        await put(cache, family, "p", LLM, VALUE)
        assert await get(cache, family, "p", LLM) == VALUE
        tables = set(inspect(admin).get_table_names(schema=scratch_schema))
        assert tables == {"llm_cache_entry", "llm_cache_generation", "llm_cache_alembic_version"}
        default = SQLCache(backend.url, namespace=namespace)
        assert await get(default, family, "p", LLM) is None
        await default.aclose()
    finally:
        await cache.aclose()
        admin.dispose()


def test_timeouts_the_user_sets_win() -> None:
    """A timeout in the URL's query or in connect_args is the user's."""
    psycopg_url = make_url("postgresql+psycopg://app@db/app?connect_timeout=7")
    assert "connect_timeout" not in timeout_args(psycopg_url, Timeouts(), dict(psycopg_url.query))
    assert timeout_args(psycopg_url, Timeouts(connect=0.5, statement=None), {}) == {
        "connect_timeout": 2  # libpq's minimum
    }
    keepalives = timeout_args(psycopg_url, Timeouts(), {"keepalives_count": 9})
    assert keepalives["keepalives_idle"] == 6
    assert "keepalives_count" not in keepalives
    assert session_setup(psycopg_url, Timeouts(), {}) == "SET statement_timeout = 5000"
    own = {"options": "-c statement_timeout=0"}
    assert session_setup(psycopg_url, Timeouts(), own) is None
    # Behind PgBouncer in transaction mode a SET would stay on a shared server connection.
    assert session_setup(psycopg_url, Timeouts(), {}, transaction_pooler=True) is None
    asyncpg_url = make_url("postgresql+asyncpg://app@db/app")
    assert timeout_args(asyncpg_url, Timeouts(connect=3, statement=4), {"command_timeout": 60}) == {
        "timeout": 3
    }
    own_settings = {"server_settings": {"statement_timeout": "0"}}
    assert session_setup(asyncpg_url, Timeouts(), own_settings) is None
    pymysql_url = make_url("mysql+pymysql://root@db/app")
    pymysql_args = timeout_args(pymysql_url, Timeouts(), {"read_timeout": 30})
    assert "read_timeout" not in pymysql_args
    assert pymysql_args["connect_timeout"] == 2.0
    assert pymysql_args["write_timeout"] == 6.0
    assert "lock_wait_timeout = 5" in pymysql_args["init_command"]
    assert timeout_args(pymysql_url, Timeouts(None, None), {}) == {}
    assert timeout_args(make_url("sqlite:///x.db"), Timeouts(), {}) == {}
    assert session_setup(make_url("sqlite:///x.db"), Timeouts(), {}) is None
    for bad in (0, -1, float("inf"), "5", True):
        with pytest.raises(ConfigurationError, match="connect_timeout"):
            SQLCache("sqlite:///x.db", connect_timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="statement_timeout"):
            SQLCache("sqlite:///x.db", statement_timeout=bad)  # type: ignore[arg-type]


def test_the_async_deadline_is_for_drivers_without_a_read_timeout() -> None:
    """aiomysql and async psycopg bound no statement: the async path's deadline does."""
    assert async_deadline(make_url("mysql+aiomysql://root@db/app"), Timeouts()) == 8.0
    assert async_deadline(make_url("postgresql+psycopg_async://app@db/app"), Timeouts(3, 1)) == 5.0
    assert async_deadline(make_url("postgresql+asyncpg://app@db/app"), Timeouts()) is None
    assert async_deadline(make_url("mysql+aiomysql://root@db/app"), Timeouts(2, None)) is None
    assert SQLCache("mysql://root@127.0.0.1:9/app").store.async_deadline == 8.0
