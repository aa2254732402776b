"""Every SQLAlchemy name the cache uses that is not SQLAlchemy's documented public API.

Covers SQLAlchemy 2.0.30 to 2.1.x (the range pyproject.toml declares; the test matrix runs
the floor and the newest). Nothing else in the package imports a private SQLAlchemy name, so
a SQLAlchemy release that moves one of these breaks this module alone, and its tests say so.

- The greenlet helpers (``sqlalchemy.util``): the async methods hand a whole operation to
  SQLAlchemy's greenlet once (``greenlet_spawn``), and the aiosqlite fast path awaits the
  driver from inside it (``await_only``; 2.1 also calls it ``await_``, the same function).
- Compiled statement internals (``SQLCompiler.positiontup``, ``.binds``): the hot paths
  compile each statement once and send it straight to the driver's cursor.
- Pool behaviour on return for autocommit connections: ``skip_autocommit_rollback`` exists
  from 2.0.43; before it, ``pool_reset_on_return=None`` does what the lookup pool needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import await_only, greenlet_spawn

__all__ = [
    "SQLALCHEMY_VERSION",
    "CompiledForDriver",
    "autocommit_pool_options",
    "await_only",
    "compile_for_driver",
    "greenlet_spawn",
]

SQLALCHEMY_VERSION: tuple[int, ...] = tuple(
    int(part) for part in sqlalchemy.__version__.split(".")[:3] if part.isdigit()
)


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


def autocommit_pool_options() -> dict[str, Any]:
    """Engine options that return an autocommit connection to its pool without a ROLLBACK.

    A connection in autocommit has no transaction to end; the ROLLBACK that a pool sends on
    return by default would be a second round trip per lookup on MySQL.
    """
    if SQLALCHEMY_VERSION >= (2, 0, 43):
        return {"skip_autocommit_rollback": True}
    return {"pool_reset_on_return": None}
