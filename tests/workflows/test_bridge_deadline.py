"""A bridge call ends within NORM_BRIDGE_TIMEOUT, whatever the bridge sends and however slowly.

requests' timeout bounds each socket read, not the call: a bridge that sends a byte
every half second never trips it. These servers do exactly that, on loopback.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.queues
import os
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from config import deadlines
from tests.conftest import SlowLookups, self_signed, serve_in_background
from workflows import bridge

DEADLINE = 1.0
DRIP = 0.2  # seconds between two bytes: well under the per-read timeout
OK = json.dumps({"status": "ok", "sdk": "norm-python"}).encode()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, respond: Callable[[socket.socket], None], tls: ssl.SSLContext | None = None
    ) -> None:
        self.respond = respond
        self.tls = tls
        self.connections = 0
        self.stop = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}/bridge"


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.server.connections += 1
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self.server.tls:
                self.request = self.server.tls.wrap_socket(self.request, server_side=True)
            reader = self.request.makefile("rb")
            while _read_request(reader):
                self.server.respond(self.request)
        except OSError:
            pass  # the client gave up: what the tests want


def _read_request(reader: socket.SocketIO) -> bool:
    """Read one request (a GET, or a POST with its content-length body); False at EOF."""
    length = 0
    line = reader.readline()
    if not line:
        return False
    while line not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
        line = reader.readline()
    reader.read(length)
    return True


def _drip(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    for byte in data:
        if stop.wait(DRIP):
            return
        sock.sendall(bytes([byte]))


def _answer(body: bytes = OK, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


@pytest.fixture
def serve() -> Iterator[Callable[..., _Server]]:
    servers: list[_Server] = []

    def start(
        respond: Callable[[socket.socket], None], tls: ssl.SSLContext | None = None
    ) -> _Server:
        server = _Server(respond, tls)
        serve_in_background(server)
        servers.append(server)
        return server

    with override_settings(NORM_BRIDGE_TIMEOUT=DEADLINE):
        yield start
    for server in servers:
        server.stop.set()
        server.shutdown()
        server.server_close()


def _timed(call: Callable[[], object]) -> tuple[Exception | None, float]:
    started = time.monotonic()
    try:
        call()
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def _assert_timed_out(error: Exception | None, took: float, deadline: float = DEADLINE) -> None:
    assert took < 3 * deadline, f"the call took {took:.1f} s"
    assert isinstance(error, bridge.BridgeUnavailable), repr(error)  # retried, as a timeout is
    assert error.code == "BridgeTimeout"
    assert str(error).startswith("BridgeTimeout: the bridge did not answer in time")


def test_headers_sent_a_byte_at_a_time_time_out_within_the_deadline(serve: Callable) -> None:
    server = serve(lambda sock: _drip(sock, b"HTTP/1.1 200 OK\r\n" + b"x" * 50, server.stop))

    _assert_timed_out(*_timed(lambda: bridge.health_check(server.url)))


def test_through_an_http_proxy_headers_sent_a_byte_at_a_time_time_out_within_the_deadline(
    serve: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through HTTP(S)_PROXY norm's socket is the proxy's, which relays whatever the bridge
    sends as slowly as it comes: the proxy's connections are watched as a bridge's are."""
    server = serve(lambda sock: _drip(sock, b"HTTP/1.1 200 OK\r\n" + b"x" * 50, server.stop))
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.url.removesuffix("/bridge"))
    bridge._proxies.cache_clear()
    try:
        # The discard port, where nothing listens: only the proxy answers for it.
        _assert_timed_out(*_timed(lambda: bridge.health_check("http://127.0.0.1:9/bridge")))
    finally:
        bridge._proxies.cache_clear()
    assert server.connections == 1  # the call went through the proxy


def test_a_body_sent_a_byte_at_a_time_times_out_within_the_deadline(serve: Callable) -> None:
    def respond(sock: socket.socket) -> None:
        body = json.dumps({"status": "ok", "padding": "x" * 40}).encode()
        head, _, rest = _answer(body).partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        _drip(sock, rest, server.stop)

    server = serve(respond)

    body = {"payload": {}}
    _assert_timed_out(
        *_timed(lambda: bridge.execute(server.url, secrets=("s",), workflow_id="w", body=body))
    )


