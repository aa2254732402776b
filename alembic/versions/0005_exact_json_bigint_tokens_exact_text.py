"""Values exactly as written: json on Postgres, BIGINT token counts, exact text on MySQL.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

- Postgres: ``generation_info`` and ``message`` become ``json`` (were ``jsonb``). jsonb
  reorders object keys and rewrites numbers (``1e23`` as ``100000000000000000000000``,
  ``1e16`` as an integer, ``-0.0`` as ``0``), so a hit did not serialize like the value
  stored. Documents written before keep jsonb's form of them (the text is gone).
- ``input_tokens`` / ``output_tokens`` become BIGINT on every backend: INTEGER refused the
  usage counts of 2**31 and more on Postgres and MySQL.
- MySQL/MariaDB: ``namespace``, ``llm_string`` and ``llm_model`` get a binary NO PAD
  collation (``utf8mb4_nopad_bin`` on MariaDB, ``utf8mb4_0900_bin`` on MySQL 8), so that
  filters and GROUP BY tell "gpt-4" from "GPT-4" and from "gpt-4 ".

The analysts' view reads these columns: it is dropped first and created again, unchanged,
so its columns take the new types. Each table is altered by one statement (one rewrite).
Downgrading sets token counts beyond INTEGER to NULL and casts the documents back to jsonb.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect

from langchain_sqlcache.migrations import migration_schema

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
VIEW = "llm_cache_outputs"
TOKEN_COLUMNS = ("input_tokens", "output_tokens")
JSON_COLUMNS = ("generation_info", "message")
INTEGER_MAX = 2**31 - 1
MODEL_COMMENT = "model name found in llm_string, for GROUP BY"
COLLATION_PLACEHOLDER = "llm_cache_exact_collation"


def exact_collation(dialect: Dialect) -> str:
    """The binary NO PAD utf8mb4 collation of the server (as models.exact_collation was)."""
    if getattr(dialect, "is_mariadb", False):
        return "utf8mb4_nopad_bin"
    version = dialect.server_version_info
    if version is not None and version < (8, 0, 17):
        return "utf8mb4_bin"
    return "utf8mb4_0900_bin"


def upgrade() -> None:
    """Drop the view, retype the columns, create the view again."""
    schema = migration_schema()
    dialect = op.get_context().dialect
    drop_view(schema)
    if dialect.name == "postgresql":
        alter_table(
            "llm_cache_generation",
            [f"ALTER COLUMN {q(c)} TYPE BIGINT" for c in TOKEN_COLUMNS]
            + [f"ALTER COLUMN {q(c)} TYPE JSON USING {q(c)}::json" for c in JSON_COLUMNS],
            schema,
        )
    elif dialect.name in ("mysql", "mariadb"):
        alter_table(
            "llm_cache_generation", [f"MODIFY {q(c)} BIGINT NULL" for c in TOKEN_COLUMNS], schema
        )
        make_text_exact(schema)
    else:
        retype_tokens(sa.Integer(), sa.BigInteger(), schema)
    create_view(schema)


def downgrade() -> None:
    """Revision 0004's types: INTEGER tokens (larger counts become NULL), jsonb, collations."""
    schema = migration_schema()
    dialect = op.get_context().dialect
    drop_view(schema)
    _, generation = tables(schema)
    for name in TOKEN_COLUMNS:
        column = generation.c[name]
        op.execute(
            generation.update()
            .where(sa.or_(column > INTEGER_MAX, column < -INTEGER_MAX - 1))
            .values({name: None})
        )
    if dialect.name == "postgresql":
        alter_table(
            "llm_cache_generation",
            [f"ALTER COLUMN {q(c)} TYPE INTEGER" for c in TOKEN_COLUMNS]
            + [f"ALTER COLUMN {q(c)} TYPE JSONB USING {q(c)}::jsonb" for c in JSON_COLUMNS],
            schema,
        )
    elif dialect.name in ("mysql", "mariadb"):
        alter_table(
            "llm_cache_generation", [f"MODIFY {q(c)} INTEGER NULL" for c in TOKEN_COLUMNS], schema
        )
        alter_table("llm_cache_entry", text_columns(None), schema)
    else:
        retype_tokens(sa.BigInteger(), sa.Integer(), schema)
    create_view(schema)


