"""Checking a value against a schema a bridge declared, without letting the schema hold
the web process.

A `pattern` is matched by a backtracking engine (regress, as JavaScript matches it; a
`patternProperties` key by Python's `re`), and a pattern such as `^(a+)+$` takes time
that doubles with each character of a value that fails it: 30 characters, a minute; 50,
years. Both engines hold the GIL while they match, so the whole web process stopped (all
of gunicorn's threads, every client's requests) until gunicorn killed it at its timeout,
and one trigger every 30 s kept each worker down. The bridge declares the schema and the
caller sends the value, and neither need be hostile: a sloppy pattern and a user's input
passed on in a payload are enough.

So a schema with a pattern is checked in a helper process, one per web process, kept
between checks (a round trip is well under a millisecond), and killed when a check
outlasts NORM_SCHEMA_CHECK_SECONDS; the next check starts a new one. Checks take turns on
it: while one runs out its time, the others of its process wait.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing import process as processes
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import jsonschema
from django.conf import settings

from workflows.sdk.schemas import Schema


@dataclass(frozen=True)
class Found:
    """What the trigger API and the admin read of a jsonschema ValidationError (which
    holds the whole schema and value, and does not cross between processes)."""

    validator: str
    absolute_path: tuple[Any, ...]
    message: str
    # A string refused for its length (zod counts and trims it otherwise): nothing else.
    instance: Any = None
    validator_value: Any = None
    # A union's (anyOf, oneOf) errors in its branches, each with its branch's index.
    context: tuple[Found, ...] = ()
    branch: Any = None


class CheckTooSlow(Exception):
    """The check outlasted NORM_SCHEMA_CHECK_SECONDS (a pattern that backtracks)."""


class CheckFailed(Exception):
    """The schema could not be applied (jsonschema raised): its repr."""


def errors(schema: Any, value: Any) -> list[Found]:
    """How `value` fails `schema`, as norm's SDK finds it. CheckFailed for a schema that
    cannot be applied; CheckTooSlow for one whose patterns took too long on `value`."""
    if not _has_patterns(schema):
        return _errors(schema, value)
    return _helper.check(schema, value)


def _has_patterns(schema: Any) -> bool:
    text = json.dumps(schema)
    return '"pattern"' in text or '"patternProperties"' in text


def _errors(schema: Any, value: Any) -> list[Found]:
    try:
        found = Schema.of(schema).errors(value)
    except Exception as exc:  # any way jsonschema fails on a schema that is none
        raise CheckFailed(repr(exc)) from exc
    return [_found(e) for e in found]


def _found(error: jsonschema.ValidationError) -> Found:
    return Found(
        validator=str(error.validator),
        absolute_path=tuple(error.absolute_path),
        message=error.message,
        **(
            {"instance": error.instance, "validator_value": error.validator_value}
            if error.validator in ("minLength", "maxLength")
            else {}
        ),
        context=tuple(_found(sub) for sub in error.context or ()),
        # Each of a union's errors' schema path begins with its branch's index.
        branch=error.relative_schema_path[0] if error.relative_schema_path else None,
    )


def _serve(connection: Connection) -> None:
    """The helper process: answers each (schema, value, seconds) with ("ok", [Found]) or
    ("failed", reason), until its pipe closes.

    Each check ends the helper (SIGALRM, whose default is to terminate) a second past the
    seconds its web process waits: that process kills the helper at its deadline, but one
    that died first (gunicorn's SIGKILL of a worker, the OOM killer) left the helper
    matching, a CPU taken for years by a pattern that backtracks on fifty characters. The
    match holds the GIL, so only the kernel's default action can end it, no handler."""
    while True:
        try:
            schema, value, seconds = connection.recv()
        except EOFError:
            return
        signal.setitimer(signal.ITIMER_REAL, seconds + 1)
        try:
            answer: tuple[str, Any] = ("ok", _errors(schema, value))
        except CheckFailed as exc:
            answer = ("failed", str(exc))
        signal.setitimer(signal.ITIMER_REAL, 0)
        connection.send(answer)


class _Helper:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._connection: Connection | None = None

    def check(self, schema: Any, value: Any) -> list[Found]:
        with self._lock:
            try:
                kind, result = self._asked(schema, value)
            except (EOFError, OSError):  # the helper died (out of memory, killed): anew
                self._stop()
                kind, result = self._asked(schema, value)
            if kind == "slow":
                self._stop()
                raise CheckTooSlow(f"{settings.NORM_SCHEMA_CHECK_SECONDS:g} s")
            if kind == "failed":
                raise CheckFailed(result)
            return list(result)

    def _asked(self, schema: Any, value: Any) -> tuple[str, Any]:
        connection = self._started()
        seconds = settings.NORM_SCHEMA_CHECK_SECONDS
        connection.send((schema, value, seconds))
        if not connection.poll(seconds):
            return "slow", None
        answer: tuple[str, Any] = connection.recv()
        return answer

    def _started(self) -> Connection:
        if self._connection is not None and self._process and self._process.is_alive():
            return self._connection
        self._stop()
        # A fresh interpreter's fork, not this threaded web process's: a lock another
        # thread held at the fork would be held for good in the copy.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        ours, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(theirs,), daemon=True)
        process.start()
        theirs.close()
        self._process, self._connection = process, ours
        return ours

    def forget(self) -> None:
        """In a process forked from one that ran a check: the helper, its pipe and the
        forkserver are the parent's. Kept, the child's next check failed (a 500): its
        Process may be asked only by its parent (AssertionError), and the forkserver's
        pid, no child of this process, fails multiprocessing's check of it
        (ChildProcessError); and the two processes would have shared one pipe. The child
        starts its own, as the parent started its first; the parent's go on serving it."""
        self._lock = threading.Lock()  # maybe held by another thread at the fork
        if self._process is not None:
            # Not ours to stop: multiprocessing's exit would have terminated it.
            processes._children.discard(self._process)  # type: ignore[attr-defined]
        if self._connection is not None:
            self._connection.close()  # this process's copy of the pipe
        self._process = self._connection = None
        server: Any = forkserver._forkserver  # type: ignore[attr-defined]
        if server._forkserver_alive_fd is not None:
            # The copy that told the parent's forkserver its parent lives: closed, it
            # still ends with the parent.
            os.close(server._forkserver_alive_fd)
        server.__init__()

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(5)
        if self._connection is not None:
            self._connection.close()
        self._process = self._connection = None


_helper = _Helper()
# Celery's prefork workers and gunicorn's are forked from a process that imported this
# module; one that had run a check (`--preload` and a check at import, say) would hand
# its helper down to each.
os.register_at_fork(after_in_child=_helper.forget)
