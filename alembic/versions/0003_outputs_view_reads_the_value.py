"""The outputs view shows an entry's value: its first generation_count generations.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

From this revision, updates on Postgres are one statement that overwrites generations by
position and deletes the positions past the new value; a concurrent, longer write of the
same key can leave positions past ``generation_count`` behind, which lookups never read.
The analysts' view reads what lookups read. Tables and data are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

from langchain_sqlcache.migrations import migration_schema

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
VIEW = "llm_cache_outputs"


def tables(schema: str | None) -> tuple[sa.Table, sa.Table]:
    """The columns the view reads, as they are at this revision."""
    metadata = sa.MetaData(schema=schema)
    json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
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
        sa.Column("hit_count", sa.BigInteger),
        sa.Column("last_hit_at", UTC_DATETIME),
    )
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
    """Recreate the view, reading only the positions that make up each entry's value."""
    replace_view(values_only=True)


def downgrade() -> None:
    """Recreate revision 0002's view, which reads every generation row."""
    replace_view(values_only=False)


def replace_view(*, values_only: bool) -> None:
    schema = migration_schema()
    entry, generation = tables(schema)
    on = generation.c.entry_id == entry.c.id
    if values_only:
        on = sa.and_(on, generation.c.idx < entry.c.generation_count)
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
    ).select_from(entry.join(generation, on))
    dialect = op.get_context().dialect
    compiled = select.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    view = qualified(VIEW, schema)
    op.execute(f"DROP VIEW {view}")
    op.execute(f"CREATE VIEW {view} AS {compiled}")


def qualified(name: str, schema: str | None) -> str:
    preparer = op.get_context().dialect.identifier_preparer
    quoted = preparer.quote(name)
    return f"{preparer.quote_schema(schema)}.{quoted}" if schema else quoted
