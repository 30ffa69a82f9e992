"""Warnings about a condition that recurs for every row while it lasts: a bridge or an
SMTP server down, the counters' Redis away. Logged for each notification, a broadcast's
100,000 lines said one thing; a `Quieted` lets one line a minute through per thing it
concerns, in each process, saying how many it held back since.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

_ALL: list[Quieted] = []


class Quieted:
    """When a warning about `key` is due: at most once every PERIOD seconds."""

    PERIOD = 60.0
    MAX_KEYS = 10_000  # bounds the memory of a long-lived process

    def __init__(self) -> None:
        self._lock = threading.Lock()  # gunicorn's threads, Celery's threads pool
        self._last: dict[Hashable, tuple[float, int]] = {}  # key: (logged at, held since)
        _ALL.append(self)

    def due(self, key: Hashable) -> int | None:
        """How many warnings about `key` were held back since its last line, when one is
        due now; None while its last line is less than PERIOD seconds old."""
        now = time.monotonic()
        with self._lock:
            logged_at, held = self._last.get(key, (now - self.PERIOD, 0))
            if now - logged_at < self.PERIOD:
                self._last[key] = (logged_at, held + 1)
                return None
            if key not in self._last and len(self._last) >= self.MAX_KEYS:
                self._last.clear()
            self._last[key] = (now, 0)
            return held

    def clear(self) -> None:
        with self._lock:
            self._last.clear()


def clear_all() -> None:
    """Forget every line logged (tests, each of which expects its own)."""
    for quieted in _ALL:
        quieted.clear()
