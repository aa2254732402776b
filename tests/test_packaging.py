"""The wheel carries the migrations: pip users migrate without the repository."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from langchain_sqlcache.migrations import head_revision

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_wheel_migrates_without_the_repository(tmp_path: Path) -> None:
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("langchain_sqlcache-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "langchain_sqlcache/_alembic/env.py" in names
    assert "langchain_sqlcache/_alembic/script.py.mako" in names
    assert any(n.startswith("langchain_sqlcache/_alembic/versions/0001") for n in names)
    assert "langchain_sqlcache/py.typed" in names
    site = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         str(wheel)], cwd=tmp_path)  # fmt: skip
    # Far from the repository, with only the installed wheel (and its dependencies).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("LANGCHAIN_SQLCACHE_URL", None)
    cli = [sys.executable, "-c", "from langchain_sqlcache.cli import main; main()"]
    where = run(
        [sys.executable, "-c",
         "from langchain_sqlcache.migrations import script_location; print(script_location())"],
        cwd=elsewhere, env=env,
    )  # fmt: skip
    assert Path(where.strip()).is_relative_to(site)
    url = f"sqlite:///{elsewhere / 'cache.db'}"
    run([*cli, "db", "upgrade", "--url", url], cwd=elsewhere, env=env)
    assert run([*cli, "db", "current", "--url", url], cwd=elsewhere, env=env).strip() == (
        head_revision()
    )
    run([*cli, "db", "check", "--url", url], cwd=elsewhere, env=env)
