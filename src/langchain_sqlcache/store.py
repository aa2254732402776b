"""The store under SQLCache: its engines, and how every operation reaches them.

A :class:`Store` owns the sync engine pair, the async pairs (one per event loop), the
one-time schema check of each family, the retries, the circuit breakers and the shielding of
async work from its caller's cancellation. It is the interface that the LangChain facade
(``cache.py``), ``transfer``, the CLI, the demo and the benchmarks use: ``ready()`` /
``aready()`` for engines that are checked and ready, ``read`` / ``write`` / ``run`` (and their
async twins) to run an operation under retries and the breaker. The failure policy (what a
failure costs the caller) is the facade's, applied once per call (``failsafe.Failsafe``).
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from langchain_sqlcache.engines import (
    EnginePair,
    async_deadline,
    build_pair,
    driver_urls,
    given_pair,
    resolve_url,
)
from langchain_sqlcache.errors import (
    ConfigurationError,
    MissingEngineError,
    SchemaError,
    configuration_error,
    is_transient,
)
from langchain_sqlcache.failsafe import CircuitBreaker, FailureLog, kind_of, opened, retryable
from langchain_sqlcache.migrations import ensure_schema
from langchain_sqlcache.settings import Settings
from langchain_sqlcache.sqlalchemy_internals import greenlet_spawn
from langchain_sqlcache.timeouts import Timeouts

P = ParamSpec("P")
T = TypeVar("T")

# An operation that meets a transient failure is retried whole, a few times.
ATTEMPTS = 4
RETRY_BASE_DELAY_SECONDS = 0.01


class Store:
    """A cache's engines, retries, breakers and cancellation shielding.

    Args:
        settings: The cache's checked options (the schema and ``create_tables`` are used).
        failures: Where failures nobody is left to raise to are counted (cancelled work).
        url: The database URL to build engines from (None: only the given engines).
        engine: An application's sync engine (never disposed of here).
        async_engine: An application's async engine (never disposed of here).
        transaction_pooler: The URL points at PgBouncer in transaction mode.
        timeouts: The connect and statement timeouts of the engines built from ``url``.
        engine_kwargs: Passed to ``create_engine`` and ``create_async_engine``.

    """

    def __init__(
        self,
        settings: Settings,
        failures: FailureLog,
        *,
        url: str | URL | None,
        engine: Engine | None,
        async_engine: AsyncEngine | None,
        transaction_pooler: bool,
        timeouts: Timeouts,
        engine_kwargs: dict[str, Any],
    ) -> None:
        if url is None and engine is None and async_engine is None:
            url = resolve_url(None)
        if url is None and (engine_kwargs or transaction_pooler):
            options = sorted(engine_kwargs) + (["transaction_pooler"] if transaction_pooler else [])
            msg = f"engine options {options} need a url to build engines from"
            raise ConfigurationError(msg)
        self.settings = settings
        self.failures = failures
        schema = settings.schema
        self.background: set[asyncio.Future[Any]] = set()
        """Operations whose caller was cancelled, finishing on their own (see arun)."""
        self.engines: EnginePair[Engine] | None = None
        """The sync engines (not checked yet: see ready())."""
        self.async_engines: EnginePair[AsyncEngine] | None = None
        """The async engines given, or the first pair built (see aready())."""
        parsed = resolve_url(url) if url is not None else None
        if engine is not None:
            self.engines = given_pair(engine, schema)
        elif parsed is not None:
            self.engines = build_pair(
                create_engine,
                parsed,
                engine_kwargs,
                schema,
                transaction_pooler=transaction_pooler,
                timeouts=timeouts,
            )
        # Async drivers bind a connection to the event loop that opened it, so the async
        # pools this store builds are per loop (see _loop_engines); the first is built here
        # so that a missing driver fails now.
        self._build_async_pair: Callable[[], EnginePair[AsyncEngine]] | None = None
        if async_engine is not None:
            self.async_engines = given_pair(async_engine, schema)
        elif parsed is not None:
            self._build_async_pair = functools.partial(
                build_pair,
                create_async_engine,
                parsed,
                dict(engine_kwargs),
                schema,
                transaction_pooler=transaction_pooler,
                timeouts=timeouts,
            )
            self.async_engines = self._build_async_pair()
        self.async_deadline = (
            async_deadline(driver_urls(parsed)[1], timeouts)
            if parsed is not None and async_engine is None
            else None
        )
        """The bound one async attempt gets where the driver has none (aiomysql)."""
        # One breaker per database server: a store built from one URL has one for both
        # families; engines of different servers (given ones) fail apart.
        self.breaker, self.async_breaker = _breakers(self.engines, self.async_engines)
        self._ready_lock = threading.Lock()
        self._engines_ready = False
        self._async_engines_ready = False
        self._async_engines_claimed = False
        self._loop_pairs: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[EnginePair[AsyncEngine], AsyncGenerator[None, None]]
        ] = weakref.WeakKeyDictionary()

    # -- engines, checked once per family ----------------------------------------------------

    def ready(self) -> EnginePair[Engine]:
        """The sync engines, the schema checked (and created) on first use.

        Raises:
            MissingEngineError: The store has no sync engine.
            ConfigurationError: The database refused the login or has no such database.
            SchemaError: The tables are missing, at another revision, or cannot be created.

        """
        if self.engines is None:
            raise MissingEngineError(_missing_engine_message("sync", "engine", "create_engine"))
        if not self._engines_ready:
            with self._ready_lock:
                if not self._engines_ready:
                    try:
                        _check_schema(self.engines, self.settings)
                    except Exception as exc:
                        _raise_if_refused(exc, self.engines.writer.url)
                        raise
                    self._engines_ready = True
        return self.engines

    async def aready(self) -> EnginePair[AsyncEngine]:
        """Async :meth:`ready`: the running loop's async engines, checked once."""
        if self.async_engines is None:
            raise MissingEngineError(
                _missing_engine_message("async", "async_engine", "create_async_engine")
            )
        engines = self.async_engines
        if self._build_async_pair is not None:
            engines = await self._loop_engines(self._build_async_pair)
        if not self._async_engines_ready:
            # Tasks that race here each run the check (the migration itself serializes on a
            # database lock); no lock is held across an await, so the store stays usable
            # from successive event loops.
            try:
                await greenlet_spawn(
                    _check_schema, engines.sync, self.settings, _require_await=False
                )
            except Exception as exc:
                _raise_if_refused(exc, engines.writer.url)
                raise
            self._async_engines_ready = True
        return engines

    async def _loop_engines(
        self, build: Callable[[], EnginePair[AsyncEngine]]
    ) -> EnginePair[AsyncEngine]:
        """The pools this store built for the running event loop.

        Each loop gets its own (the first takes those built by __init__), so the same cache
        serves successive asyncio.run() calls and loops running side by side in threads.
        """
        loop = asyncio.get_running_loop()
        if loop not in self._loop_pairs:
            assert self.async_engines is not None  # noqa: S101 - set with the builder
            pair = build() if self._async_engines_claimed else self.async_engines
            self._async_engines_claimed = True
            closer = _close_on_loop_shutdown(pair.owned)
            await anext(closer)
            self._loop_pairs[loop] = (pair, closer)
        return self._loop_pairs[loop][0]

    # -- running operations ------------------------------------------------------------------

    def read(
        self, operation: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``operation(connection, ...)`` on a lookup connection (autocommit)."""
        return self.run(_on_reader, lambda connection: operation(connection, *args, **kwargs))

    def write(
        self, operation: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``operation(connection, ...)`` in a transaction on the writer."""
        return self.run(_in_transaction, lambda connection: operation(connection, *args, **kwargs))

    async def aread(
        self, operation: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Async :meth:`read`."""
        return await self.arun(
            _on_reader, lambda connection: operation(connection, *args, **kwargs)
        )

    async def awrite(
        self, operation: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Async :meth:`write`."""
        return await self.arun(
            _in_transaction, lambda connection: operation(connection, *args, **kwargs)
        )

    def run(
        self,
        work: Callable[Concatenate[EnginePair[Engine], P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``work(engines, ...)`` on the sync engines, unless their server is being skipped.

        Failures that another attempt may get through at once (a lost pooled connection, a
        deadlock, a failover) are retried with jittered backoff; the circuit breaker learns
        how the operation ended (see _Attempts).
        """
        attempts = _Attempts(self.breaker)
        while True:
            try:
                result = work(self.ready(), *args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - failed() re-raises what is not retried
                time.sleep(attempts.failed(exc))
            else:
                attempts.succeeded()
                return result

    async def arun(
        self,
        work: Callable[Concatenate[EnginePair[Engine], P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Async :meth:`run`: the same code, on the async engine's pool and driver.

        The database work is shielded from the caller's cancellation: a cancelled caller
        gets its CancelledError at once, while the operation finishes on its own, so its
        transaction ends (a value is written whole or not at all) and its connection goes
        back to the pool instead of being abandoned mid-statement.
        """
        task = asyncio.ensure_future(self.arun_unshielded(work, *args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._finish_in_background(task)
            raise

    async def arun_unshielded(
        self,
        work: Callable[Concatenate[EnginePair[Engine], P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """:meth:`arun` without the shield: the retries and the breaker around one attempt."""
        attempts = _Attempts(self.async_breaker)
        while True:
            try:
                engines = await self.aready()
                # One hand-off to SQLAlchemy's greenlet for the checkout, the statements and
                # the return to the pool, where the async engine's sync facade drives the
                # async driver.
                result = await self._within(
                    self.async_deadline,
                    greenlet_spawn(work, engines.sync, *args, _require_await=False, **kwargs),
                )
            except BaseException as exc:  # noqa: BLE001 - failed() re-raises what is not retried
                await asyncio.sleep(attempts.failed(exc))
            else:
                attempts.succeeded()
                return result

    async def _within(self, deadline: float | None, operation: Awaitable[T]) -> T:
        """Await ``operation``, giving up after ``deadline`` seconds (None: no bound).

        The bound of an attempt on drivers that have no read timeout of their own
        (aiomysql, async psycopg; see engines.async_deadline): against a server that stops
        answering mid-statement nothing else returns. At the deadline the caller gets a
        TimeoutError at once (a failure of kind "timeout", not retried), while the
        operation is cancelled in the background, where the pool throws its connection
        away (fastpath.run_direct, SQLAlchemy's Connection): waiting for that could
        cost a driver's cancel request to the same hung server.
        """
        if deadline is None:
            return await operation
        task = asyncio.ensure_future(operation)
        try:
            done, _ = await asyncio.wait({task}, timeout=deadline)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task in done:
            return task.result()
        task.cancel()
        self._finish_in_background(task)
        msg = f"no answer from the database within {deadline:g} s"
        raise TimeoutError(msg)

    def _finish_in_background(self, task: asyncio.Future[Any]) -> None:
        self.background.add(task)
        task.add_done_callback(self._finished_in_background)

    def _finished_in_background(self, task: asyncio.Future[Any]) -> None:
        self.background.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:  # nobody is left to raise it to: counted and logged
            self.failures.record("cancelled operation", kind_of(exc) or "error", exc)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Dispose of the sync engines this store built."""
        for engine in self.engines.owned if self.engines else ():
            engine.dispose()

    async def adrain(self) -> None:
        """Wait for the work of this loop's cancelled callers to finish."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(work for work in self.background if work.get_loop() is loop),
            return_exceptions=True,
        )

    async def aclose(self) -> None:
        """Close this loop's pools; those of other loops close as their loops shut down."""
        loop = asyncio.get_running_loop()
        if loop in self._loop_pairs:
            _, closer = self._loop_pairs.pop(loop)
            await closer.aclose()


async def _close_on_loop_shutdown(engines: Sequence[AsyncEngine]) -> AsyncGenerator[None, None]:
    """Close the pools on their own loop when it shuts down.

    asyncio.run() (and pytest-asyncio) finalize the async generators still alive on a loop
    before closing it, and this one's ``finally`` runs there: the pooled connections are
    closed by the loop that opened them instead of by the garbage collector, after the loop
    is gone (which drivers such as aiomysql report as errors).
    """
    try:
        yield
    finally:
        for engine in engines:
            await engine.dispose()


# -- work on a family's engines: the sync methods run it directly, the async ones in
# SQLAlchemy's greenlet, on the sync facade of the async engines --------------------------


def _in_transaction(engines: EnginePair[Engine], operation: Callable[[Connection], T]) -> T:
    with opened(engines.writer) as connection, connection.begin():
        return operation(connection)


def _on_reader(engines: EnginePair[Engine], operation: Callable[[Connection], T]) -> T:
    with opened(engines.reader) as connection:
        return operation(connection)


def _check_schema(engines: EnginePair[Engine], settings: Settings) -> None:
    """The first use's check (and creation) of the tables.

    A database error here that no retry fixes (a role without the right to create the
    tables, say) is the configuration's, raised as SchemaError under either policy.
    """
    with opened(engines.writer) as connection:
        try:
            ensure_schema(connection, settings.schema, create=settings.create_tables)
        except DBAPIError as exc:
            if is_transient(exc):
                raise
            detail = str(exc.orig).strip().splitlines()
            msg = f"the cache's tables cannot be checked or created: {detail[0] if detail else exc}"
            raise SchemaError(msg) from exc


class _Attempts:
    """The attempts of one operation: the retry policy, written once for sync and async.

    The breaker admits the operation (or raises CircuitOpenError at once) and learns how it
    ended. Failures that another attempt may get through at once (a lost pooled connection,
    a deadlock, a failover) are retried, ATTEMPTS in all, after a jittered backoff.
    """

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.probe = breaker.admit()
        self.attempt = 0

    def failed(self, exc: BaseException) -> float:
        """The pause before the next attempt; re-raises ``exc`` when there is none.

        Called from the caller's ``except`` block, whose exception a bare raise re-raises.
        """
        self.attempt += 1
        if self.attempt < ATTEMPTS and isinstance(exc, Exception) and retryable(exc, self.attempt):
            return _backoff(self.attempt)
        self.breaker.settle(self.probe, exc)
        raise  # the caller's exception, being handled

    def succeeded(self) -> None:
        """Tell the breaker the operation went through."""
        self.breaker.settle(self.probe, None)


def _breakers(
    engines: EnginePair[Engine] | None, async_engines: EnginePair[AsyncEngine] | None
) -> tuple[CircuitBreaker, CircuitBreaker]:
    """A breaker for each family's server, the same one when both talk to the same server."""
    urls = [pair.writer.url if pair is not None else None for pair in (engines, async_engines)]
    servers = [
        (url.get_backend_name(), url.host, url.port, url.database) if url else None for url in urls
    ]
    names = [
        url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)
        if url
        else "database"
        for url in urls
    ]
    breaker = CircuitBreaker(names[0])
    return breaker, breaker if servers[0] == servers[1] else CircuitBreaker(names[1])


def _raise_if_refused(exc: Exception, url: URL) -> None:
    """Raise a ConfigurationError, the driver's error chained, for a login or database refused.

    Found at the first use of each family's engines, the first time they connect: the same
    one-line error on all six drivers, under both failure policies.
    """
    error = configuration_error(exc, url)
    if error is not None:
        raise error from exc


def _backoff(attempt: int) -> float:
    """Jittered exponential backoff, so that retrying writers do not collide again."""
    return random.uniform(0, RETRY_BASE_DELAY_SECONDS * 2**attempt)  # noqa: S311


def _missing_engine_message(family: str, argument: str, factory: str) -> str:
    return (
        f"this SQLCache has no {family} engine: pass {argument}={factory}(...) "
        f"or a url= to build one from"
    )
