"""Fixtures for the fault tests: the e2e harness, with an SMTP server that counts deliveries.

The Celery, broker and client fixtures are the e2e ones, imported here so that they
apply to this directory too; `smtp` is replaced by a server that records the
`X-Norm-Message-Id` of every email it accepts and can refuse the first attempts.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path

import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.e2e.conftest import (  # noqa: F401
    broker,
    make_client,
    pytest_runtest_makereport,
    start_celery,
)
from tests.e2e.harness import free_port, wait_for

# aiosmtpd logs every SMTP command at INFO: thousands of lines per test.
logging.getLogger("mail.log").setLevel(logging.WARNING)


@dataclass
class CountingSmtp:
    """Counts attempts and deliveries per norm message; answers 451 to the first
    `refuse_first` attempts of each message. With `hold` set, a message is kept but the
    answer waits that long: its sender is caught between the send and its commit."""

    refuse_first: int = 0
    hold: float = 0.0
    attempts: Counter[str] = field(default_factory=Counter)
    deliveries: Counter[str] = field(default_factory=Counter)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message_id = str(message_from_bytes(envelope.original_content or b"")["X-Norm-Message-Id"])
        self.attempts[message_id] += 1
        if self.attempts[message_id] <= self.refuse_first:
            return "451 4.3.0 Try again later"
        self.deliveries[message_id] += 1
        if self.hold:
            await asyncio.sleep(self.hold)
        return "250 Message accepted"

    def delivered(self) -> int:
        return sum(self.deliveries.values())

    def repeats(self) -> dict[str, int]:
        """Message id -> how many times it arrived more than once."""
        return {m: n - 1 for m, n in self.deliveries.items() if n > 1}


def smtp_serve(recorder: CountingSmtp, port: int | None = None) -> Controller:
    controller = Controller(recorder, hostname="127.0.0.1", port=port or free_port())
    controller.start()
    return controller


@pytest.fixture
def smtp() -> Iterator[tuple[int, CountingSmtp]]:
    recorder = CountingSmtp()
    controller = smtp_serve(recorder)
    yield controller.port, recorder
    controller.stop()


@dataclass
class RedisServer:
    """A redis-server of the test's own, keeping nothing on disk: a test may empty it
    (FLUSHALL) and restart it, which it may not do to the machine's, shared with other
    sessions (each on a database of its own)."""

    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it on its port, empty."""
        no_disk = ["--save", "", "--appendonly", "no", "--dir", str(self.log.parent)]
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", *no_disk]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait_for(self._answers, timeout=10, what="redis-server to answer")

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.ConnectionError:
            return False

    def flush_and_kill(self) -> None:
        """FLUSHALL, then the server killed: every queued, delayed and unacknowledged
        task is gone, and every connection to it broken."""
        redis.Redis.from_url(self.url).flushall()
        self.stop()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis, which this process's Celery app (the trigger API's hand-offs)
    sends to for the test; its workers are given its `url`."""
    if not shutil.which("redis-server"):
        pytest.skip("restarting Redis needs a redis-server of the test's own")
    from config.celery import app

    server = RedisServer(port=free_port(), log=tmp_path / "redis.log")
    server.start()
    # The write URL, not broker_url: CELERY_BROKER_URL in the environment overrides that.
    app.conf.broker_write_url = server.url
    app._pool, app.amqp._producer_pool = None, None  # pools made for the shared Redis
    try:
        yield server
    finally:
        app.conf.broker_write_url = None
        app._pool, app.amqp._producer_pool = None, None
        server.stop()
