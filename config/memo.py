"""Short-lived per-process memory of rows that hot paths read on every call.

A trigger reads its workflow's registry entry; an echo reads the client's signing key,
the bridge's flavour and the step controls. These change rarely (a sync, a key
rotation, an admin edit), so a process may reuse what it read for
NORM_PROCESS_CACHE_SECONDS instead of asking the database each time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from django.conf import settings

V = TypeVar("V")

_ALL: list[Memo[object]] = []


class Memo(Generic[V]):
    """A dict of values read at most NORM_PROCESS_CACHE_SECONDS ago; None is never kept."""

    MAX_ENTRIES = 10_000  # bounds the memory of a long-lived process

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[V, float]] = {}
        _ALL.append(self)  # type: ignore[arg-type]

    def get(self, key: Hashable, load: Callable[[], V | None], *, fresh: bool = False) -> V | None:
        """The remembered value of `key`, else `load()`'s. `fresh`: always load."""
        now = time.monotonic()
        value: V | None
        if not fresh and key in self._entries:
            value, read_at = self._entries[key]
            if now - read_at < settings.NORM_PROCESS_CACHE_SECONDS:
                return value
        value = load()
        if value is None:
            self._entries.pop(key, None)
        else:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (value, now)
        return value

    def clear(self) -> None:
        self._entries.clear()


def clear_all() -> None:
    """Forget everything (tests, which change rows between calls)."""
    for memo in _ALL:
        memo.clear()
