"""The database restarts under load: callers see misses and no-ops, never an exception.

Postgres is restarted with ``pg_ctlcluster`` (``pg_ctl`` when the harness started it, see
tests/servers.py); MariaDB is killed (SIGKILL, a crash) and started again: only the mariadbd
that its pid file names and that listens on the test URL's port, never one found by name.
Meanwhile threads (sync methods) and tasks (async methods) keep looking up values written
before the restart and writing new ones. The test measures how long the server was away and
how long each family took to serve a hit once it was back, then checks that every value
written before the restart is still whole.

These tests control the local servers (root, loopback): elsewhere they skip, and under
``CI=true`` they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from langchain_sqlcache import SQLCache
from langchain_sqlcache.failsafe import JITTER, MAX_PROBE_DELAY_SECONDS
from tests.conftest import Backend, skip_or_fail, sync_engine, unique_namespace
from tests.standby import alive

pytestmark = [
    pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True),
    pytest.mark.slow,
]

LLM = "restart-llm"
KEPT = 200  # values written before the restart
THREADS = TASKS = 4
PAUSE = 0.005  # between one caller's operations
SETTLE_SECONDS = 2.0  # load kept up after every family has served a hit again
DEADLINE_SECONDS = 90.0
# The longest the breaker skips a server that answers again (its capped backoff, jittered),
# plus a probe's time.
RECOVERY_SECONDS = MAX_PROBE_DELAY_SECONDS * (1 + JITTER) + 1.0
MARIADBD = "/usr/sbin/mariadbd"
MARIADB_PID_FILE = Path("/run/mysqld/mysqld.pid")  # @@pid_file of the packaged server
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


def value_of(key: int, version: int) -> list[Generation]:
    return [Generation(text=f"{key}/{version}/{part}") for part in range(3)]


def require_local_control(backend: Backend) -> None:
    if backend.server is not None:  # started by the harness, which can restart it
        return
    url = make_url(backend.url)
    local = url.host in ("127.0.0.1", "localhost") and os.geteuid() == 0
    tools = shutil.which("pg_ctlcluster") if backend.name == "postgresql" else MARIADBD
    if local and tools and Path(tools).exists():
        return
    skip_or_fail(f"restarting {backend.name} needs root and the local server at {url.host}")


def restart_postgres(backend: Backend) -> None:
    if backend.server is not None:
        backend.server.restart()
    else:
        pg_ctlcluster("restart")


def mariadb_port(backend: Backend) -> int:
    return make_url(backend.url).port or 3306


def wait_until(answers: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not answers():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {DEADLINE_SECONDS:.0f} s")
        time.sleep(0.05)


def server_answers(backend: Backend) -> bool:
    engine = sync_engine(backend.sync_url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError:
        return False
    finally:
        engine.dispose()
    return True


def pg_ctlcluster(action: str, *, check: bool = True) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],  # noqa: S607
        check=check,
        capture_output=True,
        timeout=DEADLINE_SECONDS,
    )


def listening_sockets(port: int) -> set[str]:
    """The inodes of the TCP sockets listening on ``port`` (IPv4 and IPv6), from /proc/net."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == TCP_LISTEN and int(local.rpartition(":")[2], 16) == port:
                    found.add(inode)
    return found


def system_mariadb_pid(port: int) -> int | None:
    """The PID of the system's mariadbd: the one its pid file names, if it listens on ``port``.

    Never found by name: a test may run a Galera cluster of other mariadbd processes on
    spare ports, and those must survive this test's crash.
    """
    with contextlib.suppress(FileNotFoundError, ValueError):
        pid = int(MARIADB_PID_FILE.read_text().split()[0])
        if os.path.realpath(f"/proc/{pid}/exe") != os.path.realpath(MARIADBD):
            return None
        listening = {f"socket:[{inode}]" for inode in listening_sockets(port)}
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if os.readlink(fd) in listening:
                    return pid
    return None


def crash_and_start_mariadb(port: int) -> None:
    pid = system_mariadb_pid(port)
    assert pid is not None, f"no mariadbd named by {MARIADB_PID_FILE} listens on port {port}"
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), "mariadbd did not die")
    start_mariadb()


def start_mariadb() -> None:
    # --pidfile: without it start-stop-daemon matches any process running MARIADBD (a Galera
    # node, say) and, with --oknodo, starts nothing.
    subprocess.run(
        [  # noqa: S607
            "start-stop-daemon",
            "--start",
            "--oknodo",
            "--background",
            "--pidfile",
            str(MARIADB_PID_FILE),
            "--exec",
            MARIADBD,
        ],
        check=True,
        timeout=DEADLINE_SECONDS,
    )


@pytest.fixture
def restorable(backend: Backend) -> Iterator[None]:
    """Leave the server running, with its global settings, whatever the test did."""
    require_local_control(backend)
    packet = None
    if backend.name == "mysql":
        engine = sync_engine(backend.sync_url)
        with engine.connect() as connection:
            packet = connection.execute(text("SELECT @@GLOBAL.max_allowed_packet")).scalar()
        engine.dispose()
    yield
    if backend.name == "mysql" and system_mariadb_pid(mariadb_port(backend)) is None:
        start_mariadb()
    elif backend.name == "postgresql" and not server_answers(backend):
        if backend.server is not None:
            backend.server.start()
        else:
            pg_ctlcluster("start", check=False)
    wait_until(lambda: server_answers(backend), f"{backend.name} did not come back")
    if packet is not None:
        # A restarted MariaDB forgets SET GLOBAL; later tests store 16 MiB values.
        engine = sync_engine(backend.sync_url)
        with engine.begin() as connection:
            connection.execute(text(f"SET GLOBAL max_allowed_packet = {int(packet)}"))
        engine.dispose()


