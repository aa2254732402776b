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
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from langchain_sqlcache.backends import backend_for
from langchain_sqlcache.backends.base import Backend
from langchain_sqlcache.codec import (
    encode_entry,
    escape_json,
    escape_text,
    rebuild_generations,
    unescape_text,
    utf8_size,
)
from langchain_sqlcache.errors import SQLCacheError
from langchain_sqlcache.failsafe import kind_of
from langchain_sqlcache.settings import EntryFilter, checked_namespace
from langchain_sqlcache.statements import (
    FilterShape,
    matching_count,
    matching_page,
    statements_for,
    transfer_statements,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection, Row

    from langchain_sqlcache.cache import SQLCache
    from langchain_sqlcache.store import Store

FORMAT = "langchain-sqlcache/2"
# Documents with real strings and no tags, written before the codec's tagged values.
PLAIN_FORMAT = "langchain-sqlcache/1"
EXPORT_PAGE = 1000
IMPORT_BATCH = 500


def selection(cache: SQLCache, *, all_namespaces: bool, **filters: Any) -> EntryFilter:
    """The entries an export reads.

    The cache's namespace (or every namespace), narrowed by ``clear()``'s filters:
    ``llm_string=``, ``older_than=`` (aware datetime or timedelta), ``expired_only=True``,
    parsed by the same code as ``clear()``.
    """
    return cache.settings.entry_filter(all_namespaces=all_namespaces, **filters)


def count(cache: SQLCache, *, all_namespaces: bool, **filters: Any) -> int:
    """How many entries an export would write (filters as in :func:`selection`)."""
    which = selection(cache, all_namespaces=all_namespaces, **filters)
    return sum(store.read(count_entries, which) for store in cache.topology.primaries)


def export_records(
    cache: SQLCache, *, all_namespaces: bool, **filters: Any
) -> Iterator[dict[str, Any]]:
    """Every entry selected (see :func:`selection`), oldest first, a page at a time.

    Each page is read under the store's retries, as import's batches are written. A sharded
    cache's entries come shard after shard, each shard's oldest first.
    """
    which = selection(cache, all_namespaces=all_namespaces, **filters)
    for store in cache.topology.primaries:
        after_id = 0
        while True:
            entries, generations = store.read(read_page, which, after_id, EXPORT_PAGE)
            if not entries:
                break
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
    """What an import did: lines written, and lines reported and skipped."""

    imported: int = 0
    skipped: int = 0


class InvalidLine(ValueError):
    """A line that is not a record the cache can import; the message says why."""


# A line's value, ready to write: its line number, entry row and generation rows.
Pending = tuple[int, dict[str, Any], list[dict[str, Any]]]


def import_lines(
    cache: SQLCache,
    lines: Iterable[bytes | str],
    *,
    keep_namespaces: bool = True,
    on_skip: Callable[[int, str], None] | None = None,
) -> ImportResult:
    """Import JSON Lines; each line that cannot be imported is reported and skipped.

    Every line is checked on its own (UTF-8, JSON, the record's fields, the namespace rules
    of the cache's constructor, and on MySQL the server's packet size, before anything is
    sent); lines go to the database in batches, and a batch the database refuses is written
    again line by line, so that only the lines it refuses are skipped. Each skipped line is
    reported through ``on_skip`` with its number (from 1) and a one-line reason. Entries are
    upserted by key, so importing the same file twice leaves the same cache.

    Raises:
        ConfigurationError: A configuration problem (missing tables, ...).
        SQLAlchemyError: A database still unavailable after retries (or
            CacheUnavailableError): the batches before are written, the rest are not.

    """
    result = ImportResult()

    def skip(number: int, reason: str) -> None:
        result.skipped += 1
        if on_skip is not None:
            on_skip(number, reason)

    # Each shard's backend and packet limit (None but where the server caps packets: MySQL).
    limits: dict[int, tuple[Backend, int | None]] = {}
    for database in cache.topology.databases:
        writer = database.primary.ready().writer
        backend = backend_for(writer.dialect)
        limits[id(database)] = backend, backend.packet_limit(writer)

    def limit_of(key_hash: str) -> tuple[Backend, int | None]:
        return limits[id(cache.topology.for_key(key_hash))]

    pending: dict[str, Pending] = {}
    for number, line in enumerate(lines, start=1):
        try:
            value = _value_of(line, cache, keep_namespaces, limit_of)
        except Exception as exc:  # noqa: BLE001 - any bad line is reported, then skipped
            skip(number, _reason(exc))
            continue
        if value is None:  # a blank line
            continue
        entry_row, generation_rows = value
        key = entry_row["key_hash"]
        if key in pending or len(pending) >= IMPORT_BATCH:
            # A key twice in one batch would make one upsert statement touch a row twice;
            # and written in order, a later line of a key replaces the earlier one.
            result.imported += _write_batch(cache, list(pending.values()), skip)
            pending = {}
        pending[key] = (number, entry_row, generation_rows)
    result.imported += _write_batch(cache, list(pending.values()), skip)
    return result


def _write_batch(cache: SQLCache, batch: list[Pending], skip: Callable[[int, str], None]) -> int:
    """Write a batch, each shard's part in one transaction (see :func:`_write_part`).

    Returns how many lines were written; the ones the database refuses go to ``skip``.
    """
    keys = [entry_row["key_hash"] for _, entry_row, _ in batch]
    return sum(
        _write_part(database.primary, [batch[i] for i in positions], skip)
        for database, positions in cache.topology.by_database(keys)
    )


def _write_part(store: Store, batch: list[Pending], skip: Callable[[int, str], None]) -> int:
    """Write a batch in one transaction; if the database refuses it, line by line."""
    if not batch:
        return 0
    try:
        store.write(write_values, [(entry_row, rows) for _, entry_row, rows in batch])
    except Exception as exc:
        if not _refused(exc):
            raise
    else:
        return len(batch)
    written = 0
    for number, entry_row, rows in batch:
        try:
            store.write(write_values, [(entry_row, rows)])
        except Exception as exc:
            if not _refused(exc):
                raise
            skip(number, f"refused by the database: {_reason(exc)}")
        else:
            written += 1
    return written


def _refused(exc: BaseException) -> bool:
    """Whether the database (or the driver, binding it) refused the values themselves.

    An outage (the server unavailable, a timeout, every connection busy, the breaker open)
    holds for every line, and so does a configuration error: they end the import rather
    than skipping lines. The failure policy's classification decides which is which.
    """
    return kind_of(exc) not in (*OUTAGES, None)


# Failures that say nothing about a line (see failsafe.Kind).
OUTAGES = ("unavailable", "timeout", "busy", "circuit_open")


# A bound on the bytes a line's values take in MySQL's packets per byte of the line: JSON
# escapes, escape_text's ASCII form and the driver's backslashes at most triple and double
# them. A line under limit / 8 cannot reach the limit, and skips measuring its values.
WIRE_BYTES_PER_LINE_BYTE = 8
# The most characters of a reason: one line of stderr, whatever the error's size.
REASON_LENGTH = 300


def _reason(exc: BaseException) -> str:
    """One line that says why: the driver's error rather than SQLAlchemy's wrapping.

    Our own errors' messages say it alone; anything else is named by its type.
    """
    cause = getattr(exc, "orig", None) or exc
    detail = " ".join(str(cause).split())
    if isinstance(cause, (InvalidLine, SQLCacheError)) and detail:
        reason = detail
    else:
        reason = f"{type(cause).__name__}: {detail}" if detail else type(cause).__name__
    return reason if len(reason) <= REASON_LENGTH else reason[: REASON_LENGTH - 3] + "..."


def _value_of(
    line: bytes | str,
    cache: SQLCache,
    keep_namespaces: bool,
    limit_of: Callable[[str], tuple[Backend, int | None]],
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The rows of one line, checked against its shard's packet limit; None for a blank line."""
    size = len(line) if isinstance(line, bytes) else utf8_size(line)
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            msg = f"not UTF-8: byte 0x{exc.object[exc.start]:02x} at column {exc.start + 1}"
            raise InvalidLine(msg) from None
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        msg = f"not JSON: {exc.msg} at column {exc.colno}"
        raise InvalidLine(msg) from None
    entry_row, generation_rows = _rows_of(record, cache, keep_namespaces)
    backend, limit = limit_of(entry_row["key_hash"])
    if limit is not None and size * WIRE_BYTES_PER_LINE_BYTE + backend.packet_overhead > limit:
        backend.check_value_size_within(limit, entry_row, generation_rows, one_packet=False)
    return entry_row, generation_rows


def _rows_of(
    record: Any, cache: SQLCache, keep_namespaces: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not isinstance(record, dict) or record.get("format") not in (FORMAT, PLAIN_FORMAT):
        msg = f"not a {FORMAT} record"
        raise InvalidLine(msg)
    # The API's rules: a namespace the constructor would refuse is refused here too.
    namespace = checked_namespace(record.get("namespace")) if keep_namespaces else cache.namespace
    prompt, llm_string = _string(record, "prompt"), _string(record, "llm_string")
    generations = record.get("generations")
    if not isinstance(generations, list) or not generations:
        msg = "generations is not a non-empty list"
        raise InvalidLine(msg)
    if not all(isinstance(g, dict) for g in generations):
        msg = "a generation is not an object"
        raise InvalidLine(msg)
    # Format 2 holds the documents as stored; format 1 held them unescaped.
    stored: Callable[[Any], Any] = _as_stored if record["format"] == FORMAT else escape_json
    rows = [
        (
            g.get("type"),
            escape_text(_string(g, "text")),
            stored(g.get("generation_info")),
            stored(g.get("message")),
        )
        for g in generations
    ]
    try:
        # The allowlisted decoder, as for a row read from the database.
        value = rebuild_generations(rows, models=cache.settings.models)
    except Exception as exc:
        msg = f"its generations cannot be rebuilt ({_reason(exc)})"
        raise InvalidLine(msg) from exc
    entry_row, generation_rows = encode_entry(
        namespace,
        prompt,
        llm_string,
        value,
        created_at=_instant(record, "created_at"),
        updated_at=_instant(record, "updated_at"),
        expires_at=_optional_instant(record, "expires_at"),
        secret=cache.settings.key_secret,
        models=cache.settings.models,
    )
    hit_count = record.get("hit_count", 0)
    if not isinstance(hit_count, int) or isinstance(hit_count, bool) or hit_count < 0:
        msg = f"hit_count is not a count: {hit_count!r}"
        raise InvalidLine(msg)
    entry_row["hit_count"] = hit_count
    entry_row["last_hit_at"] = _optional_instant(record, "last_hit_at")
    return entry_row, generation_rows


def _as_stored(document: Any) -> Any:
    return document


def _string(record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        msg = f"{name} is not a string"
        raise InvalidLine(msg)
    return value


def _instant(record: dict[str, Any], name: str) -> datetime:
    """An ISO timestamp with a time zone, in UTC (so that an instant out of range fails here)."""
    value = record.get(name)
    if not isinstance(value, str):
        msg = f"{name} is not an ISO timestamp"
        raise InvalidLine(msg)
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        msg = f"{name} has no time zone: {value!r}"
        raise InvalidLine(msg)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        msg = f"{name} is out of range in UTC: {value!r}"
        raise InvalidLine(msg) from None


def _optional_instant(record: dict[str, Any], name: str) -> datetime | None:
    return None if record.get(name) is None else _instant(record, name)


# -- the statements' runners: one page out, one batch in -----------------------------------


def read_page(
    connection: Connection, which: EntryFilter, after_id: int, batch: int
) -> tuple[list[Row[Any]], dict[int, list[Row[Any]]]]:
    """One page of the entries after ``after_id`` that ``which`` selects, with their generations."""
    params = which.params()
    page = matching_page(FilterShape.of(params))
    entries = connection.execute(page, {**params, "after_id": after_id, "batch": batch}).all()
    generations: dict[int, list[Row[Any]]] = {}
    if entries:
        statements = transfer_statements(connection.dialect.name)
        ids = {"ids": [row.id for row in entries]}
        for row in connection.execute(statements.generations_of_ids, ids):
            generations.setdefault(row.entry_id, []).append(row)
    return list(entries), generations


def count_entries(connection: Connection, which: EntryFilter) -> int:
    """How many entries ``which`` selects."""
    params = which.params()
    return int(connection.execute(matching_count(FilterShape.of(params)), params).scalar_one())


def write_values(
    connection: Connection, values: list[tuple[dict[str, Any], list[dict[str, Any]]]]
) -> None:
    """Write many (entry row, generation rows) values in four statements."""
    if not values:
        return
    statements = transfer_statements(connection.dialect.name)
    upserted = connection.execute(statements.upsert_entries, [entry_row for entry_row, _ in values])
    if upserted.returns_rows:
        ids = {key: entry_id for entry_id, key in upserted}
    else:
        keys = [entry_row["key_hash"] for entry_row, _ in values]
        ids = {key: entry_id for entry_id, key in connection.execute(
            statements.ids_of_keys, {"keys": keys}
        )}  # fmt: skip
    connection.execute(
        statements_for(connection.dialect.name).delete_generations_of_ids,
        {"ids": list(ids.values())},
    )
    generation_rows = [
        {**row, "entry_id": ids[entry_row["key_hash"]]}
        for entry_row, rows in values
        for row in rows
    ]
    if generation_rows:
        connection.execute(statements_for(connection.dialect.name).insert_generations,
                           generation_rows)  # fmt: skip
