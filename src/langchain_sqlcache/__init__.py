"""A LangChain LLM cache in SQLite, Postgres or MySQL/MariaDB, through SQLAlchemy 2.0."""

from importlib.metadata import PackageNotFoundError, version

from langchain_sqlcache.cache import CacheStats, ModelStats, SQLCache
from langchain_sqlcache.errors import (
    CacheUnavailableError,
    CircuitOpenError,
    ConfigurationError,
    DatabaseRefusedError,
    MissingEngineError,
    ReadOnlyDatabaseError,
    SchemaError,
    SQLCacheError,
    UnstorableValueError,
    ValueTooLargeError,
)
from langchain_sqlcache.topology import Shard

try:
    __version__ = version("langchain-sqlcache")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "CacheStats",
    "CacheUnavailableError",
    "CircuitOpenError",
    "ConfigurationError",
    "DatabaseRefusedError",
    "MissingEngineError",
    "ModelStats",
    "ReadOnlyDatabaseError",
    "SQLCache",
    "SQLCacheError",
    "SchemaError",
    "Shard",
    "UnstorableValueError",
    "ValueTooLargeError",
    "__version__",
]
