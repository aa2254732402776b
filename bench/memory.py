"""Memory of prune, clear and export over the largest table, each in a fresh process."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.backends import Backend
from bench.growth import fill
from bench.plan import GROWTH_NS
from bench.results import BackendResult, MemoryRow
from bench.workload import log
from langchain_sqlcache import SQLCache
from langchain_sqlcache.transfer import count, export_records, to_line


def memory(backend: Backend, size: int, result: BackendResult) -> None:
    """Peak RSS of export, prune and clear over ``size`` filler entries, each in a new process."""
    result.memory = []
    engine = create_engine(backend.sync_url)
    try:
        with engine.connect() as connection:
            held = connection.execute(
                text("SELECT count(*) FROM llm_cache_entry WHERE namespace = :ns"),
                {"ns": GROWTH_NS},
            ).scalar_one()
        if held > size:  # a larger table from an earlier attempt, or one pruned midway
            _clear_growth(backend)
        fill(engine, size)
        result.memory.append(_child(backend, "export", size))
        result.memory.append(_child(backend, "prune", max(1, size // 100)))
        _clear_growth(backend)  # what prune left
        log(f"{backend.name}: refilling {size:,} entries for clear")
        result.fills.append((size, fill(engine, size)))
        result.memory.append(_child(backend, "clear", 0))
    finally:
        engine.dispose()


class ChildFailedError(RuntimeError):
    """A measuring child process exited with an error (a server restart, most often)."""


def _clear_growth(backend: Backend) -> None:
    cache = SQLCache(backend.url, namespace=GROWTH_NS, on_error="raise")
    cache.clear()
    cache.close()


def _child(backend: Backend, operation: str, max_entries: int) -> MemoryRow:
    log(f"{backend.name}: {operation} in a fresh process")
    url = backend.url.render_as_string(hide_password=False)
    # The entry point, bench/performance.py, runs child() when given --child.
    script = str(Path(__file__).with_name("performance.py"))
    command = [sys.executable, script, "--child", operation, url, str(max_entries)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        msg = f"{operation} in a child process failed: {last}"
        raise ChildFailedError(msg)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return MemoryRow(**report)


def child(operation: str, url: str, max_entries: int) -> None:
    """Run one operation over the growth namespace; print a MemoryRow as JSON."""
    cache = SQLCache(url, namespace=GROWTH_NS, on_error="raise", max_entries=max_entries or None)
    entries = count(cache, all_namespaces=False)
    baseline = _rss_kib("VmRSS")
    started = time.perf_counter()
    if operation == "export":
        lines = 0
        with open(os.devnull, "w", encoding="utf-8") as sink:
            for record in export_records(cache, all_namespaces=False):
                sink.write(to_line(record))
                lines += 1
        detail = f"{lines:,} lines written"
    elif operation == "prune":
        detail = f"{cache.prune():,} entries deleted (max_entries={max_entries:,})"
    else:
        cache.clear()
        detail = f"{entries - count(cache, all_namespaces=False):,} entries deleted"
    seconds = time.perf_counter() - started
    peak = _rss_kib("VmHWM")
    cache.close()
    print(json.dumps({
        "operation": operation,
        "entries": entries,
        "seconds": seconds,
        "baseline_mib": baseline / 1024,
        "peak_mib": peak / 1024,
        "detail": detail,
    }))  # fmt: skip


def _rss_kib(field_name: str) -> int:
    """VmRSS or VmHWM of this process (KiB), from /proc; ru_maxrss where there is no /proc."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
