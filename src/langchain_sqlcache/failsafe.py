"""The failure policy, written once: what a failure of the cache costs the model call.

Every cache operation (lookups, updates, clearing, deleting, pruning, stats, hit counts; sync
and async) runs through :meth:`Failsafe.run` or :meth:`Failsafe.arun`, which sort its error
into a kind and apply ``on_error`` to it. Under ``"warn"`` any failure is a miss or a no-op,
counted by kind and logged at most once a minute; under ``"raise"`` it raises an
``SQLCacheError`` subclass naming the cause, the driver's error chained. Configuration errors
(``ConfigurationError``, ``SchemaError``) and programming errors (``TypeError``) raise under
either policy.

Beneath the policy, each database server the cache talks to has a :class:`CircuitBreaker`:
after a failure that says the server is unavailable (refused, lost, timed out, shutting
down, out of connections) operations skip it at once, without touching the pool or the
network, while one probe at a time, after a capped exponential backoff, finds when it is
back. The kinds, as counted in ``stats().failures_by_kind``:

- ``"unavailable"``: connection refused or lost, server shutting down or out of connections.
- ``"timeout"``: a connect, read or statement timeout.
- ``"busy"``: the server is up but a lock, a deadlock or the pool's wait did not clear in
  time (after retries).
- ``"circuit_open"``: skipped, the server was found unavailable moments ago.
- ``"refused"``: the database refused the statement with an error a retry would meet again
  (a value out of range, a JSON document it rejects, a constraint, a missing right).
- ``"read_only"``: a write reached a read-only server (a hot standby, MySQL in read-only
  mode); read-only servers belong in ``replicas=[...]``.
- ``"too_large"``: a value over the server's packet size, refused before sending.
- ``"unstorable"``: a value the cache cannot store and rebuild exactly.
- ``"error"``: anything else (a defect: please report it).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Literal, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from langchain_sqlcache.errors import (
    CacheUnavailableError,
    CircuitOpenError,
    ConfigurationError,
    DatabaseRefusedError,
    ReadOnlyDatabaseError,
    SQLCacheError,
    UnstorableValueError,
    ValueTooLargeError,
    is_contention,
    is_read_only,
    is_timeout,
    is_transient,
)

logger = logging.getLogger("langchain_sqlcache")

T = TypeVar("T")

Kind = Literal[
    "unavailable",
    "timeout",
    "busy",
    "circuit_open",
    "refused",
    "read_only",
    "too_large",
    "unstorable",
    "error",
]
OnError = Literal["warn", "raise"]

# A skipped server is probed again after this long, doubling per failed probe up to the cap:
# a server that comes back is used again within the cap (plus a probe), and one that stays
# down costs a probe every couple of seconds.
FIRST_PROBE_DELAY_SECONDS = 0.25
MAX_PROBE_DELAY_SECONDS = 2.0
JITTER = 0.2  # +-20%, so that the caches of many processes do not probe in step
LOG_INTERVAL_SECONDS = 60.0

# Failures that are the server's answer: they close a breaker, never open one.
ANSWERED = frozenset({"refused", "read_only"})

# Set on an error raised while opening a connection (see Connecting).
_CONNECTING = "_sqlcache_while_connecting"


def kind_of(exc: BaseException) -> Kind | None:
    """The kind of a failure; None for an error that always raises (configuration, TypeError)."""
    if isinstance(exc, CircuitOpenError):
        return "circuit_open"
    if isinstance(exc, (ConfigurationError, TypeError)):
        return None
    if isinstance(exc, ReadOnlyDatabaseError) or is_read_only(exc):
        return "read_only"
    if isinstance(exc, ValueTooLargeError):
        return "too_large"
    if isinstance(exc, UnstorableValueError):
        return "unstorable"
    if isinstance(exc, DatabaseRefusedError):
        return "refused"
    if isinstance(exc, CacheUnavailableError):
        return "unavailable"
    if isinstance(exc, SQLCacheError):
        return "error"
    if is_timeout(exc) and not isinstance(exc, sa_exc.TimeoutError):
        return "timeout"
    if is_transient(exc):
        # The pool's own timeout (sqlalchemy.exc.TimeoutError): every connection is in use.
        busy = isinstance(exc, sa_exc.TimeoutError) or is_contention(exc)
        return "busy" if busy else "unavailable"
    if isinstance(exc, sa_exc.DBAPIError):
        return "refused"
    return "error"


def says_unavailable(exc: BaseException) -> bool:
    """Whether an error says the server cannot be used now (opens the breaker)."""
    return kind_of(exc) in ("unavailable", "timeout")


def retryable(exc: BaseException, attempt: int) -> bool:
    """Whether another attempt may get through at once, after ``attempt`` attempts failed.

    A lost pooled connection (a restart, a failover) or a deadlock: yes. A connection that
    could not be opened, a timeout or a full pool: no, the next attempt would wait as long
    again (four connect timeouts instead of one) for the same answer. A write refused as
    read-only: once, on a new connection (the pool replaced the one that met it, which may
    have predated a failover); a server that is still read-only then is a replica.
    """
    if is_read_only(exc):
        return attempt == 1
    return (
        is_transient(exc)
        and not getattr(exc, _CONNECTING, False)
        and not isinstance(exc, sa_exc.TimeoutError)
        and not is_timeout(exc)
    )


class Connecting:
    """``with CONNECTING:`` marks an error raised inside as one of opening a connection.

    Only the phase tells a refused or timed-out connect from a pooled connection found dead,
    the same errors on some drivers; the mark lets ``retryable`` keep the first from being
    retried. A class rather than a generator context manager: it sits on every lookup.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None:
            setattr(exc, _CONNECTING, True)


