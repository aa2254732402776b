"""From a URL to a sync and an async engine, each with the right driver and defaults."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, Dialect, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from langchain_sqlcache.errors import ConfigurationError


class CLIENT:
    """MySQL client capability flags (pymysql.constants.CLIENT, which aiomysql shares)."""

    FOUND_ROWS = 1 << 1
    MULTI_STATEMENTS = 1 << 16


URL_ENV_VAR = "LANGCHAIN_SQLCACHE_URL"
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
SQLITE_WAL_RETRY_SECONDS = 0.01
DEFAULT_URL = "sqlite:///.langchain_cache.db"

DEFAULT_CONNECT_TIMEOUT_SECONDS = 2.0
"""How long the cache's engines wait for a new connection, handshake and login included.

A connection on a LAN takes milliseconds, one across a region with TLS a few hundred; 2 s
is libpq's minimum, and what a model call (seconds) can afford to lose to a dead server once
before the failure policy turns the lookup into a miss."""

DEFAULT_STATEMENT_TIMEOUT_SECONDS = 5.0
"""How long one of the cache's statements may run (or wait for a lock) on the server.

A lookup or an update takes milliseconds; a statement still running after 5 s is stuck
behind a lock or on a sick server, and waiting longer only delays the model call it sits in
front of. stats() and pruning scan a namespace: over millions of entries they may need more
(``statement_timeout=`` raises it, None removes it)."""

CLIENT_TIMEOUT_GRACE_SECONDS = 1.0
"""How much longer the client waits for an answer than the server lets a statement run.