def test_a_body_cut_short_by_the_deadline_is_a_timeout_not_an_answer(serve: Callable) -> None:
    """Without a content-length the body ends when the connection does: the cut at the
    deadline must not pass for the bridge's whole answer (an invalid one, here)."""

    def respond(sock: socket.socket) -> None:
        sock.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
        )
        _drip(sock, json.dumps({"status": "ok", "padding": "x" * 40}).encode(), server.stop)

    server = serve(respond)

    _assert_timed_out(*_timed(lambda: bridge.health_check(server.url)))


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server context for 127.0.0.1, with a certificate the bridge client trusts."""
    cert_path, key_path = self_signed(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_path))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


def test_over_tls_a_body_sent_a_byte_at_a_time_times_out_on_a_kept_alive_connection(
    serve: Callable, tls: ssl.SSLContext
) -> None:
    slow = threading.Event()

    def respond(sock: socket.socket) -> None:
        head, _, body = _answer().partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        if slow.is_set():
            _drip(sock, body, server.stop)
        else:
            sock.sendall(body)

    server = serve(respond, tls)
    assert bridge.health_check(server.url)["status"] == "ok"
    slow.set()

    _assert_timed_out(*_timed(lambda: bridge.health_check(server.url)))
    assert server.connections == 1  # the same connection, kept alive, then cut


def test_the_deadline_holds_off_the_main_thread_too(serve: Callable) -> None:
    """Celery's threads pool and gunicorn's threads call the bridge from other threads."""
    server = serve(lambda sock: _drip(sock, b"HTTP/1.1 200 OK\r\n" + b"x" * 50, server.stop))
    outcome: list[tuple[Exception | None, float]] = []

    thread = threading.Thread(
        target=lambda: outcome.append(_timed(lambda: bridge.health_check(server.url)))
    )
    thread.start()
    thread.join(10)

    _assert_timed_out(*outcome[0])


def _call_in_child(url: str, results: multiprocessing.queues.Queue) -> None:
    error, took = _timed(lambda: bridge.health_check(url))
    results.put((getattr(error, "code", repr(error)), took))


def test_the_deadline_holds_in_a_forked_worker(serve: Callable) -> None:
    """Celery's prefork pool forks its children from a process whose watchdog thread,
    if it had one, is not in the child."""
    fast = serve(lambda sock: sock.sendall(_answer()))
    bridge.health_check(fast.url)  # the parent's watchdog is running
    server = serve(lambda sock: _drip(sock, b"HTTP/1.1 200 OK\r\n" + b"x" * 50, server.stop))
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_call_in_child, args=(server.url, results))
    child.start()

    code, took = results.get(timeout=30)
    child.join(5)
    assert (code, took < 3 * DEADLINE) == ("BridgeTimeout", True), took


def test_a_timed_out_connection_is_not_reused_and_normal_calls_reuse_theirs(
    serve: Callable,
) -> None:
    slow = threading.Event()

    def respond(sock: socket.socket) -> None:
        if slow.is_set():
            sock.sendall(b"HTTP/1.1 200 OK\r\n")
            _drip(sock, b"x" * 50, server.stop)
        else:
            sock.sendall(_answer())

    server = serve(respond)

    assert bridge.health_check(server.url)["status"] == "ok"
    assert bridge.health_check(server.url)["status"] == "ok"
    assert server.connections == 1  # keep-alive, as before
    slow.set()
    _assert_timed_out(*_timed(lambda: bridge.health_check(server.url)))
    slow.clear()
    assert bridge.health_check(server.url)["status"] == "ok"
    assert server.connections == 2  # the dripping one was dropped, not handed out again


@override_settings(NORM_BRIDGE_MAX_RESPONSE_BYTES=64 * 1024)
def test_an_answer_larger_than_the_limit_is_refused(
    serve: Callable,
) -> None:
    def respond(sock: socket.socket) -> None:
        # Chunked: no content-length to refuse it by.
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
        sock.sendall(b"transfer-encoding: chunked\r\n\r\n")
        chunk = b" " * 16384
        for _ in range(256):  # 4 MiB
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")

    server = serve(respond)

    error, took = _timed(lambda: bridge.health_check(server.url))
    assert isinstance(error, bridge.BridgeError), repr(error)
    assert not isinstance(error, bridge.BridgeUnavailable)  # asking again gets the same
    assert error.code == "BridgeResponseTooLarge"
    assert took < DEADLINE


def test_a_bridge_that_never_accepts_the_connection_times_out(serve: Callable) -> None:
    """The deadline watches a socket only once it is connected: the connect itself is
    bounded by requests' timeout. A listener whose backlog is full drops the SYN, as a
    host that has gone away does, and the kernel would retry it for two minutes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):  # the backlog's one place
            url = f"http://127.0.0.1:{port}/bridge"
            outcome: list[tuple[Exception | None, float]] = []
            caller = threading.Thread(
                target=lambda: outcome.append(_timed(lambda: bridge.health_check(url))),
                daemon=True,
            )
            caller.start()
            caller.join(5 * DEADLINE)
    assert outcome, "the call still waits to connect"
    _assert_timed_out(*outcome[0])


