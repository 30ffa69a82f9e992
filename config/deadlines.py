"""Whole-call deadlines for outbound calls: a bridge call (workflows/bridge.py), an email
send (messaging/providers.py).

Their libraries' timeouts (requests', smtplib's) bound each socket operation, not the
call: a peer that sends a byte every half second (an HTTP answer's headers or body, an
SMTP greeting or reply, a TLS handshake) holds the caller for as long as it likes, and
each worker it holds is one fewer for every client. What bounds it, and why this way:
- signal.alarm works only in the main thread, and norm makes these calls from Celery's
  threads pool (`make run`), prefork children and gunicorn's threads;
- checking the time between reads misses a read that trickles in one byte at a time,
  and the reads a library makes before it returns (HTTP headers, the SMTP greeting);
- running the call in another thread and waiting for it frees the caller but leaves
  that thread, and the peer's connection, held;
so a watchdog shuts the call's socket down at the deadline, which wakes the blocked
read (plain or TLS, in a handshake or not) with an end of file. One watchdog thread per
process rather than a threading.Timer per call: starting a thread costs about 0.3 ms,
half of a whole call to a bridge on loopback. The caller's connection class hands the
socket over (`watch`) as soon as it is connected, before anything is read from it, and
the watchdog shuts it down through a descriptor of the call's own (a dup): it can never
hit a descriptor that the library closed meanwhile and the process reused for something
else.

Before any socket exists, the call looks its host's name up, in the C library
(getaddrinfo), which nothing wakes: it waits as long as the resolver's own settings say
(resolv.conf's defaults, 5 s a try and 2 tries per name server, come to 30 s with three),
whatever the deadline. Inside a deadline a lookup runs in a thread of its own, waited for
until the deadline: past it the call fails as a timeout, and the thread ends when the
resolver gives up. The hooks are socket.getaddrinfo itself, which every library looks up
through (urllib3, smtplib, a proxy's connect), and socket.gethostbyaddr (socket.getfqdn's
reverse lookup, Django's SMTP greeting); they change nothing outside a deadline.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import ipaddress
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

_current: ContextVar[Deadline | None] = ContextVar("deadline", default=None)


class Deadline:
    """One call's deadline: past it, the call's socket is shut down and the call is a timeout."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._over = False

    def watch(self, sock: Any) -> None:
        """The call's socket, as soon as it exists (a reused connection's, or a new one's
        before TLS, a proxy tunnel or a greeting reads from it)."""
        with self._lock:
            if self._over or self._socket is not None:
                return
            self._socket = socket.socket(fileno=os.dup(sock.fileno()))
            if self.expired:  # it passed while connecting
                self._shut()

    def unwatch(self) -> None:
        """The watched connection is closed, and the call may go on over another: that one
        is watched next. (The dup also keeps the connection itself open until closed.)"""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def expire(self) -> None:
        with self._lock:
            if self._over:
                return
            self.expired = True
            self._shut()

    def end(self) -> None:
        """The answer is read (the connection goes back to a pool, or is kept) or the call
        is over: the watchdog must leave the socket alone from now on."""
        with self._lock:
            self._over = True
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def _shut(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):  # the peer closed it already
                self._socket.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """Expires the deadlines of the process's calls, from one thread."""

    def __init__(self) -> None:
        self._reset()
        # A forked child (a Celery prefork worker) has no watchdog thread, and perhaps a
        # lock held by a thread of the parent: it starts afresh.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._wake = threading.Condition()
        self._due: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
                self._thread.start()
            # Ended calls stay queued until their time, then expire() does nothing.
            heapq.heappush(self._due, (deadline.at, next(self._order), deadline))
            if self._due[0][2] is deadline:
                self._wake.notify()

    def _run(self) -> None:
        wake, due = self._wake, self._due
        with wake:
            while True:
                now = time.monotonic()
                while due and due[0][0] <= now:
                    heapq.heappop(due)[2].expire()
                wake.wait(due[0][0] - now if due else None)


