"""The `langchain-sqlcache db ...` commands, their exit codes and their one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from sqlalchemy import create_engine, inspect, text, update
from sqlalchemy.engine import make_url

from langchain_sqlcache import SQLCache, demo, migrations
from langchain_sqlcache.cli import EXIT_BEHIND, EXIT_ERROR, EXIT_PARTIAL, EXIT_SKIPPED, main
from langchain_sqlcache.codec import entry_key
from langchain_sqlcache.engines import driver_urls
from langchain_sqlcache.migrations import OWN_TABLES, head_revision
from langchain_sqlcache.models import entry_table
from tests.conftest import (
    Backend,
    cli_runner,
    sync_engine,
    unique_identifier,
    unique_namespace,
)

LLM = "[('model', 'cli-model')]"


def tables(url: str, schema: str | None = None) -> set[str]:
    engine = create_engine(driver_urls(make_url(url))[0])
    try:
        return set(inspect(engine).get_table_names(schema=schema)) & OWN_TABLES
    finally:
        engine.dispose()


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = cli_runner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_db_lifecycle(empty_db: str) -> None:
    code, out, _ = run("db", "check", "--url", empty_db)
    assert (code, out.split(":")[0]) == (EXIT_BEHIND, "behind")
    assert "langchain-sqlcache db upgrade --url" in out
    code, out, _ = run("db", "current", "--url", empty_db)
    assert (code, out.strip()) == (0, "none")
    code, out, _ = run("db", "upgrade", "--url", empty_db, "--sql")
    assert code == 0
    assert "CREATE TABLE llm_cache_entry" in out
    assert tables(empty_db) == set()
    assert run("db", "upgrade", "--url", empty_db)[0] == 0
    assert tables(empty_db) == OWN_TABLES
    code, out, _ = run("db", "current", "--url", empty_db)
    assert (code, out.strip()) == (0, head_revision())
    code, out, _ = run("db", "check", "--url", empty_db)
    assert (code, out.strip()) == (0, f"up to date: {head_revision()}")
    assert run("db", "downgrade", "base", "--url", empty_db)[0] == 0
    assert tables(empty_db) == set()


def test_url_comes_from_the_environment(empty_db: str) -> None:
    assert run("db", "upgrade", env={"LANGCHAIN_SQLCACHE_URL": empty_db})[0] == 0
    assert migrations.current(empty_db) == head_revision()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not-a-url", "error: not a database URL: 'not-a-url'"),
        ("postgresql://nobody@127.0.0.1:9/none", "error: connection"),
        ("oracle://u@h/db", "error: unsupported database backend 'oracle'"),
        ("postgresql+psycopg2://u@127.0.0.1:9/db", "pip install 'langchain-sqlcache[postgres]'"),
    ],
    ids=["bad-url", "unreachable", "unsupported", "missing-driver"],
)
@pytest.mark.parametrize("command", ["current", "check", "upgrade"])
def test_errors_are_one_line(command: str, url: str, message: str) -> None:
    code, out, err = run("db", command, "--url", url)
    assert code == EXIT_ERROR
    assert out == ""
    assert err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args", [[], ["db"], ["db", "upgrade"], ["db", "downgrade"], ["db", "current"], ["db", "check"]]
)
def test_help_everywhere(args: list[str]) -> None:
    code, out, _ = run(*args, "--help")
    assert code == 0
    assert "Usage:" in out


def test_usage_errors_exit_2() -> None:
    assert run("db", "downgrade")[0] == 2
    assert run("db", "nope")[0] == 2


# -- demo, stats, prune, clear, export, import -----------------------------------------------


DEMO_LATENCY = 0.2


def demo_rows(out: str) -> dict[str, list[list[str]]]:
    """The demo's tables by their first column (family or model), cells split apart."""
    rows: dict[str, list[list[str]]] = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        rows.setdefault(cells[0], []).append(cells)
    return rows


