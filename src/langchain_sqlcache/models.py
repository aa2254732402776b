"""The cache's tables as SQLAlchemy 2.0 declarative models.

Two tables: ``llm_cache_entry`` holds one row per namespace + prompt + llm_string and is found
by a fixed-width SHA-256 key; ``llm_cache_generation`` holds one row per ``Generation`` of an
entry, ordered by ``idx``. Constraint names come from the naming convention so that the models
and the migrations agree on them.

The tables carry no schema: ``SQLCache(schema=...)`` maps them into a Postgres schema or MySQL
database with ``schema_translate_map``, so one set of models serves every deployment.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

from langchain_sqlcache.backends import backend_for

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias).
ID_TYPE: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")

# Prompts reach 1 MB and texts 16 MB: MySQL's TEXT stops at 64 KB, so LONGTEXT there.
LONG_TEXT: TypeEngine[str] = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

# json, not jsonb, on Postgres (revision 0005): jsonb reorders object keys and rewrites
# numbers (1e23, 1e16, -0.0), and a hit must serialize exactly as the value stored. JSON
# (LONGTEXT + JSON_VALID on MariaDB) on MySQL; JSON text on SQLite. Every backend keeps the
# document's text as written, and analysts still query it with JSON operators.
JSON_DOCUMENT: TypeEngine[Any] = JSON()

HASH_HEX_LENGTH = 64
NAMESPACE_MAX_LENGTH = 255
MODEL_MAX_LENGTH = 255
OUTPUTS_VIEW = "llm_cache_outputs"


def exact_collation(dialect: Dialect) -> str:
    """The utf8mb4 collation under which MySQL/MariaDB compare text byte for byte.

    Binary (so "GPT-4" != "gpt-4") and NO PAD (so "gpt-4 " != "gpt-4"; every ``_bin``
    collation before these pads with spaces). Without a server (offline SQL) the URL's
    scheme decides: ``mariadb://`` gets MariaDB's, ``mysql://`` MySQL 8's.
    """
    if getattr(dialect, "is_mariadb", False):
        return "utf8mb4_nopad_bin"  # MariaDB 10.2+
    version = dialect.server_version_info
    if version is not None and version < (8, 0, 17):
        return "utf8mb4_bin"  # MySQL 5.7 has no NO PAD binary collation: case-exact only
    return "utf8mb4_0900_bin"


class ExactText(TypeDecorator[str]):
    """MySQL/MariaDB text under :func:`exact_collation` (VARCHAR, or LONGTEXT without a length).

    The collation is the server's, so it is chosen when the dialect is known rather than
    fixed in the model; Postgres and SQLite already compare text byte for byte.
    """

    impl = mysql.VARCHAR
    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        """Declare the text's maximum length in characters (None: LONGTEXT)."""
        super().__init__(length)
        self.max_length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """The column type with this server's exact collation."""
        collation = exact_collation(dialect)
        if self.max_length is None:
            return dialect.type_descriptor(mysql.LONGTEXT(collation=collation))
        return dialect.type_descriptor(mysql.VARCHAR(self.max_length, collation=collation))


