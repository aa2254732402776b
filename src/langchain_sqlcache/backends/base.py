"""The interface every backend implements, with the behaviour most of them share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from sqlalchemy import Connection, DateTime, Engine
from sqlalchemy.engine import URL

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, Insert
    from sqlalchemy.pool import PoolProxiedConnection
    from sqlalchemy.sql import ClauseElement
    from sqlalchemy.types import TypeEngine

    from langchain_sqlcache.timeouts import Timeouts

ReaderMode = Literal["autocommit", "switch", "transaction"]
"""How a statement sent straight to the reader's pooled connection runs.

``autocommit``: the reader's connections are in autocommit already (a pool of their own).
``switch``: the statement switches its connection to autocommit and back, on the client side
(psycopg, asyncpg and sqlite3 send nothing for it). ``transaction``: it runs in the
connection's own transaction (MySQL, where switching costs two round trips, and asyncpg
behind PgBouncer, where prepare and execute must share a transaction)."""


class Backend:
    """One database family (Postgres, MySQL and MariaDB, SQLite): what it does its own way.

    Subclasses set the class attributes and override what differs from these defaults.
    """

    name: ClassVar[str]
    """The family's SQLAlchemy backend name (``postgresql``, ``mysql``, ``sqlite``)."""
    pip_extra: ClassVar[str]
    """The package extra that installs its drivers."""
    sync_driver: ClassVar[str]
    async_driver: ClassVar[str]
    default_port: ClassVar[int | None] = None
    """The port a URL without one reaches (None: no server)."""

    def database_identity(self, url: URL) -> str:
        """The database a URL reaches, without what may differ between its clients.

        No user, password, driver or query: a shard keeps its keys whichever role or driver
        reaches it (the application's, a migrator's, the CLI's). A missing port is the
        family's default.
        """
        if url.host is None:
            return f"{self.name}:///{url.database or ''}"
        return f"{self.name}://{url.host}:{url.port or self.default_port}/{url.database or ''}"

    # -- engines ---------------------------------------------------------------------------

    connections_go_stale: ClassVar[bool] = True
    """A pooled connection can be closed under the pool (a server restart, a failover, an
    idle timeout), so one idle for a while is pinged before use."""
    behind_transaction_poolers: ClassVar[bool] = False
    """It can run behind a transaction-mode pooler (PgBouncer): ``transaction_pooler=``."""
    bounded_pool_wait: ClassVar[bool] = True
    """A caller waits for a pooled connection no longer than for a statement (not SQLite,
    whose writers wait out its busy timeout holding theirs: its pool keeps the default)."""
    reader_mode_on_given_engine: ClassVar[ReaderMode] = "switch"
    """How lookups run on an application's engine, where the cache has no pool of its own."""

    def driver_url(self, url: URL) -> URL:
        """The URL a driver of this family connects with (connection options it needs)."""
        return url

    def check_url(self, url: URL) -> None:
        """Refuse, with a ConfigurationError, a URL the cache cannot work with."""

    def engine_defaults(self, url: URL, *, transaction_pooler: bool) -> dict[str, Any]:
        """Engine keyword arguments that make the family safe under concurrent writers.

        ``url`` names the driver; ``transaction_pooler``: behind PgBouncer in transaction
        mode (only Postgres has one).
        """
        return {}

    def timeout_args(self, url: URL, timeouts: Timeouts, given: dict[str, Any]) -> dict[str, Any]:
        """The driver's connect arguments that bound connecting and each statement.

        ``given``: what the user passed already (the URL's query and ``connect_args``).
        """
        return {}

    def has_read_timeout(self, driver: str) -> bool:
        """Whether the async ``driver`` bounds waiting for an answer itself."""
        return True

    def session_setup(
        self, timeouts: Timeouts, given: dict[str, Any], *, transaction_pooler: bool
    ) -> str | None:
        """A statement every new connection runs once it is open (None: none)."""
        return None

    def configure(self, engine: Engine, timeouts: Timeouts | None, given: dict[str, Any]) -> None:
        """Install the family's pool and connection events on an engine the cache built.

        ``timeouts``: those of a cache's engines (None: a migration engine, which has none).
        """

    def lookups_in_autocommit(self, driver: str, transaction_pooler: bool) -> bool:
        """Whether lookups get a pool of their own whose connections stay in autocommit.

        Its own pool means no switching per lookup (two round trips on MySQL) and no
        ROLLBACK on return.
        """
        return True

    def reader_args(self, reader_kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The engine arguments of the lookups' own pool, and whether it takes multi-statements.

        With multi-statements, an update's statements travel in one packet (see
        ``writes_in_one_call``).
        """
        return reader_kwargs, False

    def turned_read_only(self, error: BaseException) -> bool:
        """Whether a write failed because its connection now reaches a read-only server.

        After a failover a pooled connection may point at a standby that refuses writes;
        kept, it would fail every write that draws it, so it is treated as gone.
        """
        return False

    def database_file(self, url: URL) -> str | None:
        """The file that holds the database, for an embedded one (None: a server's)."""
        return None

    # -- columns and statements ------------------------------------------------------------

    stores_time_zones: ClassVar[bool] = False
    """Timestamps keep their zone (timestamptz): an instant goes in aware, else naive UTC."""

    def instant_type(self) -> TypeEngine[Any]:
        """The column type of a UTC instant (see models.UTCDateTime)."""
        return DateTime(timezone=True)

    has_returning: ClassVar[bool] = True
    """INSERT ... RETURNING exists; without it the upsert yields the id as lastrowid."""
    generations_by_position: ClassVar[bool] = True
    """The whole-value write binds each generation's values by position (``text_0``, ...),
    so it is compiled per number of generations; otherwise they travel as one parameter."""
    statements_one_per_call: ClassVar[bool] = False
    """The driver takes one statement per call: a write of several is sent one by one."""

    def upsert_entry(self, *, returning: bool = True) -> Insert:
        """INSERT the entry row, or lock and rewrite the existing one (see statements)."""
        raise NotImplementedError

    def as_text(self, column: ColumnElement[Any]) -> ColumnElement[str]:
        """A JSON column read as the text the database keeps."""
        raise NotImplementedError

    def whole_value_write(self, generations: int) -> tuple[ClauseElement, ...]:
        """An update's statements, sent to the driver as one call (see store_value)."""
        raise NotImplementedError

    def whole_value_steps(self, generations: int) -> tuple[tuple[ClauseElement, ...], ...]:
        """:meth:`whole_value_write` as several calls, where one call is not atomic.

        Each call is a tuple of statements sent together; by default, all of them at once
        (see :meth:`one_call_is_atomic`).
        """
        return (self.whole_value_write(generations),)

    def one_call_is_atomic(self, connection: PoolProxiedConnection) -> bool:
        """Whether :meth:`whole_value_write` in one call is atomic on this connection's server.

        Atomic: whatever happens to its transaction mid-call, no statement of the call runs
        outside it. Where it is not, the write is sent as :meth:`whole_value_steps`.
        """
        return True

    def writes_in_one_call(self, generations: int, *, multi_statements: bool) -> bool:
        """Whether a value of ``generations`` goes through :meth:`whole_value_write`.

        ``multi_statements``: the cache's lookup pool takes several statements per packet.
        """
        return True

    packet_limited: ClassVar[bool] = False
    """The server caps the size of a packet, so a value is measured before it is sent."""
    packet_overhead: ClassVar[int] = 0
    """Bytes a statement adds around its values in a packet, with room to spare."""

    def check_value_size(
        self,
        connection: PoolProxiedConnection,
        entry_row: dict[str, Any],
        generation_rows: Sequence[dict[str, Any]],
        *,
        one_packet: bool,
    ) -> None:
        """Refuse, before sending, a value larger than the server takes in a packet."""

    def check_value_size_within(
        self,
        limit: int,
        entry_row: dict[str, Any],
        generation_rows: Sequence[dict[str, Any]],
        *,
        one_packet: bool,
    ) -> None:
        """:meth:`check_value_size` against a limit read beforehand (see packet_limit)."""

    def packet_limit(self, engine: Engine) -> int | None:
        """The largest packet the server takes, where it caps them (None: no cap)."""
        return None

    # -- migrations ------------------------------------------------------------------------

    def acquire_migration_lock(self, connection: Connection) -> None:
        """Serialize concurrent upgrades of one database (at the start of the transaction)."""

    def release_migration_lock(self, connection: Connection) -> None:
        """Release what the migration lock took that outlives a transaction."""
