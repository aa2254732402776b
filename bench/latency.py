"""Sync latency: hits, misses and updates of every subject, interleaved key by key."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from langchain_core.outputs import Generation

from bench.backends import Backend
from bench.floors import sync_floor
from bench.peers import langchain_caches
from bench.plan import FLOOR, HOT_NS, LLM, PROMPT_SIZES, SQLCACHE, Plan
from bench.results import BackendResult, Stats
from bench.workload import _ns, answer, prompt_of
from langchain_sqlcache import SQLCache


def sync_latency(backend: Backend, plan: Plan, result: BackendResult) -> None:
    """Hits, misses and updates, every subject in turn on each key (rotating the order)."""
    cache = SQLCache(backend.url, namespace=HOT_NS, on_error="raise")
    peers = langchain_caches(backend, result)
    floor_lookup, floor_close = sync_floor(backend)
    hot = [prompt_of(f"hot {i}", PROMPT_SIZES["200 B"]) for i in range(plan.hot_keys)]
    hash_key = cache.settings.key_hash
    keys = {prompt: hash_key(prompt, LLM) for prompt in hot}
    value = answer(1, 1)
    for prompt in hot:
        cache.update(prompt, LLM, value)
        for peer in peers.values():
            peer.update(prompt, LLM, value)

    lookups: dict[str, Callable[[str], object]] = {
        SQLCACHE: lambda prompt: cache.lookup(prompt, LLM),
        FLOOR: lambda prompt: floor_lookup(keys[prompt]),
        **{name: _lookup_of(peer) for name, peer in peers.items()},
    }
    updates: dict[str, Callable[[str], object]] = {
        SQLCACHE: lambda prompt: cache.update(prompt, LLM, value),
        **{name: _update_of(peer, value) for name, peer in peers.items()},
    }
    rng = random.Random(1)
    for _ in range(plan.warmup):
        prompt = rng.choice(hot)
        for call in lookups.values():
            call(prompt)
    samples: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for n in range(plan.hits):
        prompt = rng.choice(hot)
        for name, call in _rotated(lookups, n):
            elapsed, value_read = _ns(lambda: call(prompt))  # noqa: B023
            if not value_read:
                msg = f"{name} missed a key it holds on {backend.name}"
                raise RuntimeError(msg)
            samples[name]["hit"].append(elapsed)
    for n in range(plan.hits):
        prompt = prompt_of(f"missing {n}", PROMPT_SIZES["200 B"])
        keys[prompt] = hash_key(prompt, LLM)  # the floor gets its key for free
        for name, call in _rotated(lookups, n):
            samples[name]["miss"].append(_ns(lambda: call(prompt))[0])  # noqa: B023
    for n in range(plan.updates):
        prompt = prompt_of(f"new {n}", PROMPT_SIZES["200 B"])
        for name, call in _rotated(updates, n):
            samples[name]["update"].append(_ns(lambda: call(prompt))[0])  # noqa: B023
    result.sync = {
        name: {op: Stats.of(values) for op, values in ops.items()} for name, ops in samples.items()
    }
    floor_close()
    cache.close()
    for peer in peers.values():
        peer.engine.dispose()


def _lookup_of(peer: Any) -> Callable[[str], object]:
    return lambda prompt: peer.lookup(prompt, LLM)


def _update_of(peer: Any, value: list[Generation]) -> Callable[[str], object]:
    return lambda prompt: peer.update(prompt, LLM, value)


def _rotated(
    calls: dict[str, Callable[[str], object]], n: int
) -> list[tuple[str, Callable[[str], object]]]:
    items = list(calls.items())
    shift = n % len(items)
    return items[shift:] + items[:shift]
