"""Rows that must never be left in a non-final state with nothing to move them on."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from config import pipeline
from messaging import services as messaging_services
from messaging.models import Message
from tests.e2e.harness import free_port
from tests.factories import MessageFactory, NotificationFactory, StepFactory, SubscriberFactory
from workflows import bridge
from workflows.models import Notification, Step
from workflows.services import bookkeeping, echo, operations, reconciler

pytestmark = pytest.mark.django_db


def _answer(monkeypatch: pytest.MonkeyPatch, answer: dict[str, Any]) -> None:
    monkeypatch.setattr(bridge, "execute", lambda *a, **kw: answer)


@pytest.mark.parametrize(
    "answer",
    [
        {
            "done": False,
            "stepId": "wait",
            "type": "delay",
            "outputs": {"amount": 1e10, "unit": "days"},
        },
        {"done": False, "stepId": "mail", "type": "email", "outputs": {}, "options": "skip"},
    ],
    ids=["delay too long", "options not an object"],
)
def test_an_answer_norm_cannot_record_fails_the_notification(
    monkeypatch: pytest.MonkeyPatch, enqueued, answer: dict[str, Any]
) -> None:
    notification = NotificationFactory()
    _answer(monkeypatch, answer)

    echo.echo_run(notification_id=str(notification.pk))

    notification.refresh_from_db()
    if answer.get("options") == "skip":  # not an object: no skip, the step is scheduled
        assert notification.steps.get().status == Step.Status.SCHEDULED
        return
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "UnsupportedDelay"
    assert not notification.steps.exists()


def test_a_bridge_error_code_that_is_not_a_short_string_is_stored_safely(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notification = NotificationFactory()

    def refuse(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise bridge.BridgeError("X" * 300, "no")

    monkeypatch.setattr(bridge, "execute", refuse)
    echo.echo_run(notification_id=str(notification.pk))

    notification.refresh_from_db()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "X" * 100


def test_an_email_the_provider_refuses_fails_its_step_instead_of_staying_claimed(
    settings, enqueued
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    notification = NotificationFactory(
        status=Notification.Status.RUNNING,
        subscriber=SubscriberFactory(email="ann@example.com"),
    )
    step = StepFactory(
        notification=notification,
        type="email",
        outputs={"subject": "a", "body": "b", "replyTo": "a@b.c\nBcc: x@y.z"},
    )

    messaging_services.message_send(step_id=step.pk)

    step.refresh_from_db()
    notification.refresh_from_db()
    assert step.status == Step.Status.FAILED
    # Not claimed still, and the workflow goes on past it (services.bookkeeping.step_undelivered).
    assert notification.status == Notification.Status.RUNNING
    assert "replyTo with a line break" in step.error


def test_a_transient_failure_after_a_cancel_does_not_reschedule_the_step(enqueued) -> None:
    step = StepFactory(status=Step.Status.PROCESSING, claimed_at=timezone.now())
    Notification.objects.filter(pk=step.notification_id).update(status=Notification.Status.CANCELED)

    bookkeeping.step_retry_later(step=step, message="421 try later", backoff=1)

    step.refresh_from_db()
    assert step.status == Step.Status.CANCELED
    assert enqueued.of(pipeline.MESSAGE) == []


def test_the_reconciler_sends_no_step_of_a_final_notification(settings, enqueued) -> None:
    settings.NORM_RECONCILE_GRACE = 1
    settings.NORM_STALE_CLAIM_SECONDS = 1
    long_ago = timezone.now() - timedelta(minutes=5)
    for status in (Notification.Status.CANCELED, Notification.Status.FAILED):
        StepFactory(notification__status=status, status=Step.Status.SCHEDULED, due_at=long_ago)
        StepFactory(notification__status=status, status=Step.Status.PROCESSING, claimed_at=long_ago)

    reconciler.reconcile()

    assert enqueued.of(pipeline.MESSAGE) == []
    assert Step.objects.filter(status=Step.Status.SCHEDULED).count() == 2
    assert Step.objects.filter(status=Step.Status.PROCESSING).count() == 0  # see below


def _email_message(step: Step, **fields: Any) -> Message:
    """The message of an email `step`, with its content, as the message worker stores it."""
    return MessageFactory(step=step, provider="django-email", content=step.outputs, **fields)


def _claimed_with_its_message(notification: Notification, **message: Any) -> Step:
    """An email step of `notification` claimed by a task that then died, with the message
    that task had begun (its fields overridden by `message`)."""
    step = StepFactory(notification=notification, type="email")
    assert bookkeeping.step_claim(step_id=step.pk, claim="died") is not None
    _email_message(step, **{"status": Message.Status.SENDING, **message})
    return step


@pytest.mark.parametrize(
    "ended",
    [Notification.Status.CANCELED, Notification.Status.FAILED, Notification.Status.COMPLETED],
)
def test_a_step_whose_task_was_lost_after_its_notification_ended_ends_once_its_claim_is_stale(
    settings, enqueued, ended: str
) -> None:
    """A cancel leaves a step being sent to its task; a worker that died with the task
    left the step processing and its message sending for good: the reconciler reopened
    stale claims of running notifications only. Once stale, both end, never sent; a
    claim not stale yet (its task may still be sending) is left alone."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.NORM_STALE_CLAIM_SECONDS = 600
    notification = NotificationFactory(
        status=Notification.Status.RUNNING, subscriber=SubscriberFactory(email="ann@example.com")
    )
    lost = _claimed_with_its_message(notification)
    sending = StepFactory(notification__status=ended, status=Step.Status.PROCESSING)
    Notification.objects.filter(pk=notification.pk).update(status=ended)
    Step.objects.filter(pk=lost.pk).update(claimed_at=timezone.now() - timedelta(seconds=601))
    Step.objects.filter(pk=sending.pk).update(claimed_at=timezone.now() - timedelta(seconds=599))

    reconciler.reconcile()
    messaging_services.message_send(step_id=lost.pk)  # a duplicate of the lost task

    lost.refresh_from_db()
    sending.refresh_from_db()
    message = Message.objects.get(step=lost)
    assert lost.status == Step.Status.CANCELED and lost.completed_at is not None
    assert "lost" in lost.error
    assert message.status == Message.Status.FAILED and "lost" in message.error
    assert sending.status == Step.Status.PROCESSING  # its task may still be sending
    assert enqueued.of(pipeline.MESSAGE) == []
    assert mail.outbox == []


