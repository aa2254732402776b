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
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

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

# jsonb on Postgres so analysts can index and query it; JSON (LONGTEXT + JSON_VALID on
# MariaDB) on MySQL; JSON text on SQLite.
JSON_DOCUMENT: TypeEngine[Any] = JSON().with_variant(postgresql.JSONB(), "postgresql")

HASH_HEX_LENGTH = 64
NAMESPACE_MAX_LENGTH = 255
MODEL_MAX_LENGTH = 255
OUTPUTS_VIEW = "llm_cache_outputs"

# MySQL compares strings case- and trailing-space-insensitively by default, which would let
# namespace "Tenant" clear the entries of "tenant ": namespaces compare byte for byte.
NAMESPACE_TYPE: TypeEngine[str] = String(NAMESPACE_MAX_LENGTH).with_variant(
    mysql.VARCHAR(NAMESPACE_MAX_LENGTH, collation="utf8mb4_bin"), "mysql", "mariadb"
)
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
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store UTC: aware on Postgres, naive (implicitly UTC) elsewhere."""
        if value is None:
            return None
        if value.tzinfo is None:
            msg = "naive datetime: pass an aware datetime (e.g. datetime.now(timezone.utc))"
            raise ValueError(msg)
        utc = value.astimezone(timezone.utc)
        return utc if dialect.name == "postgresql" else utc.replace(tzinfo=None)

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
    llm_string: Mapped[str] = mapped_column(LONG_TEXT)
    llm_model: Mapped[str | None] = mapped_column(
        String(MODEL_MAX_LENGTH), comment="model name found in llm_string, for GROUP BY"
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
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)


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
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
    Column("generation_info", JSON_DOCUMENT),
    Column("message", JSON_DOCUMENT),
    Column("created_at", UTCDateTime()),
    Column("updated_at", UTCDateTime()),
    Column("expires_at", UTCDateTime()),
    Column("hit_count", BigInteger),
    Column("last_hit_at", UTCDateTime()),
)
