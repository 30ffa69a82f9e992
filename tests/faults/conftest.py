"""Fixtures for the fault tests: the e2e harness, with an SMTP server that counts deliveries.

The Celery, broker and client fixtures are the e2e ones, imported here so that they
apply to this directory too; `smtp` is replaced by a server that records the
`X-Norm-Message-Id` of every email it accepts and can refuse the first attempts.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.e2e.conftest import (  # noqa: F401
    broker,
    make_client,
    pytest_runtest_makereport,
    start_celery,
)
from tests.e2e.harness import free_port

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