def test_demo(backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # The demo's fixed namespace would collide with another run's on a shared server.
    namespace = unique_namespace()
    monkeypatch.setattr(demo, "NAMESPACE", namespace)
    url = None if backend.name == "sqlite" else backend.url
    latency = ["--latency", str(DEMO_LATENCY)]
    try:
        code, out, err = run("demo", *latency, *(["--url", url] if url else []))
    finally:
        if url is not None:
            SQLCache(url, namespace=namespace).clear()
    assert code == 0, err
    for expected in ("miss (ms)", "hit (ms)", "stats()", "fake-gpt-4o-mini", "llm_cache_outputs"):
        assert expected in out
    rows = demo_rows(out)
    asked_twice = len(demo.SYNC_PROMPTS) + len(demo.ASYNC_PROMPTS)
    timings = rows["sync"] + rows["async"]
    assert [row[1] for row in timings] == demo.SYNC_PROMPTS + demo.ASYNC_PROMPTS
    model_ms = DEMO_LATENCY * 1000
    for _, prompt, miss, hit, _ in timings:
        # The first answer waited for the model; the second cannot have, so the cache
        # served it.
        assert float(miss) >= model_ms, (prompt, miss)
        assert float(hit) < model_ms / 4, (prompt, hit)
    # stats(): one entry and one hit per prompt asked twice, in both tables.
    (total,) = rows["total"]
    assert (total[1], total[-1]) == (str(asked_twice), str(asked_twice))
    by_model = rows["fake-gpt-4o-mini"]
    assert [(row[1], row[-1]) for row in by_model] == [(str(asked_twice), str(asked_twice))] * 2
    if url is None:  # the embedded default leaves a cache file to open
        assert (tmp_path / ".langchain_cache.db").exists()
        assert "sqlite3 .langchain_cache.db" in out


@pytest.fixture
def seeded_namespace(backend: Backend) -> Iterator[str]:
    namespace = unique_namespace()
    cache = SQLCache(backend.url, namespace=namespace)
    for i in range(4):
        cache.update(f"prompt {i}", LLM, [Generation(text=f"answer {i}")])
    cache.close()
    yield namespace
    SQLCache(backend.url, namespace=namespace).clear()


def test_stats_prune_clear(backend: Backend, seeded_namespace: str) -> None:
    ns = ["--url", backend.url, "--namespace", seeded_namespace]
    code, out, _ = run("stats", *ns)
    assert code == 0
    assert "cli-model" in out
    assert out.splitlines()[-1].split()[:2] == ["total", "4"]
    code, out, _ = run("stats", *ns, "--json")
    assert (code, json.loads(out)["entries"], list(json.loads(out)["models"])) == (
        0,
        4,
        ["cli-model"],
    )
    code, out, _ = run("prune", *ns, "--max-entries", "3")
    assert (code, out.strip()) == (0, "pruned 1 entries")
    result = cli_runner().invoke(main, ["clear", *ns], input="n\n")
    assert result.exit_code == EXIT_SKIPPED
    assert "not cleared" in result.stderr
    assert json.loads(run("stats", *ns, "--json")[1])["entries"] == 3
    code, out, _ = run("clear", *ns, "--older-than", "1d", "--yes")
    assert (code, out.strip()) == (0, "cleared 0 entries")
    result = cli_runner().invoke(main, ["clear", *ns, "--llm-string", LLM], input="y\n")
    assert result.exit_code == 0
    assert "cleared 3 entries" in result.stdout
    assert run("clear", *ns, "--older-than", "yesterday", "--yes")[0] == 2


def test_clear_expired_only_clear_older_than_a_date_and_prune_expired(
    backend: Backend, seeded_namespace: str
) -> None:
    ns = ["--url", backend.url, "--namespace", seeded_namespace]
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    set_entry(backend, seeded_namespace, LLM, "prompt 0", expires_at=an_hour_ago)
    code, out, _ = run("clear", *ns, "--expired-only", "--yes")
    assert (code, out.strip()) == (0, "cleared 1 entries")
    assert exported(*ns) == ["prompt 1", "prompt 2", "prompt 3"]
    set_entry(backend, seeded_namespace, LLM, "prompt 1",
              updated_at=datetime(2019, 12, 31, tzinfo=timezone.utc))  # fmt: skip
    code, out, _ = run("clear", *ns, "--older-than", "2020-01-01T00:00:00+00:00", "--yes")
    assert (code, out.strip()) == (0, "cleared 1 entries")
    assert exported(*ns) == ["prompt 2", "prompt 3"]
    # prune without caps deletes what has expired, and only that.
    set_entry(backend, seeded_namespace, LLM, "prompt 2", expires_at=an_hour_ago)
    code, out, _ = run("prune", *ns)
    assert (code, out.strip()) == (0, "pruned 1 entries")
    assert exported(*ns) == ["prompt 3"]
    assert run("prune", *ns)[1].strip() == "pruned 0 entries"


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
def test_upgrade_and_stats_in_a_schema(backend: Backend, scratch_schema: str) -> None:
    in_schema = ["--url", backend.url, "--schema", scratch_schema]
    code, out, err = run("db", "upgrade", *in_schema)
    assert (code, out.strip()) == (0, f"at {head_revision()}"), err
    assert tables(backend.url, schema=scratch_schema) == OWN_TABLES
    assert run("db", "check", *in_schema)[:2] == (0, f"up to date: {head_revision()}\n")
    namespace = unique_namespace()
    cache = SQLCache(backend.url, schema=scratch_schema, namespace=namespace, create_tables=False)
    for i in range(2):
        cache.update(f"prompt {i}", LLM, [Generation(text="in the schema")])
    cache.close()
    code, out, _ = run("stats", *in_schema, "--namespace", namespace, "--json")
    assert (code, json.loads(out)["entries"]) == (0, 2)
    # The default schema's tables hold nothing of this namespace.
    code, out, _ = run("stats", "--url", backend.url, "--namespace", namespace, "--json")
    assert (code, json.loads(out)["entries"]) == (0, 0)


def test_export_import_round_trip(backend: Backend, empty_db: str, tmp_path: Path) -> None:
    namespace = unique_namespace()
    source = SQLCache(backend.url, namespace=namespace, record_hits=True, ttl=3600)
    values: dict[str, list[Generation]] = {
        "plain": [Generation(text="plain answer")],
        "nul\x00 and 😀 and \ud800": [
            Generation(text="odd \x00 text", generation_info={"k": "\x00"})
        ],
        "chat": [
            ChatGeneration(
                message=AIMessage(
                    content="hi",
                    tool_calls=[{"name": "f", "args": {"a": 1}, "id": "c"}],
                    usage_metadata={"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
                )
            )
        ],
    }
    for prompt, value in values.items():
        source.update(prompt, LLM, value)
    assert source.lookup("plain", LLM) is not None
    source.close()
    dump = tmp_path / "cache.jsonl"
    code, _, err = run("export", "--url", backend.url, "--namespace", namespace, "-o", str(dump))
    assert code == 0, err
    assert "exported 3 entries" in err
    assert len(dump.read_text(encoding="utf-8").splitlines()) == 3
    assert run("db", "upgrade", "--url", empty_db)[0] == 0
    for _ in range(2):  # importing twice changes nothing
        code, _, err = run("import", str(dump), "--url", empty_db)
        assert code == 0, err
        assert "imported 3 entries, skipped 0 lines" in err
    target = SQLCache(empty_db, namespace=namespace, create_tables=False)
    try:
        for prompt, value in values.items():
            assert target.lookup(prompt, LLM) == value
        stats = target.stats()
        assert (stats.entries, stats.hits) == (3, 1)
    finally:
        target.close()
    records = [json.loads(line) for line in dump.read_text(encoding="utf-8").splitlines()]
    assert {r["prompt"] for r in records} == set(values)
    assert all(r["expires_at"] and r["created_at"].endswith("+00:00") for r in records)
    SQLCache(backend.url, namespace=namespace).clear()


def set_entry(
    backend: Backend, namespace: str, llm_string: str, prompt: str, **values: Any
) -> None:
    """Rewrite columns of one entry (to make it look old, or expired)."""
    engine = sync_engine(backend.url)
    try:
        with engine.begin() as connection:
            connection.execute(
                update(entry_table)
                .where(entry_table.c.key_hash == entry_key(namespace, prompt, llm_string))
                .values(**values)
            )
    finally:
        engine.dispose()


def exported(*args: str) -> list[str]:
    """The prompts `export` writes to standard output, sorted; checks its count line."""
    code, out, err = run("export", *args)
    assert code == 0, err
    prompts = sorted(json.loads(line)["prompt"] for line in out.splitlines())
    assert f"exported {len(prompts)} entries" in err
    return prompts


def test_export_filters(backend: Backend) -> None:
    namespace = unique_namespace()
    # An llm_string no other namespace has, to pick this test's entries out of all of them.
    other_llm = f"[('model', 'other-{namespace}')]"
    cache = SQLCache(backend.url, namespace=namespace)
    try:
        for i in range(3):
            cache.update(f"a{i}", LLM, [Generation(text="a")])
            cache.update(f"b{i}", other_llm, [Generation(text="b")])
        forty_days_ago = datetime.now(timezone.utc) - timedelta(days=40)
        set_entry(backend, namespace, LLM, "a0", updated_at=forty_days_ago)
        set_entry(backend, namespace, other_llm, "b0", updated_at=forty_days_ago)
        in_2020 = datetime(2020, 6, 1, tzinfo=timezone.utc)
        set_entry(backend, namespace, other_llm, "b1", updated_at=in_2020)
        ns = ["--url", backend.url, "--namespace", namespace]
        assert exported(*ns) == ["a0", "a1", "a2", "b0", "b1", "b2"]
        assert exported(*ns, "--llm-string", other_llm) == ["b0", "b1", "b2"]
        assert exported(*ns, "--older-than", "30d") == ["a0", "b0", "b1"]
        assert exported(*ns, "--older-than", "2021-01-01T00:00:00+00:00") == ["b1"]
        assert exported(*ns, "--older-than", "30d", "--llm-string", other_llm) == ["b0", "b1"]
        # Without --namespace the filters apply to every namespace.
        assert exported("--url", backend.url, "--llm-string", other_llm) == ["b0", "b1", "b2"]
        # Parsed as clear's: a duration or an ISO datetime with a zone, else a usage error.
        for bad in ("yesterday", "2021-01-01T00:00:00"):
            assert run("export", *ns, "--older-than", bad)[0] == 2
    finally:
        cache.clear()
        cache.close()


GOOD_RECORD = {
    "format": "langchain-sqlcache/1",
    "namespace": "n",
    "prompt": "p",
    "llm_string": LLM,
    "created_at": "2026-01-01T00:00:00+00:00",
    "updated_at": "2026-01-01T00:00:00+00:00",
    "generations": [{"type": "Generation", "text": "ok"}],
}


def test_import_reports_and_skips_malformed_lines(empty_db: str, tmp_path: Path) -> None:
    assert run("db", "upgrade", "--url", empty_db)[0] == 0
    good = GOOD_RECORD
    planted = {**good, "prompt": "q", "generations": [{"type": "os.system", "text": "x"}]}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "format": "other"}),
        json.dumps(planted),
        json.dumps({**good, "prompt": "r", "created_at": "2026-01-01T00:00:00"}),
        json.dumps({**good, "prompt": "s"}),
    ]
    dump = tmp_path / "mixed.jsonl"
    dump.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = run("import", str(dump), "--url", empty_db)
    assert code == EXIT_PARTIAL
    for number in (2, 3, 4, 5):
        assert f"line {number}: skipped" in err
    assert "imported 2 entries, skipped 4 lines" in err
    cache = SQLCache(empty_db, namespace="n", create_tables=False)
    assert cache.lookup("p", LLM) == [Generation(text="ok")]
    assert cache.lookup("s", LLM) == [Generation(text="ok")]
    assert cache.lookup("q", LLM) is None
    cache.close()


