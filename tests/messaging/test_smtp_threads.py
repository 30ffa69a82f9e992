"""The message worker under Celery's threads pool (as `manage.py rundemo` runs it): each
thread keeps its own SMTP connection. Real connections, hence `transaction=True`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from messaging import services
from messaging.models import Message
from tests.conftest import Enqueued
from tests.messaging.test_message_worker import email_step, smtp_serving
from workflows.models import Step

pytestmark = pytest.mark.django_db(transaction=True)


class RefusesAfterOthers:
    """Refuses refused@example.com, once another connection has started an email
    (or after 3 s): one thread's failure while another thread is sending."""

    def __init__(self) -> None:
        self.refusing, self.other_started = threading.Event(), threading.Event()
        self.refusing_peer: Any = None
        self.refused_while_other_sent = False
        self.delivered: list[list[str]] = []

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, _: Any
    ) -> str:
        if self.refusing_peer is not None and session.peer != self.refusing_peer:
            self.other_started.set()
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, _: Any
    ) -> str:
        if address != "refused@example.com":
            envelope.rcpt_tos.append(address)
            return "250 OK"
        self.refusing_peer = session.peer
        self.refusing.set()
        waiting = asyncio.get_running_loop().run_in_executor(None, self.other_started.wait, 3)
        self.refused_while_other_sent = await waiting
        return "550 no such user"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.delivered.append(envelope.rcpt_tos)
        return "250 OK"


@pytest.fixture
def refusing_server(settings: Any) -> Iterator[RefusesAfterOthers]:
    handler = RefusesAfterOthers()
    with smtp_serving(settings, handler):
        yield handler


def test_one_threads_refused_email_leaves_another_threads_email_alone(
    enqueued: Enqueued, refusing_server: RefusesAfterOthers
) -> None:
    """The connection was the process's: a refusal in one thread closed it under the
    email another thread was sending on it, which failed (or was marked failed after it
    was delivered)."""
    refused = email_step(notification__subscriber__email="refused@example.com")
    accepted = email_step(notification__subscriber__email="bob@example.com")

    def send(step: Step) -> None:
        try:
            services.message_send(step_id=step.pk)
        finally:
            connection.close()

    first = threading.Thread(target=send, args=(refused,))
    first.start()
    assert refusing_server.refusing.wait(5)
    second = threading.Thread(target=send, args=(accepted,))
    second.start()
    first.join(10)
    second.join(10)

    refused.refresh_from_db()
    accepted.refresh_from_db()
    assert (refused.status, accepted.status) == (Step.Status.FAILED, Step.Status.COMPLETED), (
        accepted.error
    )
    assert "550" in refused.error
    # Each on its own connection: the second did not wait for the first to finish.
    assert refusing_server.refused_while_other_sent
    assert refusing_server.delivered == [["bob@example.com"]]
    assert Message.objects.get(step=accepted).status == Message.Status.SENT