@dataclass
class Load:
    """Callers that keep using the cache, and what they saw."""

    cache: SQLCache
    stop: threading.Event = field(default_factory=threading.Event)
    exceptions: list[BaseException] = field(default_factory=list)
    # Per family, when the lookups that hit ended, and when those that missed had started.
    hits: dict[str, list[float]] = field(default_factory=lambda: {"sync": [], "async": []})
    misses: dict[str, list[float]] = field(default_factory=lambda: {"sync": [], "async": []})
    torn: list[str] = field(default_factory=list)
    writes: list[int] = field(default_factory=list)  # one count per caller

    def saw(self, family: str, key: int, value: object, started: float) -> None:
        if value is None:
            self.misses[family].append(started)
        elif value == value_of(key, 0):
            self.hits[family].append(time.monotonic())
        else:
            self.torn.append(f"{family} {key}: {value!r}")

    def sync_caller(self, number: int) -> None:
        try:
            turn = 0
            while not self.stop.is_set():
                key, started = (number * 7919 + turn) % KEPT, time.monotonic()
                self.saw("sync", key, self.cache.lookup(f"kept {key}", LLM), started)
                self.cache.update(f"new sync {number} {turn}", LLM, value_of(turn, 1))
                turn += 1
                time.sleep(PAUSE)
            self.writes.append(turn)
        except BaseException as exc:  # noqa: BLE001 - any exception reaching a caller fails
            self.exceptions.append(exc)

    async def async_caller(self, number: int) -> None:
        try:
            turn = 0
            while not self.stop.is_set():
                key, started = (number * 104729 + turn) % KEPT, time.monotonic()
                self.saw("async", key, await self.cache.alookup(f"kept {key}", LLM), started)
                await self.cache.aupdate(f"new async {number} {turn}", LLM, value_of(turn, 1))
                turn += 1
                await asyncio.sleep(PAUSE)
            self.writes.append(turn)
        except BaseException as exc:  # noqa: BLE001 - any exception reaching a caller fails
            self.exceptions.append(exc)

    def async_callers(self) -> None:
        async def run() -> None:
            await asyncio.gather(*(self.async_caller(n) for n in range(TASKS)))
            await self.cache.aclose()

        asyncio.run(run())

    def first_hit_after(self, family: str, moment: float) -> float | None:
        return next((t for t in self.hits[family] if t >= moment), None)


def test_restart_under_load(backend: Backend, restorable: None) -> None:
    cache = SQLCache(backend.url, namespace=unique_namespace(), on_error="warn")
    for key in range(KEPT):
        cache.update(f"kept {key}", LLM, value_of(key, 0))
    load = Load(cache)
    callers = [threading.Thread(target=load.sync_caller, args=(n,)) for n in range(THREADS)]
    callers.append(threading.Thread(target=load.async_callers))
    for caller in callers:
        caller.start()
    try:
        wait_until(lambda: all(load.hits.values()), "no hits before the restart")
        went_down = time.monotonic()
        if backend.name == "postgresql":
            restart_postgres(backend)
        else:
            crash_and_start_mariadb(mariadb_port(backend))
        wait_until(lambda: server_answers(backend), f"{backend.name} did not come back")
        back = time.monotonic()
        # An exception that reached a caller ends that caller: stop waiting, and show it.
        wait_until(
            lambda: (
                bool(load.exceptions)
                or all(load.first_hit_after(f, back) for f in ("sync", "async"))
            ),
            "a family served no hit after the restart",
        )
        time.sleep(SETTLE_SECONDS)
    finally:
        load.stop.set()
        for caller in callers:
            caller.join(timeout=DEADLINE_SECONDS)
    recovered = {f: (load.first_hit_after(f, back) or back) - back for f in ("sync", "async")}
    misses = {f: len(load.misses[f]) for f in ("sync", "async")}
    late_misses = [t - back for f in ("sync", "async") for t in load.misses[f] if t >= back]
    stats = cache.stats()
    print(  # the figures docs/reliability.md quotes
        f"\n{backend.name} restart under load: server away {back - went_down:.2f} s; "
        f"first hit after it answered: sync {recovered['sync'] * 1000:.0f} ms, "
        f"async {recovered['async'] * 1000:.0f} ms; "
        f"lookups {sum(len(h) for h in load.hits.values())} hits / {sum(misses.values())} "
        f"misses ({len(late_misses)} begun after it answered); {sum(load.writes)} writes; "
        f"{stats.failures} failures absorbed; exceptions to callers: {len(load.exceptions)}"
    )
    assert [repr(exc) for exc in load.exceptions] == []
    # Once the server answers, operations succeed again as soon as the circuit breaker's next
    # probe finds it (retries replace dead connections): no miss begun later than that.
    assert all(t <= RECOVERY_SECONDS for t in late_misses), late_misses
    assert max(recovered.values()) <= RECOVERY_SECONDS
    assert load.torn == []
    # Every value written before the restart is still there, whole.
    checker = SQLCache(backend.url, namespace=cache.namespace, on_error="raise")
    lost = [k for k in range(KEPT) if checker.lookup(f"kept {k}", LLM) != value_of(k, 0)]
    assert lost == []
    checker.clear()
    checker.close()
    cache.close()
