"""The errors SQLCache raises: one base class, a few precise subclasses."""

from __future__ import annotations


class SQLCacheError(Exception):
    """Base class of every error raised by langchain-sqlcache."""


class ConfigurationError(SQLCacheError, ValueError):
    """The cache was configured in a way that cannot work (bad URL, unknown backend, ...)."""


class MissingEngineError(ConfigurationError):
    """A sync or async method was called but the cache has no engine of that family."""


class SchemaError(ConfigurationError):
    """The cache's tables are missing, or at a revision other than the package's head."""


# Errors a retry of the whole transaction fixes: deadlocks, serialization failures, lock waits.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
RETRYABLE_MYSQL_CODES = frozenset({1205, 1213})


def is_retryable(exc: BaseException) -> bool:
    """Tell whether a driver error is a transient conflict that a retry resolves."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return False
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in RETRYABLE_SQLSTATES:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in RETRYABLE_MYSQL_CODES:
        return True
    return "database is locked" in str(orig)
