"""The demo: a chat model answered twice through the cache, sync and async.

Then the stats, and an analyst's query over the llm_cache_outputs view.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import cycle
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatResult
from sqlalchemy import bindparam, func, select

from langchain_sqlcache.cache import SQLCache
from langchain_sqlcache.models import outputs_view

NAMESPACE = "demo"
SYNC_PROMPTS = [
    "What is the capital of France?",
    "Explain a database index in one sentence.",
    "Name three prime numbers.",
]
ASYNC_PROMPTS = [
    "What does HTTP 404 mean?",
    "Translate 'good morning' to Spanish.",
]
ANSWERS = [
    "Paris.",
    "An index is a sorted structure that finds rows without scanning the table.",
    "2, 3 and 5.",
    "The server found nothing at that address.",
    "Buenos días.",
]
# An analyst's question over the view: what did each model answer, and how often was it reused?
ANALYST_QUERY = (
    select(
        outputs_view.c.model,
        func.count().label("answers"),
        func.sum(outputs_view.c.input_tokens).label("input_tokens"),
        func.sum(outputs_view.c.output_tokens).label("output_tokens"),
        func.sum(outputs_view.c.hit_count).label("hits"),
    )
    .where(outputs_view.c.namespace == bindparam("namespace"))
    .group_by(outputs_view.c.model)
)


class SlowFakeChatModel(GenericFakeChatModel):
    """A fake chat model that takes as long as a real API call."""

    model_name: str = "fake-gpt-4o-mini"
    latency: float = 0.4

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        time.sleep(self.latency)
        return super()._generate(messages, stop, run_manager, **kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        await asyncio.sleep(self.latency)
        return super()._generate(messages, stop, None, **kwargs)


def replies() -> Iterator[AIMessage]:
    """The model's answers, with token usage as a real provider reports it."""
    for answer in cycle(ANSWERS):
        words = len(answer.split())
        usage = {"input_tokens": 12, "output_tokens": words, "total_tokens": 12 + words}
        yield AIMessage(content=answer, usage_metadata=usage)


def run(
    cache: SQLCache, echo: Callable[[str], None], latency: float
) -> list[tuple[str, str, float, float]]:
    """Ask each prompt twice; return (family, prompt, first ms, second ms) rows."""
    cache.clear()
    model = SlowFakeChatModel(messages=replies(), cache=cache, latency=latency)
    timings: list[tuple[str, str, float, float]] = []
    for prompt in SYNC_PROMPTS:
        first, second = (_timed(lambda: model.invoke(prompt)) for _ in range(2))  # noqa: B023
        timings.append(("sync", prompt, first, second))

    async def ask_async() -> None:
        for prompt in ASYNC_PROMPTS:
            first = await _atimed(model.ainvoke(prompt))
            second = await _atimed(model.ainvoke(prompt))
            timings.append(("async", prompt, first, second))
        await cache.aclose()  # writes the hit counts; a later sync call reopens the pool

    asyncio.run(ask_async())
    return timings


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


async def _atimed(awaitable: Any) -> float:
    started = time.perf_counter()
    await awaitable
    return (time.perf_counter() - started) * 1000


def analyst_rows(cache: SQLCache) -> tuple[str, list[str], Sequence[Any]]:
    """The demo's analyst query over the view: its SQL, column names and rows."""
    with cache.store.ready().reader.connect() as connection:
        result = connection.execute(ANALYST_QUERY, {"namespace": NAMESPACE})
        sql = str(ANALYST_QUERY.compile(dialect=connection.dialect))
        return sql, list(result.keys()), result.all()
