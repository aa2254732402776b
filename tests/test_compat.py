"""SQLAlchemy's non-public names stay in one module, so a release that moves them breaks one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "langchain_sqlcache"
INTERNALS = PACKAGE / "sqlalchemy_internals.py"
# Modules of SQLAlchemy that are not its public API, and attributes of its objects that are
# not either (compiled statement internals, the error factory a Connection uses).
PRIVATE_MODULES = ("sqlalchemy.util", "sqlalchemy.sql.compiler", "sqlalchemy.engine.default")
PRIVATE_ATTRIBUTES = {"positiontup", "binds", "greenlet_spawn", "await_only", "await_"}


def private_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "sqlalchemy" and (
                node.module.startswith(PRIVATE_MODULES) or any(p.startswith("_") for p in parts)
            ):
                found.append(f"{path.name}:{node.lineno} from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "instance"
            and isinstance(node.value, ast.Name)
            and node.value.id == "DBAPIError"
        ):
            found.append(f"{path.name}:{node.lineno} DBAPIError.instance")
    return found


def test_only_sqlalchemy_internals_uses_private_sqlalchemy_names() -> None:
    others = [p for p in sorted(PACKAGE.glob("*.py")) if p != INTERNALS]
    assert others
    assert [use for path in others for use in private_uses(path)] == []
    # And the scan does see them where they are.
    assert len(private_uses(INTERNALS)) >= 3
