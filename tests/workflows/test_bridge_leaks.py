"""An echo worker runs for weeks, calling the bridges of many clients: the connections of
the bridges it stops calling are given back, whatever still refers to their pool."""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.conftest import connections_to, serve_in_background
from workflows import bridge
from workflows.sdk import Bridge, Context, workflow

# More bridges than the process keeps a pool of connections for (urllib3's num_pools).
BRIDGES = 12
CALLS = 200


@workflow("hello")
def _hello(ctx: Context) -> None:
    ctx.step.in_app("note", lambda: {"body": "hello"})


_BRIDGE = Bridge([_hello], secret_key="old-key")


class _KeepsAlive(BaseHTTPRequestHandler):
    """norm's SDK over HTTP/1.1, as a bridge behind any web server: the connection stays
    open for the next call (tests.conftest.sdk_serving's closes it after each answer)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the body, written after the headers, goes at once

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        query = dict(parse_qsl(urlsplit(self.path).query))
        status, answer, _ = _BRIDGE.handle(
            method=self.command, query=query, body=body, headers=dict(self.headers)
        )
        raw = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = _handle

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _bridge_serving() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeepsAlive)
    server.daemon_threads = True
    serve_in_background(server)
    try:
        yield f"http://127.0.0.1:{server.server_port}/bridge"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts in /proc")
def test_the_connections_of_a_pool_dropped_for_another_bridge_are_closed() -> None:
    """The process keeps pools for its last 10 bridges; urllib3 2 closes the one it drops
    only when the garbage collector frees it, and an error still held refers to it (here
    a key refused, as while a client rotates its key, which `bridge.call` keeps to raise
    if no key is taken: a reference cycle). Each call to a bridge outside the last 10 left
    a connection open, for as long as the collector took, which is kept off here so that
    the count is norm's."""
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(_bridge_serving()) for _ in range(BRIDGES)]
        # norm holds the new key, the bridges still the old one: each call is refused
        # once, then signed again with the old key.
        secrets = ("new-key", "old-key")
        ports = {urlsplit(url).port or 0 for url in urls}
        gc.disable()
        try:
            for number in range(CALLS):
                bridge.discover(urls[number % BRIDGES], secrets=secrets)
            kept = connections_to(ports)
        finally:
            gc.enable()

    assert kept <= 10  # one idle connection for each pool kept