@pytest.mark.parametrize(
    "command",
    [["stats"], ["prune"], ["clear", "--yes"], ["export"], ["import", "-"], ["demo"]],
    ids=lambda c: c[0],
)
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not-a-url", "error: not a database URL"),
        ("postgresql://nobody@127.0.0.1:9/none", "connection failed"),
        ("postgresql+psycopg2://u@127.0.0.1:9/db", "pip install 'langchain-sqlcache[postgres]'"),
    ],
    ids=["bad-url", "unreachable", "missing-driver"],
)
def test_every_command_fails_in_one_line(command: list[str], url: str, message: str) -> None:
    code, _, err = run(*command, "--url", url)
    assert code == EXIT_ERROR, err
    assert message in err
    assert err.strip().count("\n") == 0, err
    assert "Traceback" not in err


def test_commands_name_the_upgrade_when_the_schema_is_missing(empty_db: str) -> None:
    for command in (["stats"], ["prune"], ["clear", "--yes"], ["export"]):
        code, _, err = run(*command, "--url", empty_db)
        assert code == EXIT_ERROR
        assert "langchain-sqlcache db upgrade --url" in err


def assert_one_line_error(result: tuple[int, str, str], *messages: str) -> None:
    code, _, err = result
    assert code == EXIT_ERROR, err
    assert err.strip().count("\n") == 0, err
    assert "Traceback" not in err
    for message in messages:
        assert message in err


