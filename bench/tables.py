"""The Markdown tables of one backend's results, one per scenario, and those of a profile."""

from __future__ import annotations

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
)
from bench.plan import (
    CONCURRENCY,
    FLOOR,
    LC_CACHE,
    LC_MD5,
    POOL_CAPACITY,
    SQLCACHE,
    SQLCACHE_POOLED,
)
from bench.results import BackendResult, Profile


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
            "= retry wrapper and engine checks (store.run - checkout - statement)": (
                p50[READ] - p50[CHECKOUT] - p50[HELD]
            ),
            "= the rest of lookup (lookup - store.run - decode - hash)": (
                p50[LOOKUP] - p50[READ] - p50[DECODE] - p50[HASH]
            ),
        }
        title = f"#### {result.name}: the parts of a sync hit (p50, each timed alone)"
        lines += _parts(title, p50, derived, p50[LOOKUP])
    if asyn:
        p50 = {name: stats.p50 for name, stats in asyn.items()}
        derived = {
            "= key hash + decode (alookup - store.arun)": p50[ALOOKUP] - p50[AREAD],
            "= ensure_future + shield (store.arun - arun_unshielded)": p50[AREAD]
            - p50[AUNSHIELDED],
            "= retry wrapper + checkout + return (arun_unshielded - held)": (
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
