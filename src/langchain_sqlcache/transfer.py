"""Moving a cache between databases as JSON Lines, in bounded memory.

One line per entry::

    {"format": "langchain-sqlcache/1", "namespace": "", "prompt": "...", "llm_string": "...",
     "created_at": "2026-11-26T21:00:00+00:00", "updated_at": "...", "expires_at": null,
     "hit_count": 0, "last_hit_at": null,
     "generations": [{"type": "ChatGeneration", "text": "...", "generation_info": {...},
                      "message": {...}}]}

``namespace``, ``prompt``, ``llm_string`` and ``text`` are the real strings (JSON escapes NUL
and lone surrogates); ``generation_info`` and ``message`` are the documents as the cache stores
them (see ``codec``: tagged values, escaped strings; ``content`` left out when it equals
``text``). Lines of format ``langchain-sqlcache/1`` (plain documents with real strings, from
earlier versions) are read too. Import rebuilds every value through the cache's allowlisted
decoder, so a file is untrusted input like a row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from langchain_sqlcache.codec import (
    decode_generations,
    encode_entry,
    escape_json,
    escape_text,
    unescape_text,
)
from langchain_sqlcache.statements import count_entries, read_page, write_values

if TYPE_CHECKING:
    from sqlalchemy import Row

    from langchain_sqlcache.cache import SQLCache

FORMAT = "langchain-sqlcache/2"
# Documents with real strings and no tags, written before the codec's tagged values.
PLAIN_FORMAT = "langchain-sqlcache/1"
EXPORT_PAGE = 1000
IMPORT_BATCH = 500


def selection(cache: SQLCache, *, all_namespaces: bool, **filters: Any) -> dict[str, Any]:
    """The entries an export reads, as the statements' bind parameters.

    The cache's namespace (or every namespace), narrowed by ``clear()``'s filters:
    ``llm_string=``, ``older_than=`` (aware datetime or timedelta), ``expired_only=True``,
    parsed by the same code as ``clear()``.
    """
    params = cache._clear_filters(filters)
    if not all_namespaces:
        params["namespace"] = escape_text(cache.namespace)
    return params


def count(cache: SQLCache, *, all_namespaces: bool, **filters: Any) -> int:
    """How many entries an export would write (filters as in :func:`selection`)."""
    params = selection(cache, all_namespaces=all_namespaces, **filters)
    with cache._ready_engines().reader.connect() as connection:
        return count_entries(connection, params)


def export_records(
    cache: SQLCache, *, all_namespaces: bool, **filters: Any
) -> Iterator[dict[str, Any]]:
    """Every entry selected (see :func:`selection`), oldest first, a page at a time."""
    params = selection(cache, all_namespaces=all_namespaces, **filters)
    engine = cache._ready_engines().reader
    after_id = 0
    while True:
        with engine.connect() as connection:
            entries, generations = read_page(connection, params, after_id, EXPORT_PAGE)
        if not entries:
            return
        for row in entries:
            yield _record(row, generations.get(row.id, []))
        after_id = entries[-1].id


def _record(entry: Row[Any], generations: list[Row[Any]]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "namespace": unescape_text(entry.namespace),
        "prompt": unescape_text(entry.prompt),
        "llm_string": unescape_text(entry.llm_string),
        "created_at": _iso(entry.created_at),
        "updated_at": _iso(entry.updated_at),
        "expires_at": _iso(entry.expires_at),
        "hit_count": entry.hit_count,
        "last_hit_at": _iso(entry.last_hit_at),
        "generations": [
            {
                "type": g.generation_type,
                "text": unescape_text(g.text),
                "generation_info": g.generation_info,
                "message": g.message,
            }
            for g in generations
        ],
    }


def to_line(record: dict[str, Any]) -> str:
    """One JSON line, readable UTF-8 unless a lone surrogate forces ASCII escapes."""
    line = json.dumps(record, ensure_ascii=False)
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            line = json.dumps(record)
    return line + "\n"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass
class ImportResult:
    """What an import did."""

    imported: int = 0
    skipped: int = 0


def import_lines(
    cache: SQLCache,
    lines: Iterable[str],
    *,
    keep_namespaces: bool = True,
    on_skip: Callable[[int, str], None] | None = None,
) -> ImportResult:
    """Import JSON Lines; a malformed line is reported through ``on_skip`` and skipped.

    Entries are upserted by key, so importing the same file twice leaves the same cache.
    """
    result = ImportResult()
    pending: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry_row, generation_rows = _values_of(json.loads(line), cache, keep_namespaces)
        except Exception as exc:  # noqa: BLE001 - any bad line is reported, then skipped
            result.skipped += 1
            if on_skip is not None:
                on_skip(number, f"{type(exc).__name__}: {exc}")
            continue
        # A key twice in one batch would make one upsert statement touch a row twice.
        pending[entry_row["key_hash"]] = (entry_row, generation_rows)
        result.imported += 1
        if len(pending) >= IMPORT_BATCH:
            cache._write(write_values, list(pending.values()))
            pending = {}
    cache._write(write_values, list(pending.values()))
    return result


def _values_of(
    record: Any, cache: SQLCache, keep_namespaces: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not isinstance(record, dict) or record.get("format") not in (FORMAT, PLAIN_FORMAT):
        msg = f"not a {FORMAT} record"
        raise ValueError(msg)
    stored: Callable[[Any], Any] = _as_stored if record["format"] == FORMAT else escape_json
    rows = [
        (
            g["type"],
            escape_text(g["text"]),
            stored(g.get("generation_info")),
            stored(g.get("message")),
        )
        for g in record["generations"]
    ]
    value = decode_generations(rows, key_hash="(import)", models=cache._models) if rows else None
    if value is None:
        msg = "its generations cannot be rebuilt"
        raise ValueError(msg)
    namespace = record["namespace"] if keep_namespaces else cache.namespace
    for name in ("namespace", "prompt", "llm_string"):
        if not isinstance(record[name], str):
            msg = f"{name} is not a string"
            raise TypeError(msg)
    expires = record.get("expires_at")
    entry_row, generation_rows = encode_entry(
        namespace,
        record["prompt"],
        record["llm_string"],
        value,
        created_at=_aware(record["created_at"]),
        updated_at=_aware(record["updated_at"]),
        expires_at=_aware(expires) if expires else None,
        secret=cache._key_secret,
        models=cache._models,
    )
    entry_row["hit_count"] = int(record.get("hit_count") or 0)
    last_hit = record.get("last_hit_at")
    entry_row["last_hit_at"] = _aware(last_hit) if last_hit else None
    return entry_row, generation_rows


def _as_stored(document: Any) -> Any:
    return document


def _aware(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        msg = f"timestamp without a time zone: {value!r}"
        raise ValueError(msg)
    return parsed
