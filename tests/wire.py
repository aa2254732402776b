"""What the drivers send: round trips on the wire (servers) and statements run (SQLite).

A cache that bypasses SQLAlchemy's execution path for lookups is invisible to its events, and
events never showed what the driver sends on its own (a BEGIN, a ROLLBACK on return, a ping).
These helpers look below the driver instead.
"""

from __future__ import annotations

import contextlib
import inspect
import socket
import struct
import threading
import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import URL, make_url

from langchain_sqlcache.sqlalchemy_internals import await_only

WARM_UP = 6
"""Runs of a statement before its round trips are counted.

Drivers prepare a statement on its first run (asyncpg) or its sixth (psycopg's
prepare_threshold of 5), which costs one more round trip, once per connection and statement.
"""


class WireTap:
    """A TCP proxy in front of a database server that counts round trips.

    A round trip starts each time a client sends after the server last spoke on that
    connection (or first, on a new one): bytes a client sends before any answer, such as a
    pipelined batch, belong to the same round trip.
    """

    def __init__(self, url: str | URL) -> None:
        parsed = make_url(url)
        self._upstream = (parsed.host or "127.0.0.1", parsed.port or _default_port(parsed))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url: URL = parsed.set(host="127.0.0.1", port=self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._round_trips = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        self.tarpit = False
        """While true, new connections are accepted and never answered (a hung server)."""
        self.stalled = False
        """While true, what the server sends is dropped: a server that stops mid-statement."""
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def round_trips(self) -> int:
        with self._lock:
            return self._round_trips

    def reset(self) -> None:
        with self._lock:
            self._round_trips = 0

    def close(self) -> None:
        """Drop every connection and refuse new ones: the server seems gone."""
        with self._lock:  # a connection being accepted now is dropped too (see _accept)
            self._closed = True
            sockets, self._sockets = self._sockets, []
        # A thread blocked in accept() keeps accepting on a closed socket: shut it down.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                # Reset rather than close politely: no socket lingers on the port in
                # FIN-WAIT (which would keep reopen() from binding it), and the driver
                # sees a connection reset, as when a server dies. SHUT_RD wakes the pump
                # blocked in recv(), which then closes the socket.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RD)

    def reopen(self) -> None:
        """Accept connections again, on the same port: the server is back."""
        if not self._closed:
            return
        deadline = time.monotonic() + 5
        while True:
            try:
                self._listener = socket.create_server(("127.0.0.1", self.url.port or 0))
                break
            except OSError:  # the old listener's close is still under way
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        listener = self._listener
        while not self._closed:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self.tarpit:
                self._sockets.append(client)
                continue
            try:
                server = socket.create_connection(self._upstream)
            except OSError:  # the server is down: so is this connection, and the next may not be
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closed:  # close() ran while this one was being connected
                    for sock in (client, server):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        sock.close()
                    return
                self._sockets += [client, server]
            state = {"server_spoke": True}
            threading.Thread(
                target=self._pump, args=(client, server, state, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, state, False), daemon=True
            ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, state: dict[str, bool], from_client: bool
    ) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    if from_client and state["server_spoke"]:
                        self._round_trips += 1
                    state["server_spoke"] = not from_client
                if not (self.stalled and not from_client):
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    if self._closed:
                        sock.close()
                    else:  # one side hung up: pass it on
                        sock.shutdown(socket.SHUT_RDWR)


def _default_port(url: URL) -> int:
    return 5432 if url.get_backend_name() == "postgresql" else 3306


class SQLiteTrace:
    """Every statement SQLite runs on the connections an engine opens from now on.

    sqlite3's trace callback sees what the library executes, including the BEGIN, COMMIT and
    PRAGMA statements that the driver and SQLAlchemy issue on their own.
    """

    def __init__(self, *engines: Engine) -> None:
        self.statements: list[str] = []
        for engine in engines:
            event.listen(engine, "connect", self._trace)

    def _trace(self, dbapi_connection: Any, _record: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
        if inspect.iscoroutinefunction(driver.set_trace_callback):
            # aiosqlite sets it on its worker thread; connect events run in SQLAlchemy's
            # greenlet, where await_ hands the coroutine to the event loop.
            await_only(driver.set_trace_callback(self.statements.append))
        else:
            driver.set_trace_callback(self.statements.append)

    def clear(self) -> None:
        self.statements.clear()
