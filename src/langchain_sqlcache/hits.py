"""Hit tracking that costs a lookup almost nothing.

Hits are counted in memory and written in batches, one UPDATE per key per batch, so hot keys
never queue readers on a row lock.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

MAX_PENDING_KEYS = 256
MAX_PENDING_SECONDS = 1.0


class HitBuffer:
    """Hits not yet written, per entry key; thread-safe."""

    def __init__(self, max_keys: int | None = None, max_seconds: float | None = None) -> None:
        """Flush at ``max_keys`` keys or ``max_seconds`` after the oldest pending hit.

        None: the module's MAX_PENDING_KEYS and MAX_PENDING_SECONDS as they are when the
        buffer is made.
        """
        self._lock = threading.Lock()
        self._pending: dict[str, list[Any]] = {}
        self._oldest: float | None = None
        self._max_keys = MAX_PENDING_KEYS if max_keys is None else max_keys
        self._max_seconds = MAX_PENDING_SECONDS if max_seconds is None else max_seconds

    def add(self, key_hash: str, at: datetime) -> list[dict[str, Any]]:
        """Count a hit; return a batch to write when one is due (else an empty list)."""
        with self._lock:
            pending = self._pending.get(key_hash)
            if pending is None:
                self._pending[key_hash] = [1, at]
            else:
                pending[0] += 1
                pending[1] = at
            now = time.monotonic()
            if self._oldest is None:
                self._oldest = now
            if len(self._pending) < self._max_keys and now - self._oldest < self._max_seconds:
                return []
            return self._take()

    def take(self) -> list[dict[str, Any]]:
        """Everything pending, as parameters for the record_hits statement."""
        with self._lock:
            return self._take()

    def _take(self) -> list[dict[str, Any]]:
        batch = [
            {"hit_key_hash": key, "hits": count, "hit_at": at}
            for key, (count, at) in self._pending.items()
        ]
        self._pending = {}
        self._oldest = None
        return batch
