"""A Postgres primary and its hot standby, started by the test harness on spare loopback ports.

Both servers live in one temporary folder of their own and are stopped by the PIDs they run
as, never by name, so the machine's own Postgres (and other runs' servers) are left alone.
The standby is a ``pg_basebackup -R -X stream`` copy of the primary that streams its WAL.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from tests.servers import START_SECONDS, STOP_SECONDS, free_port

# Set to a folder holding initdb, pg_ctl and pg_basebackup to use those binaries.
POSTGRES_BIN_ENV_VAR = "SQLCACHE_TEST_POSTGRES_BIN"
DEBIAN_POSTGRES = Path("/usr/lib/postgresql")
TOOLS = ("initdb", "pg_ctl", "pg_basebackup", "postgres")
CATCH_UP_SECONDS = 30.0


def postgres_bin() -> Path | None:
    """The folder of the Postgres binaries the pair runs: the env var's, else Debian's newest."""
    if configured := os.environ.get(POSTGRES_BIN_ENV_VAR):
        candidates = [Path(configured)]
    elif DEBIAN_POSTGRES.is_dir():
        versions = [p for p in DEBIAN_POSTGRES.iterdir() if p.name.isdigit()]
        candidates = [p / "bin" for p in sorted(versions, key=lambda p: -int(p.name))]
    else:
        candidates = []
    for folder in candidates:
        if all((folder / tool).exists() for tool in TOOLS):
            return folder
    return None


def lsn(text: str) -> int:
    """A WAL position (``16/B374D848``) as a byte offset."""
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def children(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` now (a postmaster's backends and workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


class PostgresServer:
    """One server of the pair: a data folder, a port, and the postmaster running it."""

    def __init__(self, name: str, root: Path, bin_dir: Path, run_as: dict[str, Any]) -> None:
        self.name = name
        self.root = root
        self.data = root / name
        self.log = root / f"{name}.log"
        self.port = free_port()
        self.bin = bin_dir
        self._run_as = run_as
        self.started_pids: set[int] = set()
        """Every postmaster PID this server ran as, so that destroy() can find each one."""

    @property
    def url(self) -> str:
        """The URL of the ``test`` database, in the form the tests use for Postgres."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/test"

    def connect(self, dbname: str = "test") -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit connection to the server, failing fast when it does not answer."""
        return psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=5",
            autocommit=True,
        )

    def scalar(self, query: str) -> Any:
        """The first column of the first row ``query`` returns."""
        with self.connect() as connection:
            row = connection.execute(query).fetchone()
        return row[0] if row else None

    def run(self, *args: str, timeout: float = START_SECONDS) -> None:
        """Run one of the binaries as the server's OS user; raise with its stderr on failure."""
        result = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
            **self._run_as,
        )
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            msg = f"{self.name}: {args[0]} failed ({result.returncode}): {result.stderr[-2000:]}"
            raise RuntimeError(f"{msg}\n{log}")

    def configure(self, settings: dict[str, str]) -> None:
        """Append settings to postgresql.conf (the last line for a name wins)."""
        lines = "".join(f"{name} = '{value}'\n" for name, value in settings.items())
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# tests/standby.py\n{lines}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.run(
            "pg_ctl", "start", "-w", "-t", str(int(START_SECONDS)), "-D", str(self.data),
            "-l", str(self.log),
        )  # fmt: skip
        pid = self.pid()
        if pid is None:
            raise RuntimeError(f"{self.name}: pg_ctl started a server without a postmaster.pid")
        self.started_pids.add(pid)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server with pg_ctl (``fast``: sessions are cut, a clean shutdown)."""
        self.run(
            "pg_ctl", "stop", "-w", "-m", mode, "-t", str(int(START_SECONDS)), "-D", str(self.data)
        )

    def kill(self) -> None:
        """Crash the server: SIGKILL its postmaster and every process the postmaster runs."""
        pid = self.pid()
        if pid is None or not self._ours(pid):
            raise RuntimeError(f"{self.name} is not running")
        self._kill_tree(pid, reaped=True)

    def pid(self) -> int | None:
        """The postmaster's PID, from the file it keeps in its data folder."""
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return None

    def pids(self) -> list[int]:
        """The postmaster and its children, as they run now."""
        pid = self.pid()
        if pid is None or not self._ours(pid):
            return []
        return [pid, *children(pid)]

    def in_recovery(self) -> bool:
        """Whether the server is a standby (replaying WAL) rather than a primary."""
        return bool(self.scalar("SELECT pg_is_in_recovery()"))

    def _ours(self, pid: int) -> bool:
        """Whether ``pid`` is a postmaster running this data folder (not a reused PID)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return alive(pid) and os.fsencode(self.data) in cmdline

    def _kill_tree(self, pid: int, *, reaped: bool = False) -> None:
        """SIGKILL the postmaster and its children; wait until they are dead.

        With ``reaped``, wait until the postmaster is gone from the process table too: a new
        postmaster refuses a data folder whose postmaster.pid names a zombie (kill(pid, 0)
        still succeeds), and here init reaps orphans only about once a second.
        """
        doomed = [pid, *children(pid)]
        for each in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGKILL)
        deadline = time.monotonic() + STOP_SECONDS
        while any(alive(each) for each in doomed) or (reaped and Path(f"/proc/{pid}").exists()):
            if time.monotonic() > deadline:
                msg = f"{self.name}: {[p for p in doomed if alive(p)]} still alive after SIGKILL"
                raise RuntimeError(msg)
            time.sleep(0.02)

    def destroy(self) -> None:
        """Stop the server whatever state it is in: pg_ctl first, then SIGKILL by PID."""
        pid = self.pid()
        if pid is not None and self._ours(pid):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.run(
                    "pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data),
                    timeout=STOP_SECONDS,
                )  # fmt: skip
        # The one in postmaster.pid too: pg_ctl may have started it and then timed out.
        for started in sorted(self.started_pids | ({pid} if pid is not None else set())):
            if self._ours(started):
                self._kill_tree(started)


class PostgresPair:
    """A primary and a hot standby streaming from it, each on a spare loopback port.

    initdb refuses to run as root, so under root both servers run as the ``postgres`` OS user.
    ``destroy`` stops both by PID whatever happens; an atexit hook calls it if nothing did.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sqlcache-pgpair-"))
        self.root.chmod(0o755)
        run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            run_as = {"user": "postgres", "group": "postgres", "extra_groups": []}
            shutil.chown(self.root, "postgres", "postgres")
        self.primary = PostgresServer("primary", self.root, bin_dir, run_as)
        self.standby = PostgresServer("standby", self.root, bin_dir, run_as)
        self.setup_seconds: float | None = None
        """How long ``start`` took, from initdb to a standby in recovery."""
        atexit.register(self.destroy)

    @property
    def primary_url(self) -> str:
        """The URL of the ``test`` database on the primary."""
        return self.primary.url

    @property
    def standby_url(self) -> str:
        """The URL of the ``test`` database on the standby (read-only while it is one)."""
        return self.standby.url

    def start(self) -> None:
        """Create the primary and its ``test`` database, copy it to the standby, start both."""
        began = time.monotonic()
        self.primary.run(
            "initdb", "-D", str(self.primary.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        self.primary.configure(
            {
                "port": str(self.primary.port),
                "listen_addresses": "127.0.0.1",
                "unix_socket_directories": str(self.root),
                "wal_level": "replica",
                "hot_standby": "on",
                "max_wal_senders": "4",
                "max_connections": "30",
                "shared_buffers": "16MB",
                # Throwaway servers: a crash may lose them, and they are quicker without syncs.
                "fsync": "off",
                "full_page_writes": "off",
            }
        )
        self.primary.start()
        with self.primary.connect("postgres") as connection:
            connection.execute("CREATE DATABASE test")
        # -R writes primary_conninfo and standby.signal; -c fast does not wait for a checkpoint.
        self.standby.run(
            "pg_basebackup", "-D", str(self.standby.data), "-h", "127.0.0.1",
            "-p", str(self.primary.port), "-U", "postgres", "-R", "-X", "stream",
            "-c", "fast", "--no-sync",
        )  # fmt: skip
        self.standby.configure({"port": str(self.standby.port)})
        self.standby.start()
        if not self.standby.in_recovery():
            raise RuntimeError("the standby started as a primary")
        self.setup_seconds = time.monotonic() - began

    def stop_standby(self) -> None:
        """Stop the standby (a fast shutdown); ``start_standby`` starts it again."""
        self.standby.stop("fast")

    def start_standby(self) -> None:
        """Start the standby again; it resumes streaming from where it stopped."""
        self.standby.start()

    def kill_standby(self) -> None:
        """Crash the standby: SIGKILL, by PID, its postmaster and every child."""
        self.standby.kill()

    def promote(self) -> None:
        """Promote the standby to a primary and wait until it takes writes."""
        self.standby.run(
            "pg_ctl", "promote", "-w", "-t", str(int(START_SECONDS)), "-D", str(self.standby.data)
        )
        deadline = time.monotonic() + START_SECONDS
        while self.standby.in_recovery():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the standby is still in recovery {START_SECONDS:.0f} s after promote"
                )
            time.sleep(0.02)

    def replication_lag(self) -> int:
        """How many bytes of the primary's WAL the standby has yet to replay."""
        written = lsn(self.primary.scalar("SELECT pg_current_wal_insert_lsn()::text"))
        replayed = lsn(self.standby.scalar("SELECT pg_last_wal_replay_lsn()::text"))
        return max(0, written - replayed)

    def wait_caught_up(self, timeout: float = CATCH_UP_SECONDS) -> float:
        """Wait until the standby has replayed all the primary wrote; return the seconds waited."""
        began = time.monotonic()
        target = lsn(self.primary.scalar("SELECT pg_current_wal_insert_lsn()::text"))
        while True:
            replayed = self.standby.scalar("SELECT pg_last_wal_replay_lsn()::text")
            if replayed is not None and lsn(replayed) >= target:
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                msg = f"the standby replayed {replayed}, not yet {target:X}, after {timeout} s"
                raise TimeoutError(msg)
            time.sleep(0.01)

    def pids(self) -> list[int]:
        """Every process of both servers running now."""
        return self.primary.pids() + self.standby.pids()

    def destroy(self) -> None:
        """Stop both servers by PID, whatever state they are in, and delete the folder."""
        atexit.unregister(self.destroy)
        try:
            self.standby.destroy()
        finally:
            try:
                self.primary.destroy()
            finally:
                shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_pair(bin_dir: Path) -> Iterator[PostgresPair]:
    """A started primary and standby, stopped and deleted afterwards whatever happens."""
    pair = PostgresPair(bin_dir)
    try:
        pair.start()
        print(f"\nPostgres primary + standby ready in {pair.setup_seconds:.2f} s")
        yield pair
    finally:
        pair.destroy()
