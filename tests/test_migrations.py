"""Alembic owns the schema: upgrade, downgrade, stepwise, offline, concurrent, host apps."""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import make_url

from langchain_sqlcache import SchemaError, SQLCache, migrations
from langchain_sqlcache.codec import entry_key, model_of
from langchain_sqlcache.engines import create_migration_engine, driver_urls
from langchain_sqlcache.migrations import (
    OWN_TABLES,
    VERSION_TABLE,
    acquire_lock,
    head_revision,
    include_name,
    include_object,
    make_config,
    release_lock,
)
from tests.conftest import Backend, sync_engine, unique_namespace
from tests.test_engines import StatementLog

ROOT = Path(__file__).resolve().parent.parent


def revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(make_config())
    return [s.revision for s in reversed(list(script.walk_revisions()))]


def table_names(url: str, schema: str | None = None) -> set[str]:
    engine = sync_engine(url)
    try:
        return set(inspect(engine).get_table_names(schema=schema))
    finally:
        engine.dispose()


def snapshot(url: str, schema: str | None = None) -> dict[str, Any]:
    """Tables, columns, keys and indexes as plain data, for comparing two schemas."""
    engine = sync_engine(url)
    try:
        inspector = inspect(engine)
        return {
            name: {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"])
                    for c in inspector.get_columns(name, schema=schema)
                ],
                "pk": inspector.get_pk_constraint(name, schema=schema)["constrained_columns"],
                "fks": sorted(
                    (fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"])
                    for fk in inspector.get_foreign_keys(name, schema=schema)
                ),
                "indexes": sorted(
                    (ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
                    for ix in inspector.get_indexes(name, schema=schema)
                ),
                "uniques": sorted(
                    (uq["name"], tuple(uq["column_names"]))
                    for uq in inspector.get_unique_constraints(name, schema=schema)
                ),
            }
            for name in sorted(inspector.get_table_names(schema=schema))
        }
    finally:
        engine.dispose()


def assert_models_match_database(url: str) -> None:
    """`alembic check`: autogenerate finds no difference between the models and the db."""
    engine = sync_engine(url)
    try:
        with engine.connect() as connection:
            command.check(make_config(schema=None, connection=connection))
    finally:
        engine.dispose()


def test_upgrade_head_creates_exactly_our_tables(empty_db: str) -> None:
    migrations.upgrade(empty_db)
    assert table_names(empty_db) == OWN_TABLES
    assert migrations.current(empty_db) == head_revision()
    assert_models_match_database(empty_db)


def test_downgrade_base_leaves_nothing_of_ours(empty_db: str) -> None:
    migrations.upgrade(empty_db)
    migrations.downgrade(empty_db, "base")
    assert table_names(empty_db) == set()
    assert migrations.current(empty_db) is None


def test_up_down_up_is_consistent(empty_db: str) -> None:
    migrations.upgrade(empty_db)
    first = snapshot(empty_db)
    migrations.downgrade(empty_db, "base")
    migrations.upgrade(empty_db)
    assert snapshot(empty_db) == first
    assert_models_match_database(empty_db)


def test_every_revision_is_reached_stepwise(empty_db: str) -> None:
    ordered = revisions()
    assert ordered[0] == "0001"
    for revision in ordered:
        migrations.upgrade(empty_db, "+1")
        assert migrations.current(empty_db) == revision
    below: list[str | None] = [*reversed(ordered[:-1]), None]
    for expected in below:
        migrations.downgrade(empty_db, "-1")
        assert migrations.current(empty_db) == expected
    assert table_names(empty_db) == set()


HOST_METADATA = MetaData()
HOST_ORDERS = Table(
    "orders", HOST_METADATA, Column("id", Integer, primary_key=True), Column("item", String(50))
)


def test_host_application_history_survives(empty_db: str) -> None:
    engine = sync_engine(empty_db)
    try:
        with engine.begin() as connection:
            HOST_METADATA.create_all(connection)
            connection.execute(insert(HOST_ORDERS).values(id=1, item="book"))
            MigrationContext.configure(connection)._version.create(connection)
            connection.execute(text("INSERT INTO alembic_version VALUES ('host0042')"))
        migrations.upgrade(empty_db)
        migrations.downgrade(empty_db, "base")
        migrations.upgrade(empty_db)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
                ("host0042",)
            ]
            assert connection.execute(select(HOST_ORDERS)).all() == [(1, "book")]
            # The host's autogenerate, with our filter, sees only its own tables.
            for options in ({"include_name": include_name}, {"include_object": include_object}):
                context = MigrationContext.configure(connection, opts=options)
                assert compare_metadata(context, HOST_METADATA) == []
            unfiltered = compare_metadata(MigrationContext.configure(connection), HOST_METADATA)
            removed = {diff[1].name for diff in unfiltered if diff[0] == "remove_table"}
            assert removed == OWN_TABLES
        assert table_names(empty_db) == OWN_TABLES | {"orders", "alembic_version"}
    finally:
        engine.dispose()


