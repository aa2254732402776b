"""A profile of the hit path (pyinstrument): inclusive steps, self time by package, by function."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from typing import Any

from bench.backends import Backend
from bench.plan import HOT_NS, LLM, PROMPT_SIZES, Plan
from bench.results import Profile
from bench.workload import answer, prompt_of
from langchain_sqlcache import SQLCache

# Inclusive time of these frames (function name, a piece of its file path), nested ones once.
SYNC_STEPS: dict[str, tuple[tuple[str, str], ...]] = {
    "key hashing (entry_key)": (("entry_key", "codec"),),
    "the statement on a pooled connection (run_direct)": (
        ("run_direct", "langchain_sqlcache/fastpath"),
    ),
    "of which pool checkout and return": (
        ("raw_connection", "sqlalchemy/engine/base"),
        ("close", "sqlalchemy/pool/base"),
    ),
    "of which parameters (bind processors)": (("parameters", "langchain_sqlcache/fastpath"),),
    "decoding (decode_generations)": (("decode_generations", "codec"),),
}
ASYNC_STEPS: dict[str, tuple[tuple[str, str], ...]] = {
    **SYNC_STEPS,
    "ensure_future + shield (store.arun)": (("shield", "asyncio"), ("ensure_future", "asyncio")),
    "greenlet hand-off (greenlet_spawn, await_)": (
        ("greenlet_spawn", "sqlalchemy"),
        ("await_", "sqlalchemy"),
    ),
    "waiting in the event loop (select)": (("select", "selectors"),),
}


def profile_hits(backend: Backend, plan: Plan) -> list[Profile]:
    """Profile sync lookups, then async lookups from one task, of hot keys."""
    from pyinstrument import Profiler

    cache = SQLCache(backend.url, namespace=HOT_NS, on_error="raise")
    hot = [prompt_of(f"hot {i}", PROMPT_SIZES["200 B"]) for i in range(plan.hot_keys)]
    for prompt in hot:
        cache.update(prompt, LLM, answer(1, 1))
        cache.lookup(prompt, LLM)
    profiles = []
    profiler = Profiler(interval=0.0001, async_mode="disabled")
    profiler.start()
    started = time.perf_counter()
    for n in range(plan.profile_ops):
        cache.lookup(hot[n % len(hot)], LLM)
    seconds = time.perf_counter() - started
    profiler.stop()
    profiles.append(
        _profile_of(f"{backend.name}, sync lookup", profiler, seconds, plan.profile_ops, SYNC_STEPS)
    )
    cache.close()

    async def lookups() -> float:
        acache = SQLCache(backend.url, namespace=HOT_NS, on_error="raise")
        for prompt in hot:
            await acache.alookup(prompt, LLM)
        profiler.start()
        started = time.perf_counter()
        for n in range(plan.profile_ops):
            await acache.alookup(hot[n % len(hot)], LLM)
        elapsed = time.perf_counter() - started
        profiler.stop()
        await acache.aclose()
        return elapsed

    profiler = Profiler(interval=0.0001, async_mode="disabled")
    seconds = asyncio.run(lookups())
    profiles.append(
        _profile_of(
            f"{backend.name}, async alookup from 1 task",
            profiler,
            seconds,
            plan.profile_ops,
            ASYNC_STEPS,
        )
    )
    return profiles


def _profile_of(
    label: str,
    profiler: Any,
    seconds: float,
    ops: int,
    steps: dict[str, tuple[tuple[str, str], ...]],
) -> Profile:
    root = profiler.last_session.root_frame(trim_stem=False)
    total = root.time
    self_times: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    step_times: Counter[str] = Counter()

    def walk(frame: Any, open_steps: frozenset[str], parent_package: str) -> None:
        # Synthetic frames ([self], [await]) are already in their parent's total_self_time.
        if frame.is_synthetic:
            return
        path = (frame.file_path or "").replace("\\", "/")
        package = _package(frame.function, path, parent_package)
        if not path.startswith("<thread>"):
            self_times[_frame_name(frame.function, path, frame.line_no)] += frame.total_self_time
            packages[package] += frame.total_self_time
        here = set(open_steps)
        for step, matchers in steps.items():
            if step in open_steps:
                continue
            if any(frame.function == name and part in path for name, part in matchers):
                step_times[step] += frame.time
                here.add(step)
        for child_frame in frame.children:
            walk(child_frame, frozenset(here), package)

    walk(root, frozenset(), "other")
    return Profile(
        label=label,
        seconds=seconds,
        ops=ops,
        steps=[(step, step_times[step] / total) for step in steps],
        packages=[(name, t / total) for name, t in packages.most_common()],
        top_self=[(name, t / total) for name, t in self_times.most_common(15)],
    )


# Where a thread waits for the server: the event loop's poll, psycopg's wait, socket calls.
WAITS = ("epoll.poll", "select.select", "poll.poll", "socket.recv", "socket.recv_into")
WAITING = "waiting for the server and socket I/O"


def _package(function: str, path: str, parent_package: str) -> str:
    """The package a frame's self time is charged to; C built-ins go to their caller."""
    if (
        function in WAITS
        or function.startswith("socket.")
        or (function.startswith("wait") and "psycopg" in path)
    ):
        return WAITING
    if path.startswith("<"):
        return parent_package
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if "langchain_sqlcache" in path:
        return "langchain_sqlcache"
    if "/lib/python3" in path:
        return "stdlib " + path.split("/lib/python3", 1)[1].split("/")[1].removesuffix(".py")
    return "other"


def _frame_name(function: str, path: str, line: int | None) -> str:
    path = re.sub(r"^.*/(site-packages|src|lib/python3\.\d+)/", "", path)
    return f"{function} ({path}:{line})" if path and not path.startswith("<") else function
