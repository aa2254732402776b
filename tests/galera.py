"""A three-node MariaDB Galera cluster that the test harness starts on spare loopback ports.

Each node is a ``mariadbd`` of its own in a temporary folder, with the galera-4 provider, its
own client, group-communication, IST and SST ports, and rsync state transfer. Every process
is stopped by the PID the harness started it with, never by name: the machine's own MariaDB
(and other runs' servers) are left alone. ``destroy()`` runs whatever happens, and once more
at interpreter exit if a test run is cut short.
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
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest

from tests.conftest import skip_or_fail
from tests.servers import free_port

PROVIDERS = ("/usr/lib/galera/libgalera_smm.so", "/usr/lib/libgalera_smm.so")
MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "mariadb-install-db"
START_SECONDS = 90.0
STOP_SECONDS = 10.0
# Group communication tuned for a loopback test: a killed node is declared gone after about
# 2 s instead of Galera's 5-15 s (evs.suspect_timeout PT5S, evs.inactive_timeout PT15S), so
# that the survivors' stall stays short. Checked: keepalive <= inactive_check <= suspect
# <= inactive.
GCOMM_OPTIONS = (
    "evs.keepalive_period=PT0.5S;evs.inactive_check_period=PT0.5S;"
    "evs.suspect_timeout=PT1.5S;evs.inactive_timeout=PT3S;evs.install_timeout=PT3S;"
    "gcache.size=64M"
)


def galera_provider() -> str | None:
    """The galera-4 library, if it is installed."""
    return next((path for path in PROVIDERS if Path(path).exists()), None)


def missing() -> str | None:
    """Why a cluster cannot start here (None: everything it needs is installed)."""
    if galera_provider() is None:
        return f"galera-4 is not installed (no libgalera_smm.so in {', '.join(PROVIDERS)})"
    for program in (MARIADBD, INSTALL_DB, "rsync", "wsrep_sst_rsync"):
        if shutil.which(program) is None:
            return f"{program} is not installed"
    return None


@dataclass
class Node:
    """One node: its ports, folder and process."""

    index: int
    port: int
    gcomm_port: int
    ist_port: int
    sst_port: int
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "error.log"


class GaleraCluster:
    """Three Galera nodes on loopback, started by :meth:`start`, stopped by :meth:`destroy`."""

    def __init__(self, size: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sqlcache-galera-"))
        self.root.chmod(0o755)
        # mariadbd refuses to run as root unless told to; under root the nodes run as the
        # mysql OS user, which owns their folders.
        self._user = "mysql" if os.geteuid() == 0 else None
        self.nodes = [
            Node(i, free_port(), free_port(), free_port(), free_port(), self.root / f"node{i}")
            for i in range(1, size + 1)
        ]
        self.setup_seconds = 0.0
        self._destroyed = False
        atexit.register(self.destroy)

    # -- addresses --------------------------------------------------------------------------

    def url(self, i: int, database: str = "test") -> str:
        """The URL of node ``i`` (1-based), in the form the tests use for MySQL."""
        return f"mysql://root@127.0.0.1:{self.nodes[i - 1].port}/{database}"

    def connect(self, i: int, database: str | None = "test") -> pymysql.Connection:
        """A PyMySQL connection to node ``i`` in autocommit (for checks and set-up)."""
        return pymysql.connect(
            host="127.0.0.1",
            port=self.nodes[i - 1].port,
            user="root",
            database=database,
            autocommit=True,
            connect_timeout=5,
            read_timeout=30,
        )

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Install and start every node, the first bootstrapping the cluster; create ``test``."""
        started = time.monotonic()
        for node in self.nodes:
            self._install(node)
        self._launch(self.nodes[0], bootstrap=True)
        self._wait_synced(self.nodes[0], cluster_size=1)
        for node in self.nodes[1:]:
            self._launch(node)
        # One joiner at a time would double the time; rsync SST serves them one after
        # the other anyway (a donor serves one joiner at once).
        for node in self.nodes[1:]:
            self._wait_synced(node, cluster_size=len(self.nodes))
        with contextlib.closing(self.connect(1, database=None)) as connection:
            connection.cursor().execute("CREATE DATABASE IF NOT EXISTS test CHARACTER SET utf8mb4")
        self.setup_seconds = time.monotonic() - started

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``'s server (by the PID it was started with) and reap it."""
        node = self.nodes[i - 1]
        if node.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait(STOP_SECONDS)
        node.process = None

    def restart(self, i: int) -> float:
        """Start node ``i`` again: it rejoins (a state transfer) and is Synced. Its seconds."""
        started = time.monotonic()
        node = self.nodes[i - 1]
        self._launch(node)
        self._wait_synced(node, cluster_size=len(self.nodes))
        return time.monotonic() - started

    def status(self, i: int, name: str) -> str | None:
        """A ``SHOW STATUS`` value of node ``i`` (None if it does not answer)."""
        try:
            with contextlib.closing(self.connect(i, database=None)) as connection:
                cursor = connection.cursor()
                cursor.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
                row = cursor.fetchone()
        except pymysql.MySQLError:
            return None
        return str(row[1]) if row else None

    def destroy(self) -> None:
        """Stop every server this cluster started (by PID) and delete its folder."""
        if self._destroyed:
            return
        self._destroyed = True
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(STOP_SECONDS)
            node.process = None
        # An rsync daemon a state transfer left behind writes its PID in the node's folder.
        for pid_file in self.root.glob("node*/data/rsync_sst.pid"):
            with contextlib.suppress(ValueError, OSError, ProcessLookupError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.destroy)

    # -- the parts --------------------------------------------------------------------------

    def _install(self, node: Node) -> None:
        node.root.mkdir()
        (node.root / "my.cnf").write_text(self._config(node))
        if self._user is not None:
            shutil.chown(node.root, self._user, self._user)
        command = [
            INSTALL_DB,
            f"--defaults-file={node.root / 'my.cnf'}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        if self._user is not None:
            command.append(f"--user={self._user}")
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=START_SECONDS, check=False
        )
        if result.returncode != 0:
            msg = f"mariadb-install-db failed for node {node.index}: {result.stderr[-2000:]}"
            raise RuntimeError(msg)

    def _config(self, node: Node) -> str:
        members = ",".join(f"127.0.0.1:{other.gcomm_port}" for other in self.nodes)
        provider_options = (
            f"gmcast.listen_addr=tcp://127.0.0.1:{node.gcomm_port};"
            f"ist.recv_addr=127.0.0.1:{node.ist_port};{GCOMM_OPTIONS}"
        )
        lines = [
            "[mysqld]",
            f"datadir={node.data}",
            f"socket={node.root / 'mysqld.sock'}",
            f"pid-file={node.root / 'mysqld.pid'}",
            f"log-error={node.log}",
            f"port={node.port}",
            "bind-address=127.0.0.1",
            "skip-name-resolve",
            "character-set-server=utf8mb4",
            "max_allowed_packet=64M",
            "innodb_buffer_pool_size=64M",
            "innodb_log_file_size=16M",
            "innodb_flush_log_at_trx_commit=0",
            "binlog_format=ROW",
            "default_storage_engine=InnoDB",
            "innodb_autoinc_lock_mode=2",
            "wsrep_on=ON",
            f"wsrep_provider={galera_provider()}",
            "wsrep_cluster_name=sqlcache_test",
            f"wsrep_cluster_address=gcomm://{members}",
            f"wsrep_node_name=node{node.index}",
            "wsrep_node_address=127.0.0.1",
            f"wsrep_node_incoming_address=127.0.0.1:{node.port}",
            f'wsrep_provider_options="{provider_options}"',
            "wsrep_sst_method=rsync",
            f"wsrep_sst_receive_address=127.0.0.1:{node.sst_port}",
            "wsrep_slave_threads=2",
        ]
        return "\n".join(lines) + "\n"

    def _launch(self, node: Node, *, bootstrap: bool = False) -> None:
        command = [MARIADBD, f"--defaults-file={node.root / 'my.cnf'}"]
        if self._user is not None:
            command.append(f"--user={self._user}")
        if bootstrap:
            command.append("--wsrep-new-cluster")
        node.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_synced(self, node: Node, *, cluster_size: int) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if node.process is None or node.process.poll() is not None:
                msg = f"node {node.index} exited while starting: {self._log_tail(node)}"
                raise RuntimeError(msg)
            ready = self.status(node.index, "wsrep_ready")
            state = self.status(node.index, "wsrep_local_state_comment")
            size = self.status(node.index, "wsrep_cluster_size")
            if ready == "ON" and state == "Synced" and size and int(size) >= cluster_size:
                return
            time.sleep(0.25)
        msg = f"node {node.index} not Synced within {START_SECONDS:g} s: {self._log_tail(node)}"
        raise RuntimeError(msg)

    def _log_tail(self, node: Node) -> str:
        with contextlib.suppress(OSError):
            return node.log.read_text(errors="replace")[-3000:]
        return "(no log)"


@contextlib.contextmanager
def galera_cluster() -> Iterator[GaleraCluster]:
    """A started cluster, destroyed afterwards whatever happens."""
    cluster = GaleraCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module", name="galera_cluster")
def galera_cluster_fixture() -> Iterator[GaleraCluster]:
    """A 3-node cluster for a test module; stopped afterwards whatever happens.

    Where galera is missing the tests skip with the reason (under ``CI=true`` they fail); a
    cluster that is installed but does not start fails them.
    """
    reason = missing()
    if reason is not None:
        skip_or_fail(reason)
    cluster = GaleraCluster()
    try:
        try:
            cluster.start()
        except (RuntimeError, OSError, subprocess.SubprocessError, pymysql.MySQLError) as exc:
            # Galera is installed here, so a cluster that does not start is a failure.
            pytest.fail(f"the Galera cluster did not start: {exc}")
        print(f"\nGalera cluster of 3 nodes ready in {cluster.setup_seconds:.1f} s")
        yield cluster
    finally:
        cluster.destroy()
