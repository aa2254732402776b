"""Through real provider classes (ChatOpenAI, ChatGroq) over canned HTTP: hits are exact and free.

Each provider's own client is given an httpx client whose transport answers from canned
JSON bodies and counts the requests, so nothing leaves the process: the provider package
parses the body as it would a real reply (tool calls, structured output, usage, metadata),
and the cache sees exactly what a user's model call gives it.

A hit is compared with what LangChain's own ``InMemoryCache`` returns for the same
message (``in_memory_hit``), by ``==`` and by ``langchain_core.load.dumps``: that is the
standard the cache has to meet, and since langchain-core 0.3.73 it is not the first answer
itself, because langchain-core adds ``total_cost: 0`` to a hit's ``usage_metadata``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import Runnable
from langchain_groq import ChatGroq
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from langchain_sqlcache import SQLCache
from tests.conftest import Backend, unique_namespace

Body = dict[str, Any]


class Event(BaseModel):
    """A structured-output schema with a datetime field, as a user's would have."""

    name: str
    when: datetime


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str


LAUNCH = Event(name="launch", when=datetime(2025, 1, 1, 9, 30, tzinfo=timezone.utc))
LAUNCH_JSON = '{"name": "launch", "when": "2025-01-01T09:30:00Z"}'
# Above what a 32-bit INTEGER column holds, as a long-context provider reports.
BIG = 2**31


def usage(prompt: int, completion: int, **details: Any) -> dict[str, Any]:
    """The ``usage`` object of a chat completion."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        **details,
    }


def tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One entry of an assistant message's ``tool_calls``, arguments as the JSON text sent."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


@dataclass
class Provider:
    """A provider API answered from canned bodies: each request is served the next body.

    The last body is served again to any further request, so that a call the cache should
    have answered shows up in ``requests`` rather than as an error inside the client.
    """

    name: str
    bodies: list[Body] = field(default_factory=list)
    requests: list[Body] = field(default_factory=list)
    clients: list[httpx.Client | httpx.AsyncClient] = field(default_factory=list)

    def serve(self, *bodies: Body) -> Provider:
        self.bodies = list(bodies)
        return self

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/chat/completions"), request.url
        self.requests.append(json.loads(request.content))
        body = self.bodies[min(len(self.requests), len(self.bodies)) - 1]
        return httpx.Response(200, json=body)

    def completion(
        self,
        content: str | None,
        *,
        tool_calls: list[dict[str, Any]] | None = None,
        token_usage: dict[str, Any] | None = None,
        **extra: Any,
    ) -> Body:
        """A chat completion body as this provider's API returns it."""
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            message["tool_calls"] = tool_calls
        body: Body = {
            "id": f"chatcmpl-{len(self.bodies) + 1}",
            "object": "chat.completion",
            "created": 1735722600,
            "model": MODELS[self.name],
            "system_fingerprint": "fp_0a1b2c3d",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": extra.pop("logprobs", None),
                    "finish_reason": "tool_calls" if tool_calls else "stop",
                }
            ],
            "usage": token_usage or usage(12, 3),
        }
        if self.name == "groq":
            body["x_groq"] = {"id": "req_01jgz8k3y1"}
            body["usage"] = {
                "queue_time": 0.017,
                "prompt_time": 0.0025,
                "completion_time": 1.5e-05,
                "total_time": 0.0195,
                **body["usage"],
            }
        else:
            message["refusal"] = None
            body["service_tier"] = "default"
        body.update(extra)
        return body

    def model(self, cache: SQLCache) -> BaseChatModel:
        """The provider's LangChain chat model, its requests served here, caching in ``cache``."""
        client = httpx.Client(transport=httpx.MockTransport(self.handle))
        async_client = httpx.AsyncClient(transport=httpx.MockTransport(self.handle))
        self.clients += [client, async_client]
        # max_retries=0: a request the fake did not expect fails once instead of three times.
        if self.name == "openai":
            return ChatOpenAI(
                model="gpt-4o",
                api_key="sk-test",  # type: ignore[arg-type]
                base_url="http://openai.invalid/v1",
                http_client=client,
                http_async_client=async_client,
                max_retries=0,
                cache=cache,
            )
        return ChatGroq(
            model="llama-3.3-70b-versatile",
            api_key="gsk-test",  # type: ignore[arg-type]
            base_url="http://groq.invalid",
            http_client=client,
            http_async_client=async_client,
            max_retries=0,
            cache=cache,
        )

    async def close(self) -> None:
        for client in self.clients:
            if isinstance(client, httpx.AsyncClient):
                await client.aclose()
            else:
                client.close()


MODELS = {"openai": "gpt-4o-2024-08-06", "groq": "llama-3.3-70b-versatile"}


@pytest.fixture(params=list(MODELS))
async def provider(request: pytest.FixtureRequest) -> AsyncIterator[Provider]:
    fake = Provider(request.param)
    yield fake
    await fake.close()