CONNECTING = Connecting()


def opened(engine: Engine) -> Connection:
    """``engine.connect()``, its failure marked as one of connecting."""
    with CONNECTING:
        return engine.connect()


class CircuitBreaker:
    """Remembers that a database server is unavailable, so that callers stop paying for it.

    Closed, every call goes through. A failure that says the server is unavailable opens it:
    calls are refused at once (``CircuitOpenError``) until a backoff has passed, then the
    first caller probes, running its operation for real, while the others keep being refused;
    a probe that fails doubles the backoff (capped), one that gets an answer closes it.
    Thread- and task-safe, shared by a cache's sync and async paths: its lock is never held
    across a wait, and its fast path (closed) takes no lock.

    Hand-written: pybreaker counts failures per call and probes after a fixed timeout, for
    sync code only (Tornado for async); this is one lock, a flag and a deadline.
    """

    def __init__(
        self,
        name: str = "database",
        *,
        first_delay: float = FIRST_PROBE_DELAY_SECONDS,
        max_delay: float = MAX_PROBE_DELAY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = lambda: random.uniform(1 - JITTER, 1 + JITTER),  # noqa: S311
    ) -> None:
        self.name = name
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._clock = clock
        self._jitter = jitter
        self._lock = threading.Lock()
        self._open = False
        self._probing = False
        self._delay = 0.0
        self._retry_at = 0.0
        self.last_error: BaseException | None = None
        """The failure that opened it or failed the last probe."""

    @property
    def state(self) -> Literal["closed", "open", "probing"]:
        """``closed``, ``open`` (refusing calls) or ``probing`` (one call let through)."""
        if not self._open:
            return "closed"
        return "probing" if self._probing else "open"

    @property
    def delay(self) -> float:
        """The current backoff before the next probe, in seconds (0 when closed)."""
        return self._delay

    def admit(self) -> bool:
        """Let a call through, or raise ``CircuitOpenError``; True when the call is the probe.

        A probe must be followed by :meth:`settle`, whatever happens.
        """
        if not self._open:  # unlocked: a call racing the opening goes through, harmlessly
            return False
        with self._lock:
            if not self._open:
                return False
            if self._probing or self._clock() < self._retry_at:
                error = self.last_error
            else:
                self._probing = True
                return True
        msg = f"the database is unavailable ({self.name}), not tried: {_first_line(error)}"
        raise CircuitOpenError(msg) from error

    def settle(self, probe: bool, exc: BaseException | None) -> None:
        """Record how a call ended: None (it succeeded) or its error."""
        if exc is None or isinstance(exc, ConfigurationError) or kind_of(exc) in ANSWERED:
            # The server answered (a refusal, a wrong password are answers too).
            if self._open or probe:
                self._close()
        elif isinstance(exc, Exception) and says_unavailable(exc):
            self._trip(probe, exc)
        elif probe:  # cancelled, busy: nothing learnt; the next caller probes
            with self._lock:
                self._probing = False

    def _close(self) -> None:
        with self._lock:
            was_open, self._open, self._probing, self._delay = self._open, False, False, 0.0
        if was_open:
            logger.warning("langchain-sqlcache: %s answers again, in use again", self.name)

    def _trip(self, probe: bool, exc: BaseException) -> None:
        with self._lock:
            opened = not self._open
            if opened:
                self._open, self._delay = True, self._first_delay
            elif probe:
                self._delay = min(self._delay * 2, self._max_delay)
            else:
                return  # a call started before it opened: the backoff stands
            self._probing = False
            self.last_error = exc
            self._retry_at = self._clock() + self._delay * self._jitter()
        if opened:
            logger.warning(
                "langchain-sqlcache: %s is unavailable (%s: %s); lookups are misses and "
                "writes no-ops until a probe, every %.2f s at most, finds it back",
                self.name,
                type(exc).__name__,
                _first_line(exc),
                self._max_delay,
            )


