"""How long the cache's engines wait: for a connection, for a statement, for an answer."""

from __future__ import annotations

import math
from dataclasses import dataclass

from langchain_sqlcache.errors import ConfigurationError

DEFAULT_CONNECT_TIMEOUT_SECONDS = 2.0
"""How long the cache's engines wait for a new connection, handshake and login included.

A connection on a LAN takes milliseconds, one across a region with TLS a few hundred; 2 s
is libpq's minimum, and what a model call (seconds) can afford to lose to a dead server once
before the failure policy turns the lookup into a miss."""

DEFAULT_STATEMENT_TIMEOUT_SECONDS = 5.0
"""How long one of the cache's statements may run (or wait for a lock) on the server.

A lookup or an update takes milliseconds; a statement still running after 5 s is stuck
behind a lock or on a sick server, and waiting longer only delays the model call it sits in
front of. stats() and pruning scan a namespace: over millions of entries they may need more
(``statement_timeout=`` raises it, None removes it)."""

CLIENT_TIMEOUT_GRACE_SECONDS = 1.0
"""How much longer the client waits for an answer than the server lets a statement run.

The server's own timeout cancels the statement and keeps the connection; the client's
(a read timeout) is the bound for a server that stopped answering altogether, and costs the
connection."""


@dataclass(frozen=True)
class Timeouts:
    """The connect and statement timeouts of the engines a cache builds (None: none)."""

    connect: float | None = DEFAULT_CONNECT_TIMEOUT_SECONDS
    statement: float | None = DEFAULT_STATEMENT_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        for name, value in (
            ("connect_timeout", self.connect),
            ("statement_timeout", self.statement),
        ):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value < math.inf
            ):
                msg = f"{name} must be a positive number of seconds or None, not {value!r}"
                raise ConfigurationError(msg)

    @property
    def read(self) -> float | None:
        """The client-side bound on waiting for an answer (see CLIENT_TIMEOUT_GRACE_SECONDS)."""
        return None if self.statement is None else self.statement + CLIENT_TIMEOUT_GRACE_SECONDS


def milliseconds(seconds: float) -> int:
    """Whole milliseconds, at least 1, for a server setting."""
    return max(1, math.ceil(seconds * 1000))
