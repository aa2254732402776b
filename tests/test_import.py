"""`langchain-sqlcache import` takes each line on its own: a bad one is reported and skipped."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from langchain_sqlcache import SQLCache, transfer
from langchain_sqlcache.cli import EXIT_PARTIAL, main
from langchain_sqlcache.models import NAMESPACE_MAX_LENGTH
from tests.conftest import Backend, cli_runner, unique_namespace

LLM = "[('model', 'import-model')]"
# More than the database's BIGINT holds (hit_count is one on every backend).
OUT_OF_RANGE = 2**63


@pytest.fixture
def namespace(backend: Backend) -> Iterator[str]:
    """The namespace this test imports into, emptied afterwards."""
    name = unique_namespace()
    cache = SQLCache(backend.url, namespace=name)
    cache.stats()  # the tables exist (the command never creates them)
    cache.close()
    yield name
    cache = SQLCache(backend.url, namespace=name)
    cache.clear()
    cache.close()


def record(namespace: str, prompt: str, text: str = "ok", **fields: Any) -> dict[str, Any]:
    return {
        "format": "langchain-sqlcache/1",
        "namespace": namespace,
        "prompt": prompt,
        "llm_string": LLM,
        "created_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-01T00:00:00+00:00",
        "hit_count": 0,
        "generations": [{"type": "Generation", "text": text}],
        **fields,
    }


def line(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode() + b"\n"


def import_file(
    url: str, tmp_path: Path, lines: list[bytes], *args: str
) -> tuple[int, dict[int, str], str]:
    """Run the command on a file of ``lines``: its exit code, skip reasons by line, summary."""
    source = tmp_path / "import.jsonl"
    source.write_bytes(b"".join(lines))
    result = cli_runner().invoke(
        main, ["import", str(source), "--url", url, *args], catch_exceptions=False
    )
    assert "Traceback" not in result.stderr
    skipped: dict[int, str] = {}
    summary = ""
    for output in result.stderr.splitlines():
        if output.startswith("line "):
            number, reason = output.removeprefix("line ").split(": skipped: ", 1)
            skipped[int(number)] = reason
        elif output.startswith("imported "):
            summary = output
    return result.exit_code, skipped, summary


def stored(url: str, namespace: str) -> dict[str, Sequence[Generation] | None]:
    """What the namespace holds, by prompt."""
    cache = SQLCache(url, namespace=namespace, create_tables=False)
    try:
        exported = transfer.export_records(cache, all_namespaces=False)
        return {r["prompt"]: cache.lookup(r["prompt"], LLM) for r in exported}
    finally:
        cache.close()


def test_each_line_that_cannot_be_imported_is_reported_and_skipped(
    backend: Backend, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small batches, so that the database's refusal falls in the middle of one, with lines
    # of the same batch before it and batches after it.
    monkeypatch.setattr(transfer, "IMPORT_BATCH", 4)
    lines = [
        line(record(namespace, "p1")),
        b'{"format": "langchain-sqlcache/1", "prompt": "caf\xe9"}\n',  # Latin-1, not UTF-8
        line(record(namespace, "p3")),
        b"{not json\n",
        line(record("n" * (NAMESPACE_MAX_LENGTH + 1), "p5")),
        # The constructor refuses a namespace that ends with a space: so does import.
        line(record(namespace + " ", "p6")),
        line(record(namespace, "p7")),
        line(record(namespace, "p8", hit_count=OUT_OF_RANGE)),
        line(record(namespace, "p9")),
        line(record(namespace, "p10")),
        b"\n",
        line(record(namespace, "p12")),
    ]
    code, skipped, summary = import_file(backend.url, tmp_path, lines)
    assert code == EXIT_PARTIAL
    assert sorted(skipped) == [2, 4, 5, 6, 8]
    assert skipped[2] == "not UTF-8: byte 0xe9 at column 50"
    assert skipped[4].startswith("not JSON: ")
    assert f"at most {NAMESPACE_MAX_LENGTH} characters" in skipped[5]
    assert "must not end with a space" in skipped[6]
    assert skipped[8].startswith("refused by the database: ")
    assert summary == "imported 6 entries, skipped 5 lines"
    assert stored(backend.url, namespace) == {
        prompt: [Generation(text="ok")] for prompt in ("p1", "p3", "p7", "p9", "p10", "p12")
    }


def test_a_line_the_database_refuses_leaves_the_earlier_line_of_its_key(
    backend: Backend, namespace: str, tmp_path: Path
) -> None:
    # Lines are written in order: the refused one does not take the earlier one with it.
    lines = [
        line(record(namespace, "p", text="first")),
        line(record(namespace, "p", text="second", hit_count=OUT_OF_RANGE)),
        line(record(namespace, "q")),
        line(record(namespace, "q", text="replaced")),
    ]
    code, skipped, summary = import_file(backend.url, tmp_path, lines)
    assert (code, sorted(skipped), summary) == (
        EXIT_PARTIAL,
        [2],
        "imported 3 entries, skipped 1 lines",
    )
    assert stored(backend.url, namespace) == {
        "p": [Generation(text="first")],
        "q": [Generation(text="replaced")],
    }


def test_namespace_rules_apply_to_the_namespace_a_line_goes_to(
    backend: Backend, namespace: str, tmp_path: Path
) -> None:
    lines = [line(record(namespace + " ", "p")), line(record("n" * 300, "q"))]
    code, skipped, summary = import_file(backend.url, tmp_path, lines, "--namespace", namespace)
    assert (code, skipped, summary) == (0, {}, "imported 2 entries, skipped 0 lines")
    assert set(stored(backend.url, namespace)) == {"p", "q"}


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"down": value}
    return value


def test_values_some_backends_refuse_never_stop_the_import(
    backend: Backend, namespace: str, tmp_path: Path
) -> None:
    # JSON nested 40 levels (MariaDB's JSON_VALID stops at 32) and token counts over 2**31
    # (INTEGER columns): each is imported where the database takes it, else skipped.
    usage = {"input_tokens": 2**40, "output_tokens": 1, "total_tokens": 2**40 + 1}
    doubtful = {
        "deep": [Generation(text="deep", generation_info=deep(40))],
        "tokens": [ChatGeneration(message=AIMessage(content="many", usage_metadata=usage))],
    }
    message = {"type": "ai", "usage_metadata": usage}
    exported = [
        record(
            namespace,
            "deep",
            generations=[{"type": "Generation", "text": "deep", "generation_info": deep(40)}],
        ),
        record(
            namespace,
            "tokens",
            generations=[{"type": "ChatGeneration", "text": "many", "message": message}],
        ),
    ]
    good = [record(namespace, f"good {i}") for i in range(3)]
    lines = [line(r) for r in (good[0], *exported, good[1])] + [line(good[2])]
    code, skipped, summary = import_file(backend.url, tmp_path, lines)
    found = stored(backend.url, namespace)
    assert all(found[r["prompt"]] == [Generation(text="ok")] for r in good)
    for number, prompt in ((2, "deep"), (3, "tokens")):
        if number in skipped:
            assert skipped[number].startswith("refused by the database: ")
            assert prompt not in found
        else:
            assert found[prompt] == doubtful[prompt]
    assert code == (EXIT_PARTIAL if skipped else 0)
    assert summary == f"imported {len(found)} entries, skipped {len(skipped)} lines"


def test_standard_input_and_an_invalid_utf8_line(backend: Backend, namespace: str) -> None:
    data = line(record(namespace, "p")) + b"\xff\xfe\n" + line(record(namespace, "q"))
    result = cli_runner().invoke(
        main, ["import", "-", "--url", backend.url], input=data, catch_exceptions=False
    )
    assert result.exit_code == EXIT_PARTIAL, result.stderr
    assert "line 2: skipped: not UTF-8: byte 0xff at column 1\n" in result.stderr
    assert set(stored(backend.url, namespace)) == {"p", "q"}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_a_line_over_the_packet_size_is_skipped_before_it_is_sent(
    backend: Backend, namespace: str, tmp_path: Path
) -> None:
    huge = "x" * (70 << 20)  # over the test server's 64 MiB max_allowed_packet
    lines = [
        line(record(namespace, "p1")),
        line(record(namespace, "p2", text=huge)),
        line(record(namespace, "p3")),
    ]
    code, skipped, summary = import_file(backend.url, tmp_path, lines)
    assert (code, sorted(skipped), summary) == (
        EXIT_PARTIAL,
        [2],
        "imported 2 entries, skipped 1 lines",
    )
    # Refused by the check, not by a server that dropped the connection.
    assert skipped[2].startswith("a value of about ")
    assert "exceeds the server's max_allowed_packet" in skipped[2]
    assert skipped[2].endswith("; not sent")
    assert set(stored(backend.url, namespace)) == {"p1", "p3"}


def test_an_outage_ends_the_import_instead_of_skipping_lines(tmp_sqlite_url: str) -> None:
    # A database locked by another writer past the busy timeout: a transient failure that
    # retries do not get through. No line is to blame, so none is skipped.
    cache = SQLCache(tmp_sqlite_url, on_error="raise", connect_args={"timeout": 0.05})
    cache.stats()  # tables made, and the schema checked, before the lock is taken
    locker = sqlite3.connect(make_url(tmp_sqlite_url).database or "", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    skipped: list[int] = []
    try:
        lines = [line(record("", f"p{i}")) for i in range(3)]
        with pytest.raises(OperationalError, match="database is locked"):
            transfer.import_lines(cache, lines, on_skip=lambda number, _: skipped.append(number))
    finally:
        locker.rollback()
        locker.close()
        cache.close()
    assert skipped == []
