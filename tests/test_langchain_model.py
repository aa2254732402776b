"""Through a real LangChain chat model: the second call is answered by the cache."""

from __future__ import annotations

from collections.abc import Iterator

from langchain_core.globals import set_llm_cache
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from langchain_sqlcache import SQLCache
from langchain_sqlcache.codec import entry_key, key_prompt
from tests.conftest import Backend


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


def converse(cache: SQLCache) -> tuple[list[BaseMessage], int]:
    """Three turns as an agent runs them; return the conversation and the model's calls."""
    replies = CountingMessages("Hello.", "Paris.", "Rome.")
    model = GenericFakeChatModel(messages=replies, cache=cache)
    messages: list[BaseMessage] = [HumanMessage("Hi.")]
    for question in ("Capital of France?", "Capital of Italy?", None):
        messages.append(model.invoke(messages))
        if question is not None:
            messages.append(HumanMessage(question))
    return messages, replies.calls


def test_replayed_conversation_hits_every_turn(backend: Backend, cache: SQLCache) -> None:
    """Each turn's key holds the earlier answers, which on a replay are the cache's hits.

    langchain-core (0.3.73 on) marks a hit's usage_metadata with total_cost 0, so a
    replay's second turn is not the original's prompt; the key leaves the mark out.
    """
    original, calls = converse(cache)
    assert calls == 3
    replay_cache = SQLCache(backend.url, namespace=cache.namespace)
    try:
        replayed, calls = converse(replay_cache)
    finally:
        replay_cache.close()
    assert calls == 0
    assert [m.content for m in replayed] == [m.content for m in original]


def test_key_leaves_out_the_hit_mark() -> None:
    """Only an int total_cost of 0 in a message's usage_metadata is left out of the key."""
    usage = {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}
    answer = AIMessage("Paris.", usage_metadata=usage)
    prompt = dumps([HumanMessage("Hi."), answer])
    marked = answer.model_copy(update={"usage_metadata": {**usage, "total_cost": 0}})
    assert key_prompt(dumps([HumanMessage("Hi."), marked])) == prompt
    # langchain-core marks an answer without usage_metadata too (a copy skips validation).
    bare = AIMessage("Paris.").model_copy(update={"usage_metadata": {"total_cost": 0}})
    assert key_prompt(dumps([bare])) == dumps([AIMessage("Paris.")])
    for kept in (
        dumps([answer.model_copy(update={"usage_metadata": {**usage, "total_cost": 0.5}})]),
        dumps([answer.model_copy(update={"usage_metadata": {**usage, "total_cost": False}})]),
        dumps([HumanMessage('"total_cost": 0')]),
        'plain text with "total_cost": 0',
        '{"total_cost": 0}',
    ):
        assert key_prompt(kept) == kept
    assert entry_key("", dumps([marked]), "llm") == entry_key("", dumps([answer]), "llm")