The server's own timeout cancels the statement and keeps the connection; the client's
(a read timeout) is the bound for a server that stopped answering altogether, and costs the
connection."""


@dataclass(frozen=True)
class Timeouts:
    """The connect and statement timeouts of the engines a cache builds (None: none)."""

    connect: float | None = DEFAULT_CONNECT_TIMEOUT_SECONDS
    statement: float | None = DEFAULT_STATEMENT_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        for name, value in (
            ("connect_timeout", self.connect),
            ("statement_timeout", self.statement),
        ):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value < math.inf
            ):
                msg = f"{name} must be a positive number of seconds or None, not {value!r}"
                raise ConfigurationError(msg)

    @property
    def read(self) -> float | None:
        """The client-side bound on waiting for an answer (see CLIENT_TIMEOUT_GRACE_SECONDS)."""
        return None if self.statement is None else self.statement + CLIENT_TIMEOUT_GRACE_SECONDS


@dataclass(frozen=True)
class Drivers:
    """The default sync and async driver of a backend."""

    sync: str
    async_: str


DEFAULT_DRIVERS: dict[str, Drivers] = {
    "postgresql": Drivers(sync="psycopg", async_="asyncpg"),
    "mysql": Drivers(sync="pymysql", async_="aiomysql"),
    "mariadb": Drivers(sync="pymysql", async_="aiomysql"),
    "sqlite": Drivers(sync="pysqlite", async_="aiosqlite"),
}


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
    backend = url.get_backend_name()
    drivers = DEFAULT_DRIVERS.get(backend)
    if drivers is None:
        msg = (
            f"unsupported database backend {backend!r}; "
            f"langchain-sqlcache supports {', '.join(DEFAULT_DRIVERS)}"
        )
        raise ConfigurationError(msg)
    sync_driver, async_driver = drivers.sync, drivers.async_
    if "+" in url.drivername:
        named = url.get_driver_name()
        if _is_async_driver(url):
            async_driver = named
        else:
            sync_driver = named
    sync_url = url.set(drivername=f"{backend}+{sync_driver}")
    async_url = url.set(drivername=f"{backend}+{async_driver}")
    if backend in ("mysql", "mariadb") and "charset" not in url.query:
        # 4-byte characters (emoji) need utf8mb4 on the connection, not only in the tables.
        sync_url = sync_url.update_query_dict({"charset": "utf8mb4"})
        async_url = async_url.update_query_dict({"charset": "utf8mb4"})
    return sync_url, async_url


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
    backend = url.get_backend_name()
    if transaction_pooler and backend != "postgresql":
        msg = f"transaction_pooler is for Postgres behind PgBouncer, not {backend}"
        raise ConfigurationError(msg)
    if backend in ("mysql", "mariadb"):
        # REPEATABLE READ takes gap locks on the generation rows an update deletes, which
        # deadlocks concurrent writers of neighbouring keys; READ COMMITTED does not. Pooled
        # connections are renewed before MySQL's idle timeout (wait_timeout, 8 h by default,
        # often lowered to an hour or less) closes them.
        return {"isolation_level": "READ COMMITTED", "pool_recycle": 1800}
    if backend == "sqlite":
        # Wait for a writer rather than fail with "database is locked" at once.
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}}
    if transaction_pooler and url.get_driver_name() in ("psycopg", "psycopg_async"):
        return {"connect_args": {"prepare_threshold": None}}
    if transaction_pooler and url.get_driver_name() == "asyncpg":
        # SQLAlchemy's asyncpg dialect prepares every statement: the names must be unique
        # across all clients of a server connection, and neither cache may keep them.
        return {
            "connect_args": {
                "statement_cache_size": 0,
                "prepared_statement_cache_size": 0,
                "prepared_statement_name_func": _unique_statement_name,
            }
        }
    return {}


def timeout_args(url: URL, timeouts: Timeouts, given: dict[str, Any]) -> dict[str, Any]:
    """The driver's connect arguments that bound connecting and each statement.

    ``url`` names the driver; ``given`` is what the user passed already (the URL's query and
    ``connect_args``): a timeout the user set there is theirs. The Postgres statement
    timeout is set once a connection is open (see postgres_statement_timeout).
    """
    connect, read = timeouts.connect, timeouts.read
    driver = url.get_driver_name()
    args: dict[str, Any] = {}
    if driver in ("psycopg", "psycopg_async"):
        if connect is not None:
            # libpq counts whole seconds, at least 2; psycopg applies it to the whole
            # connection, login included.
            args["connect_timeout"] = max(2, math.ceil(connect))
        if read is not None:
            # libpq has no client-side bound on a statement. A server host that vanished
            # mid-statement (a failover, a partition) would hold the connection forever,
            # since nothing is being sent; keepalive probes find it gone within about
            # read + 3 s. (A frozen server process whose kernel still answers them is not
            # found: see the async path's deadline.)
            args.update(
                keepalives=1,
                keepalives_idle=math.ceil(read),
                keepalives_interval=1,
                keepalives_count=3,
            )
    elif driver == "asyncpg":
        # asyncpg bounds the whole connection (login included) and, on the client side,
        # each statement: the bound for a server that stops answering mid-statement.
        args["timeout"] = connect
        args["command_timeout"] = read
    elif driver in ("pymysql", "aiomysql"):
        args["connect_timeout"] = connect
        if timeouts.statement is not None:
            args["init_command"] = _mysql_session_timeouts(timeouts.statement)
        if driver == "pymysql":
            # PyMySQL's connect_timeout covers the TCP connect alone and its read_timeout
            # every read, the handshake's included: the handshake gets the connect timeout,
            # and _configure_pymysql_reads gives later reads the statement's.
            args["read_timeout"] = connect if connect is not None else read
            args["write_timeout"] = read
        elif connect is not None:
            # aiomysql has no read timeout at all: the handshake is bounded here, and a
            # statement by the async path's own deadline.
            args["async_creator_fn"] = _aiomysql_connect_within(connect)
    return {key: value for key, value in args.items() if value is not None and key not in given}


def async_deadline(url: URL, timeouts: Timeouts) -> float | None:
    """How long one async attempt may take, for drivers with no client-side statement bound.

    aiomysql has no read timeout, and psycopg's async connection none either: against a
    server that stops answering mid-statement only a deadline around the attempt
    (``asyncio.timeout``) returns. None for drivers that bound it themselves (asyncpg's
    command_timeout) or when the statement timeout is off.
    """
    if timeouts.read is None or url.get_driver_name() not in ("aiomysql", "psycopg_async"):
        return None
    return (timeouts.connect or 0.0) + timeouts.read


def postgres_statement_timeout(
    url: URL, timeouts: Timeouts, given: dict[str, Any], *, transaction_pooler: bool = False
) -> str | None:
    """The SET that gives a new Postgres connection its statement timeout, if it needs one.

    Run once a connection is open, not sent as a startup parameter (``options``,
    ``server_settings``): PgBouncer, in any mode, refuses the startup parameters it does not
    track. Behind a transaction pooler nothing is set (the SET would stay on a server
    connection other clients share): set ``statement_timeout`` on the role or the pooler's
    ``query_timeout`` instead. A statement_timeout in the user's ``options`` or
    ``server_settings`` is theirs.
    """
    if url.get_backend_name() != "postgresql" or timeouts.statement is None or transaction_pooler:
        return None
    if "statement_timeout" in f"{given.get('options', '')} {given.get('server_settings', '')}":
        return None
    return f"SET statement_timeout = {_milliseconds(timeouts.statement)}"


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


def _milliseconds(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _mysql_session_timeouts(statement: float) -> str:
    """The SET that bounds a MySQL session's waits, run once per new connection.

    MySQL has no statement timeout for writes; what holds a cache's statement on the server
    is a lock (a row's, or a table's metadata lock during a migration, which waits a year by
    default). MariaDB has one (max_statement_time), in a comment that only MariaDB runs.
    """
    seconds = max(1, math.ceil(statement))
    return (
        f"SET SESSION innodb_lock_wait_timeout = {seconds}, lock_wait_timeout = {seconds}"
        f" /*M! , max_statement_time = {statement:g} */"
    )


def _aiomysql_connect_within(seconds: float) -> Callable[..., Any]:
    async def connect_within(*args: Any, **kwargs: Any) -> Any:
        import aiomysql  # an optional driver, imported when a connection is opened
        from pymysql.err import OperationalError

        try:
            return await asyncio.wait_for(aiomysql.connect(*args, **kwargs), seconds)
        except TimeoutError as exc:
            # PyMySQL's code and words for it: the same error on both MySQL drivers.
            host = kwargs.get("host", "localhost")
            msg = f"Can't connect to MySQL server on {host!r} (timed out after {seconds:g} s)"
            raise OperationalError(2003, msg) from exc

    return connect_within


def _configure_pymysql_reads(engine: Engine, read_timeout: float | None) -> None:
    """Give a PyMySQL connection's reads the statement's bound once its handshake is done.

    PyMySQL takes a single read timeout, for the handshake and every statement alike, and
    has no public way to change it afterwards: the attribute its reads consult is set here.
    """

    def after_handshake(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection._read_timeout = read_timeout

    event.listen(engine, "connect", after_handshake)


POOL_DEFAULTS: dict[str, Any] = {"pool_size": 15, "max_overflow": 0}
"""The pool of an engine the cache builds: 15 connections kept, none opened beyond them.

