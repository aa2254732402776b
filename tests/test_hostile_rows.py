"""Rows are untrusted: planted rows come back as misses with a warning, never as objects."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.exc import DBAPIError

from langchain_sqlcache import SQLCache
from langchain_sqlcache.codec import entry_key
from langchain_sqlcache.models import entry_table, generation_table
from tests.conftest import Backend
from tests.helpers import get, put

LLM = "fake-llm"
SECRET_ENV = "SQLCACHE_TEST_PLANTED_SECRET"
SECRET_VALUE = "s3cr3t-value-that-must-never-leak"

PLANTED: dict[str, dict[str, Any]] = {
    "unknown-generation-class": {"generation_type": "langchain_core.load.Serializable"},
    "lc-constructor-message": {
        "message": {
            "lc": 1,
            "type": "constructor",
            "id": ["langchain_core", "prompts", "PromptTemplate"],
            "kwargs": {"template": "{x}", "template_format": "jinja2"},
        }
    },
    "lc-secret-message": {"message": {"lc": 1, "type": "secret", "id": [SECRET_ENV]}},
    "invalid-message-fields": {"message": {"type": "ai", "tool_calls": "not a list"}},
    "message-not-an-object": {"message": ["ai", "hello"]},
    "generation-info-not-an-object": {"generation_info": [1, 2, 3]},
    "chat-generation-without-message": {"message": None},
    "broken-escaped-text": {"text": "\ufdd0{not json"},
}


def plant(backend: Backend, key_hash: str, values: dict[str, Any]) -> None:
    engine = create_engine(backend.sync_url)
    try:
        with engine.begin() as connection:
            entry_id = connection.execute(
                select(entry_table.c.id).where(entry_table.c.key_hash == key_hash)
            ).scalar_one()
            connection.execute(
                update(generation_table)
                .where(generation_table.c.entry_id == entry_id)
                .values(**values)
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("payload", list(PLANTED), ids=str)
async def test_planted_row_is_a_miss_with_a_warning(
    backend: Backend,
    async_cache: SQLCache,
    family: str,
    payload: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET_VALUE)
    await put(async_cache, family, "p", LLM, [ChatGeneration(message=AIMessage(content="real"))])
    plant(backend, entry_key(async_cache.namespace, "p", LLM), PLANTED[payload])
    with caplog.at_level(logging.WARNING, logger="langchain_sqlcache"):
        assert await get(async_cache, family, "p", LLM) is None
    assert "cannot be rebuilt" in caplog.text
    assert SECRET_VALUE not in caplog.text


async def test_secret_marker_inside_content_stays_plain_data(
    backend: Backend, async_cache: SQLCache, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET_VALUE)
    await put(async_cache, family, "p", LLM, [ChatGeneration(message=AIMessage(content="real"))])
    marker = {"lc": 1, "type": "secret", "id": [SECRET_ENV]}
    plant(
        backend,
        entry_key(async_cache.namespace, "p", LLM),
        {"message": {"type": "ai", "content": [marker]}},
    )
    result = await get(async_cache, family, "p", LLM)
    # A well-formed message whose content holds a marker is returned as the data it is:
    # nothing is looked up in the environment or instantiated.
    assert result is not None
    assert isinstance(result[0], ChatGeneration)
    assert result[0].message.content == [marker]
    assert SECRET_VALUE not in repr(result)


async def test_malformed_json_is_refused_by_the_database_or_missed(
    backend: Backend, async_cache: SQLCache, family: str, caplog: pytest.LogCaptureFixture
) -> None:
    await put(async_cache, family, "p", LLM, [ChatGeneration(message=AIMessage(content="real"))])
    key_hash = entry_key(async_cache.namespace, "p", LLM)
    engine = create_engine(backend.sync_url)
    cast = "CAST(:doc AS jsonb)" if backend.name == "postgresql" else ":doc"
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    f"UPDATE llm_cache_generation SET message = {cast} WHERE entry_id = "
                    "(SELECT id FROM llm_cache_entry WHERE key_hash = :key_hash)"
                ),
                {"doc": "{not json", "key_hash": key_hash},
            )
    except DBAPIError:
        # Postgres jsonb and MariaDB's JSON_VALID check refuse the document outright.
        assert backend.name in ("postgresql", "mysql")
        assert await get(async_cache, family, "p", LLM) is not None
        return
    finally:
        engine.dispose()
    assert backend.name == "sqlite"
    with caplog.at_level(logging.WARNING, logger="langchain_sqlcache"):
        assert await get(async_cache, family, "p", LLM) is None
    assert "cannot be rebuilt" in caplog.text
