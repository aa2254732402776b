"""SQLCache against the raw-driver floor and LangChain's SQLAlchemy caches, on three backends.

Run: .venv/bin/python bench/performance.py [--quick] [--backends sqlite,postgresql,mysql]
     [--sizes 1000,100000,1000000] [--output docs/benchmarks.md]
(after `.venv/bin/pip install -e '.[test,bench]'`). A full run takes about 45 minutes on 2
cores, most of it filling, exporting and pruning 1,000,000 entries per backend (--sizes makes
that smaller), and writes docs/benchmarks.md and docs/benchmarks.png, keeping the hand-written
block of the earlier report; `--quick` is a smoke run of a minute that writes a report only
when given --output.

Backends: SQLite (a file in a temporary directory), and Postgres and MariaDB/MySQL at
$SQLCACHE_TEST_POSTGRES_URL / $SQLCACHE_TEST_MYSQL_URL (the local servers by default), where
the benchmark works in a scratch database of its own, `sqlcache_bench_<pid>`, that it creates
and drops at the end: the tests' database is never touched.

What it measures, each subject on the same rows:

- sync hit, miss and update latency (p50, p99), the subjects interleaved key by key so that
  load from elsewhere on the machine hits them alike: SQLCache; langchain_community's
  SQLAlchemyCache and SQLAlchemyMd5Cache; the floor, SQLCache's lookup as one parametrized,
  prepared query on one persistent raw-driver connection (psycopg, PyMySQL, sqlite3)
  returning the rows undecoded;
- async hits/s at 1, 16 and 64 tasks: SQLCache.alookup, the same query on a raw async pool
  (asyncpg, aiomysql, aiosqlite) of SQLAlchemy's default capacity, and SQLAlchemyCache's
  alookup (LangChain's default: the sync lookup in a thread pool);
- the statements an update sends, for 1, 4 and 16 generations;
- hit latency as the table grows to 1,000,000 entries (filled with real cache rows from
  codec.encode_entry through bulk INSERTs), with 1 and 4 generations and prompts of 200 B,
  20 KB and 1 MB;
- peak RSS of prune, clear and export over the largest table, each in a fresh process;
- where the time of a hit goes: its parts timed one by one on every backend, and a
  pyinstrument profile on Postgres.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from langchain_sqlcache.errors import CacheUnavailableError, is_transient

# Run by path, this script has bench/ on sys.path, not the repository's root that bench.*
# imports need (see bench/__init__.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The round-trip counter the tests use (tests/wire.py), from the repository's root.

from bench.backends import BACKENDS, Backend, drop_backend, scratch_backend, server_version
from bench.components import (
    AFLOOR,
    AHELD,
    ALOOKUP,
    AREAD,
    AUNSHIELDED,
    CHECKOUT,
    DECODE,
    HASH,
    HELD,
    LOOKUP,
    READ,
    components,
)
from bench.growth import growth
from bench.latency import sync_latency
from bench.memory import ChildFailedError, child, memory
from bench.peers import _reason
from bench.plan import (
    CONCURRENCY,
    DEFAULT_SIZES,
    FILL_BATCH,
    FLOOR,
    FULL,
    LC_CACHE,
    LC_MD5,
    POOL_CAPACITY,
    QUICK,
    QUICK_SIZES,
    SQLCACHE,
    SQLCACHE_POOLED,
    Plan,
)
from bench.profiling import profile_hits
from bench.results import BackendResult, Profile
from bench.round_trips import update_round_trips
from bench.throughput import async_throughput
from bench.workload import log, now_utc

MIB = 2**20


# -- running it -----------------------------------------------------------------------------


def retrying(label: str, step: Callable[[], None], result: BackendResult) -> bool:
    """Run a step; rerun it after a pause when a server was briefly away (up to 3 times)."""
    for attempt in range(1, 4):
        try:
            step()
            return True
        except Exception as exc:  # noqa: BLE001 - a failed step is reported, the run goes on
            transient = (
                is_transient(exc)
                or isinstance(exc, (CacheUnavailableError, ChildFailedError, OSError))
                or type(exc).__module__.split(".")[0] in ("asyncpg", "psycopg", "pymysql")
            )
            log(f"{result.name}: {label} failed ({_reason(exc)})")
            if not transient or attempt == 3:
                result.errors.append(f"{label}: {_reason(exc)}")
                return False
            time.sleep(10)
    return False


def run_backend(
    name: str, plan: Plan, sizes: Sequence[int], work: Path
) -> tuple[BackendResult, list[Profile]]:
    result = BackendResult(name)
    backends: list[Backend] = []
    profiles: list[Profile] = []

    def prepare() -> None:
        backends.append(scratch_backend(name, work))
        result.server = server_version(backends[-1])

    if not retrying("scratch database", prepare, result):
        return result, profiles
    backend = backends[-1]
    try:
        log(f"{name}: {result.server}")
        log(f"{name}: sync latency")
        retrying("sync latency", lambda: sync_latency(backend, plan, result), result)
        print(sync_table(result), flush=True)
        log(f"{name}: the parts of a hit")
        retrying("parts of a hit", lambda: components(backend, plan, result), result)
        print(components_table(result), flush=True)
        log(f"{name}: async throughput")
        retrying("async throughput", lambda: async_throughput(backend, plan, result), result)
        print(throughput_table(result), flush=True)
        log(f"{name}: round trips per update")
        retrying("update round trips", lambda: update_round_trips(backend, result), result)
        print(trips_table(result), flush=True)
        if name == "postgresql":
            log(f"{name}: profiling the hit path")

            def profile() -> None:
                profiles.extend(profile_hits(backend, plan))

            retrying("profile", profile, result)
        retrying("growth", lambda: growth(backend, plan, sizes, result), result)
        print(growth_table(result), flush=True)
        retrying("memory", lambda: memory(backend, max(sizes), result), result)
        print(memory_table(result), flush=True)
    finally:
        retrying("dropping the scratch database", lambda: drop_backend(backend), result)
    return result, profiles


# -- reporting ------------------------------------------------------------------------------


def _us(value: float) -> str:
    return f"{value:,.0f} µs" if value >= 100 else f"{value:,.1f} µs"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def sync_table(result: BackendResult) -> str:
    lines = [
        f"#### {result.name}: sync latency (interleaved, µs)",
        "",
        "| subject | hit p50 | hit p99 | miss p50 | miss p99 | update p50 | update p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in (SQLCACHE, FLOOR, LC_CACHE, LC_MD5):
        ops = result.sync.get(name)
        if ops is None:
            reason = result.failures.get(name, "not measured")
            lines.append(f"| {name} | {reason} | | | | | |")
            continue
        cells = []
        for op in ("hit", "miss", "update"):
            stats = ops.get(op)
            cells += [_us(stats.p50), _us(stats.p99)] if stats else ["-", "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def throughput_table(result: BackendResult) -> str:
    lines = [
        f"#### {result.name}: async hits/s (best of the rounds)",
        "",
        "| subject | " + " | ".join(f"{t} task{'s' if t > 1 else ''}" for t in CONCURRENCY) + " |",
        "|---|" + "---|" * len(CONCURRENCY),
    ]
    labels = {
        SQLCACHE: f"SQLCache.alookup (the pool it builds: {result.pool or '?'})",
        SQLCACHE_POOLED: f"SQLCache.alookup (pool_size={POOL_CAPACITY}, max_overflow=0)",
        FLOOR: f"raw async pool ({POOL_CAPACITY} connections)",
        LC_CACHE: "SQLAlchemyCache.alookup (thread pool)",
    }
    for name, label in labels.items():
        rates = result.throughput.get(name)
        if rates is None and name == SQLCACHE_POOLED:
            continue  # SQLCache builds that pool itself: the row above
        if rates is None:
            lines.append(f"| {label} | {result.failures.get(name, 'not measured')} | | |")
            continue
        lines.append(f"| {label} | " + " | ".join(f"{rates[t]:,.0f}" for t in CONCURRENCY) + " |")
    return "\n".join(lines) + "\n"


def trips_table(result: BackendResult) -> str:
    if result.name == "sqlite":
        lines = [
            f"#### {result.name}: the statements of one update (SQLite's trace, in-process)",
            "",
            "| generations | key | statements | in order |",
            "|---|---|---|---|",
        ]
        for trips in result.trips:
            verbs = [" ".join(s.split()[:2]) for s in trips.statements]
            lines.append(
                f"| {trips.generations} | {'existing' if trips.replace else 'new'} "
                f"| {len(trips.statements)} | {', '.join(verbs)} |"
            )
        return "\n".join(lines) + "\n"
    lines = [
        f"#### {result.name}: round trips of one update (counted on the wire)",
        "",
        "| generations | key | round trips |",
        "|---|---|---|",
    ]
    for trips in result.trips:
        lines.append(
            f"| {trips.generations} | {'existing' if trips.replace else 'new'} "
            f"| {trips.round_trips} |"
        )
    return "\n".join(lines) + "\n"


def growth_table(result: BackendResult) -> str:
    lines = [
        f"#### {result.name}: hit latency as the table grows (p50, µs)",
        "",
        "| entries | prompt | generations | SQLCache p50 | SQLCache p99 | raw driver p50"
        " | SQLCache / raw |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result.growth:
        lines.append(
            f"| {row.size:,} | {row.prompt} | {row.generations} | {_us(row.sqlcache.p50)} "
            f"| {_us(row.sqlcache.p99)} | {_us(row.floor.p50)} "
            f"| {row.sqlcache.p50 / row.floor.p50:.2f}x |"
        )
    if result.fills:
        fills = ", ".join(f"to {size:,} in {seconds:.0f} s" for size, seconds in result.fills)
        lines += ["", f"Bulk fills: {fills}."]
    return "\n".join(lines) + "\n"


def memory_table(result: BackendResult) -> str:
    lines = [
        f"#### {result.name}: peak memory, each operation in a fresh process",
        "",
        "| operation | entries | seconds | RSS before | peak RSS | detail |",
        "|---|---|---|---|---|---|",
    ]
    for row in result.memory:
        lines.append(
            f"| {row.operation} | {row.entries:,} | {row.seconds:.1f} | {row.baseline_mib:.0f} MiB"
            f" | {row.peak_mib:.0f} MiB | {row.detail} |"
        )
    return "\n".join(lines) + "\n"


def components_table(result: BackendResult) -> str:
    """Each part of a hit timed alone, and what the differences of their medians say."""
    lines: list[str] = []
    sync, asyn = result.components, result.async_components
    if sync:
        p50 = {name: stats.p50 for name, stats in sync.items()}
        derived = {
            "= the compiled statement's cost over the raw driver (held - raw)": (
                p50[HELD] - p50[FLOOR]
            ),
            "= retry wrapper and engine checks (_run - checkout - statement)": (
                p50[READ] - p50[CHECKOUT] - p50[HELD]
            ),
            "= the rest of lookup (lookup - _run - decode - hash)": (
                p50[LOOKUP] - p50[READ] - p50[DECODE] - p50[HASH]
            ),
        }
        title = f"#### {result.name}: the parts of a sync hit (p50, each timed alone)"
        lines += _parts(title, p50, derived, p50[LOOKUP])
    if asyn:
        p50 = {name: stats.p50 for name, stats in asyn.items()}
        derived = {
            "= key hash + decode (alookup - _arun)": p50[ALOOKUP] - p50[AREAD],
            "= ensure_future + shield (_arun - _arun_unshielded)": p50[AREAD] - p50[AUNSHIELDED],
            "= retry wrapper + checkout + return (_arun_unshielded - held)": (
                p50[AUNSHIELDED] - p50[AHELD]
            ),
            "= greenlet + SQLAlchemy's adapter over the raw driver (held - raw)": (
                p50[AHELD] - p50[AFLOOR]
            ),
        }
        title = f"#### {result.name}: the parts of an async hit, one task (p50)"
        lines += _parts(title, p50, derived, p50[ALOOKUP])
    return "\n".join(lines)


def _parts(title: str, p50: dict[str, float], derived: dict[str, float], whole: float) -> list[str]:
    rows = {**p50, **derived}
    return [
        title,
        "",
        "| part | p50 | share of the whole call |",
        "|---|---|---|",
        *(f"| {name} | {_us(value)} | {value / whole:.0%} |" for name, value in rows.items()),
        "",
    ]


def profile_table(profile: Profile) -> str:
    per_op = profile.seconds / profile.ops * 1e6
    lines = [
        f"#### {profile.label}: {profile.ops:,} hits, {per_op:.0f} µs each under the profiler",
        "",
        "| step (inclusive) | share of the time |",
        "|---|---|",
        *(f"| {step} | {share:.0%} |" for step, share in profile.steps),
        "",
        "| self time by package | share |",
        "|---|---|",
        *(f"| {name} | {share:.0%} |" for name, share in profile.packages if share >= 0.005),
        "",
        "| function (self time) | share |",
        "|---|---|",
        *(f"| `{name}` | {share:.1%} |" for name, share in profile.top_self),
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Target:
    """A target, and its measured ratio on one backend."""

    label: str
    value: float | None
    met: bool | None
    note: str = ""

    def cell(self) -> str:
        """The table cell."""
        if self.value is None:
            return self.note or "n/a"
        verdict = "no target" if self.met is None else ("**met**" if self.met else "**not met**")
        return f"{self.value:.2f}x, {verdict}" + (f" ({self.note})" if self.note else "")


def targets(result: BackendResult, sizes: Sequence[int]) -> list[Target]:
    """The ratios the project aims for, measured on one backend."""
    out: list[Target] = []
    sync = result.sync
    ours_hit = sync.get(SQLCACHE, {}).get("hit")
    floor_hit = sync.get(FLOOR, {}).get("hit")
    limit = 2.0 if result.name == "sqlite" else 1.5
    label = "sync hit p50 / raw driver (<= 1.5x; SQLite <= 2x)"
    if ours_hit and floor_hit:
        ratio = ours_hit.p50 / floor_hit.p50
        out.append(Target(label, ratio, ratio <= limit))
    else:
        out.append(Target(label, None, None, "not measured"))
    ours = result.throughput.get(SQLCACHE, {}).get(64)
    raw = result.throughput.get(FLOOR, {}).get(64)
    label = "async hits/s at 64 tasks / raw async pool (>= 0.7x on Postgres)"
    if ours and raw:
        ratio = ours / raw
        pooled = result.throughput.get(SQLCACHE_POOLED, {}).get(64)
        note = f"pool_size={POOL_CAPACITY}: {pooled / raw:.2f}x" if pooled else ""
        met = ratio >= 0.7 if result.name == "postgresql" else None
        out.append(Target(label, ratio, met, note))
    else:
        out.append(Target(label, None, None, "not measured"))
    for peer in (LC_CACHE, LC_MD5):
        for op in ("hit", "update"):
            label = f"{peer} {op} p50 / SQLCache (>= 4x)"
            theirs = sync.get(peer, {}).get(op)
            ours_op = sync.get(SQLCACHE, {}).get(op)
            if theirs and ours_op:
                ratio = theirs.p50 / ours_op.p50
                out.append(Target(label, ratio, ratio >= 4))
            else:
                out.append(Target(label, None, None, result.failures.get(peer, "not measured")))
    trips_label = "round trips per update, 1/4/16 generations (fixed, <= 3)"
    if result.trips and result.name == "sqlite":
        # In-process: no round trip; one transaction whose statements do not depend on the
        # generations but for sqlite3 stepping the executemany INSERT once a row.
        shapes = {tuple(s.split()[0] for s in t.statements[:3]) for t in result.trips}
        note = f"in-process, one transaction ({', '.join(next(iter(shapes)))} ... COMMIT)"
        out.append(Target(trips_label, None, None, note))
    elif result.trips:
        trips = {t.round_trips for t in result.trips}
        fixed = len(trips) == 1
        met = fixed and max(n or 0 for n in trips) <= 3
        note = (
            f"{'**met**' if met else '**not met**'}: "
            f"{'/'.join(str(n) for n in sorted(n or 0 for n in trips))} round trips"
            f" {'for every generation count' if fixed else 'varying with the generations'}"
        )
        out.append(Target(trips_label, None, None, note))
    else:
        out.append(Target(trips_label, None, None, "not measured"))
    rows = {(r.size, r.prompt, r.generations): r for r in result.growth}
    small, large = min(sizes), max(sizes)
    for generations in (1, 4):
        label = f"hit p50 at {large:,} / at {small:,} entries, {generations} gen. (<= 1.25x)"
        first = rows.get((small, "200 B", generations))
        last = rows.get((large, "200 B", generations))
        if first and last:
            ratio = last.sqlcache.p50 / first.sqlcache.p50
            floor_ratio = last.floor.p50 / first.floor.p50
            out.append(Target(label, ratio, ratio <= 1.25, f"raw driver: {floor_ratio:.2f}x"))
        else:
            out.append(Target(label, None, None, "not measured"))
    for row in result.memory:
        label = f"peak RSS of {row.operation} over {row.entries:,} entries (< 200 MB)"
        megabytes = row.peak_mib * MIB / 1e6
        out.append(
            Target(
                label,
                None,
                None,
                f"{megabytes:.0f} MB, {'**met**' if megabytes < 200 else '**not met**'}",
            )
        )
    return out


def targets_table(results: list[BackendResult], sizes: Sequence[int]) -> str:
    by_backend = [targets(result, sizes) for result in results]
    labels: list[str] = []
    for rows in by_backend:
        labels += [t.label for t in rows if t.label not in labels]
    lines = [
        "| target | " + " | ".join(r.name for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for label in labels:
        cells = []
        for rows in by_backend:
            found = next((t for t in rows if t.label == label), None)
            cells.append(found.cell() if found else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    cpu = "unknown CPU"
    memory_total = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_total = int(line.split()[1]) * 1024
    ram = f"{memory_total / 2**30:.0f} GiB RAM" if memory_total else "RAM unknown"
    return f"{cpu}, {os.cpu_count()} cores, {ram}, {platform.system()} {platform.machine()}"


@functools.cache
def source_revision() -> str:
    """The commit measured and whether src/ differs from it (read once, at the start)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args],  # noqa: S607 - git from PATH, as a developer runs it
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "src")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes in src/" if dirty else "")


