"""The errors SQLCache raises: one base class, a few precise subclasses."""

from __future__ import annotations

import asyncio
import re

from sqlalchemy import exc as sa_exc


class SQLCacheError(Exception):
    """Base class of every error raised by langchain-sqlcache."""


class ConfigurationError(SQLCacheError, ValueError):
    """The cache was configured in a way that cannot work (bad URL, unknown backend, ...)."""


class MissingEngineError(ConfigurationError):
    """A sync or async method was called but the cache has no engine of that family."""


class IdentifierError(ConfigurationError):
    """A schema (or other SQL identifier) that is not a plain name."""


class ValueTooLargeError(SQLCacheError, ValueError):
    """A value larger than the server accepts in one statement (MySQL's max_allowed_packet)."""


class UnstorableValueError(SQLCacheError):
    """A model's value holds something the cache cannot store and rebuild exactly.

    An Enum, an arbitrary object, a pydantic model of a class that was not allowed...: under
    ``on_error="warn"`` the update is a counted no-op with a warning, under ``"raise"`` this
    error names the value's path and type. (A ``return_val`` that is not a sequence of
    Generations is a programming error and raises ``TypeError`` instead.)
    """


# A plain SQL name: letters, digits, underscore, dollar; no quotes, spaces or punctuation.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def checked_identifier(name: str | None, what: str = "schema") -> str | None:
    """Return ``name`` if it is a plain SQL identifier (or None); else raise IdentifierError.

    SQLAlchemy quotes identifiers anyway; refusing anything else keeps names with quotes,
    spaces or ``;DROP ...`` from reaching DDL, the version table or an error message.
    """
    if name is None or (isinstance(name, str) and IDENTIFIER.fullmatch(name)):
        return name
    msg = f"{what} must be a plain SQL name (letters, digits, _ or $), not {name!r}"
    raise IdentifierError(msg)


class SchemaError(ConfigurationError):
    """The cache's tables are missing, or at a revision other than the package's head."""


class CacheUnavailableError(SQLCacheError):
    """A transient database failure that retries did not get through.

    Connection lost or refused, timeout, deadlock, failover: raised under
    ``on_error="raise"``, with the driver's error chained.
    """


class CircuitOpenError(CacheUnavailableError):
    """The database was found unavailable moments ago: the operation was not even tried.

    Raised at once under ``on_error="raise"`` while the cache's circuit breaker is open,
    with the error that opened it chained.
    """


class DatabaseRefusedError(SQLCacheError):
    """The database refused a statement with an error that a retry would meet again.

    A value it will not store (a number out of its column's range, a JSON document it
    rejects, a constraint or trigger), or a right it does not grant: raised under
    ``on_error="raise"`` with the driver's error chained; under ``"warn"`` the operation is a
    counted miss or no-op.
    """


# Transient failures: a retry, a new connection or a little patience fixes them. SQLSTATE
# classes 08 (connection), 57P0x (shutdown), 40001/40P01 (serialization, deadlock), 55P03
# (lock not available), 25006 (read-only transaction: a standby after failover), 53300 (too
# many connections); MySQL's lock wait/deadlock, lost or refused connections, read-only mode.
TRANSIENT_SQLSTATES = frozenset(
    {"40001", "40P01", "55P03", "25006", "53300", "57P01", "57P02", "57P03"}
)
TRANSIENT_MYSQL_CODES = frozenset(
    {1040, 1053, 1205, 1213, 1290, 1792, 1836, 2002, 2003, 2006, 2013, 2055}
)
TRANSIENT_SQLITE_MESSAGES = ("database is locked", "database is busy")


def is_transient(exc: BaseException) -> bool:
    """Tell whether an error is a transient database failure (see TRANSIENT_SQLSTATES)."""
    if isinstance(exc, (sa_exc.TimeoutError, ConnectionError, TimeoutError)):
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        # A driver's own error that SQLAlchemy did not wrap: asyncpg's, raised while
        # connecting, before SQLAlchemy 2.0.50 (CannotConnectNowError, 57P03, while a
        # server shuts down or starts up). It carries its SQLSTATE all the same.
        return isinstance(exc, OSError) or _transient_sqlstate(exc)
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if any(_transient_sqlstate(error) for error in _chain(orig)):
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in TRANSIENT_MYSQL_CODES:
        return True
    message = str(orig)
    if any(text in message for text in TRANSIENT_SQLITE_MESSAGES):
        return True
    # Drivers that report a refused or dropped connection without a code.
    return isinstance(orig, (ConnectionError, OSError)) or (
        "connection" in message.lower()
        and (isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)))
    )


# Timeouts: a statement cancelled by statement_timeout (57014), MySQL's max_execution_time
# (3024) and MariaDB's max_statement_time (1969). A retry would wait as long again.
TIMEOUT_SQLSTATES = frozenset({"57014"})
TIMEOUT_MYSQL_CODES = frozenset({1969, 3024})
# Transient failures that say the server is up but busy (rows locked, a deadlock, a
# serialization failure, SQLite's file lock): worth a retry, never a sign of an outage.
CONTENTION_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
CONTENTION_MYSQL_CODES = frozenset({1205, 1213})


def is_timeout(exc: BaseException) -> bool:
    """Tell whether an error is a timeout: connecting, waiting for an answer, or a statement."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return True
    for error in _chain(getattr(exc, "orig", None) or exc):
        if isinstance(error, (TimeoutError, asyncio.TimeoutError)) or _code_in(
            error, TIMEOUT_SQLSTATES, TIMEOUT_MYSQL_CODES
        ):
            return True
        message = str(error).lower()
        # psycopg's "connection timeout expired", PyMySQL's "(timed out)".
        if "timeout expired" in message or "timed out" in message:
            return True
    return False


def is_contention(exc: BaseException) -> bool:
    """Tell whether a transient error is contention on a live server (locks, deadlocks)."""
    error = getattr(exc, "orig", None) or exc
    return _code_in(error, CONTENTION_SQLSTATES, CONTENTION_MYSQL_CODES) or any(
        text in str(error) for text in TRANSIENT_SQLITE_MESSAGES
    )


def _code_in(error: BaseException, sqlstates: frozenset[str], codes: frozenset[int]) -> bool:
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    args = getattr(error, "args", ())
    return sqlstate in sqlstates or bool(args and isinstance(args[0], int) and args[0] in codes)


def _transient_sqlstate(error: BaseException) -> bool:
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return isinstance(sqlstate, str) and (
        sqlstate.startswith("08") or sqlstate in TRANSIENT_SQLSTATES
    )


def _chain(error: BaseException | None, depth: int = 5) -> list[BaseException]:
    """The error and the ones it was raised from or during, nearest first.

    psycopg's executemany reports a server shutdown (57P01) met in pipeline mode as a
    code-less "cannot exit pipeline mode while busy", raised while handling the real error.
    """
    chain: list[BaseException] = []
    while error is not None and len(chain) < depth:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain
