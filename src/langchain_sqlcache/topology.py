"""Where each operation goes: a database's primary or its replicas, and which shard.

A cache has one or more **shards** (``SQLCache(shards=[...])``; one, the URL or engines
given, otherwise). Each key lives on exactly one shard, chosen by rendezvous hashing of its
key hash over the shards' names, so adding a shard to N moves about 1/(N+1) of the keys and
no key moves between shards that stay. Each shard is a :class:`Database`: a primary
:class:`~langchain_sqlcache.store.Store`, where everything that writes goes, and replica
stores (``replicas=[...]``) that lookups are spread across. A replica that fails, or is being
skipped by its circuit breaker, is passed over for the next and finally the primary; a key
this process wrote moments ago is looked up on the primary (read your writes), since a
replica may not have replayed the write yet.

Operations on the entries of one key (lookup, update, delete) reach one shard in one round
trip; those on many (clear, prune, stats, export, count) run on every shard's primary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from langchain_sqlcache.backends import backend_for
from langchain_sqlcache.engines import EnginePair, resolve_url
from langchain_sqlcache.errors import ConfigurationError
from langchain_sqlcache.failsafe import FailureLog, kind_of
from langchain_sqlcache.settings import Settings
from langchain_sqlcache.store import Store
from langchain_sqlcache.timeouts import Timeouts

P = ParamSpec("P")
T = TypeVar("T")

Server = str | URL | Engine | AsyncEngine
"""A database given by URL (sync and async engines are built) or by an application's engine."""

# How many recently written keys a database remembers, to look them up on its primary.
RECENT_WRITES_KEPT = 10_000

# How long a replica that failed for its configuration is left out of lookups before it is
# tried again: its schema is not the cache's (a migration it has not replayed yet), or it
# refused the login or has no such database. Such a failure costs a round trip or a login,
# and the breaker does not skip it (the server answered): without this every lookup would
# pay it before going to the primary.
REPLICA_RECHECK_SECONDS = 10.0


@dataclass(frozen=True)
class Shard:
    """One database of a sharded cache: its primary and its read replicas.

    Args:
        url: The primary's URL (sync and async engines are built from it).
        engine: An application's sync engine for the primary, instead of or beside ``url``.
        async_engine: An application's async engine for the primary.
        replicas: Read replicas of this shard, each a URL or an engine.
        name: What the shard is hashed by (default: ``family://host:port/database`` of its
            URL, without user, password or driver). Keys stay on their shard as long as its
            name stays: name shards when their servers may move to another host or port, or
            when processes reach them by different host names.

    """

    url: str | URL | None = None
    engine: Engine | None = None
    async_engine: AsyncEngine | None = None
    replicas: Sequence[Server] = ()
    name: str | None = None

    @classmethod
    def of(cls, server: Server | Shard) -> Shard:
        """A shard given as a URL or engine, or as a Shard."""
        if isinstance(server, Shard):
            return server
        if isinstance(server, Engine):
            return cls(engine=server)
        if isinstance(server, AsyncEngine):
            return cls(async_engine=server)
        return cls(url=server)

    def default_name(self) -> str:
        """The database the shard's URL reaches: its family, host, port and database name.

        Not its user, password, driver or query, so that every client of the shard (the
        application, a migrator, the CLI) places keys alike.
        """
        engine = self.engine or self.async_engine
        url = resolve_url(self.url) if engine is None else engine.url
        return backend_for(url).database_identity(url)