SQLAlchemy's default (5 kept, 10 more opened on demand and closed on return) makes a busy
cache open and close a connection for most operations once more than 5 callers overlap: on
Postgres, 64 tasks got 2,122 hits/s with it and 5,969 with this (bench/performance.py
--quick --backends postgresql). A cache operation holds its connection for well under a
millisecond, so a caller beyond the 15th waits for one (up to pool_timeout) rather than
pay for a new connection.
"""


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4()}__"


def with_defaults(defaults: dict[str, Any], engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The user's engine arguments over the defaults; ``connect_args`` merge key by key."""
    merged = {**defaults, **engine_kwargs}
    if "connect_args" in defaults and "connect_args" in engine_kwargs:
        merged["connect_args"] = {**defaults["connect_args"], **engine_kwargs["connect_args"]}
    return merged


E = TypeVar("E", Engine, AsyncEngine)


ReaderMode = Literal["autocommit", "switch", "transaction"]
"""How a statement sent straight to the reader's pooled connection runs.

``autocommit``: the reader's connections are in autocommit already (a pool of their own).
``switch``: the statement switches its connection to autocommit and back, on the client side
(psycopg, asyncpg and sqlite3 send nothing for it). ``transaction``: it runs in the
connection's own transaction (MySQL, where switching costs two round trips, and asyncpg
behind PgBouncer, where prepare and execute must share a transaction)."""


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
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        msg = (
            "an in-memory SQLite database belongs to one connection, so threads and the sync "
            "and async methods would each see a different cache; use a file "
            "(sqlite:///cache.db), or pass engine=/async_engine= built the way you want"
        )
        raise ConfigurationError(msg)
    sync_url, async_url = driver_urls(url)
    driver_url = async_url if factory is create_async_engine else sync_url
    defaults = engine_defaults(driver_url, transaction_pooler=transaction_pooler)
    timeouts = timeouts or Timeouts()
    if "poolclass" not in engine_kwargs:
        defaults = {**POOL_DEFAULTS, **defaults}
        if timeouts.statement is not None and url.get_backend_name() != "sqlite":
            # A caller waits for a pooled connection no longer than for a statement (SQLite's
            # writers wait out its busy timeout, holding theirs: its pool keeps the default).
            defaults["pool_timeout"] = timeouts.statement
    kwargs = with_defaults(defaults, engine_kwargs)
    given = {**driver_url.query, **kwargs.get("connect_args", {})}
    bounds = timeout_args(driver_url, timeouts, given)
    session = postgres_statement_timeout(
        driver_url, timeouts, given, transaction_pooler=transaction_pooler
    )
    if bounds:
        kwargs["connect_args"] = {**kwargs.get("connect_args", {}), **bounds}
    with _driver_required(url):
        writer = factory(driver_url, **kwargs)
        if transaction_pooler and writer.dialect.driver == "asyncpg":
            # SQLAlchemy's asyncpg dialect prepares a statement, then runs it; outside a
            # transaction PgBouncer may hand the two to different server connections, so
            # lookups run in a transaction too.
            pair = EnginePair(writer, writer, (writer,), schema, "transaction")
        else:
            # Lookups get a pool of their own whose connections stay in autocommit: no
            # switching per lookup (two round trips on MySQL) and no ROLLBACK on return.
            reader_kwargs = {
                **kwargs,
                "isolation_level": "AUTOCOMMIT",
                "skip_autocommit_rollback": True,
            }
            multi_statements = writer.dialect.name in ("mysql", "mariadb")
            if multi_statements:
                # An update's statements travel in one packet (one round trip); only
                # statements the cache compiles run here, their values escaped by the
                # driver. FOUND_ROWS is SQLAlchemy's own default for these drivers.
                connect_args = dict(reader_kwargs.get("connect_args", {}))
                flags = connect_args.get("client_flag", CLIENT.FOUND_ROWS)
                connect_args["client_flag"] = flags | CLIENT.MULTI_STATEMENTS
                reader_kwargs["connect_args"] = connect_args
            reader = factory(driver_url, **reader_kwargs)
            pair = EnginePair(
                writer, reader, (writer, reader), schema, "autocommit", multi_statements
            )
    for engine in pair.owned:
        _configure(_sync_engine_of(engine))
        if session is not None:
            _configure_session(_sync_engine_of(engine), session)
        if engine.dialect.driver == "pymysql" and "read_timeout" not in given:
            _configure_pymysql_reads(_sync_engine_of(engine), timeouts.read)
    return _with_schema(pair)