# MySQL compares strings case- and trailing-space-insensitively by default, which would let
# clear(llm_string="gpt-4") delete the entries of "GPT-4" and "gpt-4 ", and stats() merge
# models named alike: the columns that filters and GROUP BY compare are exact (0005).
NAMESPACE_TYPE: TypeEngine[str] = String(NAMESPACE_MAX_LENGTH).with_variant(
    ExactText(NAMESPACE_MAX_LENGTH), "mysql", "mariadb"
)
MODEL_TYPE: TypeEngine[str] = String(MODEL_MAX_LENGTH).with_variant(
    ExactText(MODEL_MAX_LENGTH), "mysql", "mariadb"
)
LLM_STRING_TYPE: TypeEngine[str] = Text().with_variant(ExactText(), "mysql", "mariadb")
# Lowercase hex: one byte a character in the unique index on MySQL rather than four.
KEY_HASH_TYPE: TypeEngine[str] = String(HASH_HEX_LENGTH).with_variant(
    mysql.VARCHAR(HASH_HEX_LENGTH, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
)


class UTCDateTime(TypeDecorator[datetime]):
    """A UTC instant: timestamptz on Postgres, DATETIME(6) holding UTC on MySQL and SQLite.

    Values go in as aware datetimes (any zone) and come back aware, in UTC, on every backend.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """Microseconds on MySQL too (its DATETIME keeps whole seconds by default)."""
        return dialect.type_descriptor(backend_for(dialect).instant_type())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store UTC: aware on Postgres, naive (implicitly UTC) elsewhere."""
        if value is None:
            return None
        if value.tzinfo is None:
            msg = "naive datetime: pass an aware datetime (e.g. datetime.now(timezone.utc))"
            raise ValueError(msg)
        utc = value.astimezone(timezone.utc)
        return utc if backend_for(dialect).stores_time_zones else utc.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime whatever the backend gave."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base whose MetaData names every constraint and index predictably."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CacheEntry(Base):
    """One cached value: the key of a prompt and llm_string within a namespace."""

    __tablename__ = "llm_cache_entry"
    __table_args__ = (
        # FIFO eviction and batched clears walk a namespace in id order; pruning finds the
        # expired; older_than filters by age.
        Index("ix_llm_cache_entry_namespace_id", "namespace", "id"),
        Index("ix_llm_cache_entry_namespace_expires_at", "namespace", "expires_at"),
        Index("ix_llm_cache_entry_namespace_updated_at", "namespace", "updated_at"),
        # Covers stats(), which sums a namespace's entries by model: the index alone is read,
        # not the table with its prompts (revision 0004).
        Index(
            "ix_llm_cache_entry_stats",
            "namespace",
            "llm_model",
            "expires_at",
            "generation_count",
            "size_bytes",
            "hit_count",
        ),
        {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"},
    )

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(
        KEY_HASH_TYPE,
        unique=True,
        comment="hex SHA-256 of the length-prefixed namespace, prompt and llm_string",
    )
    namespace: Mapped[str] = mapped_column(NAMESPACE_TYPE)
    prompt: Mapped[str] = mapped_column(LONG_TEXT)
    llm_string: Mapped[str] = mapped_column(LLM_STRING_TYPE)
    llm_model: Mapped[str | None] = mapped_column(
        MODEL_TYPE, comment="model name found in llm_string, for GROUP BY"
    )
    # Nullable only because SQLite cannot add a NOT NULL column with a clock default: the
    # cache always sets both, and revision 0002 gave earlier entries the upgrade's time.
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    generation_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    size_bytes: Mapped[int] = mapped_column(
        BigInteger,
        server_default=text("0"),
        comment="UTF-8 size of prompt, llm_string and the generations, for max_bytes",
    )
    hit_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    last_hit_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class CacheGeneration(Base):
    """One ``Generation`` of a cached value, at position ``idx``."""

    __tablename__ = "llm_cache_generation"
    __table_args__ = ({"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"},)

    entry_id: Mapped[int] = mapped_column(
        ID_TYPE,
        ForeignKey(CacheEntry.id, ondelete="CASCADE"),
        primary_key=True,
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation_type: Mapped[str] = mapped_column(
        String(32), comment="Generation, GenerationChunk, ChatGeneration or ChatGenerationChunk"
    )
    text: Mapped[str] = mapped_column(LONG_TEXT)
    generation_info: Mapped[dict[str, Any] | None] = mapped_column(JSON_DOCUMENT)
    message: Mapped[dict[str, Any] | None] = mapped_column(
        JSON_DOCUMENT, comment="the chat message's fields; content omitted when it equals text"
    )
    # BIGINT (revision 0005): a usage_metadata count of 2**31 or more is a real value.
    input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    output_tokens: Mapped[int | None] = mapped_column(BigInteger)


entry_table = cast(Table, CacheEntry.__table__)
generation_table = cast(Table, CacheGeneration.__table__)
metadata = Base.metadata


# The analysts' view (revision 0002; since 0003 it reads only each entry's value, its first
# generation_count generations). Described here (outside the models' metadata, so that neither
# create_all nor autogenerate treats it as a table) for queries in code.
outputs_view = Table(
    OUTPUTS_VIEW,
    MetaData(),
    Column("namespace", String),
    Column("model", String),
    Column("prompt", Text),
    Column("llm_string", Text),
    Column("entry_id", BigInteger),
    Column("idx", Integer),
    Column("generation_type", String),
    Column("text", Text),
    Column("input_tokens", BigInteger),
    Column("output_tokens", BigInteger),
    Column("generation_info", JSON_DOCUMENT),
    Column("message", JSON_DOCUMENT),
    Column("created_at", UTCDateTime()),
    Column("updated_at", UTCDateTime()),
    Column("expires_at", UTCDateTime()),
    Column("hit_count", BigInteger),
    Column("last_hit_at", UTCDateTime()),
)
