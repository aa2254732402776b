"""Helpers that drive a cache through either family of methods."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.outputs import Generation

from langchain_sqlcache import SQLCache


async def put(
    cache: SQLCache, family: str, prompt: str, llm_string: str, value: Sequence[Generation]
) -> None:
    """Store through update (sync) or aupdate (async)."""
    if family == "sync":
        cache.update(prompt, llm_string, value)
    else:
        await cache.aupdate(prompt, llm_string, value)


async def get(
    cache: SQLCache, family: str, prompt: str, llm_string: str
) -> Sequence[Generation] | None:
    """Read through lookup (sync) or alookup (async)."""
    if family == "sync":
        return cache.lookup(prompt, llm_string)
    return await cache.alookup(prompt, llm_string)


async def wipe(cache: SQLCache, family: str) -> None:
    """Clear through clear (sync) or aclear (async)."""
    if family == "sync":
        cache.clear()
    else:
        await cache.aclear()