def test_a_name_the_resolver_is_slow_to_look_up_times_out_within_the_deadline(
    serve: Callable, slow_lookups: SlowLookups
) -> None:
    """The C library's lookup of the bridge's host, which no socket shutdown wakes, is
    waited for only until the deadline: a name server that is down held the call for as
    long as the resolver retried it (30 s by resolv.conf's defaults)."""
    server = serve(lambda sock: sock.sendall(_answer()))
    url = f"http://localhost:{server.server_address[1]}/bridge"

    error, took = _timed(lambda: bridge.health_check(url))

    assert not slow_lookups.answered.is_set(), "the call waited for the name server to answer"
    _assert_timed_out(error, took)
    assert server.connections == 0


def test_calls_made_while_a_name_is_looked_up_wait_for_that_lookup_not_one_each(
    serve: Callable, slow_lookups: SlowLookups
) -> None:
    """A lookup the deadline gave up on holds its thread until the resolver gives up too
    (30 s by resolv.conf's defaults): one per call, they piled up for every call made
    while a name server was down. Calls asking for the same name wait for one lookup."""
    server = serve(lambda sock: sock.sendall(_answer()))
    url = f"http://localhost:{server.server_address[1]}/bridge"
    outcomes: list[tuple[Exception | None, float]] = []
    callers = [
        threading.Thread(target=lambda: outcomes.append(_timed(lambda: bridge.health_check(url))))
        for _ in range(3)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    outcomes.append(_timed(lambda: bridge.health_check(url)))  # the lookup still goes on

    assert not slow_lookups.answered.is_set()
    assert len(outcomes) == 4
    for error, took in outcomes:
        _assert_timed_out(error, took)
    assert slow_lookups.made == ["localhost"]


def test_a_name_looked_up_under_the_deadline_is_called_at_each_address_it_has(
    serve: Callable,
) -> None:
    """The lookup made in a thread of its own answers as the C library does: `localhost`
    may be ::1 first, which nothing serves here, and then 127.0.0.1."""
    server = serve(lambda sock: sock.sendall(_answer()))

    answer = bridge.health_check(f"http://localhost:{server.server_address[1]}/bridge")

    assert answer == json.loads(OK)
    assert server.connections == 1


def test_a_name_that_does_not_resolve_is_reported_as_the_resolver_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unknown(host: Any, *args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(deadlines, "_system_getaddrinfo", unknown)

    with pytest.raises(bridge.BridgeUnavailable) as raised:
        bridge.health_check("http://localhost:9/bridge")

    assert raised.value.code == "BridgeUnreachable"
    assert "Name or service not known" in raised.value.message


def test_an_answer_of_exactly_the_limit_is_read(serve: Callable, settings: Any) -> None:
    server = serve(lambda sock: sock.sendall(_answer()))
    settings.NORM_BRIDGE_MAX_RESPONSE_BYTES = len(OK)
    assert bridge.health_check(server.url)["status"] == "ok"
    settings.NORM_BRIDGE_MAX_RESPONSE_BYTES = len(OK) - 1
    with pytest.raises(bridge.BridgeError, match="BridgeResponseTooLarge"):
        bridge.health_check(server.url)


@override_settings(NORM_BRIDGE_MAX_RESPONSE_BYTES=1024 * 1024)
def test_a_compressed_answer_is_refused_before_it_is_decompressed_whole(serve: Callable) -> None:
    """gzip packs a thousand bytes into one: decompressed a 64 KiB read at a time, an
    answer of a few hundred KB over the wire would hold some 64 MB in the worker before
    the limit was checked. urllib3 since 2.6 (pyproject.toml asks for it) decompresses
    a stream a bounded piece at a time."""
    import gzip
    import tracemalloc

    bomb = gzip.compress(b" " * (200 * 1024 * 1024), compresslevel=9)  # 200 MiB of spaces

    def respond(sock: socket.socket) -> None:
        sock.sendall(_answer(bomb, b"content-encoding: gzip\r\n"))

    server = serve(respond)
    tracemalloc.start()
    try:
        error, _ = _timed(lambda: bridge.health_check(server.url))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert isinstance(error, bridge.BridgeError) and error.code == "BridgeResponseTooLarge"
    # The limit's 1 MiB, and a chunk's worth on top: not the whole bomb, nor 64 MB.
    assert peak < 16 * 1024 * 1024, f"{peak / 1e6:.0f} MB"


# A bridge closes a kept-alive connection once it has been idle for its keep-alive
# (gunicorn's 2 s, Node's 5 s). urllib3 checks a pooled connection before it reuses it,
# but a call sent just as the keep-alive runs out finds it closed all the same, with no
# answer: these bridges close it as the next call comes, as that race does.


def _shut(sock: socket.socket) -> None:
    """A FIN: "Remote end closed connection without response"."""
    sock.shutdown(socket.SHUT_RDWR)


def _reset(sock: socket.socket) -> None:
    """A reset, as from a server that closes a connection with a call in it unread."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    os.close(sock.detach())


class _KeepAliveRunningOut:
    """A bridge whose keep-alive runs out as the second call comes over the connection
    that the first was answered on: it closes it (`close`), unanswered. It answers the
    first call with OK, and any after the second with `again`."""

    def __init__(self, close: Callable[[socket.socket], object], again: bytes = _answer()):
        self.close = close
        self.again = again
        self.calls = 0

    def __call__(self, sock: socket.socket) -> None:
        self.calls += 1
        if self.calls == 2:
            self.close(sock)
        else:
            sock.sendall(_answer() if self.calls == 1 else self.again)


def _connects(caplog: pytest.LogCaptureFixture) -> int:
    """The connections urllib3 opened (or tried to), by its own account."""
    return sum(r.getMessage().startswith("Starting new HTTP") for r in caplog.records)


def _execute(url: str) -> Callable[[], object]:
    return lambda: bridge.execute(url, secrets=("s",), workflow_id="w", body={"payload": {}})


@pytest.mark.parametrize(("close", "over_tls"), [(_shut, False), (_reset, False), (_shut, True)])
def test_a_kept_alive_connection_the_bridge_closed_unanswered_is_called_again_at_once(
    serve: Callable,
    close: Callable[[socket.socket], None],
    over_tls: bool,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A soak saw 1 bridge call in some 11,000 fail so: retried by the task after its
    backoff (2 s or more), and logged as a failure, for the normal course of keep-alive."""
    bridge_ = _KeepAliveRunningOut(close)
    server = serve(bridge_, request.getfixturevalue("tls") if over_tls else None)
    assert bridge.health_check(server.url)["status"] == "ok"

    with caplog.at_level(logging.INFO):
        # A query of the URL's own, which config.redact masks in urllib3's lines.
        error, took = _timed(_execute(f"{server.url}?token=tk-41f2"))

    assert error is None, repr(error)
    assert (bridge_.calls, server.connections) == (3, 2)  # sent again, over a new connection
    assert took < DEADLINE / 2, took  # at once
    origin = server.url.removesuffix("/bridge")
    # Said once, without the URL's path or query; nor does urllib3 warn of its retry.
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "workflows.bridge",
            "INFO",
            f"bridge call: {origin} closed a kept-alive connection before answering execute; "
            "sent again over a new connection",
        )
    ]


