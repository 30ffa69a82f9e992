"""A send's record beside another task ending the same step, on real connections (hence
`transaction=True`): neither waits for the other in a cycle (a deadlock, which
PostgreSQL ends by failing one of them)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.utils import timezone

from messaging import services
from messaging.models import Message
from notify.models import Client
from tests.conftest import Enqueued, InThread, lock_waiters
from tests.factories import MessageFactory
from workflows.models import Notification, Step
from workflows.services import bookkeeping

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_late_send_recorded_while_the_step_s_new_holder_fails_it_deadlocks_neither(
    monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """Task a's send outlasted its claim; task b took the step over and fails it (the
    client deactivated meanwhile) as a's provider answers. a's record (the retry of a
    record the database refused: SentUnrecorded) updated the message, then the step;
    b's step_fail the notification, the step, then the message: each held a row the
    other wanted next, and PostgreSQL ended a's record (DeadlockDetected) after
    deadlock_timeout, retried with backoff. step_fail (and step_skip, and
    step_retry_later's cancel) now locks the message before the step, in the record's
    order, and a's record waits for b."""
    message = MessageFactory(
        step__type="email",
        step__status=Step.Status.PROCESSING,
        step__claimed_by="task-b",
        step__claimed_at=timezone.now(),
        provider="console",
        status=Message.Status.SENDING,
        attempts=1,
    )
    step = message.step
    Client.objects.filter(pk=message.client_id).update(is_active=False)
    b_holds_the_step, go_on = threading.Event(), threading.Event()
    give_up = bookkeeping.messages_give_up

    def give_up_once_a_waits(step_ids: Any, error: str) -> None:
        b_holds_the_step.set()  # b holds the notification and the step
        go_on.wait(10)
        give_up(step_ids, error)

    monkeypatch.setattr(bookkeeping, "messages_give_up", give_up_once_a_waits)
    b = InThread(lambda: services.message_send(step_id=step.pk, claim="task-b"))
    assert b_holds_the_step.wait(10)
    sent = {
        "recipient": "ann@example.com",
        "provider_message_id": "a-1",
        "attempts": 2,
        "sent_at": timezone.now().isoformat(),
    }
    a = InThread(lambda: services.message_send(step_id=step.pk, claim="task-a", sent=sent))
    lock_waiters(1, a)  # a waits for b: for the step (for the message, once fixed)
    go_on.set()
    b.join()
    a.join()

    message.refresh_from_db()
    step.refresh_from_db()
    assert (message.status, message.provider_message_id) == (Message.Status.SENT, "a-1")
    assert step.status == Step.Status.FAILED  # b's, which a's success came after
    assert Notification.objects.get(pk=step.notification_id).error_code == "ClientInactive"
