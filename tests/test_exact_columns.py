"""What the columns keep and compare exactly (revision 0005), on every backend.

JSON documents come back as the text written (Postgres' jsonb reordered keys and rewrote
numbers), token counts beyond INTEGER are stored, and MySQL/MariaDB compare llm_string,
llm_model and namespace byte for byte (their default collations ignore case and trailing
spaces).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from langchain_core.load import dumps
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from sqlalchemy import select, text

from langchain_sqlcache import SQLCache
from langchain_sqlcache.cli import main
from langchain_sqlcache.codec import entry_key
from langchain_sqlcache.entries import stats_rows
from langchain_sqlcache.lifecycle import clear_batch
from langchain_sqlcache.models import entry_table, generation_table, outputs_view
from langchain_sqlcache.settings import EntryFilter
from tests.conftest import Backend, cli_runner, sync_engine
from tests.helpers import get, put

# Keys out of order, and numbers jsonb rewrites: 1e23 as 100000000000000000000000, 1e16 as
# an integer, -0.0 as 0.
DOCUMENT = {
    "zeta": 1e23,
    "alpha": {"y": 1e16, "b": -0.0, "a": [3, 1e23, -0.0]},
    "mid": "text",
    "0": None,
}


def answer(**usage: int) -> list[Generation]:
    message = AIMessage(
        content="an answer",
        additional_kwargs={"parsed": DOCUMENT, "b": 1e16, "a": -0.0},
        usage_metadata=usage or None,
    )
    return [
        ChatGeneration(message=message, generation_info={"z": -0.0, **DOCUMENT}),
        Generation(text="plain", generation_info=DOCUMENT),
    ]


async def test_json_keeps_key_order_and_numbers(async_cache: SQLCache, family: str) -> None:
    value = answer()
    await put(async_cache, family, "p", "llm", value)
    hit = await get(async_cache, family, "p", "llm")
    assert hit is not None
    assert hit == value
    for got, stored in zip(hit, value, strict=True):
        assert json.dumps(got.generation_info) == json.dumps(stored.generation_info)
    assert isinstance(hit[0], ChatGeneration)
    kwargs = hit[0].message.additional_kwargs
    assert json.dumps(kwargs) == json.dumps(value[0].message.additional_kwargs)  # type: ignore[attr-defined]
    # LangChain keys a conversation's next turn on dumps(messages): it must not change.
    assert dumps(hit) == dumps(value)


def stored_tokens(backend: Backend, namespace: str, prompt: str) -> list[tuple[Any, ...]]:
    key = entry_key(namespace, prompt, "llm")
    engine = sync_engine(backend.url)
    try:
        with engine.connect() as connection:
            table = connection.execute(
                select(generation_table.c.input_tokens, generation_table.c.output_tokens)
                .join(entry_table)
                .where(entry_table.c.key_hash == key)
                .order_by(generation_table.c.idx)
            ).all()
            view = connection.execute(
                select(outputs_view.c.input_tokens, outputs_view.c.output_tokens)
                .where(outputs_view.c.namespace == namespace, outputs_view.c.prompt == prompt)
                .order_by(outputs_view.c.idx)
            ).all()
    finally:
        engine.dispose()
    assert table == view
    return [tuple(row) for row in table]


async def test_token_counts_beyond_integer(
    backend: Backend, async_cache: SQLCache, family: str
) -> None:
    value = answer(input_tokens=2**31, output_tokens=2**40, total_tokens=2**31 + 2**40)
    await put(async_cache, family, "tokens", "llm", value)
    assert await get(async_cache, family, "tokens", "llm") == value
    assert stored_tokens(backend, async_cache.namespace, "tokens") == [
        (2**31, 2**40),
        (None, None),
    ]


# Equal under MySQL's default collations (case-insensitive, PAD SPACE), distinct everywhere.
LOOKALIKES = ["gpt-4", "GPT-4", "gpt-4 "]


def llm_string_of(model: str) -> str:
    return f"[('model', '{model}'), ('temperature', 0.0)]"


async def fill_lookalikes(cache: SQLCache, family: str) -> None:
    for model in LOOKALIKES:
        await put(cache, family, "p", llm_string_of(model), [Generation(text=model)])


async def test_clear_by_llm_string_is_exact(async_cache: SQLCache, family: str) -> None:
    await fill_lookalikes(async_cache, family)
    if family == "sync":
        async_cache.clear(llm_string=llm_string_of("gpt-4"))
    else:
        await async_cache.aclear(llm_string=llm_string_of("gpt-4"))
    found = {m: await get(async_cache, family, "p", llm_string_of(m)) for m in LOOKALIKES}
    assert found == {
        "gpt-4": None,
        "GPT-4": [Generation(text="GPT-4")],
        "gpt-4 ": [Generation(text="gpt-4 ")],
    }


async def test_stats_keeps_models_apart(async_cache: SQLCache, family: str) -> None:
    await fill_lookalikes(async_cache, family)
    stats = async_cache.stats() if family == "sync" else await async_cache.astats()
    assert stats.entries == 3
    assert {model: s.entries for model, s in stats.models.items()} == dict.fromkeys(LOOKALIKES, 1)


async def test_export_by_llm_string_is_exact(backend: Backend, async_cache: SQLCache) -> None:
    await fill_lookalikes(async_cache, "sync")
    for model in LOOKALIKES:
        result = cli_runner().invoke(
            main,
            ["export", "--url", backend.url, "--namespace", async_cache.namespace,
             "--llm-string", llm_string_of(model)],
            catch_exceptions=False,
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        records = [json.loads(line) for line in result.stdout.splitlines()]
        assert [r["llm_string"] for r in records] == [llm_string_of(model)]


def test_namespace_trailing_space_is_another_namespace(
    backend: Backend, sync_cache: SQLCache
) -> None:
    # The API refuses a namespace that ends with a space, so the statements are driven with
    # one directly: they must not reach the entries of the namespace without it.
    sync_cache.update("p", "llm", [Generation(text="kept")])
    engine = sync_engine(backend.url)
    try:
        with engine.begin() as connection:
            padded = sync_cache.namespace + " "
            stats = stats_rows(connection, padded, datetime.now(timezone.utc))
            assert clear_batch(connection, EntryFilter(namespace=padded), 100) == 0
            upper = sync_cache.namespace.upper()
            assert clear_batch(connection, EntryFilter(namespace=upper), 100) == 0
            assert (
                connection.execute(
                    text("SELECT COUNT(*) FROM llm_cache_entry WHERE namespace = :ns"),
                    {"ns": padded},
                ).scalar_one()
                == 0
            )
    finally:
        engine.dispose()
    assert list(stats) == []
    assert sync_cache.lookup("p", "llm") == [Generation(text="kept")]
