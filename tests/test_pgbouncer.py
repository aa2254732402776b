"""Postgres behind a real PgBouncer in transaction mode, started by the tests on a spare port.

PgBouncer hands each transaction whichever server connection is free, so a named prepared
statement made on one server connection is missing on the next. The tests pin the server
connection a client used, which makes that certain rather than likely: without
``transaction_pooler=True`` both drivers fail, with it they work, and so do many concurrent
clients on the pooler's two server connections.

PgBouncer comes from Debian's packages (``apt-get install pgbouncer``; ``.ci/run`` installs
it). Without it these tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from langchain_core.outputs import Generation
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

from langchain_sqlcache import SQLCache, SQLCacheError
from langchain_sqlcache.engines import driver_urls
from tests.conftest import Backend, skip_or_fail, unique_namespace
from tests.servers import free_port

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

LLM = "pgbouncer-llm"
CLIENTS = 8
OPERATIONS = 40
PSYCOPG_PREPARE_THRESHOLD = 5


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"pgbouncer exited with {process.returncode}: {log.read_text()}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"pgbouncer did not listen on {port} within 15 s: {log.read_text()}")


@pytest.fixture(scope="module")
def pgbouncer(backend: Backend) -> Iterator[str]:
    """A PgBouncer in transaction mode with two server connections; yields its URL."""
    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if binary is None:
        skip_or_fail("pgbouncer is not installed (apt-get install pgbouncer)")
    # Started as root, pgbouncer drops to the postgres user, which must read its files (and
    # cannot enter pytest's private temporary folders).
    with tempfile.TemporaryDirectory(prefix="sqlcache-pgbouncer-") as name:
        folder = Path(name)
        folder.chmod(0o755)
        yield from run_pgbouncer(binary, folder, make_url(backend.url))


def run_pgbouncer(binary: str, folder: Path, server: URL) -> Iterator[str]:
    port = free_port()
    user = server.username or "postgres"
    (folder / "userlist.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {folder / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        "default_pool_size = 2\n"
        "min_pool_size = 0\n"
        "reserve_pool_size = 0\n"
        "max_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for name in ("userlist.txt", "pgbouncer.ini"):
        (folder / name).chmod(0o644)
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "postgres"]
    log = folder / "pgbouncer.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log)
        yield server.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        process.terminate()
        process.wait(timeout=10)


def value_of(client: int, operation: int) -> list[Generation]:
    return [Generation(text=f"{client}/{operation}/{part}") for part in range(3)]


def hammer_sync(cache: SQLCache) -> None:
    def client(number: int) -> None:
        for operation in range(OPERATIONS):
            cache.update(f"sync {number} {operation}", LLM, value_of(number, operation))
            assert cache.lookup(f"sync {number} {operation}", LLM) == value_of(number, operation)

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))


async def hammer_async(cache: SQLCache) -> None:
    async def client(number: int) -> None:
        for operation in range(OPERATIONS):
            prompt = f"async {number} {operation}"
            await cache.aupdate(prompt, LLM, value_of(number, operation))
            assert await cache.alookup(prompt, LLM) == value_of(number, operation)

    await asyncio.gather(*(client(number) for number in range(CLIENTS)))


async def test_both_drivers_work_behind_pgbouncer_with_the_option(pgbouncer: str) -> None:
    cache = SQLCache(
        pgbouncer,
        namespace=unique_namespace(),
        transaction_pooler=True,
        on_error="raise",
        pool_size=CLIENTS,
    )
    started = time.perf_counter()
    await asyncio.to_thread(hammer_sync, cache)
    await hammer_async(cache)
    elapsed = time.perf_counter() - started
    stats = await cache.astats()
    operations = 2 * 2 * CLIENTS * OPERATIONS
    print(
        f"\npgbouncer (transaction mode, 2 server connections): {operations} operations from "
        f"{CLIENTS} threads and {CLIENTS} tasks in {elapsed:.1f} s, "
        f"{stats.entries} entries, {stats.failures} failures"
    )
    assert stats.entries == 2 * CLIENTS * OPERATIONS
    assert stats.failures == 0
    await cache.aclear()
    await cache.aclose()


@contextlib.contextmanager
def pinned_server_connection(pgbouncer: str) -> Iterator[None]:
    """Hold the most recently used server connection in a transaction.

    PgBouncer gives the most recently used server connection first: the lookups before this
    ran on the one it pins, so the next lookup gets another one.
    """
    sync_url = driver_urls(make_url(pgbouncer))[0].set(drivername="postgresql")
    with psycopg.connect(sync_url.render_as_string(hide_password=False)) as pin:
        pin.execute("SELECT 1")  # opens a transaction: the server connection stays pinned
        yield


# psycopg prepares a statement on its sixth run; SQLAlchemy's asyncpg dialect at once.
PROMPT, RUNS_TO_PREPARE = "the same statement each time", PSYCOPG_PREPARE_THRESHOLD + 1


def lookup_on_another_server_connection(pgbouncer: str, cache: SQLCache, family: str) -> None:
    """Look up a prompt often enough to have it prepared, then on a new server connection."""
    if family == "sync":
        for _ in range(RUNS_TO_PREPARE):
            cache.lookup(PROMPT, LLM)
        with pinned_server_connection(pgbouncer):
            cache.lookup(PROMPT, LLM)
        return

    async def lookups() -> None:  # in one event loop, so on one pool
        for _ in range(RUNS_TO_PREPARE):
            await cache.alookup(PROMPT, LLM)
        with pinned_server_connection(pgbouncer):
            await cache.alookup(PROMPT, LLM)

    asyncio.run(lookups())


@pytest.mark.parametrize("family", ["sync", "async", "async psycopg"])
@pytest.mark.parametrize("transaction_pooler", [True, False])
def test_prepared_statements_and_transaction_pooling(
    pgbouncer: str, family: str, transaction_pooler: bool
) -> None:
    """With the option lookups work on any server connection; without it they fail.

    The failing half is the control: it shows the setup reproduces what the option prevents.
    "async psycopg" is the async family through psycopg (a postgresql+psycopg_async URL).
    """
    url = make_url(pgbouncer)
    if family == "async psycopg":
        url, family = url.set(drivername="postgresql+psycopg_async"), "async"
    cache = SQLCache(
        url,
        namespace=unique_namespace(),
        on_error="raise",
        transaction_pooler=transaction_pooler,
        pool_size=1,
    )
    try:
        if transaction_pooler:
            lookup_on_another_server_connection(pgbouncer, cache, family)
        else:
            with pytest.raises((DBAPIError, SQLCacheError), match="prepared statement"):
                lookup_on_another_server_connection(pgbouncer, cache, family)
    finally:
        cache.close()