class Database:
    """One database: a primary where every write goes, replicas that lookups are spread across.

    Args:
        name: What the rendezvous hash of the shards weighs (see Topology).
        primary: The store of the primary.
        replicas: The stores of its read replicas (built with ``create_tables=False``).
        read_your_writes: Seconds after this process writes a key during which its lookups
            of that key go to the primary (0: never).

    """

    def __init__(
        self, name: str, primary: Store, replicas: Sequence[Store], read_your_writes: float
    ) -> None:
        self.name = name
        self.primary = primary
        self.replicas = tuple(replicas)
        self.read_your_writes = read_your_writes
        self.replica_failures = FailureLog()
        """Lookups a replica failed, answered by the next replica or the primary instead."""
        self._turns = itertools.count()
        self._misconfigured: dict[int, float] = {}
        """Replicas (by id) that failed for their configuration, and until when they are out."""
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._recent_lock = threading.Lock()
        # A rendezvous-hash seed: blake2b's key is at most 64 bytes.
        self.seed = hashlib.sha256(name.encode()).digest()

    @property
    def stores(self) -> tuple[Store, ...]:
        """The primary's store, then the replicas'."""
        return (self.primary, *self.replicas)

    # -- lookups -----------------------------------------------------------------------------

    def lookup(
        self,
        key_hash: str,
        work: Callable[Concatenate[EnginePair[Engine], P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run a lookup's ``work`` on a replica, or on the primary when none answers."""
        for replica in self._replicas_for(key_hash, sync=True):
            try:
                return replica.run(work, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the next replica or the primary answers
                self._replica_failed(replica, exc)
        return self.primary.run(work, *args, **kwargs)

    async def alookup(
        self,
        key_hash: str,
        work: Callable[Concatenate[EnginePair[Engine], P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Async :meth:`lookup`."""
        for replica in self._replicas_for(key_hash, sync=False):
            try:
                return await replica.arun(work, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the next replica or the primary answers
                self._replica_failed(replica, exc)
        return await self.primary.arun(work, *args, **kwargs)

    def _replicas_for(self, key_hash: str, *, sync: bool) -> Sequence[Store]:
        """The replicas to try in turn: none for a key this process wrote moments ago."""
        if not self.replicas or self.wrote_recently(key_hash):
            return ()
        now = time.monotonic()
        usable = [
            replica
            for replica in self.replicas
            if (replica.engines if sync else replica.async_engines) is not None
            and self._misconfigured.get(id(replica), 0.0) <= now
        ]
        if len(usable) < 2:
            return usable
        first = next(self._turns) % len(usable)
        return usable[first:] + usable[:first]

    def _replica_failed(self, replica: Store, exc: Exception) -> None:
        self.replica_failures.record("lookup on a replica", kind_of(exc) or "error", exc)
        if isinstance(exc, ConfigurationError):
            self._misconfigured[id(replica)] = time.monotonic() + REPLICA_RECHECK_SECONDS

    # -- read your writes ----------------------------------------------------------------------

    def wrote(self, key_hash: str) -> None:
        """Note a write of ``key_hash``, so that its lookups go to the primary for a while."""
        if not self.replicas or self.read_your_writes <= 0:
            return
        until = time.monotonic() + self.read_your_writes
        with self._recent_lock:
            self._recent[key_hash] = until
            self._recent.move_to_end(key_hash)
            while len(self._recent) > RECENT_WRITES_KEPT:
                self._recent.popitem(last=False)

    def wrote_recently(self, key_hash: str) -> bool:
        """Whether this process wrote ``key_hash`` less than ``read_your_writes`` ago."""
        until = self._recent.get(key_hash)
        return until is not None and until > time.monotonic()


class Topology:
    """The shards of a cache, and the one each key lives on (rendezvous hashing)."""

    def __init__(self, databases: Sequence[Database]) -> None:
        names = [database.name for database in databases]
        if len(set(names)) < len(names):
            twice = sorted({name for name in names if names.count(name) > 1})
            msg = f"shards must be different databases (or have different names): {twice}"
            raise ConfigurationError(msg)
        self.databases = tuple(databases)

    def for_key(self, key_hash: str) -> Database:
        """The shard that holds ``key_hash``: the highest score of the key under each name.

        Rendezvous (highest random weight) hashing: a key's shard depends only on the names,
        not on their order, and a new shard takes from each of the others the keys it now
        scores highest on, about 1/N of them in all.
        """
        databases = self.databases
        if len(databases) == 1:
            return databases[0]
        key = key_hash.encode()
        return max(databases, key=lambda database: _score(database.seed, key))

    def by_database(self, keys: Sequence[str]) -> Iterator[tuple[Database, list[int]]]:
        """The positions of ``keys`` grouped by the shard each lives on."""
        groups: dict[int, list[int]] = {}
        for position, key in enumerate(keys):
            groups.setdefault(id(self.for_key(key)), []).append(position)
        for database in self.databases:
            if id(database) in groups:
                yield database, groups[id(database)]

    @property
    def primaries(self) -> tuple[Store, ...]:
        """Every shard's primary store, in the order the shards were given."""
        return tuple(database.primary for database in self.databases)

    @property
    def stores(self) -> tuple[Store, ...]:
        """Every store: each shard's primary and replicas."""
        return tuple(store for database in self.databases for store in database.stores)


def _score(seed: bytes, key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, key=seed).digest(), "big")


def build_topology(
    settings: Settings,
    failures: FailureLog,
    *,
    url: str | URL | None,
    engine: Engine | None,
    async_engine: AsyncEngine | None,
    replicas: Sequence[Server],
    shards: Sequence[Server | Shard],
    read_your_writes: float,
    transaction_pooler: bool,
    timeouts: Timeouts,
    engine_kwargs: dict[str, Any],
) -> Topology:
    """The stores of a cache's shards and replicas (see SQLCache for the arguments)."""
    if read_your_writes < 0:
        msg = f"read_your_writes must be 0 or more seconds, not {read_your_writes!r}"
        raise ConfigurationError(msg)
    if shards and (url is not None or engine is not None or async_engine is not None or replicas):
        msg = (
            "shards=[...] names every database: give no url, engine, async_engine or "
            "replicas beside it (a shard's replicas: Shard(url, replicas=[...]))"
        )
        raise ConfigurationError(msg)
    given = [Shard.of(shard) for shard in shards] or [
        Shard(url=url, engine=engine, async_engine=async_engine, replicas=replicas)
    ]
    # Replicas are never migrated: their schema comes from the primary's, by replication.
    replica_settings = dataclasses.replace(settings, create_tables=False)

    def store(settings: Settings, url: str | URL | None, **engines: Any) -> Store:
        return Store(
            settings,
            failures,
            url=url,
            engine=engines.get("engine"),
            async_engine=engines.get("async_engine"),
            transaction_pooler=transaction_pooler,
            timeouts=timeouts,
            engine_kwargs=dict(engine_kwargs),
        )

    databases = []
    for shard in given:
        if shard.url is None and shard.engine is None and shard.async_engine is None and shards:
            msg = "a Shard needs a url, an engine or an async_engine"
            raise ConfigurationError(msg)
        primary = store(settings, shard.url, engine=shard.engine, async_engine=shard.async_engine)
        replica_stores = [store(replica_settings, **_server(replica)) for replica in shard.replicas]
        name = shard.name or (shard.default_name() if shards else "primary")
        databases.append(Database(name, primary, replica_stores, read_your_writes))
    return Topology(databases)


def _server(server: Server) -> dict[str, Any]:
    """The Store arguments of a server given as a URL or an engine."""
    if isinstance(server, Engine):
        return {"url": None, "engine": server}
    if isinstance(server, AsyncEngine):
        return {"url": None, "async_engine": server}
    if isinstance(server, (str, URL)):
        return {"url": server}
    msg = f"a replica is a URL or an engine, not {type(server).__name__}"
    raise ConfigurationError(msg)
