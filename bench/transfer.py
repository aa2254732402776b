"""Time and peak memory of moving a cache between environments with export and import.

Run: .venv/bin/python bench/transfer.py [--entries 100000] [--target URL]
Fills a SQLite file (the dev cache) with --entries entries, exports it to JSON Lines with
`langchain-sqlcache export`, imports that into --target (default: the local Postgres, in a
scratch database) with `langchain-sqlcache import`, checks every entry arrived, and imports
again to show it changes nothing. Each command runs as its own process; its peak RSS is
read from the kernel (ru_maxrss of the child). docs/transfer.md carries the latest output.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from langchain_sqlcache import SQLCache
from langchain_sqlcache.engines import driver_urls
from langchain_sqlcache.transfer import import_lines

# Run by path, this script has bench/ on sys.path, not the repository's root that bench.*
# imports need (see bench/__init__.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.backends import SERVER_URLS  # the servers bench/performance.py measures

SCRATCH = "sqlcache_transfer_bench"
# The command, reporting its own peak RSS on stderr as it exits: VmHWM from /proc, which
# (unlike ru_maxrss, kept across exec) starts afresh in the new process image.
CLI = [
    sys.executable,
    "-c",
    "import atexit, sys\n"
    "def peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            print('peak_rss_kib', line.split()[1], file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "from langchain_sqlcache.cli import main\n"
    "main()",
]


def scratch_database(server_url: str) -> str:
    admin = create_engine(driver_urls(make_url(server_url))[0], isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {SCRATCH}"))
        connection.execute(text(f"CREATE DATABASE {SCRATCH}"))
    admin.dispose()
    return make_url(server_url).set(database=SCRATCH).render_as_string(hide_password=False)


def synthetic_lines(entries: int) -> Iterator[str]:
    for i in range(entries):
        answer = f"Answer number {i}: " + "lorem ipsum dolor sit amet " * 8
        message = {
            "type": "ai",
            "id": f"run-{i}",
            "usage_metadata": {"input_tokens": 40, "output_tokens": 60, "total_tokens": 100},
        }
        yield json.dumps({
            "format": "langchain-sqlcache/1",
            "namespace": "dev",
            "prompt": f"[{{\"role\": \"user\", \"content\": \"question {i}?\"}}]",
            "llm_string": "[('model_name', 'gpt-4o-mini'), ('temperature', 0.0)]",
            "created_at": "2026-11-01T00:00:00+00:00",
            "updated_at": "2026-11-01T00:00:00+00:00",
            "generations": [{"type": "ChatGeneration", "text": answer, "message": message}],
        })  # fmt: skip


def run(args: list[str]) -> tuple[float, float, str]:
    """Seconds, peak RSS (MiB) and last message of one CLI process."""
    started = time.perf_counter()
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    lines = result.stderr.strip().splitlines()
    peak_kib = int(lines[-1].split()[1])
    message = lines[-2] if len(lines) > 1 else result.stdout.strip()
    return seconds, peak_kib / 1024, message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--target", default=SERVER_URLS["postgresql"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    dev = f"sqlite:///{work / 'dev.db'}"
    started = time.perf_counter()
    cache = SQLCache(dev, namespace="dev")
    import_lines(cache, synthetic_lines(args.entries))
    cache.close()
    fill = time.perf_counter() - started
    target = scratch_database(args.target)
    dump = work / "cache.jsonl"
    export = run(["export", "--url", dev, "--output", str(dump)])
    run(["db", "upgrade", "--url", target])
    first = run(["import", str(dump), "--url", target])
    second = run(["import", str(dump), "--url", target])
    arrived = SQLCache(target, namespace="dev", create_tables=False)
    entries = arrived.stats().entries
    arrived.close()
    assert entries == args.entries, entries
    size = dump.stat().st_size / 2**20
    print(
        f"{args.entries:,} entries (filled into SQLite in {fill:.1f} s), "
        f"JSON Lines file {size:.0f} MiB, target {make_url(target).get_backend_name()}\n"
    )
    print("| step | seconds | entries/s | peak RSS of the process | output |")
    print("|---|---|---|---|---|")
    for name, (seconds, peak, last) in (
        ("export from SQLite", export),
        ("import into the target", first),
        ("import again (idempotent)", second),
    ):
        print(f"| {name} | {seconds:.1f} | {args.entries / seconds:,.0f} | {peak:.0f} MiB "
              f"| {last} |")  # fmt: skip


if __name__ == "__main__":
    main()
