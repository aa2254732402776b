"""Every SQL recipe of docs/analytics.md runs on every backend and finds what it looks for."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from sqlalchemy import text, update

from langchain_sqlcache import SQLCache
from langchain_sqlcache.codec import entry_key
from langchain_sqlcache.models import entry_table
from tests.conftest import Backend, sync_engine, unique_namespace

DOC = Path(__file__).resolve().parent.parent / "docs" / "analytics.md"
BACKENDS = ("postgresql", "mysql", "sqlite")
SECTION = re.compile(r"^## (.+?)\n(.*?)(?=^## |\Z)", re.MULTILINE | re.DOTALL)
BLOCK = re.compile(r"^```sql([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
LLM = "[('model', 'docs-model')]"
LONG_PROMPT = "summarize this long document"
LONG_ANSWER = 200_000  # characters: larger than any other entry a test leaves for long


def recipes() -> dict[str, dict[str, str]]:
    """Recipe title -> backend -> the query that runs there."""
    found: dict[str, dict[str, str]] = {}
    for title, body in SECTION.findall(DOC.read_text()):
        for tags, query in BLOCK.findall(body):
            for backend in tags.split() or BACKENDS:
                assert backend in BACKENDS, f"unknown backend {backend!r} in {title!r}"
                assert backend not in found.get(title, {}), f"two {backend} blocks in {title!r}"
                found.setdefault(title, {})[backend] = query
    return found


def test_the_docs_have_six_recipes_for_every_backend() -> None:
    found = recipes()
    assert len(found) >= 6
    for title, queries in found.items():
        assert set(queries) == set(BACKENDS), f"{title!r} lacks a query for some backend"


@pytest.fixture
def seeded(backend: Backend) -> Iterator[str]:
    """Cache entries with every feature the recipes look at; returns their namespace."""
    namespace = unique_namespace()
    cache = SQLCache(backend.url, namespace=namespace, record_hits=True, ttl=3600)
    usage = {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30}
    cache.update(
        "refund policy?",
        LLM,
        [ChatGeneration(message=AIMessage(content="Refunds take 5 days.", usage_metadata=usage))],
    )
    tool_call = {"name": "lookup_order", "args": {"id": 7}, "id": "call_1"}
    cache.update(
        "where is order 7?",
        LLM,
        [ChatGeneration(message=AIMessage(content="", tool_calls=[tool_call]))],
    )
    cache.update("old question", "no model", [Generation(text="old answer")])
    cache.update(LONG_PROMPT, "no model", [Generation(text="x" * LONG_ANSWER)])
    for _ in range(3):
        assert cache.lookup("refund policy?", LLM) is not None
    cache.close()  # writes the hits
    engine = sync_engine(backend.url)
    long_ago = datetime.now(timezone.utc) - timedelta(days=40)
    with engine.begin() as connection:
        connection.execute(
            update(entry_table)
            .where(entry_table.c.key_hash == entry_key(namespace, "old question", "no model"))
            .values(created_at=long_ago, updated_at=long_ago, expires_at=long_ago)
        )
    yield namespace
    SQLCache(backend.url, namespace=namespace).clear()
    engine.dispose()


def largest_entries(rows: list[Any], namespace: str) -> bool:
    """The 10 largest entries of the whole table, largest first.

    Other runs' entries share the table, so this test's large entry is among the rows
    unless 10 entries at least as large are.
    """
    sizes = [row.size_bytes for row in rows]
    ours = any(row.namespace == namespace and row.prompt_length == len(LONG_PROMPT) for row in rows)
    return (
        len(rows) <= 10
        and sizes == sorted(sizes, reverse=True)
        and (ours or (len(rows) == 10 and sizes[-1] >= LONG_ANSWER))
    )


# What each recipe must find among the seeded entries (other tests' rows may be there too).
EXPECTED: dict[str, Callable[[list[Any], str], bool]] = {
    "Hit rate by model": lambda rows, _: any(
        r.model == "docs-model" and r.hits == 3 and float(r.hit_rate) == 0.6 for r in rows
    ),
    "Tokens saved by day": lambda rows, _: any(r.tokens_saved >= 90 for r in rows),
    "Largest entries": largest_entries,
    "Stale entries: not read for 30 days": lambda rows, ns: any(
        r.namespace == ns and r.prompt == "old question" for r in rows
    ),
    "Outputs that contain a phrase": lambda rows, _: any(
        r.prompt == "refund policy?" for r in rows
    ),
    "Answers that called tools": lambda rows, _: any(
        r.prompt == "where is order 7?" and "lookup_order" in str(r.tool_calls) for r in rows
    ),
    "Expired entries not pruned yet": lambda rows, ns: any(
        r.namespace == ns and r.expired == 1 for r in rows
    ),
    "Token usage and size by model": lambda rows, _: any(
        r.model == "docs-model" and r.input_tokens >= 10 and r.output_tokens >= 20 for r in rows
    ),
}


def test_every_recipe_has_an_expectation() -> None:
    assert set(EXPECTED) == set(recipes())


@pytest.mark.parametrize("title", list(recipes()))
def test_recipe_runs_and_finds_rows(backend: Backend, seeded: str, title: str) -> None:
    query = recipes()[title][backend.name]
    engine = sync_engine(backend.url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(query)).all()
    finally:
        engine.dispose()
    assert rows, f"{title!r} found nothing on {backend.name}"
    assert EXPECTED[title](list(rows), seeded), rows
