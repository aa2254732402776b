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
import os
import shlex
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from langchain_sqlcache.errors import CacheUnavailableError, is_transient

# Run by path (`.venv/bin/python bench/performance.py`, as README.md and docs/benchmarks.md
# quote it), this script has bench/ itself on sys.path, not the repository's root: the root
# goes first, so that the modules it is made of import as bench.* (see bench/__init__.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.backends import BACKENDS, Backend, drop_backend, scratch_backend, server_version
from bench.components import components
from bench.growth import growth
from bench.latency import sync_latency
from bench.memory import ChildFailedError, child, memory
from bench.peers import _reason
from bench.plan import DEFAULT_SIZES, FULL, QUICK, QUICK_SIZES, Plan
from bench.profiling import profile_hits
from bench.report import (
    ANALYSIS_PLACEHOLDER,
    kept_analysis,
    report,
    source_revision,
    targets_table,
    write_plot,
)
from bench.results import BackendResult, Profile
from bench.round_trips import update_round_trips
from bench.tables import (
    components_table,
    growth_table,
    memory_table,
    sync_table,
    throughput_table,
    trips_table,
)
from bench.throughput import async_throughput
from bench.workload import log, now_utc

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


if __name__ == "__main__":
    main()
