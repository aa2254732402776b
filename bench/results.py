"""What a run measures, as records: one for each kind of measurement, one per backend.

Latency percentiles (Stats), the statements of an update (Trips), growth and memory rows,
everything measured on one backend (BackendResult) and a profile of the hit path (Profile).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stats:
    """Latency percentiles of one operation, in microseconds."""

    p50: float
    p99: float
    mean: float
    n: int

    @classmethod
    def of(cls, samples_ns: Sequence[int]) -> Stats:
        """Percentiles of samples in nanoseconds."""
        ordered = sorted(samples_ns)
        return cls(
            p50=_rank(ordered, 0.50) / 1e3,
            p99=_rank(ordered, 0.99) / 1e3,
            mean=statistics.fmean(ordered) / 1e3,
            n=len(ordered),
        )


def _rank(ordered: Sequence[int], quantile: float) -> float:
    """Nearest-rank percentile of sorted samples."""
    return float(ordered[min(len(ordered) - 1, max(0, round(quantile * len(ordered)) - 1))])


@dataclass(frozen=True)
class Trips:
    """What one update sent: round trips on the wire, or SQLite's statements."""

    generations: int
    replace: bool
    round_trips: int | None
    """Client requests answered by the server (None on SQLite, which is in-process)."""
    statements: list[str]
    """SQLite's statements in order, as its trace callback saw them."""


@dataclass(frozen=True)
class GrowthRow:
    """Hit latency of one kind of entry at one table size."""

    size: int
    prompt: str
    generations: int
    sqlcache: Stats
    floor: Stats


@dataclass(frozen=True)
class MemoryRow:
    """One operation over the big table, run in its own process."""

    operation: str
    entries: int
    seconds: float
    baseline_mib: float
    peak_mib: float
    detail: str


@dataclass
class BackendResult:
    """Everything measured on one backend."""

    name: str
    server: str = ""
    pool: str = ""
    sync: dict[str, dict[str, Stats]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    throughput: dict[str, dict[int, float]] = field(default_factory=dict)
    trips: list[Trips] = field(default_factory=list)
    growth: list[GrowthRow] = field(default_factory=list)
    fills: list[tuple[int, float]] = field(default_factory=list)
    memory: list[MemoryRow] = field(default_factory=list)
    components: dict[str, Stats] = field(default_factory=dict)
    async_components: dict[str, Stats] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass
class Profile:
    """Where the time of a few thousand hits went, by function."""

    label: str
    seconds: float
    ops: int
    steps: list[tuple[str, float]]
    packages: list[tuple[str, float]]
    top_self: list[tuple[str, float]]
