"""The schema's rules: named constraints, no index on unbounded text, the cascade."""

from __future__ import annotations

from sqlalchemy import ForeignKeyConstraint, Index, String
from sqlalchemy.sql.schema import ColumnCollectionConstraint

from langchain_sqlcache.models import entry_table, generation_table, metadata


def test_every_index_is_on_bounded_columns() -> None:
    indexed = [
        column
        for table in metadata.sorted_tables
        for index in [*table.indexes, *table.constraints]
        if isinstance(index, (Index, ColumnCollectionConstraint))
        and not isinstance(index, ForeignKeyConstraint)
        for column in index.columns
    ]
    assert indexed
    for column in indexed:
        if isinstance(column.type, String):
            assert column.type.length is not None, f"{column} is unbounded text under an index"


def test_constraints_are_named_by_the_convention() -> None:
    names = {
        getattr(constraint, "name", None)
        for table in metadata.sorted_tables
        for constraint in [*table.constraints, *table.indexes]
    }
    assert names == {
        "pk_llm_cache_entry",
        "uq_llm_cache_entry_key_hash",
        "ix_llm_cache_entry_namespace_id",
        "ix_llm_cache_entry_namespace_expires_at",
        "ix_llm_cache_entry_namespace_updated_at",
        "ix_llm_cache_entry_stats",
        "pk_llm_cache_generation",
        "fk_llm_cache_generation_entry_id_llm_cache_entry",
    }


def test_generations_cascade_with_their_entry() -> None:
    (foreign_key,) = generation_table.foreign_keys
    assert foreign_key.column is entry_table.c.id
    assert foreign_key.ondelete == "CASCADE"
    assert [c.name for c in generation_table.primary_key] == ["entry_id", "idx"]