def upgrade_in_a_process(url: str, barrier: Any = None, started: Any = None) -> list[str]:
    """Run in a child process: upgrade head, and return the revisions it applied itself.

    Just before the upgrade, once the child has imported everything, it waits on
    ``barrier`` and sets ``started`` (a manager's Barrier and Event), so that the parent
    decides when the children race.
    """
    applied: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Running upgrade"):
                applied.append(record.getMessage())

    logger = logging.getLogger("alembic.runtime.migration")
    logger.setLevel(logging.INFO)
    logger.addHandler(Collect())
    head_revision()  # read the scripts now, not in the race
    if barrier is not None:
        barrier.wait(timeout=120)
    if started is not None:
        started.set()
    migrations.upgrade(url)
    return applied


def test_concurrent_upgrades_apply_each_revision_once(empty_db: str) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(4, mp_context=context) as pool:
        # Spawned children take a second or more to start: without the barrier the first
        # could finish before the last begins, and nothing would have raced.
        barrier = manager.Barrier(4)
        results = list(pool.map(upgrade_in_a_process, [empty_db] * 4, [barrier] * 4, timeout=300))
    applied = [message for result in results for message in result]
    assert len(applied) == len(revisions()), applied
    assert migrations.current(empty_db) == head_revision()
    assert table_names(empty_db) == OWN_TABLES


def test_upgrade_waits_for_the_migration_lock(empty_db: str) -> None:
    """While the lock is held (pg_advisory_xact_lock, GET_LOCK, BEGIN IMMEDIATE), an upgrade
    waits; it runs once the lock is released."""
    # The engine env.py migrates with: on SQLite it has switched the file to WAL first, as
    # any migrator would have (a file still in rollback mode refuses the child's switch to
    # WAL while another connection holds the write lock, without waiting).
    engine = create_migration_engine(make_url(empty_db))
    context = multiprocessing.get_context("spawn")
    try:
        with (
            engine.connect() as holder,
            context.Manager() as manager,
            ProcessPoolExecutor(1, mp_context=context) as pool,
        ):
            with holder.begin():
                acquire_lock(holder)  # the very lock env.py takes
                started = manager.Event()
                child = pool.submit(upgrade_in_a_process, empty_db, None, started)
                assert started.wait(timeout=120), "the child never got to its upgrade"
                time.sleep(1.0)
                assert not child.done(), child.result()
                assert table_names(empty_db) == set()
            # The transaction's end frees Postgres' and SQLite's locks; MySQL's is the
            # session's (and server-wide: hold it no longer than this).
            release_lock(holder)
            assert len(child.result(timeout=120)) == len(revisions())
    finally:
        engine.dispose()
    assert migrations.current(empty_db) == head_revision()


def apply_script(url: str, sql: str) -> None:
    """Apply offline SQL by hand, statement by statement, as a DBA would."""
    lines = [line for line in sql.splitlines() if not line.startswith("--")]
    statements = [s.strip() for s in "\n".join(lines).split(";\n")]
    engine = sync_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                if statement and statement.rstrip(";").upper() not in ("BEGIN", "COMMIT"):
                    connection.exec_driver_sql(statement.rstrip(";"))
    finally:
        engine.dispose()


