"""Every SQLAlchemy name the cache uses that is not SQLAlchemy's documented public API.

Covers SQLAlchemy 2.0.47 to 2.1.x (the range pyproject.toml declares; the test matrix runs
the floor, the newest 2.0 and the newest 2.1). Nothing else in the package imports a
private SQLAlchemy name, so a SQLAlchemy release that moves one of these breaks this module
alone, and its tests say so.

- The greenlet helpers (``sqlalchemy.util``): the async methods hand a whole operation to
  SQLAlchemy's greenlet once (``greenlet_spawn``), and the aiosqlite fast path awaits the
  driver from inside it (``await_only``; 2.1 also calls it ``await_``, the same function).
- Compiled statement internals (``SQLCompiler.positiontup``, ``.binds``): the hot paths
  compile each statement once and send it straight to the driver's cursor.
- The translation of a driver's error into SQLAlchemy's (``DBAPIError.instance``, what a
  ``Connection`` does), for the statements the fast path sends without one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import await_only, greenlet_spawn

__all__ = [
    "CompiledForDriver",
    "as_sqlalchemy_error",
    "await_only",
    "compile_for_driver",
    "greenlet_spawn",
]


@dataclass(frozen=True)
class CompiledForDriver:
    """One statement compiled for a dialect, in the pieces a DBAPI cursor needs."""

    sql: str
    positions: tuple[str, ...]
    """Bind names in the order of a positional paramstyle; empty for a named one."""
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]
    """The bind processors of the dialect's types, by bind name."""
    constants: tuple[tuple[str, Any], ...]
    """Values bound by the statement itself (a literal such as coalesce(..., 0))."""


def compile_for_driver(
    statement: ClauseElement, dialect: Dialect, schema: str | None
) -> CompiledForDriver:
    """Compile ``statement`` for ``dialect``, with ``schema`` rendered in place of the default."""
    options: dict[str, Any] = (
        {"schema_translate_map": {None: schema}, "render_schema_translate": True} if schema else {}
    )
    compiled = cast(SQLCompiler, statement.compile(dialect=dialect, **options))
    processors: dict[str, Callable[[Any], Any]] = {}
    constants: dict[str, Any] = {}
    for bind_name, bind in compiled.binds.items():
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors[bind_name] = process
        if not bind.required:
            constants[bind_name] = bind.effective_value
    return CompiledForDriver(
        compiled.string,
        tuple(compiled.positiontup or ()),
        tuple(processors.items()),
        tuple(constants.items()),
    )


def as_sqlalchemy_error(
    error: Exception,
    dialect: Dialect,
    statement: str | None,
    parameters: Any,
    *,
    invalidated: bool,
) -> BaseException:
    """The driver's ``error`` as SQLAlchemy raises it (OperationalError, IntegrityError, ...)."""
    return DBAPIError.instance(
        statement,
        parameters,
        error,
        dialect.loaded_dbapi.Error,
        connection_invalidated=invalidated,
        dialect=dialect,
    )