async def call(runnable: Runnable[Any, Any], prompt: Any, family: str) -> Any:
    """``invoke`` or ``ainvoke``, as the test's family says."""
    if family == "sync":
        return runnable.invoke(prompt)
    return await runnable.ainvoke(prompt)


def in_memory_hit(message: AIMessage) -> AIMessage:
    """What LangChain returns for a hit on ``message`` from its own ``InMemoryCache``.

    The reference a hit from SQLCache must equal. Since langchain-core 0.3.73 it carries
    ``total_cost: 0`` in ``usage_metadata``, which the first answer does not.
    """
    model = GenericFakeChatModel(messages=iter([message.model_copy(deep=True)]))
    model.cache = InMemoryCache()
    model.invoke("prompt")
    hit = model.invoke("prompt")
    assert isinstance(hit, AIMessage)
    return hit


def assert_exact_hit(hit: AIMessage, first: AIMessage) -> None:
    """``hit`` is what LangChain's in-memory cache would have returned for ``first``."""
    expected = in_memory_hit(first)
    assert hit == expected
    assert dumps(hit) == dumps(expected)
    assert type(hit.additional_kwargs.get("parsed")) is type(first.additional_kwargs.get("parsed"))


async def twice(
    provider: Provider, runnable: Runnable[Any, Any], prompt: Any, family: str
) -> tuple[Any, Any]:
    """Call ``runnable`` twice with one prompt: the first reaches the provider, the second not."""
    first = await call(runnable, prompt, family)
    assert len(provider.requests) == 1
    second = await call(runnable, prompt, family)
    assert len(provider.requests) == 1, f"the provider was called {len(provider.requests)} times"
    return first, second


