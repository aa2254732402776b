"""The report: the targets, the machine and the versions measured, the text, the plot.

A rerun keeps the hand-written analysis block of the report it replaces (kept_analysis).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.plan import (
    FILL_BATCH,
    FLOOR,
    LC_CACHE,
    LC_MD5,
    POOL_CAPACITY,
    QUICK,
    SQLCACHE,
    SQLCACHE_POOLED,
    Plan,
)
from bench.results import BackendResult, Profile
from bench.tables import (
    components_table,
    growth_table,
    memory_table,
    profile_table,
    sync_table,
    throughput_table,
    trips_table,
)
from bench.workload import now_utc

MIB = 2**20


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