def versions() -> str:
    packages = (
        "sqlalchemy",
        "psycopg",
        "asyncpg",
        "pymysql",
        "aiomysql",
        "aiosqlite",
        "langchain-core",
        "langchain-community",
        "langchain-sqlcache",
        "pyinstrument",
    )
    found = []
    for package in packages:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return f"Python {platform.python_version()}, " + ", ".join(found)


def report(
    results: list[BackendResult],
    profiles: list[Profile],
    sizes: Sequence[int],
    plan: Plan,
    command: str,
    started: datetime,
    load: tuple[tuple[float, ...], tuple[float, ...]],
    plot: str | None,
    analysis: str,
) -> str:
    quick = plan == QUICK
    parts = [
        "# Performance: SQLCache against the raw driver and LangChain's SQL caches",
        "",
        f"Produced by `{command}` on {started:%Y-%m-%d} "
        f"({'a --quick smoke run: small samples, indicative only' if quick else 'a full run'},"
        f" {(now_utc() - started).total_seconds() / 60:.0f} min).",
        "",
        f"- Machine: {machine()}; load average {load[0][0]:.2f} at the start, "
        f"{load[1][0]:.2f} at the end (other work on the machine shifts absolute times; the "
        "subjects are interleaved so that it shifts them alike).",
        f"- Versions: {versions()}; langchain-sqlcache at commit {source_revision()}.",
        *(f"- {r.name}: {r.server or 'n/a'}" for r in results),
        "- SQLite is a file in a temporary directory; Postgres and MariaDB are the local servers"
        " on loopback with their Debian defaults, in a scratch database created for the run.",
        "",
        "Absolute times depend on the machine; compare the ratios. Each cache writes the same"
        " value: one ChatGeneration (AIMessage of ~400 characters, usage and response metadata);"
        " prompts are 200 bytes unless said otherwise.",
        "",
        "## Targets",
        "",
        targets_table(results, sizes),
        "How to read the targets:",
        "",
        "- **raw driver** is the floor: SQLCache's lookup statement (the entry joined to its"
        " generations by `key_hash`, live entries only, ordered by `idx`) written by hand, sent"
        " as one parametrized, prepared query (psycopg `prepare=True`; asyncpg caches its"
        " prepared statements; PyMySQL and aiomysql interpolate client-side, MySQL's usual"
        " way) on a persistent autocommit connection, rows returned undecoded. SQLCache on"
        " top of it hashes the key, checks a connection out of SQLAlchemy's pool, runs the"
        " cached compiled statement and rebuilds the Generation objects.",
        "- **async** compares SQLCache.alookup with the same query on a raw async pool of"
        f" {POOL_CAPACITY} connections, SQLAlchemy's default pool capacity (5 + 10 overflow),"
        " at 1, 16 and 64 concurrent tasks; best of"
        f" {plan.rounds} round{'s' if plan.rounds > 1 else ''} of {plan.async_ops:,} hits."
        " asyncpg's pool runs without the session-reset query it sends on each release by"
        " default, so that its lookup is one round trip, as SQLCache's is.",
        "- **round trips per update** are counted on the wire by a proxy on loopback"
        " (tests/wire.py: each request the server answers), after warm-up (drivers prepare a"
        " statement once per connection). Postgres sends an update as one statement in"
        " autocommit, MySQL as its transaction's statements in one packet (START TRANSACTION"
        " ... COMMIT). SQLite is in-process: its trace callback lists the statements of the"
        " update's one transaction. By default every 100th update also runs a pruning batch in"
        " its own transaction.",
        "- **growth** looks up random entries across the whole table (not a hot set), so a large"
        " table that outgrows the server's buffer cache shows it.",
        "",
        analysis,
        "",
        "## Sync latency",
        "",
        f"{plan.hits:,} hits over {plan.hot_keys} keys, {plan.hits:,} misses and"
        f" {plan.updates:,} updates of new keys per subject after {plan.warmup} warm-up lookups;"
        " the subjects take turns on each key, in rotating order. SQLCache runs with its defaults"
        ' (`on_error="raise"` so that a failure cannot pass for a miss).',
        "",
        *(sync_table(r) for r in results),
        "## Async throughput",
        "",
        *(throughput_table(r) for r in results),
        "## Statements per update",
        "",
        *(trips_table(r) for r in results),
        "## Growth",
        "",
        "The table is filled with real cache rows (codec.encode_entry, as `update` writes them;"
        f" alternately 1 and 4 generations) by executemany INSERTs of {FILL_BATCH:,} entries;"
        " Postgres and MariaDB then ANALYZE the tables. Lookups of 200-byte prompts pick random"
        f" entries of the whole table; 20 KB and 1 MB prompts are {plan.probes_20kb} and"
        f" {plan.probes_1mb} entries written by `update` beside them. A 1 MB prompt spends most"
        " of its time hashing the prompt (the raw query gets the key for free).",
        "",
        *(growth_table(r) for r in results),
        f"![hit latency against table size]({Path(plot).name})" if plot else "",
        "",
        "## Memory",
        "",
        "Each operation runs in a new Python process (this script with a hidden `--child`"
        " option) over the largest table; peak RSS is the kernel's high-water mark (VmHWM)."
        " `export` streams every entry of the namespace through `transfer.export_records` and"
        " `to_line` (to /dev/null); `prune` runs with `max_entries` at 1% of the entries, so it"
        " deletes 99% of them in batches of 1,000; `clear` deletes the namespace. RSS before"
        " is the process after imports and engine setup.",
        "",
        *(memory_table(r) for r in results),
    ]
    parts += [
        "## Where a hit's time goes",
        "",
        "First each part of a hit timed on its own, the parts interleaved key by key"
        f" ({plan.hits:,} rounds over {plan.hot_keys} hot keys); differences of medians"
        " approximate the costs in between. `held` is a connection checked out once and kept;"
        " the raw driver is the floor above.",
        "",
        *(components_table(r) for r in results),
    ]
    if profiles:
        parts += [
            "Then a profile on Postgres: pyinstrument, sampling every 0.1 ms, over lookups of hot"
            " keys from one thread / one task. Inclusive shares of steps (nested matches counted"
            " once), self time by package, and the functions with the most self time. The"
            " profiler adds a cost to every call, so code made of many small calls (key"
            " hashing, event dispatch) looks more expensive here than in the timings above."
            " Waiting for the server (psycopg's `wait`, the event loop's `epoll.poll`) is the"
            " database round trip itself; psycopg's C calls appear as self time of its Python"
            " frames.",
            "",
            *(profile_table(p) for p in profiles),
        ]
    errors = [f"- {r.name}: {e}" for r in results for e in r.errors]
    if errors:
        parts += ["## What did not run", "", *errors, ""]
    return "\n".join(parts).rstrip() + "\n"


