"""From a URL to a sync and an async engine, each with the right driver and defaults."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Dialect, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from langchain_sqlcache.backends import backend_for
from langchain_sqlcache.backends.base import ReaderMode
from langchain_sqlcache.errors import ConfigurationError
from langchain_sqlcache.timeouts import Timeouts

URL_ENV_VAR = "LANGCHAIN_SQLCACHE_URL"
DEFAULT_URL = "sqlite:///.langchain_cache.db"


def resolve_url(url: str | URL | None) -> URL:
    """Return the URL to use: the argument, else ``$LANGCHAIN_SQLCACHE_URL``, else SQLite."""
    raw = url if url is not None else os.environ.get(URL_ENV_VAR) or DEFAULT_URL
    try:
        return make_url(raw)
    except ArgumentError as exc:
        msg = f"not a database URL: {raw!r} (expected e.g. postgresql://user@host/db)"
        raise ConfigurationError(msg) from exc


def driver_urls(url: URL) -> tuple[URL, URL]:
    """Split a URL into its sync and async forms.

    ``postgresql://`` gives psycopg and asyncpg, ``mysql://`` and ``mariadb://`` PyMySQL and
    aiomysql (with utf8mb4), ``sqlite:///`` sqlite3 and aiosqlite. A driver named in the URL
    is kept for its own side; the other side gets the backend's default.
    """
    backend = backend_for(url)
    sync_driver, async_driver = backend.sync_driver, backend.async_driver
    if "+" in url.drivername:
        named = url.get_driver_name()
        if _is_async_driver(url):
            async_driver = named
        else:
            sync_driver = named
    name = url.get_backend_name()
    return (
        backend.driver_url(url.set(drivername=f"{name}+{sync_driver}")),
        backend.driver_url(url.set(drivername=f"{name}+{async_driver}")),
    )


def _is_async_driver(url: URL) -> bool:
    try:
        return bool(getattr(url.get_dialect(), "is_async", False))
    except NoSuchModuleError as exc:
        msg = f"unknown driver in {url.render_as_string()!r}: {exc}"
        raise ConfigurationError(msg) from exc


def engine_defaults(url: URL, *, transaction_pooler: bool = False) -> dict[str, Any]:
    """Engine keyword arguments that make a backend safe under concurrent writers.

    ``url`` names the driver. With ``transaction_pooler`` (PgBouncer in transaction mode in
    front of Postgres), the drivers use no named prepared statement that a later transaction,
    served by another server connection, would miss or find taken.
    """
    backend = backend_for(url)
    if transaction_pooler and not backend.behind_transaction_poolers:
        msg = f"transaction_pooler is for Postgres behind PgBouncer, not {url.get_backend_name()}"
        raise ConfigurationError(msg)
    return backend.engine_defaults(url, transaction_pooler=transaction_pooler)


def timeout_args(url: URL, timeouts: Timeouts, given: dict[str, Any]) -> dict[str, Any]:
    """The driver's connect arguments that bound connecting and each statement.

    ``url`` names the driver; ``given`` is what the user passed already (the URL's query and
    ``connect_args``): a timeout the user set there is theirs. The Postgres statement
    timeout is set once a connection is open (see session_setup).
    """
    args = backend_for(url).timeout_args(url, timeouts, given)
    return {key: value for key, value in args.items() if value is not None and key not in given}


def async_deadline(url: URL, timeouts: Timeouts) -> float | None:
    """How long one async attempt may take, for drivers with no client-side statement bound.

    aiomysql has no read timeout, and psycopg's async connection none either: against a
    server that stops answering mid-statement only a deadline around the attempt
    (``asyncio.timeout``) returns. None for drivers that bound it themselves (asyncpg's
    command_timeout) or when the statement timeout is off.
    """
    if timeouts.read is None or backend_for(url).has_read_timeout(url.get_driver_name()):
        return None
    return (timeouts.connect or 0.0) + timeouts.read


def session_setup(
    url: URL, timeouts: Timeouts, given: dict[str, Any], *, transaction_pooler: bool = False
) -> str | None:
    """The statement a new connection of the cache's engines runs once open (see backends)."""
    return backend_for(url).session_setup(timeouts, given, transaction_pooler=transaction_pooler)


