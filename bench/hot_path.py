"""The hot path alone: a hit, an update and an async hit, in microseconds, on one backend.

Compares two versions of the package on the same machine, run in turns (the noise of the
full benchmark's --quick runs is larger than the differences a refactor makes)::

    PYTHONPATH=<old checkout>/src .venv/bin/python bench/hot_path.py sqlite
    .venv/bin/python bench/hot_path.py sqlite
    .venv/bin/python bench/hot_path.py postgresql://postgres@127.0.0.1:5432/test

Each figure is the median of 7 batches (2,000 hits, 300 updates, 1,000 async hits each) over
50 hot keys, one ChatGeneration of ~400 characters, ``on_error="raise"``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration

import langchain_sqlcache
from langchain_sqlcache import SQLCache

BATCHES = 7
KEYS = 50


def main() -> None:
    """Print the medians for the URL given (``sqlite``: a file in a temporary folder)."""
    url = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    if url == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp()}/hot_path.db"
    usage = {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
    message = AIMessage("x" * 400, usage_metadata=usage, response_metadata={"model_name": "m"})
    value = [ChatGeneration(message=message)]
    cache = SQLCache(url, namespace=f"hot-path-{os.getpid()}", prune_every=None, on_error="raise")
    for i in range(KEYS):
        cache.update(f"p{i}", "llm", value)

    def per_call(call: Callable[[int], object], n: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            call(i)
        return (time.perf_counter() - started) / n * 1e6

    hits, updates, async_hits = [], [], []
    for _ in range(BATCHES):
        hits.append(per_call(lambda i: cache.lookup(f"p{i % KEYS}", "llm"), 2000))
        updates.append(per_call(lambda i: cache.update(f"p{i % KEYS}", "llm", value), 300))

    async def async_batches() -> None:
        for _ in range(BATCHES):
            started = time.perf_counter()
            for i in range(1000):
                await cache.alookup(f"p{i % KEYS}", "llm")
            async_hits.append((time.perf_counter() - started) / 1000 * 1e6)
        await cache.aclear()
        await cache.aclose()

    asyncio.run(async_batches())
    source = os.path.dirname(os.path.dirname(langchain_sqlcache.__file__))
    print(
        f"{source}: hit {statistics.median(hits):.1f} us, "
        f"update {statistics.median(updates):.1f} us, "
        f"async hit {statistics.median(async_hits):.1f} us"
    )


if __name__ == "__main__":
    main()
