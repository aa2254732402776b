"""The public API is small and explicit; changing it is a decision, not an accident."""

from __future__ import annotations

import inspect

import langchain_sqlcache
from langchain_sqlcache import SQLCache


def test_all_is_pinned() -> None:
    assert sorted(langchain_sqlcache.__all__) == [
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


def test_constructor_signature() -> None:
    parameters = inspect.signature(SQLCache).parameters
    assert list(parameters) == [
        "url",
        "engine",
        "async_engine",
        "namespace",
        "schema",
        "create_tables",
        "ttl",
        "max_entries",
        "max_bytes",
        "record_hits",
        "prune_every",
        "batch_size",
        "on_error",
        "key_secret",
        "transaction_pooler",
        "connect_timeout",
        "statement_timeout",
        "pydantic_classes",
        "replicas",
        "shards",
        "read_your_writes",
        "engine_kwargs",
    ]
    assert parameters["url"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(
        parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in list(parameters)[1:-1]
    )
    assert parameters["namespace"].default == ""
    assert parameters["create_tables"].default is True


def test_methods() -> None:
    for name in ("lookup", "update", "clear", "close", "delete", "prune", "stats"):
        assert callable(getattr(SQLCache, name))
    for name in ("alookup", "aupdate", "aclear", "aclose", "adelete", "aprune", "astats"):
        assert inspect.iscoroutinefunction(getattr(SQLCache, name))
