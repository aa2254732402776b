"""The errors SQLCache raises: one base class, a few precise subclasses."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL


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


class ReadOnlyDatabaseError(DatabaseRefusedError):
    """A write reached a read-only server: a hot standby, or MySQL in read-only mode.

    Raised under ``on_error="raise"`` after one more try on a new connection (a pooled one
    may predate a failover); counted as ``"read_only"`` under ``"warn"``. Writes go to the
    URL the cache was given: read-only servers belong in ``replicas=[...]``.
    """


# Transient failures: a retry, a new connection or a little patience fixes them. SQLSTATE
# classes 08 (connection), 57P0x (shutdown), 40001/40P01 (serialization, deadlock), 55P03
# (lock not available), 53300 (too many connections); MySQL's lock wait, deadlock (a Galera
# certification conflict is reported as one), lost or refused connections, and a Galera node
# out of its cluster's primary component (1047 "WSREP has not yet prepared node", 1180).
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "53300", "57P01", "57P02", "57P03"})
TRANSIENT_MYSQL_CODES = frozenset(
    {1040, 1047, 1053, 1180, 1205, 1213, 1836, 2002, 2003, 2006, 2013, 2055}
)
# A write refused by a read-only server: SQLSTATE 25006 (a Postgres hot standby), MySQL's
# 1290 (running with --read-only) and 1792 (a READ ONLY transaction). Not transient: a pool's
# connection may predate a failover and is tried once more on a new one (failsafe.retryable),
# but a server that is a replica stays one.
READ_ONLY_SQLSTATES = frozenset({"25006"})
READ_ONLY_MYSQL_CODES = frozenset({1290, 1792})
TRANSIENT_SQLITE_MESSAGES = ("database is locked", "database is busy")


# A login or a database the server refuses: no retry fixes them, and under "warn" they would
# pass for a cache that never hits. SQLSTATE 28P01 (wrong password), 28000 (no such role, no
# pg_hba.conf entry), 3D000 (no such database); MySQL's 1045 (access denied: user or
# password), 1044 (no rights on the database), 1049 (unknown database).
CONFIGURATION_SQLSTATES = frozenset({"28P01", "28000", "3D000"})
CONFIGURATION_MYSQL_CODES = frozenset({1044, 1045, 1049})
# psycopg reports a refused login with libpq's message alone, without its SQLSTATE: the
# server's words for the same three cases.
REFUSED_LOGIN_MESSAGE = re.compile(
    r'FATAL:\s+((?:password authentication failed|no pg_hba\.conf entry|role "|database ")'
    r"[^\n]*)"
)

SQLITE_CANNOT_OPEN = "unable to open database file"


def configuration_error(exc: BaseException, url: URL | None = None) -> ConfigurationError | None:
    """Return a one-line ConfigurationError if ``exc`` is a login or database refused.

    Wrong credentials, a role or user that does not exist, a missing database, on any of
    the six drivers; None for anything else. The line names the URL without its password;
    the caller chains ``exc`` (``raise error from exc``).
    """
    reason = next(filter(None, map(_refused_reason, _chain(exc))), None)
    if reason is None:
        return None
    where = f" {url.render_as_string(hide_password=True)}" if url is not None else ""
    return ConfigurationError(
        f"the database{where} refused the cache: {reason} (check the URL's user, password "
        "and database)"
    )


def _refused_reason(error: BaseException) -> str | None:
    if isinstance(error, sa_exc.DBAPIError):
        return None  # its driver's error (orig) is next in the chain
    args: tuple[Any, ...] = getattr(error, "args", ())
    if args and isinstance(args[0], int):
        if args[0] in CONFIGURATION_MYSQL_CODES:
            return f"({args[0]}) {args[1] if len(args) > 1 else ''}".strip()
        return None
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    message = str(error).strip()
    if sqlstate in CONFIGURATION_SQLSTATES:
        return f"{message.splitlines()[0] if message else sqlstate} ({sqlstate})"
    found = REFUSED_LOGIN_MESSAGE.search(message)
    if found:
        return found.group(1).strip()
    # SQLite's "missing database": a file in a folder that does not exist, or not writable.
    return message if message == SQLITE_CANNOT_OPEN else None


def is_transient(exc: BaseException) -> bool:
    """Tell whether an error is a transient database failure (see TRANSIENT_SQLSTATES)."""
    if configuration_error(exc) is not None or is_read_only(exc):
        return False
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


def is_read_only(exc: BaseException) -> bool:
    """Tell whether a write was refused because the server is read-only (a replica)."""
    return any(
        _code_in(error, READ_ONLY_SQLSTATES, READ_ONLY_MYSQL_CODES)
        for error in _chain(getattr(exc, "orig", None) or exc)
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
        orig = getattr(error, "orig", None)  # SQLAlchemy's wrapper: its driver's error
        error = orig if isinstance(orig, BaseException) else error.__cause__ or error.__context__
    return chain