def given_pair(engine: E, schema: str | None) -> EnginePair[E]:
    """Use an application's engine for a family; it is never disposed of by the cache."""
    if _autocommit_is_a_round_trip(engine):
        # Without a pool of our own, a plain read (SELECT, then the pool's ROLLBACK) is
        # cheaper than switching the connection to autocommit and back.
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


def _autocommit_is_a_round_trip(engine: Engine | AsyncEngine) -> bool:
    return engine.dialect.name in ("mysql", "mariadb")


def _sync_engine_of(engine: Engine | AsyncEngine) -> Engine:
    return engine.sync_engine if isinstance(engine, AsyncEngine) else engine


def create_migration_engine(url: URL) -> Engine:
    """A sync engine without a pool, for one migration run or one version check."""
    sync_url, _ = driver_urls(url)
    with _driver_required(url):
        engine = create_engine(sync_url, poolclass=NullPool, **engine_defaults(url))
    _configure(engine)
    return engine


def create_async_migration_engine(url: URL) -> AsyncEngine:
    """An async engine without a pool, for a migration run from an async URL."""
    _, async_url = driver_urls(url)
    with _driver_required(url):
        engine = create_async_engine(async_url, poolclass=NullPool, **engine_defaults(url))
    _configure(engine.sync_engine)
    return engine