def test_a_message_sent_before_its_task_was_lost_stays_sent_when_the_step_ends(
    settings, enqueued
) -> None:
    """The send went out and was recorded; the worker died before it closed the step.
    Ending the step lost with its task fails only messages still on their way: this one
    reached the subscriber, and the activity feed must say so."""
    settings.NORM_STALE_CLAIM_SECONDS = 600
    notification = NotificationFactory(status=Notification.Status.RUNNING)
    lost = _claimed_with_its_message(notification, status=Message.Status.SENT)
    Notification.objects.filter(pk=notification.pk).update(status=Notification.Status.CANCELED)
    Step.objects.filter(pk=lost.pk).update(claimed_at=timezone.now() - timedelta(seconds=601))

    reconciler.reconcile()

    assert Step.objects.get(pk=lost.pk).status == Step.Status.CANCELED
    message = Message.objects.get(step=lost)
    assert (message.status, message.error) == (Message.Status.SENT, "")


def _failed_email_retried(settings: Any) -> Step:
    """An email step failed for good at NORM_SEND_MAX_ATTEMPTS (2), retried from the
    admin, and its send run once, through settings.EMAIL_BACKEND."""
    settings.NORM_SEND_MAX_ATTEMPTS = 2
    notification = NotificationFactory(
        status=Notification.Status.FAILED, subscriber=SubscriberFactory(email="ann@example.com")
    )
    step = StepFactory(notification=notification, status=Step.Status.FAILED)
    _email_message(step, status=Message.Status.FAILED, attempts=2)

    assert operations.notification_retry(notification=notification)
    messaging_services.message_send(step_id=step.pk)

    step.refresh_from_db()
    return step


def test_an_admin_retry_gives_the_step_a_fresh_budget_of_send_attempts(settings, enqueued) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    step = _failed_email_retried(settings)
    assert step.status == Step.Status.COMPLETED
    assert Message.objects.get(step=step).status == Message.Status.SENT


def test_an_admin_retry_sends_again_after_a_failure_for_now_within_its_fresh_budget(
    settings, enqueued
) -> None:
    """The message's attempts are the provider's count (a send that failed for now is
    retried below NORM_SEND_MAX_ATTEMPTS): kept from the run before, the retried message's
    first failure for now (the SMTP server restarting) failed it for good at once."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    # A port nothing listens on: each send fails for now.
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()
    step = _failed_email_retried(settings)
    assert step.status == Step.Status.SCHEDULED  # to be sent again after a backoff
    message = Message.objects.get(step=step)
    assert (message.status, message.attempts) == (Message.Status.SENDING, 1)


@pytest.mark.parametrize("failed_step", [False, True])
def test_an_admin_retry_counts_the_bridges_failures_afresh(enqueued, failed_step: bool) -> None:
    """A notification the bridge failed after the workflow went on past an undelivered
    email: the retry reopens that step, and the bridge's failures of the run before are
    not shown as this run's (the admin's "bridge attempts")."""
    notification = NotificationFactory(
        status=Notification.Status.FAILED, error_code="BridgeUnreachable", bridge_attempts=4
    )
    if failed_step:
        StepFactory(notification=notification, status=Step.Status.FAILED)

    assert operations.notification_retry(notification=notification)

    notification.refresh_from_db()
    assert (notification.status, notification.bridge_attempts) == ("running", 0)
