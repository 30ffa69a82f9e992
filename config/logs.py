"""Warnings about a condition that recurs for every row while it lasts: a bridge or an
SMTP server down, the counters' Redis away, a bug in norm that every row trips on. Logged
for each notification, a broadcast's 100,000 lines said one thing; a `Quieted` lets one
line a minute through per thing it concerns, in each process, saying how many it held
back since (and, asked, which rows).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Hashable
from typing import TypeVar

_ALL: list[Quieted] = []


Response = TypeVar("Response")


def said_already(response: Response) -> Response:
    """`response`, left alone by Django's request log: its 5xx (an ERROR each, "Service
    Unavailable") was said already, a `Quieted` line a minute. (Django's own mark, which
    its handlers set once they logged a response.)"""
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


# What a log line may not carry as it came: a line break (CR, LF, and those Unicode and
# the C1 controls add), which starts a line of the sender's own, a forged record; or a
# terminal's escape sequence (ESC), which rewrites what an operator's terminal shows.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def loggable(text: object) -> str:
    """`text` (str() of it) for a log line: each control character escaped as Python writes
    it ("\\n", "\\x1b"), the rest as it is. For what a bridge or a caller wrote (an error's
    code and message, a workflow's or a step's id), which a line break in it made a line
    of their own in norm's log: a failure of another client's, a record of any level."""
    return _UNPRINTABLE.sub(lambda found: repr(found[0])[1:-1], str(text))


class Quieted:
    """When a warning about `key` is due: at most once every PERIOD seconds."""

    PERIOD = 60.0
    MAX_KEYS = 10_000  # bounds the memory of a long-lived process
    MAX_NAMED = 10  # the rows held back a line names at most (`due_naming`)

    def __init__(self) -> None:
        self._lock = threading.Lock()  # gunicorn's threads, Celery's threads pool
        # key: (logged at, held since, the first MAX_NAMED rows of those held, the count
        # of those held on other rows)
        self._last: dict[Hashable, tuple[float, int, tuple[str, ...], int]] = {}
        _ALL.append(self)

    def due(self, key: Hashable) -> int | None:
        """How many warnings about `key` were held back since its last line, when one is
        due now; None while its last line is less than PERIOD seconds old."""
        due = self.due_naming(key, None)
        return None if due is None else due[0]

    def due_naming(
        self, key: Hashable, name: str | None
    ) -> tuple[int, tuple[str, ...], int] | None:
        """As `due`, for a warning about the row `name`; when a line is due, with the
        names of the first MAX_NAMED rows held back since the last one, each once (a
        broadcast's chunks are all its trigger event's), and how many of those held were
        about rows other than these, for it to say which rows it stands for."""
        now = time.monotonic()
        with self._lock:
            logged_at, held, named, others = self._last.get(key, (now - self.PERIOD, 0, (), 0))
            if now - logged_at < self.PERIOD:
                if name is not None and name not in named:
                    if len(named) < self.MAX_NAMED:
                        named = (*named, name)
                    else:
                        others += 1
                self._last[key] = (logged_at, held + 1, named, others)
                return None
            if key not in self._last and len(self._last) >= self.MAX_KEYS:
                self._last.clear()
            self._last[key] = (now, 0, (), 0)
            return held, named, others

    def clear(self) -> None:
        with self._lock:
            self._last.clear()


def clear_all() -> None:
    """Forget every line logged (tests, each of which expects its own)."""
    for quieted in _ALL:
        quieted.clear()


class ClientErrorsQuieted(logging.Filter):
    """Django's WARNING for each 4xx answer ("Unauthorized: /v1/events/trigger"), and its
    ERROR with a traceback for each request it finds suspicious (a Host header that
    ALLOWED_HOSTS lacks, as every scanner of the server's address sends), one line a
    minute per status and route, saying how many it held back since. A caller with a
    revoked key, or a broken or hostile one, flooded the log with a line per request,
    which the access log already has; a flood of 401s or 429s stays in sight, counted.
    By route (the URL's pattern), not by path: a 404 for each unknown subscriber, or a
    scan of made-up paths (no route), would each have been a key of its own. 5xx answers
    pass: norm logs its own (a 503 a minute, a 500's traceback)."""

    def __init__(self) -> None:
        super().__init__()
        self._quieted = Quieted()

    def filter(self, record: logging.LogRecord) -> bool:
        # Decided once for a record: logging configured a second time (dictConfig again)
        # adds its filters beside the first's, and each then counted the line and wrote
        # its own "(0 more such answers ...)" after the other's.
        decided = getattr(record, "norm_quieted", None)
        if isinstance(decided, bool):
            return decided
        record.norm_quieted = decided = self._decide(record)
        return decided

    def _decide(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if not isinstance(status, int) or not 400 <= status < 500:
            return True
        match = getattr(getattr(record, "request", None), "resolver_match", None)
        held = self._quieted.due((record.name, status, getattr(match, "route", None)))
        if held is None:
            return False
        # Written out whole: a security line's message is the exception's text, which
        # holds what the caller sent (a Host header of "%s" is no format to apply).
        record.msg = f"{record.getMessage()} ({held} more such answers since the last such line)"
        record.args = ()
        if record.name.startswith("django.security."):
            # Django's traceback of a refused Host header (or a body too large, a bad
            # session cookie) says only where Django raised it: the line says what.
            record.exc_info = record.exc_text = None
        return True