def test_a_new_connection_the_bridge_closed_unanswered_is_not_called_again(
    serve: Callable,
) -> None:
    """No keep-alive ran out on a connection just made: the bridge read the call and went
    away (its process killed, say), perhaps after running it, and the task's retry is
    for that."""
    calls = []

    def crashing(sock: socket.socket) -> None:
        calls.append(sock)
        _shut(sock)

    server = serve(crashing)

    error, _ = _timed(_execute(server.url))

    assert isinstance(error, bridge.BridgeUnavailable), repr(error)
    assert error.code == "BridgeUnreachable"
    assert (len(calls), server.connections) == (1, 1)


@override_settings(NORM_BRIDGE_MAX_RESPONSE_BYTES=100)
@pytest.mark.parametrize(
    ("again", "code"),
    [
        (
            b"HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n",
            "BridgeRedirect",
        ),
        (_answer(json.dumps({"padding": "x" * 100}).encode()), "BridgeResponseTooLarge"),
    ],
)
def test_a_call_sent_again_follows_no_redirect_and_reads_no_more_than_the_limit(
    serve: Callable, again: bytes, code: str
) -> None:
    bridge_ = _KeepAliveRunningOut(_shut, again)
    server = serve(bridge_)
    assert bridge.health_check(server.url)["status"] == "ok"

    error, _ = _timed(_execute(server.url))

    assert isinstance(error, bridge.BridgeError), repr(error)
    assert not isinstance(error, bridge.BridgeUnavailable)
    assert (error.code, bridge_.calls) == (code, 3)