def test_import_refuses_a_database_without_tables(empty_db: str, tmp_path: Path) -> None:
    dump = tmp_path / "one.jsonl"
    dump.write_text(json.dumps(GOOD_RECORD) + "\n", encoding="utf-8")
    assert_one_line_error(
        run("import", str(dump), "--url", empty_db), "do not exist", "db upgrade --url"
    )
    assert tables(empty_db) == set()


def test_database_at_an_older_revision(empty_db: str, tmp_path: Path) -> None:
    code, out, err = run("db", "upgrade", "0001", "--url", empty_db)
    assert (code, out.strip()) == (0, "at 0001"), err
    assert run("db", "current", "--url", empty_db)[:2] == (0, "0001\n")
    code, out, _ = run("db", "check", "--url", empty_db)
    assert code == EXIT_BEHIND
    assert out.startswith(f"behind: database at 0001, package at {head_revision()}; run: ")
    dump = tmp_path / "one.jsonl"
    dump.write_text(json.dumps(GOOD_RECORD) + "\n", encoding="utf-8")
    expected = f"expected {head_revision()}; run: langchain-sqlcache db upgrade --url"
    for command in (["import", str(dump)], ["stats"], ["prune"], ["clear", "--yes"], ["export"]):
        assert_one_line_error(run(*command, "--url", empty_db), expected)
    assert migrations.current(empty_db) == "0001"  # refused, never altered
    assert run("db", "upgrade", "--url", empty_db)[0] == 0
    assert run("db", "check", "--url", empty_db)[0] == 0


