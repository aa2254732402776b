"""A fake chat model answered twice: the second answer comes from the cache.

Runs on the embedded default (the SQLite file .langchain_cache.db in the current folder), or
on the database that $LANGCHAIN_SQLCACHE_URL names.
"""

import asyncio
import time
from itertools import cycle

from langchain_core.globals import set_llm_cache
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from langchain_sqlcache import SQLCache


class SlowFakeChatModel(GenericFakeChatModel):
    """A fake model that takes as long as a real API call would."""

    def _generate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.8)
        return super()._generate(*args, **kwargs)


def main() -> None:
    cache = SQLCache(namespace="quickstart")
    cache.clear()
    set_llm_cache(cache)
    model = SlowFakeChatModel(messages=cycle([AIMessage(content="Paris is the capital.")]))
    for attempt in ("first (model)", "second (cache)"):
        started = time.perf_counter()
        answer = model.invoke("What is the capital of France?")
        elapsed_ms = (time.perf_counter() - started) * 1000
        print(f"{attempt:>15}: {answer.content!r} in {elapsed_ms:7.1f} ms")

    async def ask_async() -> None:
        for attempt in ("async first", "async second"):
            started = time.perf_counter()
            answer = await model.ainvoke("And of Italy?")
            elapsed_ms = (time.perf_counter() - started) * 1000
            print(f"{attempt:>15}: {answer.content!r} in {elapsed_ms:7.1f} ms")
        await cache.aclose()

    asyncio.run(ask_async())


if __name__ == "__main__":
    main()