class FailureLog:
    """Counts operations that failed over, by kind, and logs them at most once per interval."""

    def __init__(self, interval_seconds: float = LOG_INTERVAL_SECONDS) -> None:
        self._lock = threading.Lock()
        self._interval = interval_seconds
        self._last_report: float | None = None
        self._unreported = 0
        self.count = 0
        self.by_kind: dict[str, int] = {}

    def record(self, operation: str, kind: str, exc: BaseException) -> None:
        """Count a failure; log it unless one was logged less than an interval ago."""
        with self._lock:
            self.count += 1
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            now = time.monotonic()
            if self._last_report is not None and now - self._last_report < self._interval:
                self._unreported += 1
                return
            unreported, self._unreported, self._last_report = self._unreported, 0, now
        logger.warning(
            "langchain-sqlcache: %s failed over (%s; %s: %s); %d more failures since the "
            "last report, %d in all",
            operation,
            kind,
            type(exc).__name__,
            _first_line(exc),
            unreported,
            self.count,
        )


class Failsafe:
    """Applies ``on_error`` to the failures of a cache's operations (see the module)."""

    def __init__(self, on_error: OnError, failures: FailureLog) -> None:
        self.on_error = on_error
        self.failures = failures

    def run(
        self, operation: str, fallback: T, work: Callable[[], T], on_error: OnError | None = None
    ) -> T:
        """Run ``work``; on failure, return ``fallback`` or raise, by the policy."""
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - sorted by failed()
            return self.failed(operation, exc, fallback, on_error)

    async def arun(
        self,
        operation: str,
        fallback: T,
        work: Callable[[], Awaitable[T]],
        on_error: OnError | None = None,
    ) -> T:
        """Async :meth:`run`."""
        try:
            return await work()
        except Exception as exc:  # noqa: BLE001 - sorted by failed()
            return self.failed(operation, exc, fallback, on_error)

    def failed(
        self, operation: str, exc: Exception, fallback: T, on_error: OnError | None = None
    ) -> T:
        """Return ``fallback`` for ``exc`` (warn, counted and logged) or raise (raise).

        ``on_error`` overrides the cache's policy: stats are a health check and always
        raise; hit counts never fail the lookup that flushes them.
        """
        kind = kind_of(exc)
        if kind is None:
            raise exc
        if (on_error or self.on_error) == "warn":
            self.failures.record(operation, kind, exc)
            return fallback
        if isinstance(exc, SQLCacheError):
            raise exc
        raise _raised_for(operation, kind, exc) from exc


def _raised_for(operation: str, kind: Kind, exc: Exception) -> SQLCacheError:
    detail = _first_line(getattr(exc, "orig", None) or exc)
    if kind == "read_only":
        return ReadOnlyDatabaseError(
            f"{operation} failed, the database is read-only (a standby or a read-only "
            f"server; writes go to the primary, read-only servers belong in replicas=[...]): "
            f"{detail}"
        )
    if kind == "refused":
        return DatabaseRefusedError(f"{operation} failed, the database refused it: {detail}")
    if kind == "error":
        return SQLCacheError(f"{operation} failed ({type(exc).__name__}): {detail}")
    return CacheUnavailableError(f"{operation} failed, the database is unavailable: {detail}")


def _first_line(exc: BaseException | None) -> str:
    lines = str(exc).strip().splitlines() if exc is not None else []
    return lines[0] if lines else repr(exc)
