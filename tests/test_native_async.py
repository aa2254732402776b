"""The async methods run on the async driver: no executor thread is ever used."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.outputs import Generation

from langchain_sqlcache import SQLCache
from tests.conftest import Backend, unique_namespace


async def test_async_methods_use_no_executor(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()

    def no_executor(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an async cache method used run_in_executor")

    # BaseCache's default a-methods run the sync ones through run_in_executor.
    monkeypatch.setattr(loop, "run_in_executor", no_executor)
    cache = SQLCache(backend.url, namespace=unique_namespace())
    try:
        value = [Generation(text="async")]
        assert await cache.alookup("p", "llm") is None
        await cache.aupdate("p", "llm", value)
        assert await cache.alookup("p", "llm") == value
        await cache.aclear()
        assert await cache.alookup("p", "llm") is None
    finally:
        await cache.aclose()
