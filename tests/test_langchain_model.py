"""Through a real LangChain chat model: the second call is answered by the cache."""

from __future__ import annotations

from collections.abc import Iterator

from langchain_core.globals import set_llm_cache
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from langchain_sqlcache import SQLCache


class CountingMessages(Iterator[AIMessage]):
    """The fake model's replies; counts how often the model really ran."""

    def __init__(self, *contents: str) -> None:
        self.contents = list(contents)
        self.calls = 0

    def __next__(self) -> AIMessage:
        if self.calls == len(self.contents):
            raise AssertionError("the model was called again instead of the cache")
        self.calls += 1
        return AIMessage(
            content=self.contents[self.calls - 1],
            usage_metadata={"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
        )


def test_invoke_twice_hits_the_cache(cache: SQLCache) -> None:
    replies = CountingMessages("Paris.")
    model = GenericFakeChatModel(messages=replies, cache=cache)
    first = model.invoke("Capital of France?")
    second = model.invoke("Capital of France?")
    assert replies.calls == 1
    assert second.content == first.content == "Paris."
    # langchain-core marks a cached answer with total_cost 0; the token counts are ours.
    assert second.usage_metadata is not None
    assert first.usage_metadata is not None
    assert second.usage_metadata["output_tokens"] == first.usage_metadata["output_tokens"] == 2
    other = CountingMessages("Rome.")
    model_b = GenericFakeChatModel(messages=other, cache=cache)
    assert model_b.invoke("Capital of Italy?").content == "Rome."
    assert other.calls == 1


async def test_ainvoke_twice_hits_the_cache(async_cache: SQLCache) -> None:
    replies = CountingMessages("Berlin.")
    model = GenericFakeChatModel(messages=replies, cache=async_cache)
    first = await model.ainvoke("Capital of Germany?")
    second = await model.ainvoke("Capital of Germany?")
    assert replies.calls == 1
    assert second.content == first.content == "Berlin."


def test_global_cache(cache: SQLCache) -> None:
    set_llm_cache(cache)
    try:
        replies = CountingMessages("42")
        model = GenericFakeChatModel(messages=replies)
        assert model.invoke("Answer?").content == "42"
        assert model.invoke("Answer?").content == "42"
        assert replies.calls == 1
    finally:
        set_llm_cache(None)
