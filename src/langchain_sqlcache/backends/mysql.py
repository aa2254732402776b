"""MySQL and MariaDB: PyMySQL and aiomysql, the update in one packet (not on Galera), packets."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine, Insert, delete, event, func, type_coerce
from sqlalchemy import Text as TextType
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.sql import ClauseElement, ColumnElement
from sqlalchemy.types import TypeEngine

from langchain_sqlcache.backends.base import Backend, ReaderMode
from langchain_sqlcache.codec import utf8_size
from langchain_sqlcache.errors import SchemaError, ValueTooLargeError, is_read_only
from langchain_sqlcache.migrations import LOCK_NAME
from langchain_sqlcache.statements import (
    REWRITTEN_ON_UPDATE,
    entry,
    entry_binds,
    generation,
    insert_generations,
)
from langchain_sqlcache.timeouts import Timeouts


class CLIENT:
    """MySQL client capability flags (pymysql.constants.CLIENT, which aiomysql shares)."""

    FOUND_ROWS = 1 << 1
    MULTI_STATEMENTS = 1 << 16


MIGRATION_LOCK_TIMEOUT_SECONDS = 300
# Bytes a MySQL statement adds around its values, with room to spare.
PACKET_OVERHEAD = 4096
# Characters PyMySQL and aiomysql escape with a backslash when they inline a string.
ESCAPED_CHARACTERS = "\\'\"\x00\n\r\x1a"


class MySQL(Backend):
    """MySQL 8 and MariaDB 10.6+ (InnoDB)."""

    name: ClassVar[str] = "mysql"
    pip_extra: ClassVar[str] = "mysql"
    sync_driver: ClassVar[str] = "pymysql"
    async_driver: ClassVar[str] = "aiomysql"
    default_port: ClassVar[int | None] = 3306
    # Without a pool of our own, a plain read (SELECT, then the pool's ROLLBACK) is cheaper
    # than switching the connection to autocommit and back (two round trips).
    reader_mode_on_given_engine: ClassVar[ReaderMode] = "transaction"
    has_returning: ClassVar[bool] = False
    packet_limited: ClassVar[bool] = True
    packet_overhead: ClassVar[int] = PACKET_OVERHEAD

    def driver_url(self, url: URL) -> URL:
        """utf8mb4: 4-byte characters (emoji) need it on the connection, not only in tables."""
        if "charset" in url.query:
            return url
        return url.update_query_dict({"charset": "utf8mb4"})

    def engine_defaults(self, url: URL, *, transaction_pooler: bool) -> dict[str, Any]:
        """READ COMMITTED, and connections renewed before the server's idle timeout.

        REPEATABLE READ takes gap locks on the generation rows an update deletes, which
        deadlocks concurrent writers of neighbouring keys; READ COMMITTED does not. Pooled
        connections are renewed before MySQL's idle timeout (wait_timeout, 8 h by default,
        often lowered to an hour or less) closes them.
        """
        return {"isolation_level": "READ COMMITTED", "pool_recycle": 1800}

    def timeout_args(self, url: URL, timeouts: Timeouts, given: dict[str, Any]) -> dict[str, Any]:
        """Connect timeout, session lock-wait bounds and PyMySQL's read and write timeouts."""
        connect, read = timeouts.connect, timeouts.read
        args: dict[str, Any] = {"connect_timeout": connect}
        if timeouts.statement is not None:
            args["init_command"] = session_timeouts(timeouts.statement)
        if url.get_driver_name() == "pymysql":
            # PyMySQL's connect_timeout covers the TCP connect alone and its read_timeout
            # every read, the handshake's included: the handshake gets the connect timeout,
            # and configure() gives later reads the statement's.
            args["read_timeout"] = connect if connect is not None else read
            args["write_timeout"] = read
        elif connect is not None:
            # aiomysql has no read timeout at all: the handshake is bounded here, and a
            # statement by the async path's own deadline.
            args["async_creator_fn"] = _aiomysql_connect_within(connect)
        return args

    def has_read_timeout(self, driver: str) -> bool:
        """Aiomysql has none."""
        return driver != "aiomysql"

    def configure(self, engine: Engine, timeouts: Timeouts | None, given: dict[str, Any]) -> None:
        """Give a PyMySQL connection's reads the statement's bound once its handshake is done.

        PyMySQL takes a single read timeout, for the handshake and every statement alike,
        and has no public way to change it afterwards: the attribute its reads consult is
        set here.
        """
        if timeouts is None or engine.dialect.driver != "pymysql" or "read_timeout" in given:
            return
        read_timeout = timeouts.read

        def after_handshake(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
            dbapi_connection._read_timeout = read_timeout

        event.listen(engine, "connect", after_handshake)

    def reader_args(self, reader_kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Multi-statements on the lookup pool's connections: an update in one packet.

        Only statements the cache compiles run there, their values escaped by the driver.
        FOUND_ROWS is SQLAlchemy's own default for these drivers.
        """
        connect_args = dict(reader_kwargs.get("connect_args", {}))
        flags = connect_args.get("client_flag", CLIENT.FOUND_ROWS)
        connect_args["client_flag"] = flags | CLIENT.MULTI_STATEMENTS
        return {**reader_kwargs, "connect_args": connect_args}, True

    def turned_read_only(self, error: BaseException) -> bool:
        """1290 (--read-only) or 1792 (a READ ONLY transaction)."""
        return is_read_only(error)

    def upsert_entry(self, *, returning: bool = True) -> Insert:
        """INSERT ... ON DUPLICATE KEY UPDATE; the id comes back as lastrowid.

        LAST_INSERT_ID(id) makes the driver's lastrowid the existing row's id (MySQL has no
        RETURNING, so ``returning`` changes nothing).
        """
        mysql_insert = mysql.insert(entry)
        return mysql_insert.on_duplicate_key_update(
            id=func.last_insert_id(entry.c.id),
            **{name: mysql_insert.inserted[name] for name in REWRITTEN_ON_UPDATE},
        )

    def instant_type(self) -> TypeEngine[Any]:
        """DATETIME(6): microseconds (MySQL's DATETIME keeps whole seconds by default)."""
        return mysql.DATETIME(fsp=6)

    def as_text(self, column: ColumnElement[Any]) -> ColumnElement[str]:
        """JSON is LONGTEXT (MariaDB) or comes back as text (MySQL)."""
        return type_coerce(column, TextType)

    def whole_value_write(self, generations: int) -> tuple[ClauseElement, ...]:
        """An update's transaction as one packet of statements (one round trip).

        MySQL has neither RETURNING nor DML in a CTE, but the entry's id travels from the
        upsert to the next statements as LAST_INSERT_ID(), on the server, so the client
        waits for nothing between them.
        """
        return (
            # This connection is in autocommit, at the server's default isolation:
            # REPEATABLE READ's gap locks on the deleted generations deadlock writers of
            # nearby keys.
            sql_text("SET TRANSACTION ISOLATION LEVEL READ COMMITTED"),
            sql_text("START TRANSACTION"),
            self.upsert_entry().values(entry_binds()),
            delete(generation).where(generation.c.entry_id == func.last_insert_id()),
            insert_generations(generations, func.last_insert_id()),
            sql_text("COMMIT"),
        )

    def whole_value_steps(self, generations: int) -> tuple[tuple[ClauseElement, ...], ...]:
        """The same transaction with a round trip per data change, for Galera.

        A Galera node aborts a local transaction that conflicts with a replicated one (a
        brute-force abort) at any moment, and it tells the client only at its next command:
        inside a packet of statements there is none, so MariaDB rolls the transaction back
        silently and runs the rest of the packet in autocommit (a torn value). Here every
        statement after the first change is a command of its own, so an abort before it
        surfaces as error 1213 (retried like a deadlock), before it runs. The first packet
        (isolation, START TRANSACTION, the upsert) is safe together: nothing can abort a
        transaction that has changed nothing yet, and an abort during the upsert is that
        statement's own error.
        """
        isolation, start, upsert, delete_old, insert_new, commit = self.whole_value_write(
            generations
        )
        return (isolation, start, upsert), (delete_old,), (insert_new,), (commit,)

    def one_call_is_atomic(self, connection: PoolProxiedConnection) -> bool:
        """Not on a Galera node (wsrep_on), where an abort mid-packet is silent.

        On MySQL and plain MariaDB a transaction is aborted only by an error of the
        statement running (a deadlock, a lock wait timeout, a kill), and the server stops a
        packet at its first error: no later statement of the packet runs, in or out of the
        transaction. So the one-round-trip write is kept there. Read once per pooled
        connection, with max_allowed_packet.
        """
        return not server_variables(connection).galera

    def writes_in_one_call(self, generations: int, *, multi_statements: bool) -> bool:
        """Only where the connection takes several statements (not an application's)."""
        return multi_statements

    def check_value_size(
        self,
        connection: PoolProxiedConnection,
        entry_row: dict[str, Any],
        generation_rows: Sequence[dict[str, Any]],
        *,
        one_packet: bool,
    ) -> None:
        """Refuse, before sending, a value larger than the server's max_allowed_packet.

        Sent anyway, the server would drop the connection mid-statement. ``one_packet``: the
        whole value goes in one packet, else each row in its own. The limit is read once
        per pooled connection.
        """
        check_value_size(
            entry_row, generation_rows, max_allowed_packet(connection), one_packet=one_packet
        )

    def check_value_size_within(
        self,
        limit: int,
        entry_row: dict[str, Any],
        generation_rows: Sequence[dict[str, Any]],
        *,
        one_packet: bool,
    ) -> None:
        """Refuse a value larger than ``limit`` (max_allowed_packet, read beforehand)."""
        check_value_size(entry_row, generation_rows, limit, one_packet=one_packet)

    def packet_limit(self, engine: Engine) -> int | None:
        """max_allowed_packet, read on a pooled connection."""
        connection = engine.raw_connection()
        try:
            return max_allowed_packet(connection)
        finally:
            connection.close()

    def acquire_migration_lock(self, connection: Connection) -> None:
        """A named lock (GET_LOCK), which outlives transactions: see release."""
        got = connection.execute(
            sql_text("SELECT GET_LOCK(:name, :timeout)"),
            {"name": LOCK_NAME, "timeout": MIGRATION_LOCK_TIMEOUT_SECONDS},
        ).scalar()
        if got != 1:
            msg = f"could not take the migration lock {LOCK_NAME!r} in time"
            raise SchemaError(msg)

    def release_migration_lock(self, connection: Connection) -> None:
        """RELEASE_LOCK."""
        connection.execute(sql_text("SELECT RELEASE_LOCK(:name)"), {"name": LOCK_NAME})


def session_timeouts(statement: float) -> str:
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


@dataclass(frozen=True)
class ServerVariables:
    """What the cache needs to know about the server a connection reaches."""

    max_allowed_packet: int
    """The largest packet the server takes."""
    galera: bool
    """A Galera cluster node (MariaDB's wsrep_on): transactions can be aborted mid-packet."""


def server_variables(connection: PoolProxiedConnection) -> ServerVariables:
    """The server's variables, read once per pooled connection (one round trip).

    SHOW VARIABLES rather than @@wsrep_on, which MySQL does not know (an error).
    """
    info = connection.info
    found: ServerVariables | None = info.get("server_variables")
    if found is None:
        cursor = connection.cursor()
        cursor.execute("SHOW VARIABLES WHERE Variable_name IN ('max_allowed_packet', 'wsrep_on')")
        variables = {str(name).lower(): str(value) for name, value in cursor.fetchall()}
        cursor.close()
        found = ServerVariables(
            max_allowed_packet=int(variables["max_allowed_packet"]),
            galera=variables.get("wsrep_on", "OFF").upper() == "ON",
        )
        info["server_variables"] = found
    return found


def max_allowed_packet(connection: PoolProxiedConnection) -> int:
    """The largest packet the MySQL server takes, read once per pooled connection."""
    return server_variables(connection).max_allowed_packet


def check_value_size(
    entry_row: dict[str, Any],
    generation_rows: Sequence[dict[str, Any]],
    limit: int,
    *,
    one_packet: bool,
) -> None:
    """Raise ValueTooLargeError if the value's packet would exceed ``limit`` bytes.

    ``one_packet``: the whole value goes in one packet, else each row in its own (as
    executemany sends a row too large to share a statement).
    """
    sizes = [
        _wire_size(entry_row["prompt"]) + _wire_size(entry_row["llm_string"]),
        *(
            _wire_size(row["text"])
            + _wire_size(json.dumps(row["generation_info"]))
            + _wire_size(json.dumps(row["message"]))
            for row in generation_rows
        ),
    ]
    size = sum(sizes) if one_packet else max(sizes)
    if size + PACKET_OVERHEAD > limit:
        msg = (
            f"a value of about {size:,} bytes exceeds the server's max_allowed_packet "
            f"({limit:,} bytes); not sent"
        )
        raise ValueTooLargeError(msg)


def _wire_size(value: str) -> int:
    return utf8_size(value) + sum(value.count(c) for c in ESCAPED_CHARACTERS)


BACKEND = MySQL()
