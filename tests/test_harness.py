"""The test harness itself: an unreachable server skips locally and fails under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_suite_against_dead_postgres(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    env["SQLCACHE_TEST_POSTGRES_URL"] = "postgresql://postgres@127.0.0.1:9/test"
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "tests/test_standard_suites.py",
            "-k",
            "TestSyncCacheSuite and test_cache_hit and postgresql",
            "-rs",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(("ci", "fails"), [(None, False), ("true", True)])
def test_unreachable_backend(ci: str | None, fails: bool) -> None:
    result = run_suite_against_dead_postgres(ci)
    output = result.stdout + result.stderr
    if fails:
        assert result.returncode == 1, output
        assert "CI=true and postgresql at postgresql://postgres@127.0.0.1:9/test" in output
    else:
        assert result.returncode == 0, output
        assert "1 skipped" in output
        assert "does not answer" in output
