"""A message worker runs for weeks: a send that fails, or a kept connection replaced,
gives back its SMTP connection at once, rather than leave it to the garbage collector."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any

import pytest

from messaging.models import Message
from messaging.providers import DjangoEmailProvider, SendError
from tests.conftest import Enqueued, connections_to
from tests.factories import MessageFactory
from tests.messaging.test_message_worker import (
    Inbox,
    email_step,
    smtp_requiring_login,
    smtp_serving,
)
from workflows.models import Step

pytestmark = pytest.mark.django_db

SENDS = 200


class CountsQuits(Inbox):
    def __init__(self) -> None:
        super().__init__()
        self.quits = 0

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts in /proc")
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_a_connection_whose_login_is_refused_is_closed_with_a_quit(settings: Any) -> None:
    """Django keeps a connection whose login failed for its backend's close(), and norm
    dropped that backend: each email sent while the password was wrong left a connection
    open, unQUIT, until the garbage collector freed it (smtplib's login holds its error
    in a reference cycle). The collector is kept off here, so that the count is norm's."""
    inbox = CountsQuits()
    step = email_step()
    message = MessageFactory(
        step=step,
        provider=DjangoEmailProvider.name,
        recipient="ann@example.com",
        content=step.outputs,
        status=Message.Status.SENDING,
    )
    provider = DjangoEmailProvider()
    with smtp_requiring_login(settings, inbox, "new-secret"):
        settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = "norm", "old-secret"
        with pytest.raises(SendError, match="SMTP login failed"):
            provider.send(message)  # imports and first connections, before counting
        quits = inbox.quits
        gc.disable()
        try:
            for _ in range(SENDS):
                with pytest.raises(SendError, match="SMTP login failed"):
                    provider.send(message)
            still_open = connections_to({settings.EMAIL_PORT})
        finally:
            gc.enable()

    assert (still_open, inbox.quits - quits) == (0, SENDS)


def test_a_kept_connection_replaced_for_idling_too_long_is_closed_with_a_quit(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One idle past KEEP_OPEN is replaced rather than trusted, and closed first: dropped
    with the backend, it stayed open, the server given no QUIT, until the garbage
    collector freed it, one more for every email that followed a pause."""
    monkeypatch.setattr(DjangoEmailProvider, "KEEP_OPEN", 0.0)
    inbox = CountsQuits()
    with smtp_serving(settings, inbox):
        first, second = send(email_step()), send(email_step())

        assert (first.status, second.status) == (Step.Status.COMPLETED, Step.Status.COMPLETED)
        assert len(set(inbox.peers)) == 2  # the second on a new connection
        assert inbox.quits == 1  # the first closed as it was replaced
