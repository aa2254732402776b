"""Create the cache tables: llm_cache_entry and llm_cache_generation.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

from langchain_sqlcache.migrations import migration_schema

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The types as they were at this revision (a revision never imports the models, which move on).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
LONG_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
KEY_HASH = sa.String(64).with_variant(
    mysql.VARCHAR(64, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
)
NAMESPACE = sa.String(255).with_variant(
    mysql.VARCHAR(255, collation="utf8mb4_bin"), "mysql", "mariadb"
)
TABLE_OPTIONS = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}


def upgrade() -> None:
    """Create the entry and generation tables and the namespace index."""
    schema = migration_schema()
    op.create_table(
        "llm_cache_entry",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column(
            "key_hash",
            KEY_HASH,
            nullable=False,
            comment="hex SHA-256 of the length-prefixed namespace, prompt and llm_string",
        ),
        sa.Column("namespace", NAMESPACE, nullable=False),
        sa.Column("prompt", LONG_TEXT, nullable=False),
        sa.Column("llm_string", LONG_TEXT, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_llm_cache_entry")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_llm_cache_entry_key_hash")),
        schema=schema,
        **TABLE_OPTIONS,
    )
    op.create_index("ix_llm_cache_entry_namespace", "llm_cache_entry", ["namespace"], schema=schema)
    op.create_table(
        "llm_cache_generation",
        sa.Column("entry_id", ID, nullable=False),
        sa.Column("idx", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column(
            "generation_type",
            sa.String(32),
            nullable=False,
            comment="Generation, GenerationChunk, ChatGeneration or ChatGenerationChunk",
        ),
        sa.Column("text", LONG_TEXT, nullable=False),
        sa.Column("generation_info", JSON_DOCUMENT, nullable=True),
        sa.Column(
            "message",
            JSON_DOCUMENT,
            nullable=True,
            comment="the chat message's fields; content omitted when it equals text",
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            [f"{schema}.llm_cache_entry.id" if schema else "llm_cache_entry.id"],
            name=op.f("fk_llm_cache_generation_entry_id_llm_cache_entry"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("entry_id", "idx", name=op.f("pk_llm_cache_generation")),
        schema=schema,
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    """Drop everything upgrade() created."""
    schema = migration_schema()
    op.drop_table("llm_cache_generation", schema=schema)
    op.drop_index("ix_llm_cache_entry_namespace", table_name="llm_cache_entry", schema=schema)
    op.drop_table("llm_cache_entry", schema=schema)