def make_text_exact(schema: str | None) -> None:
    """MySQL/MariaDB: give the compared text columns the server's exact collation.

    Offline SQL from a ``mysql://`` URL cannot tell MySQL from MariaDB, which name the
    collation differently: the script then asks the server which one it has as it runs.
    """
    context = op.get_context()
    dialect = context.dialect
    if not context.as_sql or getattr(dialect, "is_mariadb", False):
        alter_table("llm_cache_entry", text_columns(exact_collation(dialect)), schema)
        return
    quote = sa.String().literal_processor(dialect)
    assert quote is not None  # noqa: S101 - a string type always renders literals
    statement = f"ALTER TABLE {qualified('llm_cache_entry', schema)} " + ", ".join(
        text_columns(COLLATION_PLACEHOLDER)
    )
    # MariaDB has utf8mb4_nopad_bin, MySQL 8.0.17+ utf8mb4_0900_bin, MySQL 5.7 neither.
    op.execute(
        "SET @llm_cache_collation = COALESCE((SELECT COLLATION_NAME FROM "
        "information_schema.COLLATIONS WHERE COLLATION_NAME IN ('utf8mb4_nopad_bin', "
        "'utf8mb4_0900_bin') ORDER BY COLLATION_NAME = 'utf8mb4_nopad_bin' DESC LIMIT 1), "
        "'utf8mb4_bin')"
    )
    op.execute(
        f"SET @llm_cache_alter = REPLACE({quote(statement)}, "
        f"'{COLLATION_PLACEHOLDER}', @llm_cache_collation)"
    )
    op.execute("PREPARE llm_cache_alter FROM @llm_cache_alter")
    op.execute("EXECUTE llm_cache_alter")
    op.execute("DEALLOCATE PREPARE llm_cache_alter")


def text_columns(collation: str | None) -> list[str]:
    """MODIFY clauses for the compared text columns: ``collation``, or 0004's without one.

    At 0004 namespace was utf8mb4_bin and the others took the table's default collation.
    """
    comment = sa.String().literal_processor(op.get_context().dialect)
    assert comment is not None  # noqa: S101 - a string type always renders literals
    own = f" COLLATE {collation}" if collation else ""
    return [
        f"MODIFY {q('namespace')} VARCHAR(255) COLLATE {collation or 'utf8mb4_bin'} NOT NULL",
        f"MODIFY {q('llm_string')} LONGTEXT{own} NOT NULL",
        f"MODIFY {q('llm_model')} VARCHAR(255){own} NULL COMMENT {comment(MODEL_COMMENT)}",
    ]


def retype_tokens(
    old: sa.types.TypeEngine[int], new: sa.types.TypeEngine[int], schema: str | None
) -> None:
    """SQLite: the token columns' declared type, through a batch (a copy of the table).

    Offline SQL cannot reflect the table, so it copies from the table as it is here.
    """
    copy_from = sqlite_generation_table(old, schema) if op.get_context().as_sql else None
    with op.batch_alter_table("llm_cache_generation", schema=schema, copy_from=copy_from) as batch:
        for name in TOKEN_COLUMNS:
            batch.alter_column(name, existing_type=old, type_=new, existing_nullable=True)


def sqlite_generation_table(tokens: sa.types.TypeEngine[int], schema: str | None) -> sa.Table:
    """llm_cache_generation on SQLite, whole, with ``tokens`` as its token columns' type."""
    metadata = sa.MetaData(schema=schema)
    sa.Table("llm_cache_entry", metadata, sa.Column("id", sa.Integer, primary_key=True))
    return sa.Table(
        "llm_cache_generation",
        metadata,
        sa.Column("entry_id", sa.Integer, nullable=False),
        sa.Column("idx", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("generation_type", sa.String(32), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("generation_info", sa.JSON, nullable=True),
        sa.Column("message", sa.JSON, nullable=True),
        sa.Column("input_tokens", tokens, nullable=True),
        sa.Column("output_tokens", tokens, nullable=True),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["llm_cache_entry.id"],
            name="fk_llm_cache_generation_entry_id_llm_cache_entry",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("entry_id", "idx", name="pk_llm_cache_generation"),
    )


def alter_table(table: str, clauses: list[str], schema: str | None) -> None:
    """One ALTER TABLE with every clause: the table is rewritten once, not once a column."""
    op.execute(f"ALTER TABLE {qualified(table, schema)} {', '.join(clauses)}")


def tables(schema: str | None) -> tuple[sa.Table, sa.Table]:
    """The columns the view reads (and the downgrade updates), as they are at this revision."""
    metadata = sa.MetaData(schema=schema)
    json = sa.JSON().with_variant(postgresql.JSON(), "postgresql")
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
        sa.Column("input_tokens", sa.BigInteger),
        sa.Column("output_tokens", sa.BigInteger),
    )
    return entry, generation


def create_view(schema: str | None) -> None:
    """Revision 0003's view: each entry's value, its first generation_count generations."""
    entry, generation = tables(schema)
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
    ).select_from(
        entry.join(
            generation,
            sa.and_(
                generation.c.entry_id == entry.c.id,
                generation.c.idx < entry.c.generation_count,
            ),
        )
    )
    dialect = op.get_context().dialect
    compiled = select.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    op.execute(f"CREATE VIEW {qualified(VIEW, schema)} AS {compiled}")


def drop_view(schema: str | None) -> None:
    op.execute(f"DROP VIEW {qualified(VIEW, schema)}")


def q(name: str) -> str:
    quoted: str = op.get_context().dialect.identifier_preparer.quote(name)
    return quoted


def qualified(name: str, schema: str | None) -> str:
    preparer = op.get_context().dialect.identifier_preparer
    quoted = preparer.quote(name)
    return f"{preparer.quote_schema(schema)}.{quoted}" if schema else quoted
