"""The backends a run measures: a scratch database on each, and its server's version.

The scratch database is created afresh and dropped at the end (SQLite: a file in the run's
temporary directory); the tests' database is never touched.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from langchain_sqlcache.engines import driver_urls

BACKENDS = ("sqlite", "postgresql", "mysql")
SERVER_URLS = {
    "postgresql": os.environ.get(
        "SQLCACHE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("SQLCACHE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}
# One scratch database per run, so that two runs on one server never share tables.
SCRATCH = f"sqlcache_bench_{os.getpid()}"


@dataclass(frozen=True)
class Backend:
    """A scratch database on one backend."""

    name: str
    url: URL

    @property
    def sync_url(self) -> URL:
        """The URL with SQLCache's sync driver."""
        return driver_urls(self.url)[0]


def scratch_backend(name: str, work: Path) -> Backend:
    """Create the scratch database afresh (a file for SQLite)."""
    if name == "sqlite":
        return Backend(name, make_url(f"sqlite:///{work / 'bench.db'}"))
    server = make_url(SERVER_URLS[name])
    _admin(server, f"DROP DATABASE IF EXISTS {SCRATCH}", f"CREATE DATABASE {SCRATCH}")
    return Backend(name, server.set(database=SCRATCH))


def drop_backend(backend: Backend) -> None:
    if backend.name == "sqlite":
        return
    force = " WITH (FORCE)" if backend.name == "postgresql" else ""
    # From the server's own database: Postgres cannot drop the one a session is in.
    _admin(make_url(SERVER_URLS[backend.name]), f"DROP DATABASE IF EXISTS {SCRATCH}{force}")


def _admin(server: URL, *statements: str) -> None:
    admin = create_engine(driver_urls(server)[0], isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        admin.dispose()


def server_version(backend: Backend) -> str:
    if backend.name == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    # The cache each server keeps of its tables matters once they outgrow it (see growth).
    buffers = {
        "postgresql": "SELECT current_setting('shared_buffers')",
        "mysql": "SELECT CONCAT(@@innodb_buffer_pool_size DIV 1048576, 'MB')",
    }[backend.name]
    engine = create_engine(backend.sync_url)
    try:
        with engine.connect() as connection:
            version = str(connection.execute(text("SELECT version()")).scalar_one())
            buffer = str(connection.execute(text(buffers)).scalar_one())
    finally:
        engine.dispose()
    if backend.name == "postgresql":
        return f"{version.split(' on ')[0]}, shared_buffers {buffer}"
    return f"MariaDB/MySQL {version}, innodb_buffer_pool_size {buffer}"
