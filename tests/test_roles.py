"""Least privilege: a runtime role with DML rights only (the README's grants) runs the cache."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from langchain_sqlcache import SchemaError, SQLCache, migrations
from tests.conftest import Backend, sync_engine, unique_identifier

# Roles are server-wide: a name of this run's own, so that two runs never drop each other's.
ROLE = unique_identifier("sqlcache_runtime")
PASSWORD = "runtime-pw"

# The grants the README's "Deploying" section gives, one statement each.
GRANTS = {
    "postgresql": [
        f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'",
        f"GRANT CONNECT ON DATABASE {{database}} TO {ROLE}",
        f"GRANT USAGE ON SCHEMA public TO {ROLE}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON llm_cache_entry, llm_cache_generation TO {ROLE}",
        f"GRANT SELECT ON llm_cache_alembic_version TO {ROLE}",
        f"GRANT USAGE ON SEQUENCE llm_cache_entry_id_seq TO {ROLE}",
    ],
    "mysql": [
        f"CREATE USER {ROLE}@'%' IDENTIFIED BY '{PASSWORD}'",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {{database}}.llm_cache_entry TO {ROLE}@'%'",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {{database}}.llm_cache_generation TO {ROLE}@'%'",
        f"GRANT SELECT ON {{database}}.llm_cache_alembic_version TO {ROLE}@'%'",
    ],
}


def drop_role(backend: Backend, database_url: str) -> None:
    engine = sync_engine(database_url)
    if backend.name == "postgresql":
        with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": ROLE}
            ).scalar()
            if exists:
                connection.execute(text(f"DROP OWNED BY {ROLE}"))
                connection.execute(text(f"DROP ROLE {ROLE}"))
    else:
        with engine.begin() as connection:
            connection.execute(text(f"DROP USER IF EXISTS {ROLE}@'%'"))
    engine.dispose()


@pytest.fixture
def runtime_url(backend: Backend, empty_db: str) -> Iterator[str]:
    """The scratch database migrated by the admin, and a URL for the runtime role."""
    drop_role(backend, empty_db)
    migrations.upgrade(empty_db)
    database = make_url(empty_db).database
    admin = sync_engine(empty_db).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for grant in GRANTS[backend.name]:
            connection.execute(text(grant.format(database=database)))
    admin.dispose()
    yield (
        make_url(empty_db)
        .set(username=ROLE, password=PASSWORD)
        .render_as_string(hide_password=False)
    )
    drop_role(backend, empty_db)


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
async def test_runtime_role_needs_no_ddl_right(runtime_url: str, empty_db: str) -> None:
    value = [Generation(text="least privilege")]
    cache = SQLCache(runtime_url, namespace="runtime")  # create_tables=True: only checks
    try:
        cache.update("p", "llm", value)
        assert cache.lookup("p", "llm") == value
        await cache.aupdate("q", "llm", value)
        assert await cache.alookup("q", "llm") == value
        await cache.aclear()
        assert cache.lookup("p", "llm") is None
    finally:
        await cache.aclose()
    # The one thing it cannot do: create the tables in an empty database.
    migrations.downgrade(empty_db, "base")
    # A configuration error, under either policy, the driver's error chained.
    with pytest.raises(SchemaError, match=r"(?i)denied") as raised:
        SQLCache(runtime_url, namespace="runtime").lookup("p", "llm")
    assert isinstance(raised.value.__cause__, DBAPIError)