def write_plot(results: list[BackendResult], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(9, 4.5))
    drawn = False
    for number, result in enumerate(results):
        rows = [r for r in result.growth if r.prompt == "200 B" and r.generations == 1]
        if not rows:
            continue
        color = f"C{number}"
        sizes = [r.size for r in rows]
        axes.plot(sizes, [r.sqlcache.p50 for r in rows], "o-", color=color,
                  label=f"{result.name}: SQLCache")  # fmt: skip
        axes.plot(sizes, [r.floor.p50 for r in rows], "s--", color=color, alpha=0.6,
                  label=f"{result.name}: raw driver")  # fmt: skip
        drawn = True
    if not drawn:
        pyplot.close(figure)
        return False
    axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("entries in the table")
    axes.set_ylabel("hit latency p50 (µs)")
    axes.set_title("Sync hit, 200 B prompt, 1 generation")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated: sqlite,postgresql,mysql (default: all)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: few operations, sizes 1,000 and 10,000")  # fmt: skip
    parser.add_argument("--sizes", default=None,
                        help="table sizes for the growth and memory runs "
                             "(default: 1000,100000,1000000)")  # fmt: skip
    parser.add_argument("--output", default=None,
                        help="Markdown report to write, with a .png beside it (default: "
                             "docs/benchmarks.md for a full run; none for --quick)")  # fmt: skip
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # A terminated run still drops its scratch databases and temporary files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # langchain_community announces its sunset, and loads() its allowed_objects default.
    warnings.filterwarnings("ignore", message=".*langchain-community.*")
    warnings.filterwarnings("ignore", message=".*allowed_objects.*")
    if args.child:
        operation, url, max_entries = args.child
        child(operation, url, int(max_entries))
        return
    plan = QUICK if args.quick else FULL
    names = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    if args.sizes:
        sizes = sorted({int(size.replace("_", "")) for size in args.sizes.split(",")})
    else:
        sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    output = args.output or (None if args.quick else "docs/benchmarks.md")
    command = shlex.join([".venv/bin/python", "bench/performance.py", *sys.argv[1:]])
    started = now_utc()
    source_revision()  # the code this process imports now, whatever changes during the run
    load_before = os.getloadavg()
    results: list[BackendResult] = []
    profiles: list[Profile] = []
    with tempfile.TemporaryDirectory(prefix="sqlcache-bench-") as work:
        for name in names:
            result, found = run_backend(name, plan, sizes, Path(work))
            results.append(result)
            profiles += found
    plot: str | None = None
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        png = Path(output).with_suffix(".png")
        if write_plot(results, png):
            plot = str(png)
    load = (load_before, os.getloadavg())
    analysis = kept_analysis(Path(output)) if output else ANALYSIS_PLACEHOLDER
    text_report = report(results, profiles, sizes, plan, command, started, load, plot, analysis)
    if output:
        Path(output).write_text(text_report, encoding="utf-8")
        print("## Targets\n\n" + targets_table(results, sizes))
        log(f"wrote {output}" + (f" and {plot}" if plot else ""))
    else:
        print(text_report)


ANALYSIS_START, ANALYSIS_END = "<!-- analysis -->", "<!-- /analysis -->"
ANALYSIS_PLACEHOLDER = (
    f"{ANALYSIS_START}\n_A reading of the numbers, written by hand, goes here; rerunning the"
    f" benchmark keeps this block._\n{ANALYSIS_END}"
)


def kept_analysis(path: Path) -> str:
    """The hand-written block of an earlier report, which a rerun keeps as it is."""
    if not path.exists():
        return ANALYSIS_PLACEHOLDER
    earlier = path.read_text(encoding="utf-8")
    start, end = earlier.find(ANALYSIS_START), earlier.find(ANALYSIS_END)
    if start < 0 or end < start:
        return ANALYSIS_PLACEHOLDER
    return earlier[start : end + len(ANALYSIS_END)]


if __name__ == "__main__":
    main()