def test_a_call_sent_again_ends_within_the_deadline_all_the_same(serve: Callable) -> None:
    """The new connection is watched as the closed one was, by the call's one deadline."""
    bridge_ = _KeepAliveRunningOut(_shut, again=b"HTTP/1.1 200 OK\r\n")

    def respond(sock: socket.socket) -> None:
        bridge_(sock)
        if bridge_.calls == 3:
            _drip(sock, b"x" * 50, server.stop)  # the rest of its headers, a byte at a time

    server = serve(respond)
    assert bridge.health_check(server.url)["status"] == "ok"

    error, took = _timed(_execute(server.url))

    _assert_timed_out(error, took)
    assert took < 1.5 * DEADLINE, took
    assert bridge_.calls == 3


def test_a_kept_alive_connection_the_deadline_cut_is_not_called_again(
    serve: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    """The deadline shuts the call's socket down, which reads as the bridge closing the
    connection unanswered: the call has no time left to be sent again."""
    bridge_ = _KeepAliveRunningOut(lambda sock: server.stop.wait(5 * DEADLINE))  # no answer
    server = serve(bridge_)
    assert bridge.health_check(server.url)["status"] == "ok"

    with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        error, took = _timed(_execute(server.url))

    _assert_timed_out(error, took)
    assert took < 1.5 * DEADLINE, took
    assert _connects(caplog) == 0


def test_a_call_sent_again_connects_within_what_is_left_of_the_deadline(
    serve: Callable,
) -> None:
    """The deadline watches a socket once it is connected: a new connection's connect is
    bounded by requests' timeout, the whole NORM_BRIDGE_TIMEOUT, which a call sent again
    late in its time would have had anew. This bridge closes the call's connection
    unanswered late, and then accepts no other (its backlog is full: the SYN is dropped).

    Within what is left, the call takes the deadline; given the whole timeout anew, 1.8
    times it. A deadline of its own, longer than DEADLINE: the bound between the two,
    1.4 times it, leaves 0.8 s either way for a loaded machine's delays (at DEADLINE, a
    bound of 1.3 s left 0.3 s)."""
    deadline = 2.0
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/bridge"
        full = socket.socket()

        def late(sock: socket.socket) -> None:
            time.sleep(0.8 * deadline)
            full.connect(listener.getsockname())  # the backlog's one place
            _shut(sock)

        bridge_ = _KeepAliveRunningOut(late)

        def serve_one() -> None:
            sock, _ = listener.accept()
            with sock:
                reader = sock.makefile("rb")
                while _read_request(reader):
                    bridge_(sock)

        threading.Thread(target=serve_one, daemon=True).start()
        with full, override_settings(NORM_BRIDGE_TIMEOUT=deadline):
            assert bridge.health_check(url)["status"] == "ok"
            error, took = _timed(_execute(url))

    _assert_timed_out(error, took, deadline)
    assert took < 1.4 * deadline, took


def test_a_bridge_down_as_it_closed_the_kept_alive_connection_is_not_called_again(
    serve: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection refused is the bridge down, for the task's retry and its backoff."""

    def going_down(sock: socket.socket) -> None:
        server.shutdown()
        server.server_close()  # nothing listens: refused
        _shut(sock)

    server = serve(_KeepAliveRunningOut(going_down))
    assert bridge.health_check(server.url)["status"] == "ok"

    with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        error, _ = _timed(_execute(server.url))

    assert isinstance(error, bridge.BridgeUnavailable), repr(error)
    assert error.code == "BridgeUnreachable"
    assert "Connection refused" in error.message
    assert _connects(caplog) == 1  # the call sent again, refused: not tried again


def test_an_answer_asking_to_be_retried_after_a_while_is_not_retried_at_once(
    serve: Callable,
) -> None:
    """urllib3 retries a 503 with a Retry-After of its own, when it may retry at all."""
    calls = []

    def respond(sock: socket.socket) -> None:
        calls.append(sock)
        sock.sendall(
            b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-length: 0\r\n\r\n"
        )

    server = serve(respond)

    error, _ = _timed(_execute(server.url))

    assert isinstance(error, bridge.BridgeUnavailable), repr(error)
    assert (error.code, len(calls)) == ("HTTP503", 1)


@pytest.mark.parametrize(
    ("began", "close"),
    [
        (b"HTTP/1.1 2", _reset),  # part of its status line
        (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n", _reset),  # of its headers
        (b"HTTP/1.1 100 Continue\r\n\r\n", _shut),  # an interim answer: it read the call
        (b"HTTP/1.1 100 Continue\r\n\r\n", _reset),
    ],
)
def test_a_kept_alive_connection_closed_once_the_answer_began_is_not_called_again(
    serve: Callable, began: bytes, close: Callable[[socket.socket], None]
) -> None:
    """A bridge that began to answer has read the call, and may have run it: a connection
    it closes then (its process killed, say) is no keep-alive running out, whether the
    close comes before the status line and headers are whole or after a 100 Continue."""

    def answering(sock: socket.socket) -> None:
        sock.sendall(began)
        time.sleep(0.2)  # read by norm before the close: a reset would discard it unread
        close(sock)

    bridge_ = _KeepAliveRunningOut(answering)
    server = serve(bridge_)
    assert bridge.health_check(server.url)["status"] == "ok"

    error, _ = _timed(_execute(server.url))

    assert isinstance(error, bridge.BridgeUnavailable), repr(error)
    assert error.code == "BridgeUnreachable"
    assert (bridge_.calls, server.connections) == (2, 1)


def test_through_an_http_proxy_a_kept_alive_connection_closed_unanswered_is_called_again(
    serve: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through HTTP_PROXY the kept-alive connection is the proxy's, whose own keep-alive
    runs out as the call goes: sent again at once, as to a bridge called directly, though
    urllib3 reports the close as the proxy's (ProxyError) rather than the connection's."""
    proxy = _KeepAliveRunningOut(_shut)  # a proxy that answers every call itself
    server = serve(proxy)
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.url.removesuffix("/bridge"))
    bridge._proxies.cache_clear()
    try:
        # The discard port, where nothing listens: only the proxy answers for it.
        assert bridge.health_check("http://127.0.0.1:9/bridge")["status"] == "ok"
        error, took = _timed(_execute("http://127.0.0.1:9/bridge"))
    finally:
        bridge._proxies.cache_clear()

    assert error is None, repr(error)
    assert (proxy.calls, server.connections) == (3, 2)  # sent again, over a new connection
    assert took < DEADLINE / 2, took


def test_a_connection_closed_after_its_call_is_closed_at_once_not_at_the_deadline() -> None:
    """The deadline's own descriptor of a watched connection (a dup) goes when the call
    ends: kept until the deadline passed, a connection the library closed (an answer
    read whole, a `Connection: close`) stayed open to the bridge until then, one more
    for every call."""
    ours, bridges = socket.socketpair()
    with ours, bridges:
        with deadlines.within(30):
            deadlines.watch(ours)
        ours.close()  # the call is over, and its library closes the connection

        bridges.settimeout(5)
        assert bridges.recv(1) == b""  # the bridge sees it closed


def _expires(deadline: deadlines.Deadline) -> bool:
    """Whether the watchdog expires `deadline` within a few seconds of its time."""
    until = time.monotonic() + 5
    while not deadline.expired and time.monotonic() < until:
        time.sleep(0.01)
    return deadline.expired


def test_a_connection_the_bridge_reset_leaves_later_deadlines_kept() -> None:
    """Shutting down a connection the bridge has reset fails (ENOTCONN): raised in the
    watchdog's thread, it ended the thread, and no deadline of the process was kept
    after it, a call held as long as its bridge liked."""
    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()) as ours:
        theirs, _ = server.accept()
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        theirs.close()  # a reset, not a close
        with pytest.raises(ConnectionResetError):
            ours.recv(1)
        with deadlines.within(0.1) as reset:
            deadlines.watch(ours)
            assert _expires(reset)

    with deadlines.within(0.1) as later:
        assert _expires(later)