_watchdog = _Watchdog()


@contextlib.contextmanager
def within(seconds: float) -> Iterator[Deadline]:
    """A deadline `seconds` from now for the call made inside, ended when it returns.
    The call's connection class hands its socket to `current()` to be watched."""
    deadline = Deadline(seconds)
    _watchdog.add(deadline)
    token = _current.set(deadline)
    try:
        yield deadline
    finally:
        deadline.end()
        _current.reset(token)


def current() -> Deadline | None:
    """The deadline of the call this code runs in, if any."""
    return _current.get()


def watch(sock: Any) -> None:
    """Hand a connection's socket to the deadline of the call this code runs in, if any:
    what each caller's connection class does as soon as the socket exists."""
    if (deadline := _current.get()) is not None:
        deadline.watch(sock)


_system_getaddrinfo = socket.getaddrinfo
_system_gethostbyaddr = socket.gethostbyaddr


def _getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
    """socket.getaddrinfo, given up at the deadline of the call it is made in, if any."""
    deadline = _current.get()
    if deadline is None or _numeric(host):  # an address is no lookup: answered at once
        return _system_getaddrinfo(host, port, *args, **kwargs)
    return _lookups.answer(
        ("getaddrinfo", host, port, args, tuple(sorted(kwargs.items()))),
        lambda: _system_getaddrinfo(host, port, *args, **kwargs),
        deadline,
    )


def _gethostbyaddr(address: str) -> tuple[str, list[str], list[str]]:
    """socket.gethostbyaddr, as `_getaddrinfo`: the reverse lookup of socket.getfqdn(),
    which Django's SMTP backend makes for the name it greets the server with (once in a
    process, on its first email)."""
    deadline = _current.get()
    if deadline is None:
        return _system_gethostbyaddr(address)
    return _lookups.answer(
        ("gethostbyaddr", address), lambda: _system_gethostbyaddr(address), deadline
    )


def _numeric(host: Any) -> bool:
    if not isinstance(host, str):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Lookup:
    """One lookup, run in a thread of its own, whose answer any number of calls wait for."""

    def __init__(self, key: tuple[Any, ...], look_up: Callable[[], Any]) -> None:
        self.key = key
        self.look_up = look_up
        self.done = threading.Event()
        self.found: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.found = self.look_up()
        except BaseException as exc:  # raised in the callers' threads instead
            self.error = exc
        finally:
            _lookups.over(self)
            self.done.set()


class _Lookups:
    """The lookups in flight in this process. A call asking what one already looks up
    waits for its answer instead of starting another: while a name server is down, each
    lookup holds its thread until the resolver gives up (30 s), longer than a call waits,
    and a thread per call piled up for every call made meanwhile, one per name now."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # the parent's threads are not here

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[Any, ...], _Lookup] = {}

    def answer(self, key: tuple[Any, ...], look_up: Callable[[], Any], deadline: Deadline) -> Any:
        """What `look_up` answers (the lookup `key` names), or an error at `deadline`."""
        with self._lock:
            lookup = self._in_flight.get(key)
            if lookup is None:
                lookup = self._in_flight[key] = _Lookup(key, look_up)
                threading.Thread(target=lookup.run, name="lookup", daemon=True).start()
        if not lookup.done.wait(max(deadline.at - time.monotonic(), 0)):
            deadline.expire()  # a timeout, as the call's own error handling tells one
            raise socket.gaierror(
                socket.EAI_AGAIN, f"the lookup of {key[1]} outlasted the call's deadline"
            )
        if lookup.error is not None:
            raise copy.copy(lookup.error)  # each caller's own: raising sets its traceback
        return lookup.found

    def over(self, lookup: _Lookup) -> None:
        with self._lock:
            if self._in_flight.get(lookup.key) is lookup:
                del self._in_flight[lookup.key]


_lookups = _Lookups()


socket.getaddrinfo = _getaddrinfo
socket.gethostbyaddr = _gethostbyaddr