def test_offline_sql_applies_and_gives_the_same_schema(empty_db: str) -> None:
    sql = migrations.upgrade(empty_db, sql=True)
    assert sql is not None
    assert "CREATE TABLE llm_cache_entry" in sql
    assert "CREATE TABLE llm_cache_generation" in sql
    assert table_names(empty_db) == set()  # --sql only prints
    apply_script(empty_db, sql)
    assert migrations.current(empty_db) == head_revision()
    assert_models_match_database(empty_db)
    by_hand = snapshot(empty_db)
    down_sql = migrations.downgrade(empty_db, f"{head_revision()}:base", sql=True)
    assert down_sql is not None
    apply_script(empty_db, down_sql)
    assert table_names(empty_db) == set()
    migrations.upgrade(empty_db)
    assert snapshot(empty_db) == by_hand


@pytest.mark.parametrize("dialect_url", ["postgresql://u@h/db", "mysql://u@h/db"])
def test_offline_sql_for_review_needs_no_server(dialect_url: str) -> None:
    sql = migrations.upgrade(dialect_url, sql=True)
    assert sql is not None
    assert f"INSERT INTO {VERSION_TABLE}" in sql
    assert ("JSONB" in sql) == dialect_url.startswith("postgresql")
    assert ("LONGTEXT" in sql) == dialect_url.startswith("mysql")
    # 0005: json on Postgres; on MySQL the script picks MariaDB's or MySQL's exact collation
    # from the server it runs on (a mysql:// URL may name either).
    assert ("TYPE JSON USING" in sql) == dialect_url.startswith("postgresql")
    for collation in ("utf8mb4_nopad_bin", "utf8mb4_0900_bin"):
        assert (collation in sql) == dialect_url.startswith("mysql")
    assert "TYPE BIGINT" in sql or "MODIFY input_tokens BIGINT" in sql


def test_async_urls_migrate_through_run_sync(empty_db: str) -> None:
    async_url = driver_urls(make_url(empty_db))[1]
    assert async_url.get_driver_name() in ("asyncpg", "aiomysql", "aiosqlite")
    migrations.upgrade(async_url)
    assert migrations.current(empty_db) == head_revision()
    migrations.downgrade(async_url, "base")
    assert table_names(empty_db) == set()