def _configure_session(engine: Engine, statement: str) -> None:
    def set_up(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()
        # A session setting outlives the transaction the driver may have opened for it.
        dbapi_connection.commit()

    event.listen(engine, "connect", set_up)


POOL_DEFAULTS: dict[str, Any] = {"pool_size": 15, "max_overflow": 0}
"""The pool of an engine the cache builds: 15 connections kept, none opened beyond them.

SQLAlchemy's default (5 kept, 10 more opened on demand and closed on return) makes a busy
cache open and close a connection for most operations once more than 5 callers overlap: on
Postgres, 64 tasks got 2,122 hits/s with it and 5,969 with this (bench/performance.py
--quick --backends postgresql). A cache operation holds its connection for well under a
millisecond, so a caller beyond the 15th waits for one (up to pool_timeout) rather than
pay for a new connection.
"""


def with_defaults(defaults: dict[str, Any], engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The user's engine arguments over the defaults; ``connect_args`` merge key by key."""
    merged = {**defaults, **engine_kwargs}
    if "connect_args" in defaults and "connect_args" in engine_kwargs:
        merged["connect_args"] = {**defaults["connect_args"], **engine_kwargs["connect_args"]}
    return merged


E = TypeVar("E", Engine, AsyncEngine)


@dataclass(frozen=True)
class EnginePair(Generic[E]):
    """The engines of one family (sync or async) of a cache.

    Writes run in transactions on ``writer``. Lookups run on ``reader`` in autocommit mode,
    so that a lookup is its SELECT alone, without a BEGIN and a ROLLBACK around it.
    """

    writer: E
    reader: E
    owned: tuple[E, ...] = ()
    """The engines the cache built, and so disposes of when it is closed."""
    schema: str | None = None
    """The schema the tables are in (None: the connection's default)."""
    reader_mode: ReaderMode = "autocommit"
    """How statements sent straight to the reader's connections run (see ReaderMode)."""
    multi_statements: bool = False
    """The reader's MySQL connections accept several statements in one packet."""

    @functools.cached_property
    def sync(self) -> EnginePair[Engine]:
        """The same engines as sync ones (an async engine's sync facade), to run work on.

        SQLAlchemy drives a sync facade on the async driver from its greenlet. Built once
        per pair, not per operation.
        """
        return EnginePair(
            _sync_engine_of(self.writer),
            _sync_engine_of(self.reader),
            (),
            self.schema,
            self.reader_mode,
            self.multi_statements,
        )


def build_pair(
    factory: Callable[..., E],
    url: URL,
    engine_kwargs: dict[str, Any],
    schema: str | None,
    *,
    transaction_pooler: bool = False,
    timeouts: Timeouts | None = None,
) -> EnginePair[E]:
    """Build a family's engines from ``url`` with ``factory`` (create_engine or the async one).

    ``engine_kwargs`` override the backend defaults (see engine_defaults) and the timeouts'
    driver arguments (see timeout_args), which ``timeouts`` sets (None: the defaults).
    """
    backend = backend_for(url)
    backend.check_url(url)
    sync_url, async_url = driver_urls(url)
    driver_url = async_url if factory is create_async_engine else sync_url
    defaults = engine_defaults(driver_url, transaction_pooler=transaction_pooler)
    timeouts = timeouts or Timeouts()
    if "poolclass" not in engine_kwargs:
        defaults = {**POOL_DEFAULTS, **defaults}
        if timeouts.statement is not None and backend.bounded_pool_wait:
            # A caller waits for a pooled connection no longer than for a statement.
            defaults["pool_timeout"] = timeouts.statement
    kwargs = with_defaults(defaults, engine_kwargs)
    given = {**driver_url.query, **kwargs.get("connect_args", {})}
    bounds = timeout_args(driver_url, timeouts, given)
    session = session_setup(driver_url, timeouts, given, transaction_pooler=transaction_pooler)
    if bounds:
        kwargs["connect_args"] = {**kwargs.get("connect_args", {}), **bounds}
    with _driver_required(url):
        writer = factory(driver_url, **kwargs)
        if not backend.lookups_in_autocommit(writer.dialect.driver, transaction_pooler):
            pair = EnginePair(writer, writer, (writer,), schema, "transaction")
        else:
            # Lookups get a pool of their own whose connections stay in autocommit: no
            # switching per lookup (two round trips on MySQL) and no ROLLBACK on return.
            reader_kwargs = {
                **kwargs,
                "isolation_level": "AUTOCOMMIT",
                "skip_autocommit_rollback": True,
            }
            reader_kwargs, multi_statements = backend.reader_args(reader_kwargs)
            reader = factory(driver_url, **reader_kwargs)
            pair = EnginePair(
                writer, reader, (writer, reader), schema, "autocommit", multi_statements
            )
    for engine in pair.owned:
        _configure(_sync_engine_of(engine), timeouts, given)
        if session is not None:
            _configure_session(_sync_engine_of(engine), session)
    return _with_schema(pair)


def given_pair(engine: E, schema: str | None) -> EnginePair[E]:
    """Use an application's engine for a family; it is never disposed of by the cache."""
    mode = backend_for(engine.dialect).reader_mode_on_given_engine
    if mode == "transaction":
        return _with_schema(EnginePair(engine, engine, (), schema, "transaction"))
    reader = engine.execution_options(isolation_level="AUTOCOMMIT")
    return _with_schema(EnginePair(engine, reader, (), schema, "switch"))


def _with_schema(pair: EnginePair[E]) -> EnginePair[E]:
    if pair.schema is None:
        return pair
    # Mapping the schema per execution leaves the application's engines as they are
    # (execution_options returns a copy that shares the pool).
    translate = {None: pair.schema}
    return dataclasses.replace(
        pair,
        writer=pair.writer.execution_options(schema_translate_map=translate),
        reader=pair.reader.execution_options(schema_translate_map=translate),
    )


def _sync_engine_of(engine: Engine | AsyncEngine) -> Engine:
    return engine.sync_engine if isinstance(engine, AsyncEngine) else engine


def create_migration_engine(url: URL) -> Engine:
    """A sync engine without a pool, for one migration run or one version check."""
    sync_url, _ = driver_urls(url)
    with _driver_required(url):
        engine = create_engine(sync_url, poolclass=NullPool, **engine_defaults(url))
    _configure(engine, None, {})
    return engine


def create_async_migration_engine(url: URL) -> AsyncEngine:
    """An async engine without a pool, for a migration run from an async URL."""
    _, async_url = driver_urls(url)
    with _driver_required(url):
        engine = create_async_engine(async_url, poolclass=NullPool, **engine_defaults(url))
    _configure(engine.sync_engine, None, {})
    return engine


def names_async_driver(url: URL) -> bool:
    """Whether the URL itself names an async driver (postgresql+asyncpg://...)."""
    return "+" in url.drivername and _is_async_driver(url)


IDLE_PING_SECONDS = 30.0
"""A pooled connection idle for longer than this is pinged before use (see _ping_if_idle)."""


def _configure(engine: Engine, timeouts: Timeouts | None, given: dict[str, Any]) -> None:
    """The pool's events: the backend's own, and pings and replacements for a server's."""
    backend = backend_for(engine.dialect)
    backend.configure(engine, timeouts, given)
    if not backend.connections_go_stale:
        return
    dialect = engine.dialect

    def ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        _ping_if_idle(dialect, dbapi_connection, record)

    def read_only_is_a_disconnect(context: ExceptionContext) -> None:
        # Make the pool replace a connection that turned read-only (a standby after a
        # failover); kept, it would fail every write that draws it.
        if backend.turned_read_only(context.original_exception):
            context.is_disconnect = True

    event.listen(engine, "checkin", _note_return)
    event.listen(engine, "checkout", ping_if_idle)
    event.listen(engine, "handle_error", read_only_is_a_disconnect)


@contextlib.contextmanager
def _driver_required(url: URL) -> Iterator[None]:
    try:
        yield
    except ModuleNotFoundError as exc:
        msg = (
            f"the driver for {url.get_backend_name()} is not installed ({exc.name}); "
            f"install it with: pip install 'langchain-sqlcache[{backend_for(url).pip_extra}]'"
        )
        raise ConfigurationError(msg) from exc


def _note_return(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info["returned_at"] = time.monotonic()


def _ping_if_idle(dialect: Dialect, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    """Ping a pooled connection that sat idle, before handing it out.

    ``pool_pre_ping`` would ping every checkout, a second round trip per lookup. A connection
    in steady use is alive; one idle for a while is the kind a restart, a failover, a proxy or
    an idle timeout has closed. Pinging only those keeps one round trip per lookup under load,
    and spares the first call after a quiet spell a failed attempt and a retry. A failed ping
    makes the pool replace the connection (DisconnectionError).
    """
    returned_at = record.info.get("returned_at")
    if returned_at is None or time.monotonic() - returned_at < IDLE_PING_SECONDS:
        return
    try:
        alive = dialect.do_ping(dbapi_connection)
    except Exception as exc:
        raise DisconnectionError(str(exc)) from exc
    if not alive:
        raise DisconnectionError("the pooled connection did not answer a ping")
