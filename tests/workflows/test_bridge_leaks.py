"""An echo worker runs for weeks, calling the bridges of many clients: the connections of
the bridges it stops calling are given back, whatever still refers to their pool."""

from __future__ import annotations

import contextlib
import gc
import os
from urllib.parse import urlsplit

import pytest

from tests.conftest import connections_to, sdk_serving
from workflows import bridge
from workflows.sdk import Bridge, Context, workflow

# More bridges than the process keeps a pool of connections for (urllib3's num_pools).
BRIDGES = 12
CALLS = 200


@workflow("hello")
def _hello(ctx: Context) -> None:
    ctx.step.in_app("note", lambda: {"body": "hello"})


_BRIDGE = Bridge([_hello], secret_key="old-key")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts in /proc")
def test_the_connections_of_a_pool_dropped_for_another_bridge_are_closed() -> None:
    """The process keeps pools for its last 10 bridges; urllib3 2 closes the one it drops
    only when the garbage collector frees it, and an error still held refers to it (here
    a key refused, as while a client rotates its key, which `bridge.call` keeps to raise
    if no key is taken: a reference cycle). Each call to a bridge outside the last 10 left
    a connection open, for as long as the collector took, which is kept off here so that
    the count is norm's."""
    with contextlib.ExitStack() as stack:
        urls = [
            stack.enter_context(sdk_serving(_BRIDGE, keep_alive=True)) + "/bridge"
            for _ in range(BRIDGES)
        ]
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