def alembic_cli(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LANGCHAIN_SQLCACHE_URL"}
    if url is not None:
        env["LANGCHAIN_SQLCACHE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_alembic_from_the_repository_root(empty_db: str) -> None:
    up = alembic_cli("-x", f"url={empty_db}", "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert table_names(empty_db) == OWN_TABLES
    now = alembic_cli("current", url=empty_db)
    assert now.returncode == 0, now.stderr
    assert f"{head_revision()} (head)" in now.stdout
    check = alembic_cli("check", url=empty_db)
    assert check.returncode == 0, check.stderr + check.stdout
    offline = alembic_cli("upgrade", "head", "--sql", url=empty_db)
    assert offline.returncode == 0, offline.stderr
    assert "CREATE TABLE llm_cache_entry" in offline.stdout
    down = alembic_cli("downgrade", "base", url=empty_db)
    assert down.returncode == 0, down.stderr
    assert table_names(empty_db) == set()
    from_env = alembic_cli("upgrade", "head", url=empty_db)
    assert from_env.returncode == 0, from_env.stderr
    assert table_names(empty_db) == OWN_TABLES


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
async def test_schema_option_holds_tables_and_version_table(
    backend: Backend, scratch_schema: str
) -> None:
    before = table_names(backend.url)
    result = alembic_cli(
        "-x", f"url={backend.url}", "-x", f"schema={scratch_schema}", "upgrade", "head"
    )
    assert result.returncode == 0, result.stderr
    assert table_names(backend.url, schema=scratch_schema) == OWN_TABLES
    assert table_names(backend.url) == before
    assert migrations.current(backend.url, schema=scratch_schema) == head_revision()
    cache = SQLCache(
        backend.url, schema=scratch_schema, namespace=unique_namespace(), create_tables=False
    )
    try:
        cache.update("p", "llm", [Generation(text="in the schema")])
        assert await cache.alookup("p", "llm") == [Generation(text="in the schema")]
    finally:
        await cache.aclose()
    migrations.downgrade(backend.url, "base", schema=scratch_schema)
    assert table_names(backend.url, schema=scratch_schema) == set()


async def test_cache_migrates_an_empty_database_to_head(empty_db: str) -> None:
    cache = SQLCache(empty_db, namespace="fresh")
    try:
        assert await cache.alookup("p", "llm") is None
        cache.update("p", "llm", [Generation(text="x")])
    finally:
        await cache.aclose()
    assert migrations.current(empty_db) == head_revision()
    # The database ends stamped at head: a later upgrade has nothing to do.
    assert upgrade_in_a_process(empty_db) == []
    assert_models_match_database(empty_db)


async def test_cache_refuses_a_schema_at_another_revision(
    empty_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ordered = revisions()
    if len(ordered) >= 2:
        migrations.upgrade(empty_db, ordered[-2])
    else:
        # Only one revision ships so far: present the database as one revision behind by
        # announcing a newer head, exactly what a package upgrade does.
        migrations.upgrade(empty_db)
        monkeypatch.setattr(migrations, "head_revision", lambda: "9999_next")
    behind = SQLCache(empty_db, namespace="old")
    with pytest.raises(SchemaError, match=r"expected .*; run: langchain-sqlcache db upgrade --url"):
        behind.lookup("p", "llm")
    with pytest.raises(SchemaError, match="langchain-sqlcache db upgrade"):
        behind.update("p", "llm", [Generation(text="x")])
    # The async engine checks on its own first use, and refuses the same way.
    with pytest.raises(SchemaError, match=r"expected .*; run: langchain-sqlcache db upgrade --url"):
        await behind.alookup("p", "llm")
    with pytest.raises(SchemaError, match="langchain-sqlcache db upgrade"):
        await behind.aupdate("p", "llm", [Generation(text="x")])
    await behind.aclose()
    monkeypatch.undo()
    migrations.upgrade(empty_db)
    engine = sync_engine(empty_db)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = 'ffff_future'"))
    with pytest.raises(SchemaError, match="newer than this package"):
        SQLCache(empty_db, namespace="new").lookup("p", "llm")
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE {VERSION_TABLE}"))
    engine.dispose()
    with pytest.raises(SchemaError, match="carry no version"):
        SQLCache(empty_db, namespace="unversioned").lookup("p", "llm")


def test_create_tables_false_on_an_empty_database(empty_db: str) -> None:
    with pytest.raises(SchemaError, match=r"do not exist.*langchain-sqlcache db upgrade --url"):
        SQLCache(empty_db, create_tables=False).lookup("p", "llm")
    assert table_names(empty_db) == set()


async def test_schema_check_is_one_query_per_engine_once(backend: Backend) -> None:
    migrations.upgrade(backend.url)  # already at head: the cache only checks
    cache = SQLCache(backend.url, namespace=unique_namespace())
    assert cache.store.engines is not None
    assert cache.store.async_engines is not None
    engines = (cache.store.engines.writer, cache.store.async_engines.writer.sync_engine)
    log = StatementLog(
        *engines, cache.store.engines.reader, cache.store.async_engines.reader.sync_engine
    )
    try:
        for i in range(5):
            cache.update(f"p{i}", "llm", [Generation(text="x")])
            assert cache.lookup(f"p{i}", "llm") is not None
            assert await cache.alookup(f"p{i}", "llm") is not None
        await cache.aclear()
    finally:
        await cache.aclose()
    checks = [s for s, _ in log.statements if VERSION_TABLE in s]
    assert len(checks) == 2, checks  # one per family, at first use


def test_config_escapes_percent_in_urls() -> None:
    url = "postgresql://user:p%25ss%40word@host/db"
    assert make_config(url).get_main_option("sqlalchemy.url") == url


# -- data written at every revision survives the upgrades after it --------------------------
# Each revision gets a writer that stores a cache value the way that revision's schema holds
# it (a frozen copy of its tables, never the current models). A new revision adds its writer.

REV_0001 = MetaData()
ENTRY_0001 = Table(
    "llm_cache_entry",
    REV_0001,
    Column("id", Integer, primary_key=True),
    Column("key_hash", String(64)),
    Column("namespace", String(255)),
    Column("prompt", Text),
    Column("llm_string", Text),
)
GENERATION_0001 = Table(
    "llm_cache_generation",
    REV_0001,
    Column("entry_id", Integer, primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("generation_type", String(32)),
    Column("text", Text),
    Column("generation_info", JSON().with_variant(postgresql.JSONB(), "postgresql")),
    Column("message", JSON().with_variant(postgresql.JSONB(), "postgresql")),
)
SURVIVOR = [
    Generation(text="written long ago", generation_info={"finish_reason": "stop"}),
    ChatGeneration(
        message=AIMessage(
            content="a chat answer",
            usage_metadata={"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
        )
    ),
]


# SURVIVOR as revision 0001's codec stored it (frozen here, like the tables).
ROWS_0001 = [
    {
        "idx": 0,
        "generation_type": "Generation",
        "text": "written long ago",
        "generation_info": {"finish_reason": "stop"},
        "message": None,
    },
    {
        "idx": 1,
        "generation_type": "ChatGeneration",
        "text": "a chat answer",
        "generation_info": None,
        "message": {
            "additional_kwargs": {},
            "response_metadata": {},
            "type": "ai",
            "name": None,
            "id": None,
            "tool_calls": [],
            "invalid_tool_calls": [],
            "usage_metadata": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
        },
    },
]


def write_at_0001(url: str, namespace: str, prompt: str, llm_string: str) -> None:
    rows = ROWS_0001
    engine = sync_engine(url)
    try:
        with engine.begin() as connection:
            inserted = connection.execute(
                insert(ENTRY_0001).values(
                    key_hash=entry_key(namespace, prompt, llm_string),
                    namespace=namespace,
                    prompt=prompt,
                    llm_string=llm_string,
                )
            ).inserted_primary_key
            assert inserted is not None
            entry_id = inserted[0]
            connection.execute(
                insert(GENERATION_0001), [{**row, "entry_id": entry_id} for row in rows]
            )
    finally:
        engine.dispose()


REV_0002 = MetaData()
UTC_0002 = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
ENTRY_0002 = Table(
    "llm_cache_entry",
    REV_0002,
    Column("id", Integer, primary_key=True),
    Column("key_hash", String(64)),
    Column("namespace", String(255)),
    Column("prompt", Text),
    Column("llm_string", Text),
    Column("llm_model", String(255)),
    Column("created_at", UTC_0002),
    Column("updated_at", UTC_0002),
    Column("expires_at", UTC_0002),
    Column("generation_count", Integer),
    Column("size_bytes", BigInteger),
    Column("hit_count", BigInteger),
    Column("last_hit_at", UTC_0002),
)
GENERATION_0002 = Table(
    "llm_cache_generation",
    REV_0002,
    Column("entry_id", Integer, primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("generation_type", String(32)),
    Column("text", Text),
    Column("generation_info", JSON().with_variant(postgresql.JSONB(), "postgresql")),
    Column("message", JSON().with_variant(postgresql.JSONB(), "postgresql")),
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
)


def write_at_0002(url: str, namespace: str, prompt: str, llm_string: str) -> None:
    # As the cache wrote at 0002: the entry's analytics columns, its rows with token counts.
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    engine = sync_engine(url)
    try:
        with engine.begin() as connection:
            inserted = connection.execute(
                insert(ENTRY_0002).values(
                    key_hash=entry_key(namespace, prompt, llm_string),
                    namespace=namespace,
                    prompt=prompt,
                    llm_string=llm_string,
                    llm_model=model_of(llm_string),
                    created_at=now,
                    updated_at=now,
                    generation_count=len(ROWS_0001),
                    size_bytes=len(prompt) + len(llm_string) + 200,
                    hit_count=0,
                )
            ).inserted_primary_key
            assert inserted is not None
            rows = [
                {**row, "entry_id": inserted[0], "input_tokens": None, "output_tokens": None}
                for row in ROWS_0001
            ]
            rows[1].update(input_tokens=3, output_tokens=4)
            connection.execute(insert(GENERATION_0002), rows)
    finally:
        engine.dispose()


def write_at_0005(url: str, namespace: str, prompt: str, llm_string: str) -> None:
    # 0005 is the head: the cache itself writes its shape. Freeze this writer (as the earlier
    # ones are) when a later revision lands.
    cache = SQLCache(url, namespace=namespace, create_tables=False)
    try:
        cache.update(prompt, llm_string, SURVIVOR)
    finally:
        cache.close()


WRITERS = {
    "0001": write_at_0001,
    "0002": write_at_0002,
    # 0003 changed only the view, 0004 added an index: the tables are 0002's, and the cache
    # wrote SURVIVOR at 0004 as write_at_0002 does (rows as ROWS_0001, with token counts).
    "0003": write_at_0002,
    "0004": write_at_0002,
    "0005": write_at_0005,
}
OLD_LLM = "[('model', 'old-model'), ('temperature', 0.0)]"


def test_every_revision_has_a_data_writer() -> None:
    assert set(WRITERS) == set(revisions())


@pytest.mark.parametrize("revision", list(WRITERS))
async def test_entries_written_at_a_revision_survive_upgrade(empty_db: str, revision: str) -> None:
    migrations.upgrade(empty_db, revision)
    WRITERS[revision](empty_db, "old", "an old prompt", OLD_LLM)
    migrations.upgrade(empty_db)
    cache = SQLCache(empty_db, namespace="old", create_tables=False)
    try:
        assert cache.lookup("an old prompt", OLD_LLM) == SURVIVOR
        assert await cache.alookup("an old prompt", OLD_LLM) == SURVIVOR
        stats = cache.stats()
    finally:
        await cache.aclose()
    # The analytics columns were filled in for entries that predate them.
    assert (stats.entries, stats.generations) == (1, 2)
    assert set(stats.models) == {"old-model"}
    assert stats.bytes > len("an old prompt") + len(OLD_LLM)
    engine = sync_engine(empty_db)
    try:
        with engine.connect() as connection:
            outputs = connection.execute(
                text("SELECT model, text, input_tokens, output_tokens, created_at, hit_count "
                     "FROM llm_cache_outputs ORDER BY idx")
            ).all()  # fmt: skip
    finally:
        engine.dispose()
    assert [(o.model, o.text, o.input_tokens, o.output_tokens, o.hit_count) for o in outputs] == [
        ("old-model", "written long ago", None, None, 0),
        ("old-model", "a chat answer", 3, 4, 0),
    ]
    assert all(o.created_at is not None for o in outputs)


# A value that needs 0005: token counts beyond INTEGER, JSON with its keys out of order.
BIG_TOKENS = [
    ChatGeneration(
        message=AIMessage(
            content="a long session",
            additional_kwargs={"z": 1, "a": 2},
            usage_metadata={"input_tokens": 2**40, "output_tokens": 5, "total_tokens": 2**40 + 5},
        )
    ),
    *SURVIVOR,
]


def outputs_tokens(url: str) -> list[tuple[Any, ...]]:
    engine = sync_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT idx, input_tokens, output_tokens FROM llm_cache_outputs "
                    "ORDER BY prompt, idx"
                )
            ).all()
    finally:
        engine.dispose()
    return [tuple(row) for row in rows]


async def test_entries_survive_a_downgrade_to_0004_and_back(empty_db: str) -> None:
    migrations.upgrade(empty_db)
    write_at_0005(empty_db, "new", "a prompt", OLD_LLM)
    cache = SQLCache(empty_db, namespace="new", create_tables=False)
    cache.update("big", OLD_LLM, BIG_TOKENS)
    cache.close()
    assert outputs_tokens(empty_db) == [
        (0, None, None),
        (1, 3, 4),
        (0, 2**40, 5),
        (1, None, None),
        (2, 3, 4),
    ]
    migrations.downgrade(empty_db, "0004")
    assert migrations.current(empty_db) == "0004"
    # INTEGER cannot hold 2**40: that count goes, the value (its message) stays.
    assert outputs_tokens(empty_db) == [
        (0, None, None),
        (1, 3, 4),
        (0, None, 5),
        (1, None, None),
        (2, 3, 4),
    ]
    migrations.upgrade(empty_db)
    assert_models_match_database(empty_db)
    cache = SQLCache(empty_db, namespace="new", create_tables=False)
    try:
        assert cache.lookup("a prompt", OLD_LLM) == SURVIVOR
        assert await cache.alookup("big", OLD_LLM) == BIG_TOKENS
    finally:
        await cache.aclose()


def test_offline_sql_for_mariadb_names_its_own_exact_collation() -> None:
    sql = migrations.upgrade("mariadb://u@h/db", sql=True)
    assert sql is not None
    assert "COLLATE utf8mb4_nopad_bin" in sql
    assert "utf8mb4_0900_bin" not in sql