def names_async_driver(url: URL) -> bool:
    """Whether the URL itself names an async driver (postgresql+asyncpg://...)."""
    return "+" in url.drivername and _is_async_driver(url)


IDLE_PING_SECONDS = 30.0
"""A pooled connection idle for longer than this is pinged before use (see _ping_if_idle)."""


def _configure(engine: Engine) -> None:
    dialect = engine.dialect

    def ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        _ping_if_idle(dialect, dbapi_connection, record)

    if engine.dialect.name == "sqlite":  # a file's connections never go stale or read-only
        event.listen(engine, "connect", _configure_sqlite_connection)
        event.listen(engine, "begin", _begin_immediate)
    else:
        event.listen(engine, "checkin", _note_return)
        event.listen(engine, "checkout", ping_if_idle)
        event.listen(engine, "handle_error", _read_only_is_a_disconnect)


def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
    """Make the pool replace a connection that turned read-only (see turned_read_only)."""
    if turned_read_only(context.original_exception):
        context.is_disconnect = True


# MySQL's "running with the --read-only option" and "cannot execute statement in a READ ONLY
# transaction".
READ_ONLY_MYSQL_CODES = frozenset({1290, 1792})


def turned_read_only(error: BaseException) -> bool:
    """Tell whether a write failed because its connection now reaches a read-only server.

    After a failover a pooled connection may point at a standby that refuses writes
    (SQLSTATE 25006 on Postgres); kept, it would fail every write that draws it, so it is
    treated as gone and the pool replaces it.
    """
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if sqlstate == "25006":
        return True
    args: tuple[Any, ...] = getattr(error, "args", ())
    return len(args) > 0 and args[0] in READ_ONLY_MYSQL_CODES


@contextlib.contextmanager
def _driver_required(url: URL) -> Iterator[None]:
    try:
        yield
    except ModuleNotFoundError as exc:
        msg = (
            f"the driver for {url.get_backend_name()} is not installed ({exc.name}); "
            f"install it with: pip install 'langchain-sqlcache[{_extra(url)}]'"
        )
        raise ConfigurationError(msg) from exc


def _extra(url: URL) -> str:
    backend = url.get_backend_name()
    return {"postgresql": "postgres", "mariadb": "mysql"}.get(backend, backend)


def _configure_sqlite_connection(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # ON DELETE CASCADE needs foreign keys on; WAL lets readers run beside a writer.
        cursor.execute("PRAGMA foreign_keys = ON")
        _switch_to_wal(cursor)
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: a crash of the
        # process loses nothing, one of the machine may lose the last writes (never the
        # file's consistency). For a cache, a few recent entries are worth less than an
        # fsync per update.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """Put the file in WAL mode, waiting out other connections that are opening it too.

    The switch needs the file to itself, and SQLite refuses it with "database is locked" at
    once, without the busy timeout, while another connection holds a lock: processes that
    open a new cache file together (concurrent first migrations) would fail. The mode
    persists in the file, so this loop only ever runs on a brand-new one.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(SQLITE_WAL_RETRY_SECONDS)


def _begin_immediate(connection: Connection) -> None:
    """Start each SQLite transaction holding the write lock (BEGIN IMMEDIATE).

    A deferred transaction that reads before it writes cannot wait for the lock when another
    writer got there first (SQLite fails it with "database is locked" at once); an immediate
    one waits out the busy timeout. Autocommit connections (lookups) take no lock.
    """
    driver_connection = connection.connection.driver_connection
    if getattr(driver_connection, "isolation_level", "") is not None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


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