async def test_plain_answer(provider: Provider, async_cache: SQLCache, family: str) -> None:
    provider.serve(provider.completion("Paris."))
    model = provider.model(async_cache)
    first, second = await twice(provider, model, "Capital of France?", family)
    assert first.content == "Paris."
    assert first.usage_metadata["input_tokens"] == 12
    assert first.usage_metadata["output_tokens"] == 3
    assert provider.requests[0]["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert_exact_hit(second, first)


async def test_tool_calls(provider: Provider, async_cache: SQLCache, family: str) -> None:
    provider.serve(
        provider.completion(
            None,
            tool_calls=[
                tool_call("call_paris", "GetWeather", {"city": "Paris"}),
                tool_call("call_tokyo", "GetWeather", {"city": "東京"}),
            ],
        )
    )
    model = provider.model(async_cache).bind_tools([GetWeather])
    first, second = await twice(provider, model, "Weather in Paris and Tokyo?", family)
    assert first.tool_calls == [
        {"name": "GetWeather", "args": {"city": "Paris"}, "id": "call_paris", "type": "tool_call"},
        {"name": "GetWeather", "args": {"city": "東京"}, "id": "call_tokyo", "type": "tool_call"},
    ]
    assert provider.requests[0]["tools"][0]["function"]["name"] == "GetWeather"
    assert_exact_hit(second, first)


@pytest.fixture
async def structured_cache(backend: Backend) -> AsyncIterator[SQLCache]:
    """An empty cache that gives ``Event`` instances back as instances, as a user sets it up."""
    sql_cache = SQLCache(backend.url, namespace=unique_namespace(), pydantic_classes=[Event])
    yield sql_cache
    await sql_cache.aclear()
    await sql_cache.aclose()


async def test_structured_output(
    provider: Provider, structured_cache: SQLCache, family: str
) -> None:
    """A pydantic model with a datetime field, parsed by the provider package.

    ChatOpenAI's json_schema method parses the reply inside the model call, so the cache
    stores the ``Event`` instance itself in ``additional_kwargs["parsed"]``; langchain-openai
    0.3 hands that object to the caller as it is, so a hit must rebuild the class (the
    ``pydantic_classes`` option). ChatGroq parses after the cache; it uses function calling,
    the method every supported langchain-groq has (json_schema came with 0.3.8, which needs
    langchain-core 0.3.75).
    """
    if provider.name == "openai":
        provider.serve(provider.completion(LAUNCH_JSON))
        method = "json_schema"
    else:
        arguments = json.loads(LAUNCH_JSON)
        provider.serve(
            provider.completion(None, tool_calls=[tool_call("call_1", "Event", arguments)])
        )
        method = "function_calling"
    model = provider.model(structured_cache).with_structured_output(
        Event, method=method, include_raw=True
    )
    first, second = await twice(provider, model, "When is the launch?", family)
    assert first["parsing_error"] is None
    assert second["parsing_error"] is None
    assert first["parsed"] == second["parsed"] == LAUNCH
    assert type(second["parsed"]) is Event
    if provider.name == "openai":
        assert provider.requests[0]["response_format"]["type"] == "json_schema"
        assert first["raw"].additional_kwargs["parsed"] == LAUNCH
    assert_exact_hit(second["raw"], first["raw"])


async def test_usage_metadata(provider: Provider, async_cache: SQLCache, family: str) -> None:
    """Token counts past 2**31, as long contexts and cached prompts give, with their details."""
    token_usage = usage(
        BIG + 5,
        BIG,
        prompt_tokens_details={"cached_tokens": BIG - 1, "audio_tokens": 0},
        completion_tokens_details={
            "reasoning_tokens": 2**40,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    )
    provider.serve(provider.completion("A long answer.", token_usage=token_usage))
    model = provider.model(async_cache)
    first, second = await twice(provider, model, "Summarize the library.", family)
    assert first.usage_metadata["input_tokens"] == BIG + 5
    assert first.usage_metadata["output_tokens"] == BIG
    assert first.usage_metadata["total_tokens"] == 2 * BIG + 5
    assert second.usage_metadata["total_tokens"] == 2 * BIG + 5
    assert_exact_hit(second, first)


async def test_response_metadata(provider: Provider, async_cache: SQLCache, family: str) -> None:
    """Model name, fingerprint, finish reason, the raw token usage and per-token logprobs."""
    logprobs = {
        "content": [
            {"token": "Par", "logprob": -3.1281633e-07, "bytes": [80, 97, 114], "top_logprobs": []},
            {"token": "is", "logprob": -0.0, "bytes": [105, 115], "top_logprobs": []},
            {"token": ".", "logprob": -1.5e-05, "bytes": [46], "top_logprobs": []},
        ],
        "refusal": None,
    }
    provider.serve(provider.completion("Paris.", logprobs=logprobs))
    model = provider.model(async_cache)
    first, second = await twice(provider, model, "Capital of France, with logprobs?", family)
    metadata = first.response_metadata
    assert metadata["model_name"] == MODELS[provider.name]
    assert metadata["system_fingerprint"] == "fp_0a1b2c3d"
    assert metadata["finish_reason"] == "stop"
    assert metadata["logprobs"]["content"][0]["logprob"] == -3.1281633e-07
    assert metadata["token_usage"]["prompt_tokens"] == 12
    assert second.response_metadata == metadata
    assert_exact_hit(second, first)


def conversation_bodies(provider: Provider) -> list[Body]:
    """An agent's three model calls: a tool call, an answer from its result, a follow-up."""
    return [
        provider.completion(
            None, tool_calls=[tool_call("call_w", "GetWeather", {"city": "Paris"})]
        ),
        provider.completion("It is 18 °C and sunny in Paris.", token_usage=usage(40, 11)),
        provider.completion("Yes: no rain is expected today.", token_usage=usage(60, 8)),
    ]


async def converse(
    model: BaseChatModel, family: str, tool_result: Callable[[AIMessage], str]
) -> list[BaseMessage]:
    """Three turns as an agent runs them: each turn's prompt holds every earlier answer."""
    tools_model = model.bind_tools([GetWeather])
    messages: list[BaseMessage] = [
        SystemMessage("You are a weather assistant."),
        HumanMessage("What is the weather in Paris?"),
    ]
    answer = await call(tools_model, messages, family)
    messages += [answer, ToolMessage(tool_result(answer), tool_call_id=answer.tool_calls[0]["id"])]
    messages.append(await call(tools_model, messages, family))
    messages.append(HumanMessage("Do I need an umbrella?"))
    messages.append(await call(tools_model, messages, family))
    return messages


def weather(answer: AIMessage) -> str:
    return json.dumps({"city": answer.tool_calls[0]["args"]["city"], "celsius": 18})


async def test_conversation_replays_from_the_cache(
    backend: Backend, async_cache: SQLCache, family: str, provider: Provider
) -> None:
    """A conversation run again, by a new process, is answered by the cache alone.

    LangChain keys each turn on ``dumps`` of the whole message list, which holds the earlier
    turns' answers: those come from the cache on the replay, so unless a hit serializes as
    the original did, the second turn's key differs and the replay pays the provider again.
    """
    provider.serve(*conversation_bodies(provider))
    original = await converse(provider.model(async_cache), family, weather)
    assert len(provider.requests) == 3
    assert original[-1].content == "Yes: no rain is expected today."

    # A new process: a new cache object on the same tables and namespace, a new model.
    replay_provider = Provider(provider.name)
    replay_provider.serve(*conversation_bodies(replay_provider))
    fresh_cache = SQLCache(backend.url, namespace=async_cache.namespace)
    try:
        replayed = await converse(replay_provider.model(fresh_cache), family, weather)
    finally:
        await replay_provider.close()
        await fresh_cache.aclose()
    calls = len(replay_provider.requests)
    assert calls == 0, f"the replay called the provider {calls} times"
    answers = [(i, m) for i, m in enumerate(original) if isinstance(m, AIMessage)]
    assert [i for i, _ in answers] == [2, 4, 6]
    for i, answer in answers:
        assert_exact_hit(_ai(replayed[i]), answer)
    others = [i for i in range(len(original)) if i not in (2, 4, 6)]
    assert [replayed[i] for i in others] == [original[i] for i in others]


def _ai(message: BaseMessage) -> AIMessage:
    assert isinstance(message, AIMessage)
    return message