@pytest.mark.parametrize("command", ["demo", "stats", "prune", "clear", "export", "import"])
def test_help_for_every_command(command: str) -> None:
    code, out, _ = run(command, "--help")
    assert (code, "Usage:" in out) == (0, True)


# -- --schema is checked, and what the tool prints to run can be pasted into a shell ----------

NOT_A_NAME = "x;DROP TABLE llm_cache_entry"


@pytest.mark.parametrize(
    "command",
    [["current"], ["check"], ["upgrade"], ["upgrade", "--sql"], ["downgrade", "base"]],
    ids=" ".join,
)
def test_db_commands_refuse_a_schema_that_is_not_a_plain_name(
    empty_db: str, command: list[str]
) -> None:
    assert_one_line_error(
        run("db", *command, "--url", empty_db, "--schema", NOT_A_NAME),
        f"schema must be a plain SQL name (letters, digits, _ or $), not {NOT_A_NAME!r}",
    )
    assert tables(empty_db) == set()


def shell_words(command: str, cwd: Path) -> list[str]:
    """The arguments a POSIX shell finds in ``command``, pasted as it is (run by printf)."""
    result = subprocess.run(
        ["sh", "-c", f"printf '%s\\0' {command}"],  # noqa: S607 - the test's own shell
        cwd=cwd,
        capture_output=True,
        check=True,
    )
    return result.stdout.decode().split("\0")[:-1]


def printed_command(output: str) -> str:
    """The command after the last "run: " (or "look inside: ") of the output."""
    return re.split(r"(?:run|look inside): ", output.strip())[-1].splitlines()[0]


def test_printed_commands_can_be_pasted_into_a_shell(tmp_path: Path) -> None:
    # A folder name a shell would split, expand and run if it were pasted unquoted.
    folder = tmp_path / "it's a $HOME; touch pwned &"
    folder.mkdir()
    url = f"sqlite:///{folder}/cache.db"
    fix = ["langchain-sqlcache", "db", "upgrade", "--url"]
    code, out, _ = run("db", "check", "--url", url)
    assert code == EXIT_BEHIND
    *words, pasted_url = shell_words(printed_command(out), tmp_path)
    assert (words, make_url(pasted_url)) == (fix, make_url(url))
    code, _, err = run("stats", "--url", url)  # the tables' absence names the same fix
    assert code == EXIT_ERROR
    *words, pasted_url = shell_words(printed_command(err), tmp_path)
    # (with the driver the cache's engine names: sqlite+pysqlite)
    assert (words, make_url(pasted_url).database) == (fix, make_url(url).database)
    code, out, err = run("demo", "--latency", "0.001", "--url", url)
    assert code == 0, err
    assert shell_words(printed_command(out), tmp_path) == [
        "sqlite3",
        f"{folder}/cache.db",
        "SELECT * FROM llm_cache_outputs",
    ]
    assert not (tmp_path / "pwned").exists()


@pytest.fixture
def dollar_schema(backend: Backend) -> Iterator[str]:
    """A schema whose name holds a $ (a plain SQL name, but one a shell expands)."""
    name = unique_identifier("sqlcache_schema") + "$HOME"
    admin = sync_engine(backend.url).execution_options(isolation_level="AUTOCOMMIT")
    if backend.name == "mysql":  # the database must exist there (see scratch_schema)
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    yield name
    with admin.connect() as connection:
        if backend.name == "mysql":
            connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        else:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    admin.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
def test_check_prints_the_schema_shell_quoted(
    backend: Backend, dollar_schema: str, tmp_path: Path
) -> None:
    code, out, err = run("db", "check", "--url", backend.url, "--schema", dollar_schema)
    assert code == EXIT_BEHIND, err
    shown = make_url(backend.url).render_as_string(hide_password=True)
    assert shell_words(printed_command(out), tmp_path) == [
        *("langchain-sqlcache", "db", "upgrade", "--url", shown),
        *("--schema", dollar_schema),
    ]
