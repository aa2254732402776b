"""Lifecycle and analytics: timestamps, expiry, sizes, hits, model, tokens, the outputs view.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

Entries written before this revision keep their values; they get the upgrade's time as
created_at/updated_at, their sizes and generation counts, their model name and token counts
(taken from llm_string and the stored messages).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

from langchain_sqlcache.migrations import migration_schema

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
VIEW = "llm_cache_outputs"
BACKFILL_BATCH = 1000

# The model-name patterns as they were at this revision (the package's may move on).
MODEL_PATTERNS = [
    re.compile(r"""['"](?:model_name|model|model_id)['"]\s*[:,]\s*['"]([^'"]{1,255})['"]"""),
]


def tables(schema: str | None) -> tuple[sa.Table, sa.Table]:
    metadata = sa.MetaData(schema=schema)
    entry = sa.Table(
        "llm_cache_entry",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("namespace", sa.String(255)),
        sa.Column("prompt", sa.Text),
        sa.Column("llm_string", sa.Text),
        sa.Column("llm_model", sa.String(255)),
        sa.Column("created_at", UTC_DATETIME),
        sa.Column("updated_at", UTC_DATETIME),
        sa.Column("expires_at", UTC_DATETIME),
        sa.Column("generation_count", sa.Integer),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("hit_count", sa.BigInteger),
        sa.Column("last_hit_at", UTC_DATETIME),
    )
    json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    generation = sa.Table(
        "llm_cache_generation",
        metadata,
        sa.Column("entry_id", sa.BigInteger, primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("generation_type", sa.String(32)),
        sa.Column("text", sa.Text),
        sa.Column("generation_info", json),
        sa.Column("message", json),
        sa.Column("input_tokens", sa.Integer),
        sa.Column("output_tokens", sa.Integer),
    )
    return entry, generation


def upgrade() -> None:
    """Add the lifecycle and analytics columns, their indexes and the outputs view."""
    schema = migration_schema()
    with_zero = {"nullable": False, "server_default": sa.text("0")}
    for column in (
        sa.Column("llm_model", sa.String(255), nullable=True, comment=(
            "model name found in llm_string, for GROUP BY")),
        sa.Column("created_at", UTC_DATETIME, nullable=True),
        sa.Column("updated_at", UTC_DATETIME, nullable=True),
        sa.Column("expires_at", UTC_DATETIME, nullable=True),
        sa.Column("generation_count", sa.Integer(), **with_zero),
        sa.Column("size_bytes", sa.BigInteger(), comment=(
            "UTF-8 size of prompt, llm_string and the generations, for max_bytes"), **with_zero),
        sa.Column("hit_count", sa.BigInteger(), **with_zero),
        sa.Column("last_hit_at", UTC_DATETIME, nullable=True),
    ):  # fmt: skip
        op.add_column("llm_cache_entry", column, schema=schema)
    op.add_column("llm_cache_generation", sa.Column("input_tokens", sa.Integer()), schema=schema)
    op.add_column("llm_cache_generation", sa.Column("output_tokens", sa.Integer()), schema=schema)
    op.drop_index("ix_llm_cache_entry_namespace", table_name="llm_cache_entry", schema=schema)
    for name, columns in (
        ("ix_llm_cache_entry_namespace_id", ["namespace", "id"]),
        ("ix_llm_cache_entry_namespace_expires_at", ["namespace", "expires_at"]),
        ("ix_llm_cache_entry_namespace_updated_at", ["namespace", "updated_at"]),
    ):
        op.create_index(name, "llm_cache_entry", columns, schema=schema)
    entry, generation = tables(schema)
    backfill(entry, generation)
    op.execute(create_view(entry, generation))


def backfill(entry: sa.Table, generation: sa.Table) -> None:
    """Give the entries written before this revision their analytics columns."""
    now = datetime.now(timezone.utc)
    if op.get_context().dialect.name != "postgresql":
        now = now.replace(tzinfo=None)
    own = generation.c.entry_id == entry.c.id
    usage = generation.c.message["usage_metadata"]
    op.execute(
        entry.update()
        .where(entry.c.created_at.is_(None))
        .values(
            created_at=now,
            updated_at=now,
            generation_count=sa.select(sa.func.count()).where(own).scalar_subquery(),
            size_bytes=sa.func.length(entry.c.prompt)
            + sa.func.length(entry.c.llm_string)
            + sa.select(sa.func.coalesce(sa.func.sum(sa.func.length(generation.c.text)), 0))
            .where(own)
            .scalar_subquery(),
        )
    )
    op.execute(
        generation.update()
        .where(generation.c.message.is_not(None))
        .values(
            input_tokens=usage["input_tokens"].as_integer(),
            output_tokens=usage["output_tokens"].as_integer(),
        )
    )
    if op.get_context().as_sql:
        return  # the model names need Python; offline SQL leaves them NULL for a later pass
    connection = op.get_bind()
    last_id = 0
    while True:
        rows = connection.execute(
            sa.select(entry.c.id, entry.c.llm_string)
            .where(entry.c.id > last_id)
            .order_by(entry.c.id)
            .limit(BACKFILL_BATCH)
        ).all()
        if not rows:
            return
        found = [{"entry_id": i, "model": model_of(s)} for i, s in rows if model_of(s)]
        if found:
            connection.execute(
                entry.update()
                .where(entry.c.id == sa.bindparam("entry_id"))
                .values(llm_model=sa.bindparam("model")),
                found,
            )
        last_id = rows[-1][0]


def model_of(llm_string: str) -> str | None:
    for pattern in MODEL_PATTERNS:
        match = pattern.search(llm_string)
        if match:
            return match.group(1)
    return None


def create_view(entry: sa.Table, generation: sa.Table) -> str:
    """CREATE VIEW llm_cache_outputs: one row per generation, with its entry's columns."""
    context = op.get_context()
    select = sa.select(
        entry.c.namespace,
        entry.c.llm_model.label("model"),
        entry.c.prompt,
        entry.c.llm_string,
        generation.c.entry_id,
        generation.c.idx,
        generation.c.generation_type,
        generation.c.text,
        generation.c.input_tokens,
        generation.c.output_tokens,
        generation.c.generation_info,
        generation.c.message,
        entry.c.created_at,
        entry.c.updated_at,
        entry.c.expires_at,
        entry.c.hit_count,
        entry.c.last_hit_at,
    ).select_from(entry.join(generation, generation.c.entry_id == entry.c.id))
    compiled = select.compile(dialect=context.dialect, compile_kwargs={"literal_binds": True})
    return f"CREATE VIEW {qualified(VIEW, entry.schema)} AS {compiled}"


def qualified(name: str, schema: str | None) -> str:
    preparer = op.get_context().dialect.identifier_preparer
    quoted = preparer.quote(name)
    return f"{preparer.quote_schema(schema)}.{quoted}" if schema else quoted


def downgrade() -> None:
    """Drop the view, the indexes and the columns (the values themselves are kept)."""
    schema = migration_schema()
    op.execute(f"DROP VIEW {qualified(VIEW, schema)}")
    for name in (
        "ix_llm_cache_entry_namespace_updated_at",
        "ix_llm_cache_entry_namespace_expires_at",
        "ix_llm_cache_entry_namespace_id",
    ):
        op.drop_index(name, table_name="llm_cache_entry", schema=schema)
    op.create_index("ix_llm_cache_entry_namespace", "llm_cache_entry", ["namespace"], schema=schema)
    op.drop_column("llm_cache_generation", "output_tokens", schema=schema)
    op.drop_column("llm_cache_generation", "input_tokens", schema=schema)
    for column in (
        "last_hit_at",
        "hit_count",
        "size_bytes",
        "generation_count",
        "expires_at",
        "updated_at",
        "created_at",
        "llm_model",
    ):
        op.drop_column("llm_cache_entry", column, schema=schema)
