"""A write-write load on a Galera cluster: one process per node, the same keys everywhere.

Each process writes the same few keys through ``SQLCache(url of its node)`` while a reader
thread of its own looks them up. Every value says who wrote it and what it should look like:
generation ``j`` of a value of ``n`` has the text ``w:seq:j:n:`` followed by a padding whose
length follows from those numbers. A value read back is *whole* when all its generations
carry the same writer and sequence number, there are ``n`` of them in order, and every
padding has its length; a mix of two writes, or a count that is not the writer's, is torn.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pymysql
from langchain_core.outputs import Generation

KEYS = 5
LLM = "galera-llm"
MAX_GENERATIONS = 4
# Conflicts surface as MySQL's deadlock code, 1213, on Galera (a certification failure or a
# brute-force abort), or as 1205 when a lock wait gives up.
CONFLICT_CODES = (1213, 1205)


def prompt_of(key: int) -> str:
    return f"galera-prompt-{key}"


def padding_length(writer: int, seq: int, index: int) -> int:
    """Values of different lengths: from a few bytes to a few kilobytes per generation."""
    return (writer * 7919 + seq * 104729 + index * 1299709) % 3000


def value_of(writer: int, seq: int) -> list[Generation]:
    """Writer ``writer``'s ``seq``-th value: 1 to MAX_GENERATIONS generations."""
    count = 1 + (writer + seq) % MAX_GENERATIONS
    return [
        Generation(text=f"{writer}:{seq}:{j}:{count}:" + "x" * padding_length(writer, seq, j))
        for j in range(count)
    ]


def whole(texts: Sequence[str], writers: int) -> bool:
    """Whether ``texts`` (a value's generations, in order) are one writer's whole value."""
    if not texts:
        return False
    try:
        heads = [text.split(":", 4) for text in texts]
        writer, seq, count = int(heads[0][0]), int(heads[0][1]), int(heads[0][3])
    except (ValueError, IndexError):
        return False
    if not 1 <= writer <= writers or len(texts) != count:
        return False
    return all(
        head[:4] == [str(writer), str(seq), str(j), str(count)]
        and head[4] == "x" * padding_length(writer, seq, j)
        for j, head in enumerate(heads)
    )


@dataclass
class Counts:
    """What one process saw."""

    writer: int
    writes: int = 0
    reads: int = 0
    hits: int = 0
    torn: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    """Operations the cache failed over under on_error='warn', by kind."""
    retried_conflicts: int = 0
    """Attempts that met a conflict (1213/1205) and were retried."""


def run_node(
    writer: int, writers: int, url: str, namespace: str, seconds: float, results: Any
) -> None:
    """One process's load: writes on this thread, lookups on another, for ``seconds``."""
    counts = Counts(writer)
    try:
        counts = _load(writer, writers, url, namespace, seconds, counts)
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        counts.exceptions.append(traceback.format_exc())
    results.put(counts)


def _load(
    writer: int, writers: int, url: str, namespace: str, seconds: float, counts: Counts
) -> Counts:
    from langchain_sqlcache import SQLCache
    from langchain_sqlcache import store as store_module

    retried = [0]
    failed = store_module._Attempts.failed

    def counting_failed(self: Any, exc: BaseException) -> float:
        code = getattr(getattr(exc, "orig", None), "args", (None,))[0]
        pause = failed(self, exc)  # raises when the operation is not retried
        if code in CONFLICT_CODES:
            retried[0] += 1
        return pause

    store_module._Attempts.failed = counting_failed  # type: ignore[method-assign]

    cache = SQLCache(url, namespace=namespace, on_error="warn", prune_every=None)
    deadline = time.monotonic() + seconds
    lock = threading.Lock()

    def pause_if_failed_over(before: int) -> None:
        # A caller whose node is down gets its fallback at once (the breaker is open): an
        # application would not spin on it, and two cores are shared by three nodes.
        if cache.store.failures.count > before:
            time.sleep(0.05)

    def read() -> None:
        key = 0
        while time.monotonic() < deadline:
            key = (key + 1) % KEYS
            failed_before = cache.store.failures.count
            try:
                value = cache.lookup(prompt_of(key), LLM)
            except Exception:  # noqa: BLE001 - counted: a caller must never see one
                with lock:
                    counts.exceptions.append(traceback.format_exc())
                continue
            pause_if_failed_over(failed_before)
            with lock:
                counts.reads += 1
                if value is not None:
                    counts.hits += 1
                    texts = [generation.text for generation in value]
                    if not whole(texts, writers):
                        counts.torn.append(" | ".join(text[:24] for text in texts))

    reader = threading.Thread(target=read)
    reader.start()
    seq = 0
    while time.monotonic() < deadline:
        seq += 1
        failed_before = cache.store.failures.count
        try:
            cache.update(prompt_of(seq % KEYS), LLM, value_of(writer, seq))
        except Exception:  # noqa: BLE001 - counted: a caller must never see one
            counts.exceptions.append(traceback.format_exc())
        counts.writes += 1
        pause_if_failed_over(failed_before)
    reader.join()
    counts.failures = dict(cache.store.failures.by_kind)
    counts.retried_conflicts = retried[0]
    cache.close()
    return counts


def run_load(urls: Sequence[str], namespace: str, seconds: float) -> list[Counts]:
    """Run the load to its end: one process per URL; their counts, by writer."""
    processes, results = start_load(urls, namespace, seconds)
    return collect(processes, results, seconds)


def start_load(
    urls: Sequence[str], namespace: str, seconds: float
) -> tuple[list[multiprocessing.process.BaseProcess], Any]:
    """Start one process per URL (spawned: nothing inherited), writer ``i`` on URL ``i``."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes: list[multiprocessing.process.BaseProcess] = [
        context.Process(
            target=run_node,
            args=(i + 1, len(urls), url, namespace, seconds, results),
            daemon=True,
        )
        for i, url in enumerate(urls)
    ]
    for process in processes:
        process.start()
    return processes, results


def collect(
    processes: Sequence[multiprocessing.process.BaseProcess], results: Any, seconds: float
) -> list[Counts]:
    """The counts of :func:`start_load`'s processes, once they are done."""
    counts: list[Counts] = []
    try:
        for _ in processes:
            counts.append(results.get(timeout=seconds + 120))
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():  # our own child, by its PID
                process.kill()
                process.join(5)
    return sorted(counts, key=lambda found: found.writer)


def stored_values(connection: pymysql.Connection, namespace: str) -> dict[str, Any]:
    """What a node holds for ``namespace``: per key, its generation_count and every row.

    Read after the node has applied everything the cluster committed (wsrep_sync_wait).
    """
    cursor = connection.cursor()
    with contextlib.suppress(pymysql.MySQLError):
        cursor.execute("SET SESSION wsrep_sync_wait = 1")
    cursor.execute(
        "SELECT e.key_hash, e.generation_count, g.idx, g.text FROM llm_cache_entry e"
        " LEFT JOIN llm_cache_generation g ON g.entry_id = e.id"
        " WHERE e.namespace = %s ORDER BY e.key_hash, g.idx",
        (namespace,),
    )
    found: dict[str, Any] = {}
    for key_hash, count, idx, text in cursor.fetchall():
        stored = found.setdefault(key_hash, {"count": count, "texts": []})
        if idx is not None:
            stored["texts"].append(text)
    return found


def torn_at_rest(values: dict[str, Any], writers: int) -> list[str]:
    """The keys whose stored rows are not one writer's whole value (count included)."""
    return [
        key
        for key, stored in values.items()
        if stored["count"] != len(stored["texts"]) or not whole(stored["texts"], writers)
    ]
