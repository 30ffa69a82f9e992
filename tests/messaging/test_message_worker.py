from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from email import message_from_bytes, message_from_string, policy
from email.header import decode_header, make_header
from email.utils import getaddresses, parseaddr, quote
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from celery.exceptions import Retry
from django.core import checks, mail
from django.core.mail.backends.base import BaseEmailBackend
from django.db import InterfaceError, OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from config import pipeline
from messaging import providers, services, tasks
from messaging.models import Message
from notify import services as notify_services
from notify.models import Client, TriggerEvent
from subscribers.models import Subscriber
from tests.conftest import Enqueued, FailsOnce, a_bug, serve_in_background, task_retry
from tests.factories import ClientFactory, MessageFactory, NotificationFactory, StepFactory
from workflows import bridge
from workflows.models import Notification, Step
from workflows.services import bookkeeping, echo, operations, reconciler

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]
LOCMEM = "django.core.mail.backends.locmem.EmailBackend"
SMTP = "django.core.mail.backends.smtp.EmailBackend"


def email_step(**kwargs: Any) -> Step:
    kwargs.setdefault("notification__subscriber__email", "ann@example.com")
    kwargs.setdefault("outputs", {"subject": "Your order", "body": "<p>It <b>shipped</b></p>"})
    return StepFactory(type="email", **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def smtp_unreachable(settings: Any) -> None:
    """Emails go over SMTP to a port nothing listens on: each send fails for now."""
    settings.EMAIL_BACKEND = SMTP
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()


def test_a_delay_step_completes_with_the_time_it_waited(
    send: Callable[[Step], Step], enqueued: Enqueued
) -> None:
    step = StepFactory(type="delay", outputs={"amount": 5, "unit": "seconds"})
    Step.objects.filter(pk=step.pk).update(created_at=timezone.now() - timedelta(seconds=5))

    step = send(step)

    assert step.status == Step.Status.COMPLETED and step.completed_at is not None
    assert 5000 <= step.result["duration"] < 60000
    assert not Message.objects.exists()
    assert enqueued.of(pipeline.ECHO) == [(str(step.notification_id),)]


def test_a_zero_delay_recorded_by_a_clock_ahead_waited_no_less_than_nothing(
    send: Callable[[Step], Step], enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The echo worker's clock half a second ahead of the message worker's: a zero delay
    it recorded is due (CLOCK_SKEW) and was completed with a duration of -500 ms, which
    the bridge's code reads as the time the delay waited."""
    now = timezone.now()
    # Stopped: on a loaded machine, half a second could pass before the send, and the
    # clock it reads was no longer behind.
    monkeypatch.setattr(timezone, "now", lambda: now)
    ahead = now + timedelta(milliseconds=500)
    step = StepFactory(type="delay", outputs={"amount": 0, "unit": "seconds"}, due_at=ahead)
    Step.objects.filter(pk=step.pk).update(created_at=ahead)

    step = send(step)

    assert step.status == Step.Status.COMPLETED and step.result == {"duration": 0}


def test_a_custom_step_completes_with_its_outputs_as_result(
    send: Callable[[Step], Step], enqueued: Enqueued
) -> None:
    step = send(StepFactory(type="custom", outputs={"score": 7}))
    assert step.status == Step.Status.COMPLETED and step.result == {"score": 7}
    assert enqueued.of(pipeline.ECHO) == [(str(step.notification_id),)]


def test_in_app_stores_the_message_in_the_inbox(
    send: Callable[[Step], Step], enqueued: Enqueued
) -> None:
    step = send(StepFactory(type="in_app", outputs={"subject": "Welcome!", "body": "Hi Ann"}))

    message = Message.objects.get()
    assert message.step == step and message.channel == "in_app"
    assert (message.provider, message.status) == ("inbox", Message.Status.SENT)
    assert message.content == {"subject": "Welcome!", "body": "Hi Ann"}
    assert message.subscriber == step.notification.subscriber
    assert message.client == step.notification.client
    assert message.sent_at is not None and message.seen_at is None
    assert step.status == Step.Status.COMPLETED
    assert enqueued.of(pipeline.ECHO) == [(str(step.notification_id),)]


def test_an_in_app_message_stored_as_sent_before_a_crash_is_kept_and_its_step_completed(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-app is stored as sent in its INSERT, and its step completed after: the database
    lost in between, the task's retry finds the message sent and completes the step,
    neither storing it twice nor touching it."""
    step = StepFactory(type="in_app", outputs={"body": "Hi Ann"})
    complete = FailsOnce(bookkeeping.step_complete, OperationalError("the server closed"))
    monkeypatch.setattr(bookkeeping, "step_complete", complete)
    with pytest.raises(OperationalError):
        services.message_send(step_id=step.pk, claim="task-1")
    stored = Message.objects.get()
    assert (stored.status, stored.attempts) == (Message.Status.SENT, 1)
    step.refresh_from_db()
    assert step.status == Step.Status.PROCESSING and enqueued.calls == []

    with django_capture_on_commit_callbacks(execute=True):
        services.message_send(step_id=step.pk, claim="task-1")

    step.refresh_from_db()
    assert step.status == Step.Status.COMPLETED and complete.calls == 2
    assert Message.objects.get() == stored
    assert Message.objects.values_list("status", "attempts", "sent_at").get() == (
        Message.Status.SENT,
        1,
        stored.sent_at,
    )
    assert enqueued.of(pipeline.ECHO) == [(str(step.notification_id),)]


def test_email_through_django_mail(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    settings.EMAIL_BACKEND = LOCMEM
    step = send(email_step())

    assert len(mail.outbox) == 1
    sent = mail.outbox[0]
    assert sent.subject == "Your order" and sent.to == ["ann@example.com"]
    assert sent.body == "It shipped"
    assert sent.alternatives[0][0] == "<p>It <b>shipped</b></p>"
    message = Message.objects.get()
    assert (message.status, message.recipient, message.provider) == (
        Message.Status.SENT,
        "ann@example.com",
        "django-email",
    )
    assert message.provider_message_id == str(message.pk) and message.attempts == 1
    assert step.status == Step.Status.COMPLETED
    assert enqueued.of(pipeline.ECHO) == [(str(step.notification_id),)]


class Inbox:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.peers: list[Any] = []  # the client's address for each email: its connection
        self.answer_after = 0.0  # seconds the server takes to answer an email it accepted
        # Answers to the next emails, in order: an event to wait for first, and the reply.
        self.replies: list[tuple[threading.Event, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        self.peers.append(session.peer)
        await asyncio.sleep(self.answer_after)
        if self.replies:
            event, reply = self.replies.pop(0)
            await asyncio.get_running_loop().run_in_executor(None, event.wait, 10)
            return reply
        return "250 OK"


@contextlib.contextmanager
def smtp_serving(settings: Any, handler: Any, **smtp_parameters: Any) -> Iterator[None]:
    """A real SMTP server on loopback answering with `handler`, and norm's email on it.
    `smtp_parameters`: aiosmtpd's (enable_SMTPUTF8=True, say)."""
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **smtp_parameters)
    controller.start()
    settings.EMAIL_BACKEND = SMTP
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    try:
        yield
    finally:
        controller.stop()


@pytest.fixture
def smtp_server(settings: Any) -> Iterator[Inbox]:
    inbox = Inbox()
    with smtp_serving(settings, inbox):
        yield inbox


def test_email_through_a_real_smtp_server(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox, settings: Any
) -> None:
    settings.DEFAULT_FROM_EMAIL = "norm@example.com"
    step = send(email_step(outputs={"subject": "Over the wire", "body": "Hello"}))

    assert step.status == Step.Status.COMPLETED
    [envelope] = smtp_server.envelopes
    assert envelope.rcpt_tos == ["ann@example.com"]
    assert envelope.mail_from == "norm@example.com"
    text = envelope.content.decode()
    assert "Subject: Over the wire" in text
    assert f"X-Norm-Message-Id: {Message.objects.get().pk}" in text
    assert Message.objects.get().status == Message.Status.SENT


def test_consecutive_emails_share_one_smtp_connection(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    for _ in range(3):
        assert send(email_step()).status == Step.Status.COMPLETED
    assert len(smtp_server.envelopes) == 3
    assert len(set(smtp_server.peers)) == 1


def test_a_kept_connection_the_server_dropped_is_replaced_and_the_email_sent_once(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    send(email_step())
    _, backend, _ = providers.DjangoEmailProvider._kept.open  # type: ignore[misc]
    backend.connection.sock.shutdown(socket.SHUT_RDWR)  # as a server's idle timeout would

    step = send(email_step(notification__subscriber__email="bob@example.com"))

    assert step.status == Step.Status.COMPLETED and step.attempts == 1
    assert [e.rcpt_tos for e in smtp_server.envelopes] == [["ann@example.com"], ["bob@example.com"]]
    assert smtp_server.peers[0] != smtp_server.peers[1]


def test_a_reply_that_times_out_after_the_data_is_not_sent_again_at_once(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox, settings: Any
) -> None:
    """The server may have taken the email it did not answer for in time: on a kept
    connection, that is no connection dropped while idle, to send again on a new one."""
    settings.EMAIL_TIMEOUT = 0.5
    send(email_step())
    smtp_server.answer_after = 1.5

    step = send(email_step(notification__subscriber__email="bob@example.com"))

    assert [e.rcpt_tos for e in smtp_server.envelopes] == [["ann@example.com"], ["bob@example.com"]]
    assert step.status == Step.Status.SCHEDULED  # a transient failure: retried after a backoff
    assert "timed out" in Message.objects.get(step=step).error


class _DropsAfterTheData(Inbox):
    """Takes the email to `drop_to`, and closes the connection without answering for it
    (a relay restarted, a load balancer's cut): the email may well be on its way."""

    drop_to = ""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if envelope.rcpt_tos != [self.drop_to]:
            return await super().handle_DATA(server, session, envelope)
        self.envelopes.append(envelope)
        self.peers.append(session.peer)
        server.transport.close()
        return "250 OK, never read"


def test_a_kept_connection_dropped_after_the_data_does_not_send_the_email_again_at_once(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    """A disconnect was taken for a kept connection the server had dropped while idle,
    and the email sent again at once on a new one, uncounted and unrecorded, though the
    server had it whole: a second copy, two on each attempt. As for a reply that timed
    out, it is retried after a backoff, the disconnect on the message."""
    inbox = _DropsAfterTheData()
    inbox.drop_to = "bob@example.com"
    with smtp_serving(settings, inbox):
        assert send(email_step()).status == Step.Status.COMPLETED
        step = send(email_step(notification__subscriber__email="bob@example.com"))
        after = send(email_step(notification__subscriber__email="carl@example.com"))

    assert [e.rcpt_tos for e in inbox.envelopes] == [
        ["ann@example.com"],
        ["bob@example.com"],
        ["carl@example.com"],
    ]
    assert (step.status, step.attempts) == (Step.Status.SCHEDULED, 1)
    message = Message.objects.get(step=step)
    assert message.error == "SMTP connection failed: Connection unexpectedly closed"
    assert after.status == Step.Status.COMPLETED and inbox.peers[1] != inbox.peers[2]


def test_a_connection_idle_too_long_is_not_trusted(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    smtp_server: Inbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(providers.DjangoEmailProvider, "KEEP_OPEN", 0.0)
    send(email_step())
    send(email_step())
    assert len(smtp_server.envelopes) == 2 and smtp_server.peers[0] != smtp_server.peers[1]


def test_a_connection_sending_steadily_is_kept_past_keep_open_from_its_opening(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    smtp_server: Inbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """KEEP_OPEN counts from a connection's last email, not from its opening: one that
    sends steadily is kept, not replaced (a handshake, EHLO, TLS, AUTH) every KEEP_OPEN."""
    clock = _Clock()
    monkeypatch.setattr(providers, "time", clock)
    for _ in range(3):
        send(email_step())
        clock.now += providers.DjangoEmailProvider.KEEP_OPEN * 0.8
    assert len(smtp_server.envelopes) == 3 and len(set(smtp_server.peers)) == 1


def _away_one_run(fn: Any) -> Any:
    """`fn`, failing as the database away would for as many calls as one run makes of it
    (the first and the run's tries again, _retried_briefly), and then going through."""
    for _ in range(len(services.RECORD_RETRY_DELAYS) + 1):
        fn = FailsOnce(fn, OperationalError("the server closed"))
    return fn


def _answered_at_once(reply: str) -> tuple[threading.Event, str]:
    answered = threading.Event()
    answered.set()
    return answered, reply


def test_a_last_attempt_whose_step_the_database_failed_to_fail_is_not_sent_again(
    enqueued: Enqueued,
    ended: Callable[[Step], Notification],
    smtp_server: Inbox,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    """The last attempt's reply timed out (the server may have taken the email), and the
    database failed after the message was recorded failed, before its step was: the
    task's retry took its claim back and sent the email again at once, past
    NORM_SEND_MAX_ATTEMPTS. It fails the step as its message says instead."""
    settings.NORM_SEND_MAX_ATTEMPTS = 1
    settings.EMAIL_TIMEOUT = 0.5
    smtp_server.answer_after = 1.5
    step = email_step()
    monkeypatch.setattr(
        bookkeeping, "step_undelivered", _away_one_run(bookkeeping.step_undelivered)
    )
    with pytest.raises(OperationalError):
        services.message_send(step_id=step.pk, claim="task-1")
    assert Message.objects.get().status == Message.Status.FAILED

    with django_capture_on_commit_callbacks(execute=True):
        services.message_send(step_id=step.pk, claim="task-1")

    assert len(smtp_server.envelopes) == 1
    message = Message.objects.get()
    assert (message.status, message.attempts) == (Message.Status.FAILED, 1)
    step.refresh_from_db()
    assert step.status == Step.Status.FAILED and step.error == message.error
    # The workflow goes on (the echo), the email not sent again (no message task).
    assert [task for task, _, _ in enqueued.calls] == [pipeline.ECHO.task]
    notification = ended(step)
    assert (notification.status, notification.error_code) == (
        Notification.Status.FAILED,
        "SendFailed",
    )


@pytest.mark.parametrize("change", ["address removed", "no provider for the channel"])
def test_a_message_failed_for_good_fails_its_step_though_its_address_was_removed_since(
    enqueued: Enqueued,
    ended: Callable[[Step], Notification],
    smtp_server: Inbox,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Capture,
    change: str,
) -> None:
    """As above, and by the task's retry the subscriber's address was removed (or the
    channel's provider taken out): the retry skipped the step of a message failed for
    good, and the notification went on as if the email had never been due, failed
    neither nor open to an admin's retry."""
    settings.NORM_SEND_MAX_ATTEMPTS = 1
    smtp_server.replies.append(_answered_at_once("554 5.7.1 Rejected"))
    step = email_step()
    monkeypatch.setattr(
        bookkeeping, "step_undelivered", _away_one_run(bookkeeping.step_undelivered)
    )
    with pytest.raises(OperationalError):
        services.message_send(step_id=step.pk, claim="task-1")
    assert Message.objects.get().status == Message.Status.FAILED
    if change == "address removed":
        Subscriber.objects.filter(pk=step.notification.subscriber_id).update(email="")
    else:
        settings.NORM_PROVIDERS = {}

    with django_capture_on_commit_callbacks(execute=True):
        services.message_send(step_id=step.pk, claim="task-1")

    assert len(smtp_server.envelopes) == 1
    message = Message.objects.get()
    assert (message.status, message.error) == (Message.Status.FAILED, "SMTP 554: 5.7.1 Rejected")
    step.refresh_from_db()
    assert (step.status, step.error) == (Step.Status.FAILED, message.error)
    # The workflow goes on (the echo), the email not sent again (no message task).
    assert [task for task, _, _ in enqueued.calls] == [pipeline.ECHO.task]
    notification = ended(step)
    assert (notification.status, notification.error_code) == (
        Notification.Status.FAILED,
        "SendFailed",
    )
    assert operations.notification_retry(notification=notification)


def test_a_kept_connection_answered_421_sends_the_email_once_more_on_a_new_one(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """421 is the server closing the channel (a kept connection it no longer wants): it
    refused the email, which goes out on a new connection at once."""
    send(email_step())
    smtp_server.replies = [_answered_at_once("421 closing the channel")]

    step = send(email_step(notification__subscriber__email="bob@example.com"))

    assert step.status == Step.Status.COMPLETED and step.attempts == 1
    assert [e.rcpt_tos for e in smtp_server.envelopes] == [
        ["ann@example.com"],
        ["bob@example.com"],  # refused with 421
        ["bob@example.com"],
    ]
    assert smtp_server.peers[1] == smtp_server.peers[0] != smtp_server.peers[2]


def test_a_new_connection_answered_421_is_retried_after_a_backoff_not_at_once(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """Only a kept connection may have gone stale: a server that refuses a new one is
    busy, and is asked again after the backoff rather than hammered."""
    smtp_server.replies = [_answered_at_once("421 too busy")]

    step = send(email_step())

    assert step.status == Step.Status.SCHEDULED and "421" in step.error
    assert len(smtp_server.envelopes) == 1
    assert Message.objects.get(step=step).status == Message.Status.SENDING


def test_a_channel_without_provider_skips_its_step_and_the_workflow_goes_on(
    send: Callable[[Step], Step], enqueued: Enqueued
) -> None:
    step = send(StepFactory(type="sms", outputs={"body": "hi"}))

    assert step.status == Step.Status.SKIPPED
    assert step.error == "no provider is configured for the sms channel (NORM_PROVIDERS)"
    assert not Message.objects.exists()
    notification = step.notification
    notification.refresh_from_db()
    assert notification.status == Notification.Status.RUNNING
    assert enqueued.of(pipeline.ECHO) == [(str(notification.pk),)]


def test_the_sending_tasks_retry_takes_its_claim_back_and_no_other_task_does(
    enqueued: Enqueued, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL went away right after the claim: the task's retry (same task id) sends
    at once, rather than after NORM_STALE_CLAIM_SECONDS; a duplicate task (another id)
    leaves the step alone. The email goes out once."""
    settings.EMAIL_BACKEND = LOCMEM
    step = email_step()
    insert = FailsOnce(services.insert_once, OperationalError("the server closed"))
    monkeypatch.setattr(services, "insert_once", insert)
    with pytest.raises(OperationalError):
        services.message_send(step_id=step.pk, claim="task-1")

    services.message_send(step_id=step.pk, claim="task-2")
    assert mail.outbox == [] and insert.calls == 1

    services.message_send(step_id=step.pk, claim="task-1")
    step.refresh_from_db()
    assert (step.status, step.claimed_by, step.attempts) == (Step.Status.COMPLETED, "task-1", 2)
    assert len(mail.outbox) == 1 and Message.objects.get().status == Message.Status.SENT


@pytest.mark.parametrize("error", [OperationalError, InterfaceError])
def test_database_errors_while_the_step_is_claimed_do_not_count_against_norm_max_claims(
    enqueued: Enqueued,
    smtp_server: Inbox,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Capture,
    error: type[Exception],
) -> None:
    """The task's retries took the step back under its claim, each one counted as if a
    worker had been lost with it: a run of database errors past the claim (a flapping
    PostgreSQL; a connection Django found closed) ended the notification TooManyClaims,
    though the email could be sent."""
    settings.NORM_MAX_CLAIMS = 2
    step = email_step()
    insert: Any = services.insert_once
    for _ in range(3):  # the first three runs' inserts fail
        insert = FailsOnce(insert, error("the connection was lost"))
    monkeypatch.setattr(services, "insert_once", insert)
    retry: dict[str, Any] = {"args": [step.pk]}
    for retries in range(3):
        with pytest.raises(Retry) as retried:
            tasks.message_send.apply(**retry, task_id="task-1", retries=retries, throw=True)
        retry = task_retry(retried.value)

    with django_capture_on_commit_callbacks(execute=True):
        tasks.message_send.apply(**retry, task_id="task-1", retries=3, throw=True)

    step.refresh_from_db()
    assert (step.status, step.attempts) == (Step.Status.COMPLETED, 1)
    assert len(smtp_server.envelopes) == 1
    assert Message.objects.get().status == Message.Status.SENT
    assert Notification.objects.get().status == Notification.Status.RUNNING


def test_a_retry_redelivered_after_its_worker_died_counts_its_claim(
    enqueued: Enqueued, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry of a database error does not count its claim; redelivered (Celery's
    reject on worker lost: the same message, the same task id) it counts, as any task
    redelivered, so a send that kills its worker each time still ends at NORM_MAX_CLAIMS."""
    settings.NORM_MAX_CLAIMS = 2
    settings.EMAIL_BACKEND = f"{__name__}.DyingBackend"
    DyingBackend.sends = 0
    step = email_step()
    insert = FailsOnce(services.insert_once, OperationalError("the server closed"))
    monkeypatch.setattr(services, "insert_once", insert)
    with pytest.raises(Retry) as retried:
        tasks.message_send.apply(args=[step.pk], task_id="task-1", throw=True)
    retry = task_retry(retried.value)

    for _ in range(2):  # the retry, killed in its send, then its redelivery
        with pytest.raises(WorkerKilled):
            tasks.message_send.apply(**retry, task_id="task-1", retries=1, throw=True)
    step.refresh_from_db()
    assert step.attempts == 2
    tasks.message_send.apply(**retry, task_id="task-1", retries=1, throw=True)

    assert DyingBackend.sends == 2
    step.refresh_from_db()
    assert step.status == Step.Status.FAILED and "NORM_MAX_CLAIMS" in step.error
    assert Notification.objects.get().error_code == "TooManyClaims"


@pytest.mark.parametrize("cancel", [None, "of the trigger", "reaching the notification"])
def test_a_send_the_database_failed_to_record_is_recorded_sent_by_the_retry_never_resent(
    enqueued: Enqueued,
    smtp_server: Inbox,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Capture,
    cancel: str | None,
) -> None:
    """The SMTP server took the email, and recording it hit a database error: the task is
    retried. Its trigger canceled meanwhile (`canceled_at` set, its cancel at this
    notification or not yet), the retry's claim was refused, the message stayed
    `sending`, and the reconciler gave it up as failed once the claim went stale: an
    email delivered, recorded failed. Not canceled, the retry sent it again. The retry
    records what its first run was told: sent, once."""
    settings.NORM_STALE_CLAIM_SECONDS = 600
    step = email_step()
    complete = _away_one_run(bookkeeping.step_complete)
    monkeypatch.setattr(bookkeeping, "step_complete", complete)
    with pytest.raises(Retry) as retried:
        tasks.message_send.apply(args=[step.pk], task_id="task-1", throw=True)
    assert len(smtp_server.envelopes) == 1
    assert Message.objects.get().status == Message.Status.SENDING  # rolled back

    event = step.notification.trigger_event
    if cancel == "of the trigger":  # its cancel has not reached this notification yet
        TriggerEvent.objects.filter(pk=event.pk).update(canceled_at=timezone.now())
    elif cancel == "reaching the notification":
        notify_services.trigger_event_cancel(
            client=event.client, transaction_id=event.transaction_id
        )
    # The retry as the broker carries it: through JSON, under the same task id.
    retry = json.loads(
        json.dumps({"args": retried.value.sig.args, "kwargs": retried.value.sig.kwargs})
    )
    with django_capture_on_commit_callbacks(execute=True):
        tasks.message_send.apply(**retry, task_id="task-1", retries=1, throw=True)
    # And the reconciler, once the claim would have gone stale.
    Step.objects.filter(pk=step.pk).update(claimed_at=timezone.now() - timedelta(seconds=601))
    reconciler.reconcile()

    assert len(smtp_server.envelopes) == 1
    message = Message.objects.get()
    assert (message.status, message.attempts, message.error) == (Message.Status.SENT, 1, "")
    assert message.provider_message_id == str(message.pk) and message.sent_at is not None
    assert message.recipient == "ann@example.com"
    step.refresh_from_db()
    assert step.status == Step.Status.COMPLETED
    # An admin's retry has nothing to send again.
    step.notification.refresh_from_db()
    operations.notification_retry(notification=step.notification)
    assert len(smtp_server.envelopes) == 1
    assert Message.objects.get().status == Message.Status.SENT


def test_a_send_whose_record_finds_the_connection_closed_is_recorded_by_the_retry_never_resent(
    enqueued: Enqueued,
    smtp_server: Inbox,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    """As the database away: a send whose record meets an InterfaceError (a connection
    Django found closed) for longer than a moment goes to the task's retry carrying what
    the provider answered (SentUnrecorded). Raised as it came, the retry found the
    message unsent and sent the email again."""
    step = email_step()
    complete: Any = bookkeeping.step_complete
    for _ in range(len(services.RECORD_RETRY_DELAYS) + 1):  # the run's every try
        complete = FailsOnce(complete, InterfaceError("connection already closed"))
    monkeypatch.setattr(bookkeeping, "step_complete", complete)
    with pytest.raises(Retry) as retried:
        tasks.message_send.apply(args=[step.pk], task_id="task-1", throw=True)
    retry = task_retry(retried.value)

    with django_capture_on_commit_callbacks(execute=True):
        tasks.message_send.apply(**retry, task_id="task-1", retries=1, throw=True)

    assert len(smtp_server.envelopes) == 1
    assert Message.objects.get().status == Message.Status.SENT
    assert Step.objects.get(pk=step.pk).status == Step.Status.COMPLETED


def assert_record_kept(recorded: Message) -> None:
    """The message is as `recorded` left it: sent, when, after how many tries, the id."""
    message = Message.objects.get(pk=recorded.pk)
    assert (message.status, message.sent_at, message.attempts, message.provider_message_id) == (
        Message.Status.SENT,
        recorded.sent_at,
        recorded.attempts,
        recorded.provider_message_id,
    )


def test_a_late_retry_of_a_sends_record_leaves_the_record_another_task_made_meanwhile(
    enqueued: Enqueued, smtp_server: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refused a send's record for longer than a moment: the task's retry
    carries it (SentUnrecorded). It came late (a broker backlog), the claim gone stale,
    and another task had sent the step again and recorded that. The retry stays off the
    other's record (when it went out, its attempts, a provider's id), which the step
    completed on and the API showed."""
    step = email_step()
    complete = _away_one_run(bookkeeping.step_complete)
    monkeypatch.setattr(bookkeeping, "step_complete", complete)
    with pytest.raises(Retry) as retried:
        tasks.message_send.apply(args=[step.pk], task_id="task-1", throw=True)
    Step.objects.filter(pk=step.pk).update(claimed_at=timezone.now() - timedelta(hours=1))
    reconciler.reconcile()
    tasks.message_send.apply(args=[step.pk], task_id="task-2", throw=True)
    recorded = Message.objects.get()
    assert recorded.status == Message.Status.SENT

    tasks.message_send.apply(**task_retry(retried.value), task_id="task-1", retries=1, throw=True)

    assert len(smtp_server.envelopes) == 2
    assert_record_kept(recorded)
    assert Step.objects.get(pk=step.pk).status == Step.Status.COMPLETED


def test_a_send_recorded_by_the_tasks_retry_keeps_no_error_of_the_try_before(
    enqueued: Enqueued, smtp_server: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A try refused for now left its error on the message; the next one delivered it,
    and the database refused its record for longer than a moment. The task's retry
    records it (SentUnrecorded) as the run would have: the try before's error gone, as
    the feed and GET /v1/messages show it, and both tries counted."""
    smtp_server.replies = [_answered_at_once("451 4.3.0 Try again later")]
    step = email_step()
    tasks.message_send.apply(args=[step.pk], task_id="task-1", throw=True)
    assert Message.objects.get().error == "SMTP 451: 4.3.0 Try again later"
    Step.objects.filter(pk=step.pk).update(due_at=timezone.now())
    complete = _away_one_run(bookkeeping.step_complete)
    monkeypatch.setattr(bookkeeping, "step_complete", complete)
    with pytest.raises(Retry) as retried:
        tasks.message_send.apply(args=[step.pk], task_id="task-2", throw=True)

    tasks.message_send.apply(**task_retry(retried.value), task_id="task-2", retries=1, throw=True)

    assert len(smtp_server.envelopes) == 2
    message = Message.objects.get()
    assert (message.status, message.attempts, message.error, message.recipient) == (
        Message.Status.SENT,
        2,
        "",
        "ann@example.com",
    )
    assert Step.objects.get(pk=step.pk).status == Step.Status.COMPLETED


def test_a_sends_record_whose_subscriber_was_deleted_before_the_tasks_retry_ends_quietly(
    enqueued: Enqueued, caplog: pytest.LogCaptureFixture
) -> None:
    """The database refused a send's record for longer than a moment (SentUnrecorded),
    and the subscriber was deleted (its notifications, steps and messages with it)
    before the task's retry came: nothing to record, and no bug in the send of the step
    to log with its traceback. The retry ends quietly."""
    step = email_step()
    MessageFactory(step=step, provider="django-email", status=Message.Status.SENDING)
    step.notification.subscriber.delete()
    sent = {
        "recipient": "ann@example.com",
        "provider_message_id": "1",
        "attempts": 1,
        "sent_at": timezone.now().isoformat(),
    }

    tasks.message_send(step.pk, sent=sent)  # raises nothing

    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not Message.objects.exists()
    assert enqueued.calls == []


@contextlib.contextmanager
def _connection_killed_at(sql_prefix: str, times: int) -> Iterator[list[str]]:
    """PostgreSQL ends this connection (as a restart, a failover or pg_terminate_backend
    would) as it is about to run a statement starting `sql_prefix`, the first `times`
    times; the list it gives holds the statements so cut off."""
    killed: list[str] = []

    def kill(execute: Any, sql: str, *args: Any) -> Any:
        if sql.startswith(sql_prefix) and len(killed) < times:
            killed.append(sql)
            execute("SELECT pg_terminate_backend(pg_backend_pid())", None, False, args[-1])
        return execute(sql, *args)

    with connection.execute_wrapper(kill):
        yield killed


RECORD_SENT = 'UPDATE "messaging_message" SET "status"'


@pytest.mark.django_db(transaction=True)
def test_a_send_whose_record_the_database_cut_off_for_a_moment_is_recorded_by_the_run(
    enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """The SMTP server took the email, and PostgreSQL dropped the connection twice as the
    run recorded it: the task's retry carried the record (SentUnrecorded), and a broker
    that lost that retry left the claim to go stale and the reconciler to send the email
    again. The run records it itself, on a new connection."""
    step = email_step()

    with _connection_killed_at(RECORD_SENT, times=2) as killed:
        tasks.message_send.apply(args=[step.pk], task_id="task-1", throw=True)  # no Retry

    assert len(killed) == 2 and len(smtp_server.envelopes) == 1
    message = Message.objects.get()
    assert (message.status, message.attempts, message.error) == (Message.Status.SENT, 1, "")
    step.refresh_from_db()
    assert (step.status, step.attempts) == (Step.Status.COMPLETED, 1)
    assert enqueued.of(pipeline.ECHO) == [(str(step.notification_id),)]
    assert enqueued.of(pipeline.MESSAGE) == []


@pytest.mark.django_db(transaction=True)
def test_a_send_whose_record_the_database_refuses_for_longer_is_left_to_the_tasks_retry(
    enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """Tried again for a moment only: a longer outage goes to the task's retry, which
    carries what the provider answered, as before, and the worker is not held up."""
    step = email_step()
    started = time.monotonic()

    with _connection_killed_at(RECORD_SENT, times=100) as killed, pytest.raises(Retry) as retried:
        tasks.message_send.apply(args=[step.pk], task_id="task-1", throw=True)

    assert time.monotonic() - started < services.RECORD_RETRY_SECONDS + 1
    assert len(killed) == len(services.RECORD_RETRY_DELAYS) + 1
    assert task_retry(retried.value)["kwargs"]["sent"]["attempts"] == 1
    assert len(smtp_server.envelopes) == 1
    assert Message.objects.get().status == Message.Status.SENDING
    assert enqueued.calls == []


class _Clock:
    """services' `time`, on a clock of the test's own: a pause passes at once."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_records_tries_start_within_record_retry_seconds_however_long_each_takes_to_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A try may take long to fail (a new connection waiting out DB_CONNECT_TIMEOUT):
    none starts past RECORD_RETRY_SECONDS from the first, and the record goes to the
    task's retry sooner than the pauses alone would have it, the worker not held up."""
    clock = _Clock()
    monkeypatch.setattr(services, "time", clock)
    tries: list[float] = []

    def record() -> None:
        tries.append(clock.now)
        clock.now += 1.0  # each try fails a second after it starts
        raise OperationalError("connection timeout expired")

    with pytest.raises(OperationalError):
        services._retried_briefly(record)

    assert all(at - tries[0] < services.RECORD_RETRY_SECONDS for at in tries)
    assert 1 < len(tries) < len(services.RECORD_RETRY_DELAYS) + 1, tries


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "at",
    ['UPDATE "workflows_step" SET "status" = %s, "due_at"', 'UPDATE "messaging_message"'],
    ids=["the step's reschedule", "the message's update, before it"],
)
def test_a_reschedule_the_database_cut_off_for_a_moment_is_done_by_the_run_after_the_backoff(
    enqueued: Enqueued, settings: Any, at: str
) -> None:
    """The send failed for now, and PostgreSQL dropped the connection as the run put the
    step back on the schedule: the task's retry took its claim back and sent again a
    second later, not NORM_SEND_RETRY_BACKOFF later. The run reschedules it itself."""
    smtp_unreachable(settings)
    settings.NORM_SEND_RETRY_BACKOFF = 10.0
    step = email_step()
    before = timezone.now()

    with _connection_killed_at(at, times=2) as killed:
        tasks.message_send.apply(args=[step.pk], task_id="task-1", throw=True)  # no Retry

    assert len(killed) == 2
    step.refresh_from_db()
    assert (step.status, step.attempts) == (Step.Status.SCHEDULED, 1)
    assert step.due_at >= before + timedelta(seconds=10)
    message = Message.objects.get()
    assert (message.status, message.attempts) == (Message.Status.SENDING, 1)
    assert "SMTP connection failed" in message.error
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]
    assert enqueued.options_of(pipeline.MESSAGE)[0]["countdown"] >= 10


def test_an_email_to_a_subscriber_without_address_is_skipped_and_the_workflow_goes_on(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    settings.EMAIL_BACKEND = LOCMEM
    step = send(email_step(notification__subscriber__email=""))

    assert (step.status, step.error) == (Step.Status.SKIPPED, "the subscriber has no email address")
    assert step.result == {} and step.completed_at is not None
    assert mail.outbox == [] and not Message.objects.exists()
    assert enqueued.of(pipeline.ECHO) == [(str(step.notification_id),)]
    assert Notification.objects.get().status == Notification.Status.RUNNING


def test_a_message_tried_before_its_subscribers_address_was_removed_fails_with_the_skip(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    """The first send failed for now; by the next, the subscriber has no email address.
    The step was skipped, and its message stayed sending for good, moved by nothing."""
    smtp_unreachable(settings)
    step = send(email_step())
    assert step.status == Step.Status.SCHEDULED
    assert Message.objects.get().status == Message.Status.SENDING
    Step.objects.filter(pk=step.pk).update(due_at=timezone.now())
    Subscriber.objects.filter(pk=step.notification.subscriber_id).update(email="")

    step = send(step)

    assert (step.status, step.error) == (Step.Status.SKIPPED, "the subscriber has no email address")
    message = Message.objects.get()
    assert (message.status, message.error) == (
        Message.Status.FAILED,
        "the subscriber has no email address",
    )
    assert Notification.objects.get().status == Notification.Status.RUNNING


def test_a_skip_the_database_cut_off_before_its_message_was_given_up_is_done_whole_by_the_retry(
    enqueued: Enqueued,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    """As above, and the database failed after the step was skipped, before its message
    was given up: the task's retry found the step skipped, not to be claimed, and the
    message stayed `sending` for good (the reconciler moves only processing steps')."""
    smtp_unreachable(settings)
    with django_capture_on_commit_callbacks(execute=True):
        services.message_send(step_id=email_step().pk, claim="task-0")
    step = Step.objects.get()
    assert step.status == Step.Status.SCHEDULED
    Step.objects.filter(pk=step.pk).update(due_at=timezone.now())
    Subscriber.objects.filter(pk=step.notification.subscriber_id).update(email="")
    give_up = FailsOnce(bookkeeping.messages_give_up, OperationalError("the server closed"))
    monkeypatch.setattr(bookkeeping, "messages_give_up", give_up)
    enqueued.clear()
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(OperationalError):
        services.message_send(step_id=step.pk, claim="task-1")

    with django_capture_on_commit_callbacks(execute=True):
        services.message_send(step_id=step.pk, claim="task-1")

    step.refresh_from_db()
    assert (step.status, step.error) == (Step.Status.SKIPPED, "the subscriber has no email address")
    message = Message.objects.get()
    assert (message.status, message.error) == (
        Message.Status.FAILED,
        "the subscriber has no email address",
    )
    assert enqueued.of(pipeline.ECHO) == [(str(step.notification_id),)]


def failed_for_good(
    send: Callable[[Step], Step], settings: Any, ended: Callable[[Step], Notification]
) -> Step:
    """An email step whose only attempt failed (SMTP unreachable), in a notification that
    ended failed with it: the admin may retry it."""
    smtp_unreachable(settings)
    settings.NORM_SEND_MAX_ATTEMPTS = 1
    step = send(email_step())
    assert step.status == Step.Status.FAILED
    assert ended(step).status == Notification.Status.FAILED
    return step


def test_a_message_an_admin_retry_reopened_fails_with_the_skip_if_the_address_is_gone(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    settings: Any,
    ended: Callable[[Step], Notification],
) -> None:
    """The retry gives the step and its message a fresh start (no attempts yet)."""
    step = failed_for_good(send, settings, ended)
    Subscriber.objects.filter(pk=step.notification.subscriber_id).update(email="")
    assert operations.notification_retry(notification=step.notification)

    step = send(step)

    assert step.status == Step.Status.SKIPPED
    assert Message.objects.get().status == Message.Status.FAILED


@pytest.mark.parametrize(
    ("how", "change"),
    [
        (how, change)
        for how in ("in-app, its step cut off by the database", "email, its step cut off by a bug")
        for change in ("client deactivated", "address removed", "no provider for the channel")
        if not (how.startswith("in-app") and change == "address removed")  # it has none
    ],
)
def test_a_message_found_sent_completes_its_step_whatever_changed_since(
    enqueued: Enqueued,
    smtp_server: Inbox,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Capture,
    how: str,
    change: str,
) -> None:
    """The message was recorded sent and its step not completed: an in-app message stored
    as sent before the database failed (the task's retry), an email recorded sent past
    a bug (the step run again a grace period later). By the next run the client was
    deactivated, the subscriber's address removed or the channel's provider taken out:
    that run failed or skipped the step of a message delivered (the notification
    failed, the bridge told it skipped), as it would one never sent."""
    settings.DEFAULT_FROM_EMAIL = "norm@example.com"
    if how.startswith("in-app"):
        step = StepFactory(type="in_app", outputs={"body": "Hi Ann"})
        error: Exception = OperationalError("the server closed")
    else:
        step = email_step()
        error = RuntimeError("a bug")
    monkeypatch.setattr(bookkeeping, "step_complete", FailsOnce(bookkeeping.step_complete, error))
    with django_capture_on_commit_callbacks(execute=True), contextlib.suppress(OperationalError):
        services.message_send(step_id=step.pk, claim="task-1")
    stored = Message.objects.get()
    assert stored.status == Message.Status.SENT
    step.refresh_from_db()
    assert step.status != Step.Status.COMPLETED
    subscriber = step.notification.subscriber
    if change == "client deactivated":
        Client.objects.filter(pk=step.notification.client_id).update(is_active=False)
    elif change == "address removed":
        Subscriber.objects.filter(pk=subscriber.pk).update(email="")
    else:
        settings.NORM_PROVIDERS = {}
    Step.objects.filter(pk=step.pk).update(due_at=timezone.now())
    enqueued.clear()

    with django_capture_on_commit_callbacks(execute=True):
        # The task's retry (its claim), or the run a grace period later.
        services.message_send(
            step_id=step.pk, claim="task-1" if how.startswith("in-app") else "task-2"
        )

    step.refresh_from_db()
    assert (step.status, step.result, step.error) == (Step.Status.COMPLETED, {}, "")
    assert Message.objects.values_list("status", "sent_at", "error").get() == (
        Message.Status.SENT,
        stored.sent_at,
        "",
    )
    assert Notification.objects.get().status == Notification.Status.RUNNING
    assert enqueued.of(pipeline.ECHO) == [(str(step.notification_id),)]
    assert len(smtp_server.envelopes) == (0 if how.startswith("in-app") else 1)


def test_sends_that_failed_together_are_retried_at_different_times(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    """An SMTP server down fails every email sent to it at once: retried in step, they
    would all come back at the same instant, a flood as large as the outage was long."""
    smtp_unreachable(settings)
    settings.NORM_SEND_RETRY_BACKOFF = 10.0

    first, second = send(email_step()), send(email_step())

    assert first.status == second.status == Step.Status.SCHEDULED
    assert first.due_at != second.due_at
    countdowns = [options["countdown"] for options in enqueued.options_of(pipeline.MESSAGE)]
    assert len(countdowns) == 2 and countdowns[0] != countdowns[1]


def test_an_smtp_address_nothing_listens_at_is_a_reason_naming_the_settings(
    send: Callable[[Step], Step], settings: Any
) -> None:
    """The SMTP backend set and EMAIL_HOST left at its default, localhost, where no server
    listens: the reason said "[Errno 111] Connection refused", and not what to check."""
    smtp_unreachable(settings)

    step = send(email_step())

    assert step.status == Step.Status.SCHEDULED
    assert step.error == (
        "SMTP connection failed: [Errno 111] Connection refused (check EMAIL_HOST and EMAIL_PORT)"
    )


def test_an_smtp_host_that_does_not_resolve_is_a_reason_naming_the_setting(
    send: Callable[[Step], Step], settings: Any
) -> None:
    """A typo in EMAIL_HOST: the reason said "[Errno -2] Name or service not known", and
    not which setting holds the name. Tried again: a resolver down looks the same."""
    settings.EMAIL_BACKEND = SMTP
    settings.EMAIL_HOST, settings.EMAIL_PORT = "no-such-host.invalid", 25  # RFC 2606

    step = send(email_step())

    assert step.status == Step.Status.SCHEDULED
    assert step.error.startswith("SMTP connection failed: [Errno ")
    assert step.error.endswith(" (check EMAIL_HOST)")


def test_transient_smtp_failure_reschedules_with_backoff_then_fails(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    settings: Any,
    ended: Callable[[Step], Notification],
) -> None:
    smtp_unreachable(settings)
    settings.NORM_SEND_MAX_ATTEMPTS = 3
    settings.NORM_SEND_RETRY_BACKOFF = 10.0
    step = email_step()

    for attempt, backoff in ((1, 10.0), (2, 20.0)):
        before = timezone.now()
        step = send(step)
        assert step.status == Step.Status.SCHEDULED
        assert step.attempts == attempt and "SMTP connection failed" in step.error
        # Doubling, and up to half as much again at random (pipeline.backoff).
        assert before + timedelta(seconds=backoff) <= step.due_at
        assert step.due_at <= timezone.now() + timedelta(seconds=backoff * 1.5)
        assert Message.objects.get().attempts == attempt
        assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]
        assert backoff <= enqueued.options_of(pipeline.MESSAGE)[0]["countdown"] <= backoff * 1.5
        enqueued.clear()
        # Not due yet: a redelivery now is not claimed.
        step = send(step)
        assert step.status == Step.Status.SCHEDULED and step.attempts == attempt
        Step.objects.filter(pk=step.pk).update(due_at=timezone.now())

    step = send(step)

    assert step.status == Step.Status.FAILED and step.attempts == 3
    message = Message.objects.get()
    assert message.status == Message.Status.FAILED and message.attempts == 3
    assert enqueued.of(pipeline.MESSAGE) == [] and enqueued.of(pipeline.ECHO) != []
    notification = ended(step)
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "SendFailed"


def test_a_step_not_yet_due_is_not_claimed(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    settings.EMAIL_BACKEND = LOCMEM
    step = send(email_step(due_at=timezone.now() + timedelta(minutes=5)))
    assert step.status == Step.Status.SCHEDULED and step.attempts == 0
    assert step.claimed_at is None
    assert mail.outbox == [] and enqueued.calls == []


def test_a_step_due_by_the_echo_workers_clock_waits_out_the_message_workers(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    """The echo worker's clock 3 s ahead of the message worker's: a step it recorded due
    now (an email after an in-app, sent with no countdown) is 3 s ahead of the message
    worker's clock. Dropped, it waited for the reconciler (a grace period, 60 s); it is
    sent again for when this worker's clock says it is due."""
    settings.EMAIL_BACKEND = LOCMEM
    ahead = timezone.now() + timedelta(seconds=3)  # the echo worker's "now"
    step = send(email_step(due_at=ahead, enqueued_at=ahead))
    assert step.status == Step.Status.SCHEDULED and step.attempts == 0
    assert mail.outbox == []
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]
    [countdown] = [o["countdown"] for o in enqueued.options_of(pipeline.MESSAGE)]
    assert 2 < countdown <= 3

    # Sent again once: run before its countdown is over, it is left to the reconciler.
    enqueued.clear()
    step = send(step)
    assert step.status == Step.Status.SCHEDULED and enqueued.calls == []

    Step.objects.filter(pk=step.pk).update(due_at=timezone.now())  # its countdown is over
    step = send(step)
    assert step.status == Step.Status.COMPLETED and len(mail.outbox) == 1
    assert enqueued.of(pipeline.MESSAGE) == []


def test_a_step_due_later_than_the_broker_keeps_a_countdown_waits_in_the_database(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    """Sent as due by a clock an hour ahead: no clock's skew. Sent again with an hour's
    countdown, Redis would deliver it again after its visibility timeout, each time;
    left to the reconciler, it is sent when due, as a long delay is."""
    settings.EMAIL_BACKEND = LOCMEM
    settings.NORM_BROKER_MAX_COUNTDOWN = 300
    ahead = timezone.now() + timedelta(hours=1)
    step = send(email_step(due_at=ahead, enqueued_at=ahead))
    assert step.status == Step.Status.SCHEDULED and step.attempts == 0
    assert mail.outbox == [] and enqueued.calls == []


def test_a_step_due_within_a_second_is_claimed_whatever_the_clocks_say(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    """The echo worker's clock a little ahead of the message worker's."""
    settings.EMAIL_BACKEND = LOCMEM
    step = send(email_step(due_at=timezone.now() + timedelta(milliseconds=500)))
    assert step.status == Step.Status.COMPLETED and len(mail.outbox) == 1


def test_running_twice_sends_once(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    settings.EMAIL_BACKEND = LOCMEM
    step = email_step()
    send(step)
    step = send(step)
    assert len(mail.outbox) == 1
    assert Message.objects.count() == 1
    assert step.status == Step.Status.COMPLETED and step.attempts == 1
    assert len(enqueued.of(pipeline.ECHO)) == 1


def test_a_message_already_sent_is_not_sent_again(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    # A worker died after sending, before completing the step; the reconciler re-enqueued it.
    settings.EMAIL_BACKEND = LOCMEM
    step = email_step()
    Message.objects.create(
        step=step,
        client=step.notification.client,
        subscriber=step.notification.subscriber,
        channel="email",
        provider="django-email",
        status=Message.Status.SENT,
    )
    step = send(step)
    assert mail.outbox == []
    assert step.status == Step.Status.COMPLETED


def test_a_canceled_notification_is_not_sent(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    settings.EMAIL_BACKEND = LOCMEM
    step = email_step()
    assert operations.notification_cancel(notification=step.notification)
    step = send(step)
    assert step.status == Step.Status.CANCELED
    assert mail.outbox == [] and not Message.objects.exists() and enqueued.calls == []


def test_a_step_of_a_trigger_canceled_before_its_notification_was_is_not_sent(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    """A trigger's cancel commits its `canceled_at` first and ends its notifications a
    chunk at a time, the last ones after it has answered (or, cut off, by its task): a
    step of one still running meanwhile is not claimed and sent, though the cancel had
    answered; its notification is canceled there, with the step."""
    settings.EMAIL_BACKEND = LOCMEM
    step = email_step()
    TriggerEvent.objects.filter(pk=step.notification.trigger_event_id).update(
        canceled_at=timezone.now()
    )
    step = send(step)
    assert step.status == Step.Status.CANCELED
    assert Notification.objects.get().status == Notification.Status.CANCELED
    assert mail.outbox == [] and not Message.objects.exists()


@pytest.mark.parametrize("status", [Notification.Status.CANCELED, Notification.Status.FAILED])
def test_a_scheduled_step_of_a_final_notification_is_not_claimed(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any, status: str
) -> None:
    settings.EMAIL_BACKEND = LOCMEM
    notification = NotificationFactory(status=status)
    step = send(email_step(notification=notification))
    assert step.status == Step.Status.SCHEDULED and step.attempts == 0
    assert mail.outbox == [] and enqueued.calls == []


def test_a_missing_step_is_ignored(enqueued: Enqueued, settings: Any) -> None:
    settings.EMAIL_BACKEND = LOCMEM
    tasks.message_send(987654321)
    assert mail.outbox == [] and enqueued.calls == []


@pytest.mark.parametrize(
    ("outputs", "error"),
    [
        ({"subject": "Hi", "body": None}, "no body string (None)"),
        ({"subject": "Hi"}, "no body string (None)"),
        ({"subject": None, "body": "Hello"}, "no subject string (None)"),
        ({"subject": ["Hi"], "body": {"html": "Hello"}}, "no subject string (['Hi'])"),
        ({"subject": "", "body": "Hello"}, "an empty subject"),
        ({"subject": " \n", "body": "Hello"}, "an empty subject"),  # sent on one line: none
        ({"subject": "Hi", "body": "Hello", "replyTo": {"a": 1}}, "no replyTo string ({'a': 1})"),
        ({"subject": "Hi", "body": "x", "from": "a@example.com"}, "a from that is no object"),
        ({"subject": "Hi", "body": "x", "from": {"email": ["a@example.com"]}}, "no from.email"),
    ],
)
def test_an_email_output_that_is_no_text_fails_the_step_instead_of_sending_its_repr(
    ended: Callable[[Step], Notification],
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    smtp_server: Inbox,
    outputs: dict[str, Any],
    error: str,
) -> None:
    """A bridge other than norm's SDK may answer null or an object where the email needs
    text: the subscriber got "None" or a Python repr as the subject or body."""
    step = send(email_step(outputs=outputs))

    assert smtp_server.envelopes == []
    assert step.status == Step.Status.FAILED and error in step.error
    message = Message.objects.get()
    assert message.status == Message.Status.FAILED and error in message.error
    notification = ended(step)
    assert (notification.status, notification.error_code) == (
        Notification.Status.FAILED,
        "SendFailed",
    )


@pytest.mark.parametrize(
    "outputs", [{"subject": "Hi", "body": {"text": "Hello"}}, {"body": None}, {"data": {"k": 1}}]
)
def test_an_in_app_output_without_text_fails_the_step_and_stays_out_of_the_feed(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    ended: Callable[[Step], Notification],
    outputs: dict[str, Any],
) -> None:
    step = send(StepFactory(type="in_app", outputs=outputs))

    assert step.status == Step.Status.FAILED and "the step's output has no" in step.error
    assert Message.objects.get().status == Message.Status.FAILED
    assert ended(step).status == Notification.Status.FAILED


@pytest.mark.parametrize(
    ("name", "email", "sent"),
    [
        ("Acme, Inc.", "shop@acme.example", "shop@acme.example"),
        ('Acme "Shop"', "shop@acme.example", "shop@acme.example"),
        ("Support <support@bank.example>", "shop@acme.example", "shop@acme.example"),
        (None, "shop@acme.example", "shop@acme.example"),
        ("Zürich Café", "shop@zürich.example", "shop@xn--zrich-kva.example"),
    ],
)
def test_the_from_name_is_sent_as_written_with_the_from_address(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    smtp_server: Inbox,
    name: str | None,
    email: str,
    sent: str,
) -> None:
    """The name was written in front of the address as it was: a comma split the From
    header into two addresses and the email failed; None was sent as "None"."""
    sender = {"email": email, "name": name}
    step = send(email_step(outputs={"subject": "Hi", "body": "Hello", "from": sender}))

    assert step.status == Step.Status.COMPLETED
    [envelope] = smtp_server.envelopes
    assert envelope.mail_from == sent
    received = message_from_bytes(envelope.content, policy=policy.default)
    [address] = received["From"].addresses
    assert (address.display_name, address.domain) == (name or "", sent.split("@")[1])


INTERNATIONAL = {
    "recipient": {"to": "josé@bücher.example"},
    "from": {"from": {"name": "Zoë", "email": "zoë@example.com"}},
    "reply-to": {"replyTo": "rené@example.com"},
}


@pytest.mark.parametrize("which", list(INTERNATIONAL))
def test_an_address_beyond_ascii_is_sent_as_written_with_smtputf8(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any, which: str
) -> None:
    """Django wrote a local part beyond ASCII as an RFC 2047 encoded word, in the
    envelope and the headers (=?utf-8?b?am9zw6k=?=@...), a mailbox no server decodes:
    the email went to no one (or someone else) and norm called it sent."""
    inbox = Inbox()
    case = INTERNATIONAL[which]
    outputs = {"subject": "Grüße", "body": "<p>Grüße</p>"} | {
        k: v for k, v in case.items() if k != "to"
    }
    step = email_step(
        notification__subscriber__email=case.get("to", "ann@example.com"), outputs=outputs
    )
    with smtp_serving(settings, inbox, enable_SMTPUTF8=True):
        step = send(step)

    assert step.status == Step.Status.COMPLETED
    [envelope] = inbox.envelopes
    assert "SMTPUTF8" in envelope.mail_options
    sent = message_from_string(envelope.original_content.decode(), policy=policy.SMTPUTF8)
    head = envelope.original_content.split(b"\r\n\r\n")[0].split(b"\r\n")
    addresses = [line for line in head if line.startswith((b"From:", b"To:", b"Reply-To:"))]
    assert len(addresses) == (3 if which == "reply-to" else 2)
    assert not [line for line in addresses if b"=?" in line]  # as written, no encoded word
    if which == "recipient":
        assert envelope.rcpt_tos == ["josé@bücher.example"] and sent["To"] == "josé@bücher.example"
    if which == "from":
        assert envelope.mail_from == "zoë@example.com"
        assert sent["From"].addresses[0].addr_spec == "zoë@example.com"
        assert sent["From"].addresses[0].display_name == "Zoë"
    if which == "reply-to":
        assert sent["Reply-To"] == "rené@example.com"
    assert sent["Subject"] == "Grüße"
    body = message_from_bytes(envelope.original_content, policy=policy.default)
    assert body.get_body(("html",)).get_content() == "<p>Grüße</p>"
    assert body.get_body(("plain",)).get_content() == "Grüße"
    assert Message.objects.get().status == Message.Status.SENT


def test_an_address_beyond_ascii_fails_at_once_on_a_server_without_smtputf8(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    """No other try can help: the server cannot carry the address, and an encoded word
    in its place is another mailbox."""
    inbox = Inbox()
    with smtp_serving(settings, inbox, enable_SMTPUTF8=False):
        step = send(email_step(notification__subscriber__email="josé@example.com"))

    assert inbox.envelopes == []
    assert step.status == Step.Status.FAILED and step.attempts == 1
    assert "SMTPUTF8" in step.error and "josé@example.com" in step.error
    assert Message.objects.get().status == Message.Status.FAILED


@pytest.mark.parametrize(
    "subject",
    [
        "Réinitialisez votre mot de passe : https://example.com/reset?token=" + "0a1b2c3d4e" * 5,
        "Grüße aus München: https://shop.example/orders/" + "a1b2c3d4e5" * 8,
    ],
)
def test_a_long_subject_to_an_address_beyond_ascii_is_sent_as_written(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any, subject: str
) -> None:
    """Sent with SMTPUTF8, Django's encoded subject was folded again by Python's email
    package, which cut a word too long for a line (a link) into encoded words glued to
    its text ("https://example.com/=?utf-8?q?re?="), words RFC 2047 does not let a mail
    client decode, or took a space into it: the subscriber read another subject."""
    inbox = Inbox()
    outputs = {"subject": subject, "body": "x"}
    step = email_step(notification__subscriber__email="josé@example.com", outputs=outputs)
    with smtp_serving(settings, inbox, enable_SMTPUTF8=True):
        assert send(step).status == Step.Status.COMPLETED

    [envelope] = inbox.envelopes
    sent = message_from_string(envelope.original_content.decode(), policy=policy.SMTPUTF8)
    assert sent["Subject"] == subject
    head = envelope.original_content.decode().split("\r\n\r\n")[0]
    [header] = re.findall(r"^Subject:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*", head, re.MULTILINE)
    # An encoded word stands apart from the text around it (RFC 2047, 5).
    assert not re.search(r"\S=\?|\?=\S", header.replace("\r\n", "")), header


def test_the_reply_to_of_the_output_is_the_emails_reply_to(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    outputs = {"subject": "Hi", "body": "Hello", "replyTo": "support@shop.example"}
    assert send(email_step(outputs=outputs)).status == Step.Status.COMPLETED
    assert send(email_step()).status == Step.Status.COMPLETED  # none in the output

    with_reply_to, without = (
        message_from_bytes(e.content, policy=policy.default) for e in smtp_server.envelopes
    )
    assert [a.addr_spec for a in with_reply_to["Reply-To"].addresses] == ["support@shop.example"]
    assert without["Reply-To"] is None


def _sender_of(envelope: Any) -> tuple[str, str]:
    """The envelope's sender and the From header's address (with its name) as received."""
    received = message_from_bytes(envelope.content, policy=policy.default)
    [address] = received["From"].addresses
    return envelope.mail_from, f"{address.display_name} <{address.addr_spec}>"


def test_an_email_without_a_from_goes_from_its_clients_email_from_else_the_default(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox, settings: Any
) -> None:
    """A tenant had no From of its own: every client's email went from the server's."""
    settings.DEFAULT_FROM_EMAIL = "norm@operator.example"
    acme = ClientFactory(email_from="Acme Shop <hello@acme.example>")
    assert (
        send(email_step(notification__trigger_event__client=acme)).status == Step.Status.COMPLETED
    )
    assert send(email_step()).status == Step.Status.COMPLETED  # a client without one

    from_acme, from_other = (_sender_of(e) for e in smtp_server.envelopes)
    assert from_acme == ("hello@acme.example", "Acme Shop <hello@acme.example>")
    assert from_other == ("norm@operator.example", " <norm@operator.example>")


def test_a_from_name_without_an_address_goes_with_the_clients_address_else_the_defaults(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox, settings: Any
) -> None:
    """The output's from is {email?, name?}: a step naming its sender alone (the client's
    address is not the bridge's to know) had its name dropped, the email going out under
    the client's name, or none."""
    settings.DEFAULT_FROM_EMAIL = "Operator <norm@operator.example>"
    acme = ClientFactory(email_from='"Acme, Inc." <hello@acme.example>')
    outputs = {"subject": "Hi", "body": "x", "from": {"name": "Acme Billing"}}
    for client in (acme, ClientFactory()):  # the second without an email_from
        step = email_step(notification__trigger_event__client=client, outputs=outputs)
        assert send(step).status == Step.Status.COMPLETED

    from_acme, from_other = (_sender_of(e) for e in smtp_server.envelopes)
    assert from_acme == ("hello@acme.example", "Acme Billing <hello@acme.example>")
    assert from_other == ("norm@operator.example", "Acme Billing <norm@operator.example>")


@pytest.mark.parametrize(
    ("sender", "address"),
    [
        ("norm@localhost", "norm@localhost"),
        ("Norm <norm@mail.example.com>", "norm@mail.example.com"),
        ('"Acme, Inc." <hello@acme.example>', "hello@acme.example"),
        ("Zoë <norm@example.com>", "norm@example.com"),
        ("norm@zürich.example", "norm@xn--zrich-kva.example"),
        (" norm@example.com ", "norm@example.com"),
        ("norm@[192.0.2.1]", "norm@[192.0.2.1]"),  # the Message-ID has the host's name
    ],
)
def test_each_default_from_the_check_takes_is_sent_from(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    smtp_server: Inbox,
    settings: Any,
    sender: str,
    address: str,
) -> None:
    """norm.E012 refuses a DEFAULT_FROM_EMAIL no email can go from: what it takes goes,
    as the From and as the address of a from.name alone, with a valid Message-ID."""
    settings.DEFAULT_FROM_EMAIL = sender
    assert not [m for m in checks.run_checks() if m.id.startswith("norm.")]
    named = {"subject": "Hi", "body": "x", "from": {"name": "Billing"}}
    for step in (email_step(), email_step(outputs=named)):
        assert send(step).status == Step.Status.COMPLETED

    assert [e.mail_from for e in smtp_server.envelopes] == [address] * 2
    for envelope in smtp_server.envelopes:
        received = message_from_bytes(envelope.content, policy=policy.default)
        assert not received["From"].defects and not received["Message-ID"].defects


def test_a_domain_with_a_sharp_s_is_sent_to_as_written_not_to_its_ss_spelling(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox, settings: Any
) -> None:
    """Django encodes a domain beyond ASCII with Python's codec, IDNA 2003, which spells ß
    as ss (and ς as σ, and drops the joiners): ann@straße.example was sent to
    ann@strasse.example, another domain, perhaps another owner's, with the subscriber's
    email. Registries, browsers and mail servers (IDNA 2008) read xn--strae-oqa."""
    settings.DEFAULT_FROM_EMAIL = "Norm <norm@straße.example>"
    sender = {"name": "Shop", "email": "shop@fuß.example"}
    outputs = {"subject": "Hi", "body": "x", "from": sender, "replyTo": "help@straße.example"}
    acme = ClientFactory(email_from='"Acme, Inc." <hello@straße.example>')
    for step in (
        email_step(notification__subscriber__email="ann@straße.example", outputs=outputs),
        email_step(notification__trigger_event__client=acme),
        email_step(),
    ):
        assert send(step).status == Step.Status.COMPLETED, step.error

    step_from, client_from, default_from = smtp_server.envelopes
    assert step_from.rcpt_tos == ["ann@xn--strae-oqa.example"]
    assert (step_from.mail_from, client_from.mail_from, default_from.mail_from) == (
        "shop@xn--fu-hia.example",
        "hello@xn--strae-oqa.example",
        "norm@xn--strae-oqa.example",
    )
    received = message_from_bytes(step_from.content, policy=policy.default)
    assert [a.addr_spec for a in received["To"].addresses] == ["ann@xn--strae-oqa.example"]
    assert _sender_of(step_from)[1] == "Shop <shop@xn--fu-hia.example>"
    assert [a.addr_spec for a in received["Reply-To"].addresses] == ["help@xn--strae-oqa.example"]
    assert received["Message-ID"].endswith("@xn--strae-oqa.example>")
    assert _sender_of(client_from)[1] == "Acme, Inc. <hello@xn--strae-oqa.example>"
    assert _sender_of(default_from)[1] == "Norm <norm@xn--strae-oqa.example>"


def test_a_from_of_the_step_wins_over_the_clients_and_any_domain_goes_without_a_list(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """Empty email_from_domains keeps what every install did before: any domain."""
    acme = ClientFactory(email_from="Acme <hello@acme.example>", email_from_domains=[])
    sender = {"email": "news@elsewhere.example", "name": "News"}
    outputs = {"subject": "Hi", "body": "Hello", "from": sender}
    assert (
        send(email_step(notification__trigger_event__client=acme, outputs=outputs)).status
        == "completed"
    )
    assert send(email_step(notification__trigger_event__client=acme)).status == "completed"

    from_step, from_client = (_sender_of(e) for e in smtp_server.envelopes)
    assert from_step == ("news@elsewhere.example", "News <news@elsewhere.example>")
    assert from_client == ("hello@acme.example", "Acme <hello@acme.example>")


@pytest.mark.parametrize(
    ("domains", "allowed", "refused"),
    [
        (["acme.example"], "shop@acme.example", "shop@globex.example"),
        (["ACME.example."], "shop@acme.EXAMPLE", "shop@acme.example.evil.example"),
        # A domain is itself only: tenants are given subdomains of one shared domain.
        (["acme.example"], "shop@acme.example", "shop@mail.acme.example"),
        (["mail.example"], "shop@mail.example", "shop@acme.mail.example"),
        # As IDNA: both spellings of a domain beyond ASCII are one.
        (["zürich.example"], "shop@xn--zrich-kva.example", "shop@zurich.example"),
        (["xn--zrich-kva.example"], "shop@Zürich.example", "shop@zürich.example.evil.example"),
        # As sent: straße.example is xn--strae-oqa.example, not strasse.example.
        (["straße.example"], "shop@straße.example", "shop@strasse.example"),
        (["strasse.example"], "shop@strasse.example", "shop@straße.example"),
        # One plain address: no name, comment or list to read another domain from.
        (["acme.example"], "shop@acme.example", "shop@acme.example (x@globex.example)"),
        (["acme.example"], "shop@acme.example", "Acme <shop@globex.example>"),
        (["acme.example"], "shop@acme.example", "shop@globex.example, x@acme.example"),
        (["acme.example"], "shop@acme.example", "acme.example"),
        # One of no domain name: refused as any other, not a bug of norm's.
        (["acme.example"], "shop@acme.example", "shop@-acme.example"),
    ],
)
def test_a_from_outside_the_clients_domains_fails_for_good_and_nothing_is_sent(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    ended: Callable[[Step], Notification],
    smtp_server: Inbox,
    domains: list[str],
    allowed: str,
    refused: str,
) -> None:
    """Any client's bridge could send as any address (another tenant's domain, the
    operator's) through the operator's SMTP server, which receivers trust for them."""
    client = ClientFactory(email_from_domains=domains)

    def from_(address: str) -> Step:
        outputs = {"subject": "Hi", "body": "Hello", "from": {"email": address}}
        return send(email_step(notification__trigger_event__client=client, outputs=outputs))

    assert from_(allowed).status == Step.Status.COMPLETED
    [envelope] = smtp_server.envelopes
    assert envelope.mail_from.lower() == allowed.lower().replace("zürich", "xn--zrich-kva").replace(
        "straße", "xn--strae-oqa"
    )

    step = from_(refused)

    assert len(smtp_server.envelopes) == 1  # nothing more sent
    assert step.status == Step.Status.FAILED and step.attempts == 1
    assert refused[:40] in step.error
    assert f"the client may send from {', '.join(domains)} only" in step.error
    message = Message.objects.get(step=step)
    assert (message.status, message.error) == (Message.Status.FAILED, step.error)
    notification = ended(step)
    assert (notification.status, notification.error_code) == ("failed", "SendFailed")
    assert step.error in notification.error


def test_a_changed_sender_policy_applies_to_the_next_email(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """Read with the step the worker claims, not remembered by the process: an operator
    who closes the hole closes it for the next email."""
    client = ClientFactory()
    outputs = {"subject": "Hi", "body": "Hello", "from": {"email": "ceo@bank.example"}}
    assert send(email_step(notification__trigger_event__client=client, outputs=outputs)).status == (
        Step.Status.COMPLETED
    )
    Client.objects.filter(pk=client.pk).update(email_from_domains=["acme.example"])

    step = send(email_step(notification__trigger_event__client=client, outputs=outputs))

    assert step.status == Step.Status.FAILED and "ceo@bank.example" in step.error
    assert len(smtp_server.envelopes) == 1


@pytest.mark.parametrize(
    ("email_from", "domains", "step_from", "refused"),
    [
        # A string of domains was read as its letters: "shop@a" went out.
        ("", "acme.example", "shop@a", "email_from_domains ('acme.example') is refused"),
        ("", {"acme.example": True}, "shop@acme.example", "email_from_domains ({'acme"),
        ("", ["acme.example", 1], "shop@acme.example", "email_from_domains (['acme"),
        ("", 7, "shop@acme.example", "email_from_domains (7) is refused"),
        # The client's From went out as stored, whatever the domains said.
        ("Bank <ceo@bank.example>", ["acme.example"], None, "email_from is refused"),
        ("acme", [], None, "email_from is refused: 'acme' is no email address"),
        # The admin and createclient strip it; written past them, a header of it failed.
        ("shop@acme.example\n", [], None, "'shop@acme.example\\n' is no email address"),
    ],
)
def test_a_sender_policy_stored_as_the_admin_would_refuse_it_fails_the_email_for_good(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    smtp_server: Inbox,
    email_from: str,
    domains: Any,
    step_from: str | None,
    refused: str,
) -> None:
    """Written to the database past the admin and createclient (a shell, SQL), a policy
    was applied as read: a From outside it or of no address sent, a TypeError logged
    as a provider bug for a domain that is no string."""
    client = ClientFactory()
    Client.objects.filter(pk=client.pk).update(email_from=email_from, email_from_domains=domains)
    outputs: dict[str, Any] = {"subject": "Hi", "body": "Hello"}
    if step_from:
        outputs["from"] = {"email": step_from}

    step = send(email_step(notification__trigger_event__client=client, outputs=outputs))

    assert smtp_server.envelopes == []
    assert step.status == Step.Status.FAILED and step.attempts == 1
    assert step.error.startswith("the client's sender policy cannot be applied: its ")
    assert refused in step.error and step.error.endswith("Correct it in the admin.")
    assert Message.objects.get(step=step).status == Message.Status.FAILED


def test_a_retried_email_goes_from_its_clients_email_from_without_reading_the_client_again(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    """The retry finds its message stored by the first try: given the client read with
    the step, as a new one is, not loaded again for the provider."""
    smtp_unreachable(settings)
    client = ClientFactory(email_from="Acme <hello@acme.example>")
    step = send(email_step(notification__trigger_event__client=client))
    assert step.status == Step.Status.SCHEDULED and Message.objects.get().attempts == 1
    Step.objects.filter(pk=step.pk).update(due_at=timezone.now())
    inbox = Inbox()

    with smtp_serving(settings, inbox), CaptureQueriesContext(connection) as queries:
        step = send(step)

    assert step.status == Step.Status.COMPLETED
    assert [_sender_of(e)[0] for e in inbox.envelopes] == ["hello@acme.example"]
    assert not [q for q in queries.captured_queries if q["sql"].startswith('SELECT "notify_')]


@pytest.mark.parametrize(
    ("subject", "sent"),
    [
        ("Your order\n", "Your order"),
        ("Line one\r\nBcc: eve@x.example", "Line one Bcc: eve@x.example"),
    ],
)
def test_a_line_break_in_the_subject_or_from_name_is_sent_as_a_space(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox, subject: str, sent: str
) -> None:
    """Django refused the email for it (the notification failed); nodemailer, so Novu,
    sends a space. Nothing becomes a header of its own."""
    sender = {"email": "shop@acme.example", "name": "Acme\nBcc: eve@x.example"}
    step = send(email_step(outputs={"subject": subject, "body": "Hello", "from": sender}))

    assert step.status == Step.Status.COMPLETED
    [envelope] = smtp_server.envelopes
    assert envelope.rcpt_tos == ["ann@example.com"]
    received = message_from_bytes(envelope.content, policy=policy.default)
    assert received["Subject"] == sent and received["Bcc"] is None
    [address] = received["From"].addresses
    assert (address.display_name, address.addr_spec) == ("Acme Bcc: eve@x.example", sender["email"])


@pytest.mark.parametrize(
    ("outputs", "header", "sent"),
    [
        ({"replyTo": "support@shop.example\n"}, "Reply-To", "support@shop.example"),
        ({"replyTo": "  support@shop.example \r\n"}, "Reply-To", "support@shop.example"),
        ({"from": {"email": "shop@acme.example\n"}}, "From", "shop@acme.example"),
        ({"from": {"email": " shop@acme.example\n", "name": "Acme"}}, "From", "shop@acme.example"),
    ],
)
def test_white_space_around_an_address_of_the_output_is_left_out(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    smtp_server: Inbox,
    outputs: dict[str, Any],
    header: str,
    sent: str,
) -> None:
    """A template's trailing newline after the replyTo or from address failed the email
    for good (Django refuses a header with a line break), where the subject's and the
    from name's were sent as a space."""
    step = send(email_step(outputs={"subject": "Hi", "body": "Hello"} | outputs))

    assert step.status == Step.Status.COMPLETED
    [envelope] = smtp_server.envelopes
    received = message_from_bytes(envelope.content, policy=policy.default)
    assert [a.addr_spec for a in received[header].addresses] == [sent]
    if header == "From":
        assert envelope.mail_from == sent


@pytest.mark.parametrize(
    ("outputs", "field"),
    [
        ({"replyTo": "support@shop.example\nBcc: eve@x.example"}, "replyTo"),
        ({"replyTo": "a@shop.example\r\nb@shop.example"}, "replyTo"),
        ({"from": {"email": "shop@acme.example\nBcc: eve@x.example"}}, "from.email"),
    ],
)
def test_an_address_of_the_output_with_a_line_break_inside_fails_naming_the_field(
    ended: Callable[[Step], Notification],
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    smtp_server: Inbox,
    outputs: dict[str, Any],
    field: str,
) -> None:
    """No one address: nothing is sent (no header of its own), and the error says which
    field of the step's output to fix, where it was Django's words on a header."""
    step = send(email_step(outputs={"subject": "Hi", "body": "Hello"} | outputs))

    assert smtp_server.envelopes == []
    assert step.status == Step.Status.FAILED and step.attempts == 1
    assert f"the step's output has a {field} with a line break" in step.error
    assert Message.objects.get().status == Message.Status.FAILED
    assert ended(step).error_code == "SendFailed"


@pytest.mark.parametrize(
    "email",
    [
        "ann@example.com\x0b\x0bevil",  # a trigger's inline subscriber: stored as sent
        '"ann\x0bbob"@example.com',  # a quoted local part, which Novu's IsEmail takes
        "ann@example.com\x1c\x1devil",
        "ann\x1b@example.com",
    ],
)
def test_a_control_character_in_the_subscribers_email_fails_the_step_naming_it(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox, email: str
) -> None:
    """Python's email package writes a vertical tab or a file separator in a header as
    a line break: the email went out to another mailbox than the subscriber's, its To
    header broken in two (`To: ann@example.com`, then a line `evil`)."""
    step = send(email_step(notification__subscriber__email=email))

    assert smtp_server.envelopes == []
    assert step.status == Step.Status.FAILED and step.attempts == 1
    assert "the subscriber's email address has a control character" in step.error
    assert Message.objects.get().status == Message.Status.FAILED


def test_a_subscribers_email_of_an_empty_local_part_fails_the_step_unsent(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """'""@example.com' passes the subscriber API's check, as it passes Novu's, but
    Python's email package writes its empty quoted local part as none: the email went
    to "@example.com" (RCPT TO:<@example.com>, To: @example.com), no mailbox, or one
    only a server's catch-all for the domain takes, and the reason of a server's refusal
    named that address, not the subscriber's."""
    step = send(email_step(notification__subscriber__email='""@example.com'))

    assert smtp_server.envelopes == []
    assert step.status == Step.Status.FAILED and step.attempts == 1
    assert step.error == (
        "the subscriber's email address has an empty local part ('\"\"@example.com'),"
        " which norm cannot send to"
    )
    assert Message.objects.get().status == Message.Status.FAILED


def test_a_subscribers_email_stored_without_an_at_sign_fails_the_step_unsent(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """The API refuses such an address, but a row stored before it did (or written by
    hand) went out as RCPT TO:<ann>, which an SMTP relay takes for a mailbox of its own:
    mail for the subscriber delivered to someone on the relay's host."""
    step = send(email_step(notification__subscriber__email="ann"))

    assert smtp_server.envelopes == []
    assert step.status == Step.Status.FAILED and step.attempts == 1
    assert step.error == (
        "the subscriber's email address has no domain ('ann'), which norm cannot send to"
    )
    assert Message.objects.get().status == Message.Status.FAILED


def test_the_text_alternative_is_the_text_a_reader_sees_of_the_html(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """A text-only mail client showed the stylesheet and the entities as written."""
    body = (
        "<html><head><title>Order</title><style>p { color: red }</style></head>"
        "<body><p>Tom &amp; Jerry say &lt;hi&gt; &mdash; caf&eacute;</p>"
        "<script>track()</script></body></html>"
    )
    assert send(email_step(outputs={"subject": "Hi", "body": body})).status == Step.Status.COMPLETED

    [envelope] = smtp_server.envelopes
    received = message_from_bytes(envelope.content, policy=policy.default)
    text, markup = (part.get_content() for part in received.iter_parts())
    assert text.strip() == "Tom & Jerry say <hi> — café"
    assert markup.strip() == body


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (  # minified, as React Email renders it
            '<p>Hi Ann,</p><p>Your order shipped.<br>Track it <a href="x">here</a>.</p>'
            "<table><tr><td>Item</td><td>$5</td></tr></table>",
            "Hi Ann,\n\nYour order shipped.\nTrack it here.\n\nItem $5",
        ),
        (  # indented, as a template is written
            "<html>\n  <body>\n    <div>\n      Hello\n      there,\n    </div>\n"
            "    <ul>\n      <li>one</li>\n      <li>two</li>\n    </ul>\n  </body>\n</html>\n",
            "Hello there,\n\none\ntwo",
        ),
    ],
)
def test_the_text_alternative_breaks_lines_where_the_html_does(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox, body: str, text: str
) -> None:
    """Only the tags were taken out: "Hi Ann,</p><p>Your order" was read as "Hi Ann,Your
    order" by text-only clients and previews, and an indented template as its indentation."""
    assert send(email_step(outputs={"subject": "Hi", "body": body})).status == Step.Status.COMPLETED

    [envelope] = smtp_server.envelopes
    received = message_from_bytes(envelope.content, policy=policy.default)
    assert received.get_body(("plain",)).get_content().strip().splitlines() == text.splitlines()


def test_the_text_alternative_gives_each_links_address_after_its_text(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """A link's text was kept without where it goes: "Confirm your address: Confirm",
    an email a text-only reader could do nothing with. A link whose text is its address
    (with or without the scheme) is not given twice, nor a link within the page; one of
    no text (an image) is its address alone."""
    body = (
        '<a href="https://shop.example/"><img src="logo.png" alt="Shop"></a>'
        '<p>Confirm your address: <a class="btn" href="https://shop.example/c?t=1&amp;u=2">'
        "<b>Confirm</b></a></p>"
        "<p><a href='https://shop.example/'>shop.example/</a> or "
        '<a href="mailto:help@shop.example">help@shop.example</a> or '
        '<a href="mailto:help@shop.example">write to us</a> <a href="#top">top</a></p>'
    )
    assert send(email_step(outputs={"subject": "Hi", "body": body})).status == Step.Status.COMPLETED

    [envelope] = smtp_server.envelopes
    received = message_from_bytes(envelope.content, policy=policy.default)
    assert received.get_body(("plain",)).get_content().strip().splitlines() == [
        "https://shop.example/",
        "",
        "Confirm your address: Confirm (https://shop.example/c?t=1&u=2)",
        "",
        "shop.example/ or help@shop.example or write to us (mailto:help@shop.example) top",
    ]
    assert received.get_body(("html",)).get_content() == body


def test_a_body_with_many_unclosed_angle_brackets_is_sent(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """strip_tags refuses such text (SuspiciousOperation): the notification failed, with
    "the provider failed" and a traceback in the log."""
    body = "Checks: " + ", ".join(f"a<b{n}" for n in range(200))
    step = send(email_step(outputs={"subject": "Hi", "body": body}))

    assert step.status == Step.Status.COMPLETED
    [envelope] = smtp_server.envelopes
    received = message_from_bytes(envelope.content, policy=policy.default)
    assert [part.get_content().strip() for part in received.iter_parts()] == [body, body]


@pytest.mark.parametrize(
    ("body", "markup"),
    [
        ("<p>Hello</p>", "{hidden}<p>Hello</p>"),
        (
            '<html><body class="x"><p>Hello</p></body></html>',
            '<html><body class="x">{hidden}<p>Hello</p></body></html>',
        ),
    ],
)
def test_the_preheader_opens_the_html_body_hidden_and_stays_out_of_the_text(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox, body: str, markup: str
) -> None:
    outputs = {"subject": "Hi", "body": body, "preheader": "Your <order> is on its way"}
    assert send(email_step(outputs=outputs)).status == Step.Status.COMPLETED

    [envelope] = smtp_server.envelopes
    received = message_from_bytes(envelope.content, policy=policy.default)
    text, html_part = (part.get_content().strip() for part in received.iter_parts())
    hidden = (
        '<div style="display:none;max-height:0;overflow:hidden;mso-hide:all">'
        "Your &lt;order&gt; is on its way</div>"
    )
    assert html_part == markup.format(hidden=hidden)
    assert text == "Hello"


def _a_second_task_sends_while_the_first_is_held(
    step: Step, smtp_server: Inbox
) -> threading.Thread:
    """A first task sends `step` and is held by the server's reply; its claim goes stale,
    the reconciler reopens the step and a second task sends it. Returns the first task's
    thread, still held until the test lets its reply go."""

    def slow_task() -> None:
        try:
            services.message_send(step_id=step.pk, claim="slow-task")
        finally:
            connection.close()

    first = threading.Thread(target=slow_task)
    first.start()
    # Until the first task's email is on the server, which holds its reply: else the test
    # went on without the race it is about, and failed for another reason, or passed.
    deadline = time.monotonic() + 30
    while not smtp_server.envelopes:
        assert time.monotonic() < deadline, "the first task's email never reached the server"
        time.sleep(0.05)
    Step.objects.filter(pk=step.pk).update(claimed_at=timezone.now() - timedelta(hours=1))
    reconciler.reconcile()
    services.message_send(step_id=step.pk, claim="second-task")
    return first


@pytest.mark.django_db(transaction=True)
def test_a_task_whose_claim_was_taken_leaves_the_message_its_successor_sent(
    enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """A send slower than NORM_STALE_CLAIM_SECONDS: the reconciler gives the step to a
    second task, which delivers it; then the first task's server refuses the email. The
    message stays sent, as it was, and its step completed."""
    step = email_step()
    delivered = threading.Event()
    smtp_server.replies = [(delivered, "550 mailbox unavailable")]

    first = _a_second_task_sends_while_the_first_is_held(step, smtp_server)
    delivered.set()
    first.join(20)

    assert len(smtp_server.envelopes) == 2
    assert Message.objects.get(step=step).status == Message.Status.SENT
    assert Step.objects.get(pk=step.pk).status == Step.Status.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_a_late_record_of_a_send_leaves_the_record_its_successor_made(
    enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """Both tasks' emails go through, the second task's recorded first: the first task's
    record, once its server answers, wrote its own over it (its sent_at, and a provider
    whose ids differ per send, its id), after the step had completed on the second's
    and the API shown it. The first record stays, as a retry's record (SentUnrecorded)
    leaves one."""
    step = email_step()
    first_answered = threading.Event()
    smtp_server.replies = [(first_answered, "250 OK")]

    first = _a_second_task_sends_while_the_first_is_held(step, smtp_server)
    recorded = Message.objects.get(step=step)
    assert recorded.status == Message.Status.SENT
    first_answered.set()
    first.join(20)

    assert len(smtp_server.envelopes) == 2
    assert_record_kept(recorded)
    assert Step.objects.get(pk=step.pk).status == Step.Status.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_a_late_record_that_meets_a_bug_leaves_the_record_its_successor_made(
    enqueued: Enqueued,
    smtp_server: Inbox,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As above, the first task's record failing on a bug: the message is then recorded
    sent on its own (so that the step's next run does not send it again), which is no
    reason to write over the record its successor made."""
    step = email_step()
    first_answered = threading.Event()
    smtp_server.replies = [(first_answered, "250 OK")]

    first = _a_second_task_sends_while_the_first_is_held(step, smtp_server)
    recorded = Message.objects.get(step=step)
    monkeypatch.setattr(bookkeeping, "step_complete", a_bug)
    first_answered.set()
    first.join(20)

    [bug] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert bug.exc_info is not None and isinstance(bug.exc_info[1], KeyError)  # the first's
    assert_record_kept(recorded)
    assert Step.objects.get(pk=step.pk).status == Step.Status.COMPLETED


def test_a_message_another_task_failed_for_good_after_this_ones_claim_is_not_sent_again(
    enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """Task a claimed the step and stalled before storing its message, past
    NORM_STALE_CLAIM_SECONDS; task b took the step over, and the server refused its
    email for good. Task a, finding the message stored, ends as it ended (failed), and
    does not send the email again to an address refused for good."""
    step = email_step()
    smtp_server.replies = [_answered_at_once("550 5.1.1 mailbox unavailable")]
    taken_over: list[bool] = []

    def b_takes_over_after_as_read_of_the_step(execute: Any, sql: str, *args: Any) -> Any:
        result = execute(sql, *args)
        if not taken_over and sql.startswith('SELECT "workflows_step"'):
            taken_over.append(True)
            Step.objects.filter(pk=step.pk).update(claimed_at=timezone.now() - timedelta(hours=1))
            reconciler.reconcile()
            services.message_send(step_id=step.pk, claim="task-b")
        return result

    with connection.execute_wrapper(b_takes_over_after_as_read_of_the_step):
        services.message_send(step_id=step.pk, claim="task-a")

    assert taken_over and len(smtp_server.envelopes) == 1
    message = Message.objects.get(step=step)
    assert (message.status, message.attempts) == (Message.Status.FAILED, 1)
    assert Step.objects.get(pk=step.pk).status == Step.Status.FAILED


@pytest.mark.django_db(transaction=True)
def test_a_retry_of_a_notification_failed_by_one_task_while_another_delivered_sends_nothing(
    enqueued: Enqueued, smtp_server: Inbox, ended: Callable[[Step], Notification]
) -> None:
    """The other way round: the second task's server refuses the email for good, which
    fails the step and the notification, then the first task's delivery goes through.
    An admin retry of the notification sent the email again; it now finds it sent,
    completes the step and goes on with the workflow."""
    step = email_step()
    refused, delivered = threading.Event(), threading.Event()
    refused.set()
    smtp_server.replies = [(delivered, "250 OK"), (refused, "550 mailbox unavailable")]

    first = _a_second_task_sends_while_the_first_is_held(step, smtp_server)
    assert ended(step).status == Notification.Status.FAILED
    delivered.set()
    first.join(20)
    assert Message.objects.get(step=step).status == Message.Status.SENT
    enqueued.clear()

    assert operations.notification_retry(notification=Notification.objects.get())
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]
    services.message_send(step_id=step.pk, claim="retry-task")

    assert len(smtp_server.envelopes) == 2  # the delivery and the refusal, no third
    assert Message.objects.get(step=step).status == Message.Status.SENT
    assert Step.objects.get(pk=step.pk).status == Step.Status.COMPLETED
    assert Notification.objects.get().status == Notification.Status.RUNNING
    assert enqueued.of(pipeline.ECHO) == [(str(step.notification_id),)]


@pytest.mark.parametrize("tag", ["<style ", "<body "])
def test_an_email_of_a_megabyte_of_unclosed_tags_is_sent(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox, tag: str
) -> None:
    """Patterns spanning an element (`<style.*?</style>`, `<body[^>]*>`) scanned on to
    the end from every opening tag: this email held a message worker for minutes."""
    body = "<p>" + tag * 150_000 + "end"
    step = send(email_step(outputs={"subject": "Hi", "body": body, "preheader": "Hello"}))

    assert step.status == Step.Status.COMPLETED, step.error
    [envelope] = smtp_server.envelopes
    received = message_from_bytes(envelope.content, policy=policy.default)
    text, markup = (part.get_content().strip() for part in received.iter_parts())
    assert text == body and markup == providers.with_preheader(body, "Hello")
    assert markup.endswith(body) and "Hello" in markup[: -len(body)]


def test_the_text_alternative_of_a_body_of_megabytes_is_made_from_its_first_characters(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """A bridge may answer 10 MB: the text part of a body of megabytes of markup ("<>"
    over and over) held a message worker, every client's, for seconds a megabyte, and
    of some markup for hours. It is made from the body's first TEXT_SOURCE_CHARS
    characters; the HTML goes whole."""
    body = "<p>Hello</p>" + "<>" * 2_000_000 + "<p>the end</p>"
    step = send(email_step(outputs={"subject": "Hi", "body": body}))

    assert step.status == Step.Status.COMPLETED, step.error
    [envelope] = smtp_server.envelopes
    received = message_from_bytes(envelope.content, policy=policy.default)
    text, markup = (part.get_content().strip() for part in received.iter_parts())
    assert text.splitlines()[:2] == ["Hello", ""] and "the end" not in text
    assert len(text) < providers.TEXT_SOURCE_CHARS
    assert markup == body


@pytest.mark.parametrize(
    ("outputs", "error"),
    [
        ({"subject": "Hi " * 400_000}, "a subject of 1200000 characters, over 10000"),
        ({"from": {"name": "Jürgen " * 200_000}}, "a from.name of 1400000 characters"),
        ({"replyTo": ", ".join(["s@x.example"] * 1000)}, "a replyTo of 12998 characters"),
    ],
)
def test_an_email_output_with_a_header_of_megabytes_fails_the_step(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    smtp_server: Inbox,
    outputs: dict[str, Any],
    error: str,
) -> None:
    """Python's email package encodes and folds a header at about a megabyte a second: a
    subject or from name of megabytes (a bridge may answer 10 MB) held a message worker,
    every client's, for seconds each time, for a header no relay keeps whole."""
    step = send(email_step(outputs={"subject": "Hi", "body": "Hello", **outputs}))

    assert smtp_server.envelopes == []
    assert step.status == Step.Status.FAILED and error in step.error


def test_a_header_of_header_chars_characters_is_sent_and_one_of_more_fails(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """HEADER_CHARS is the longest header sent, not one short of it: at the bound the
    email goes, a character past it fails naming the field."""
    subject = "abcdefghi " * (providers.HEADER_CHARS // 10)
    assert len(subject) == providers.HEADER_CHARS

    at_bound = send(email_step(outputs={"subject": subject, "body": "Hello"}))
    past_bound = send(email_step(outputs={"subject": f"{subject}j", "body": "Hello"}))

    assert at_bound.status == Step.Status.COMPLETED, at_bound.error
    assert past_bound.status == Step.Status.FAILED
    assert past_bound.error == (
        f"the step's output has a subject of {providers.HEADER_CHARS + 1} characters, "
        f"over {providers.HEADER_CHARS}"
    )
    assert len(smtp_server.envelopes) == 1


def test_the_text_alternative_reads_the_html_once() -> None:
    """strip_tags reads its output again until a reading takes nothing more out, up to
    50 times, for HTML shown as HTML: a body of "<<<a>a>a>" nested 49 deep and "<>" was
    read 50 times over (seconds for 100 KB). Read once, "<<b>b>" is "<b>", as a reader
    of the HTML sees it."""
    assert providers.text_of("<p>1 <<b>b> 2</p>") == "1 <b> 2"


def test_a_header_of_a_long_run_of_spaces_is_kept_on_its_line() -> None:
    """A pattern for the spaces around a line break tried again from every space: a
    subject of a long run of them held a message worker for minutes."""
    subject = "Hi" + " " * 1_000_000 + "there"
    assert providers.one_line(subject) == subject
    assert providers.one_line(" Hi \n\n\t there\r\n") == "Hi there"


class WorkerKilled(BaseException):
    """The worker process dies mid-send (out of memory, a segfault): nothing after runs."""


class DyingBackend(BaseEmailBackend):
    sends = 0

    def send_messages(self, email_messages: Any) -> int:
        DyingBackend.sends += 1
        raise WorkerKilled


@pytest.mark.parametrize("how", ["redelivered", "stale claim reopened"])
def test_a_step_whose_send_kills_its_worker_fails_after_norm_max_claims(
    enqueued: Enqueued, settings: Any, how: str
) -> None:
    """Celery redelivers a task whose worker died (reject on worker lost), and the
    reconciler reopens a claim gone stale: a send that kills its worker each time was
    tried forever, a worker killed each time. It is tried NORM_MAX_CLAIMS times."""
    settings.EMAIL_BACKEND = f"{__name__}.DyingBackend"
    settings.NORM_MAX_CLAIMS = 3
    DyingBackend.sends = 0
    step = email_step()

    for attempt in range(3):
        with pytest.raises(WorkerKilled):
            services.message_send(
                step_id=step.pk, claim="task-1" if how == "redelivered" else f"task-{attempt}"
            )
        if how == "stale claim reopened":
            Step.objects.filter(pk=step.pk).update(claimed_at=timezone.now() - timedelta(hours=1))
            reconciler.reconcile()
    services.message_send(step_id=step.pk, claim="task-1" if how == "redelivered" else "task-9")

    assert DyingBackend.sends == 3
    step.refresh_from_db()
    assert step.status == Step.Status.FAILED and "NORM_MAX_CLAIMS" in step.error
    notification = Notification.objects.get()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "TooManyClaims"
    assert notification.error.startswith(f"step '{step.step_id}': taken 3 times")
    # Its message, inserted before the first send, does not read as still on its way.
    message = Message.objects.get(step=step)
    assert message.status == Message.Status.FAILED and "NORM_MAX_CLAIMS" in message.error


def test_a_send_failing_for_now_under_a_cancel_fails_its_message_with_the_step(
    enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """The cancel left the step being sent to its task, whose send then failed for now
    (451): the step was canceled, but its message stayed sending for good."""
    step = email_step()
    claimed = bookkeeping.step_claim(step_id=step.pk, claim="task")
    assert claimed is not None
    Message.objects.create(
        step=step, client_id=step.notification.client_id,
        subscriber=step.notification.subscriber, channel="email", provider="smtp",
    )  # fmt: skip
    assert operations.notification_cancel(notification=step.notification)

    bookkeeping.step_retry_later(step=claimed, message="451 try later", backoff=10)

    step.refresh_from_db()
    assert step.status == Step.Status.CANCELED
    message = Message.objects.get(step=step)
    assert (message.status, message.error) == (Message.Status.FAILED, "451 try later")
    assert enqueued.of(pipeline.MESSAGE) == []


def test_a_message_waiting_to_be_sent_again_is_failed_by_a_cancel(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    """The other order: the send failed for now first, and its step waited to be tried
    again when the notification was canceled. The step was canceled with it, and its
    message stayed sending for good (GET /v1/messages leaves such a one out as still on
    its way): nothing, not the reconciler either, moved it again."""
    smtp_unreachable(settings)
    step = send(email_step())
    assert step.status == Step.Status.SCHEDULED
    assert Message.objects.get().status == Message.Status.SENDING

    assert operations.notification_cancel(notification=step.notification)
    reconciler.reconcile()

    step.refresh_from_db()
    assert step.status == Step.Status.CANCELED
    message = Message.objects.get()
    assert message.status == Message.Status.FAILED
    assert message.error == operations.CANCELED_BEFORE_RETRY
    assert mail.outbox == []


def test_a_message_an_admin_retry_reopened_is_failed_by_a_cancel_before_its_send(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    settings: Any,
    ended: Callable[[Step], Notification],
) -> None:
    step = failed_for_good(send, settings, ended)
    assert operations.notification_retry(notification=step.notification)
    assert Message.objects.get().status == Message.Status.SENDING

    assert operations.notification_cancel(notification=step.notification)

    step.refresh_from_db()
    assert step.status == Step.Status.CANCELED
    assert Message.objects.get().status == Message.Status.FAILED


def test_a_cancel_leaves_sent_a_message_delivered_after_all(enqueued: Enqueued) -> None:
    """Its step back on the schedule (the claim of the task sending it went stale), the
    message went out meanwhile: the cancel ends the step, and the message stays sent."""
    sent = MessageFactory(step=email_step(attempts=1), channel="email", provider="smtp")

    assert operations.notification_cancel(notification=sent.step.notification)

    sent.refresh_from_db()
    assert (sent.status, sent.error) == (Message.Status.SENT, "")
    assert Step.objects.get().status == Step.Status.CANCELED


def test_sends_that_failed_and_were_retried_do_not_count_against_norm_max_claims(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    """NORM_SEND_MAX_ATTEMPTS bounds the sends that came back with an error; the claim
    bound is for those that never came back."""
    smtp_unreachable(settings)
    settings.NORM_SEND_MAX_ATTEMPTS = 5
    settings.NORM_MAX_CLAIMS = 1
    step = email_step()

    for _ in range(3):
        step = send(step)
        assert step.status == Step.Status.SCHEDULED
        Step.objects.filter(pk=step.pk).update(due_at=timezone.now())
    settings.EMAIL_BACKEND = LOCMEM
    step = send(step)

    assert step.status == Step.Status.COMPLETED and step.attempts == 4
    assert len(mail.outbox) == 1


@contextlib.contextmanager
def _subscriber_deleted_after(subscriber: Any, sql_prefix: str) -> Iterator[list[bool]]:
    """Delete `subscriber` (with its notifications, steps and messages) just after the
    first statement starting `sql_prefix` has run (autocommit: it has committed); the
    list it gives holds True once it has."""
    from subscribers import services as subscriber_services

    deleted: list[bool] = []

    def delete_the_subscriber_after(execute: Any, sql: str, *args: Any) -> Any:
        result = execute(sql, *args)
        if not deleted and sql.startswith(sql_prefix):
            deleted.append(True)
            subscriber_services.subscriber_delete(subscriber=subscriber)
        return result

    with connection.execute_wrapper(delete_the_subscriber_after):
        yield deleted


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "after",
    ['UPDATE "workflows_step"', 'SELECT "workflows_step"'],
    ids=["its claim", "its read of the step"],
)
@pytest.mark.parametrize("channel", ["email", "in_app"])
def test_a_step_whose_subscriber_is_deleted_under_its_send_ends_quietly_unsent(
    settings: Any,
    enqueued: Enqueued,
    caplog: pytest.LogCaptureFixture,
    after: str,
    channel: str,
) -> None:
    """A subscriber deleted (with its notifications, steps and messages) just after the
    message task claimed its step: the task's read of the step found none
    (Step.DoesNotExist), or its message was refused by the step's foreign key
    (IntegrityError), and the task failed with an error in the worker's log. The step
    is gone, so there is nothing to send: it ends quietly."""
    settings.EMAIL_BACKEND = LOCMEM
    step = StepFactory(type=channel, notification__subscriber__email="ann@example.com")

    with _subscriber_deleted_after(step.notification.subscriber, after) as deleted:
        tasks.message_send(step.pk)  # raises nothing

    assert deleted
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not Step.objects.filter(pk=step.pk).exists()
    assert not Message.objects.exists()
    assert mail.outbox == []
    assert enqueued.calls == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("earlier", "after"),
    [
        (Message.Status.SENT, 'SELECT "workflows_step"'),
        (Message.Status.FAILED, 'SELECT "workflows_step"'),
        (Message.Status.SENDING, "INSERT"),  # the message's, the task's first (SQLite: OR IGNORE)
    ],
    ids=["sent, after the claim", "failed for good, after the claim", "sending, after its insert"],
)
def test_a_step_whose_subscriber_is_deleted_under_a_rerun_ends_quietly(
    settings: Any,
    enqueued: Enqueued,
    caplog: pytest.LogCaptureFixture,
    earlier: Message.Status,
    after: str,
) -> None:
    """As above, for a step an earlier run stored a message of: the task's read of the
    message found none (Message.DoesNotExist), and its worker logged the race as a bug
    in the send ("the send of step N failed", a traceback). Nothing to record: it ends
    quietly."""
    settings.EMAIL_BACKEND = LOCMEM
    step = StepFactory(type="email", notification__subscriber__email="ann@example.com")
    MessageFactory(step=step, status=earlier, provider="email", attempts=1)

    with _subscriber_deleted_after(step.notification.subscriber, after) as deleted:
        tasks.message_send(step.pk)

    assert deleted
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not Step.objects.filter(pk=step.pk).exists()
    assert mail.outbox == []
    assert enqueued.calls == []


def test_a_workflow_goes_on_past_an_email_refused_for_good_as_novus_worker_does(
    send: Callable[[Step], Step],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    """Novu's worker halts a workflow only on a failed action step (or one its author
    marked to stop on failure): an email refused for good does not keep the in-app
    message after it from its subscriber. norm failed the notification at the email,
    and the in-app message was never stored. The notification still ends failed, naming
    the email, and the bridge is told the email failed (its result a channel's `{}`)."""
    bodies: list[dict[str, Any]] = []
    answers = [
        {"stepId": "inbox", "type": "in_app", "outputs": {"body": "Your order shipped"}},
        {"done": True},
    ]

    def execute(url: str, *, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        bodies.append(body)
        return answers.pop(0)

    def echo_step(step: Step) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            echo.echo_run(notification_id=str(step.notification_id))

    monkeypatch.setattr(bridge, "execute", execute)  # the bridge, at the network edge
    with smtp_serving(settings, _Refusing("RCPT", "550 5.1.1 User unknown")):
        email = send(email_step(step_id="receipt"))
    assert email.status == Step.Status.FAILED

    echo_step(email)
    inbox = send(Step.objects.get(step_id="inbox"))
    echo_step(inbox)

    assert bodies[0]["state"] == [
        {"stepId": "receipt", "outputs": {}, "state": {"status": "failed"}}
    ]
    assert inbox.status == Step.Status.COMPLETED
    assert Message.objects.get(step=inbox).status == Message.Status.SENT
    notification = Notification.objects.get()
    assert (notification.status, notification.error_code) == (
        Notification.Status.FAILED,
        "SendFailed",
    )
    assert notification.error == f"step 'receipt': {email.error}"


class _Refusing:
    """An SMTP server that refuses each recipient, or each email's data, with `reply`."""

    def __init__(self, at: str, reply: str) -> None:
        self.at, self.reply = at, reply

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.at == "RCPT":
            return self.reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return self.reply


@pytest.mark.parametrize(
    ("at", "reply", "error"),
    [
        (
            "RCPT",
            "550 5.1.1 <ann@example.com>: Recipient address rejected: User unknown",
            "the SMTP server refused ann@example.com: "
            "550 5.1.1 <ann@example.com>: Recipient address rejected: User unknown",
        ),
        (
            "DATA",
            "554-5.7.1 Message rejected as spam\r\n554 5.7.1 See https://example.com/why",
            "SMTP 554: 5.7.1 Message rejected as spam 5.7.1 See https://example.com/why",
        ),
        ("DATA", "500 5.5.2 Syntax error", "SMTP 500: 5.5.2 Syntax error"),  # 5xx from 500
        # A NUL, which PostgreSQL's text refuses: the message's error could not be stored.
        ("DATA", "554 5.7.1 Rejected\x00 by policy", "SMTP 554: 5.7.1 Rejected\ufffd by policy"),
        (
            "RCPT",
            "550 5.1.1 Unknown\x00 user",
            "the SMTP server refused ann@example.com: 550 5.1.1 Unknown\ufffd user",
        ),
    ],
)
def test_an_email_the_smtp_server_refuses_fails_with_its_reply_as_the_server_wrote_it(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    ended: Callable[[Step], Notification],
    settings: Any,
    at: str,
    reply: str,
    error: str,
) -> None:
    """The most common reason an email fails, a bounced address, read as Python wrote its
    bytes and dicts: "SMTP 550: b'5.1.1 ...'" and "recipient refused: {'ann@example.com':
    (550, b'5.1.1 ...')}", on the message, its step and its notification."""
    with smtp_serving(settings, _Refusing(at, reply)):
        step = send(email_step())

    assert (step.status, step.error) == (Step.Status.FAILED, error)
    assert Message.objects.values_list("status", "error").get() == (Message.Status.FAILED, error)
    notification = ended(step)
    assert (notification.error_code, notification.error) == (
        "SendFailed",
        f"step '{step.step_id}': {error}",
    )


def test_an_email_refused_for_now_keeps_its_recipient_and_once_sent_no_error(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """The message says to whom it went, and when: a refusal for now records the address
    it was refused for, and the retry that delivers it its time, no longer the error of
    the try before (the feed and GET /v1/messages show both)."""
    answered = threading.Event()
    answered.set()
    smtp_server.replies = [(answered, "451 4.3.0 Try again later")]
    step = send(email_step())

    assert step.status == Step.Status.SCHEDULED
    message = Message.objects.get()
    assert (message.status, message.recipient, message.attempts, message.sent_at) == (
        Message.Status.SENDING,
        "ann@example.com",
        1,
        None,
    )
    assert message.error == "SMTP 451: 4.3.0 Try again later"

    Step.objects.filter(pk=step.pk).update(due_at=timezone.now())
    step = send(step)

    assert step.status == Step.Status.COMPLETED and len(smtp_server.envelopes) == 2
    message.refresh_from_db()
    assert (message.status, message.recipient, message.attempts, message.error) == (
        Message.Status.SENT,
        "ann@example.com",
        2,
        "",
    )
    assert message.sent_at is not None


def test_an_email_retried_after_its_subscribers_address_changed_goes_to_the_new_one(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """A try refused for now recorded the address it was refused for; the subscriber's
    address changed before the retry (PUT /v1/subscribers). The retry goes to the address
    the subscriber has now, and the message says so, not to the one it no longer reads."""
    smtp_server.replies = [_answered_at_once("451 4.3.0 Try again later")]
    step = send(email_step())
    assert Message.objects.get().recipient == "ann@example.com"
    Subscriber.objects.filter(pk=step.notification.subscriber_id).update(email="ann@new.example")
    Step.objects.filter(pk=step.pk).update(due_at=timezone.now())

    step = send(step)

    assert step.status == Step.Status.COMPLETED
    assert [e.rcpt_tos for e in smtp_server.envelopes] == [
        ["ann@example.com"],
        ["ann@new.example"],
    ]
    assert Message.objects.get().recipient == "ann@new.example"


def test_each_attempt_of_a_steps_email_has_one_message_id_and_another_steps_another(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    smtp_server: Inbox,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A recipient's mail system tells a repeat from a new email by its Message-ID: each
    attempt had a new one (Django's), so a send refused for now and retried, or re-driven
    by the reconciler after its worker died before the commit, reached them as another
    email. Each attempt carries the step's own, valid (RFC 5322) and of norm's domain."""
    settings.DEFAULT_FROM_EMAIL = "Norm <norm@mail.example.com>"
    smtp_server.replies = [_answered_at_once("451 4.3.0 Try again later")]
    step = send(email_step())
    assert step.status == Step.Status.SCHEDULED
    Step.objects.filter(pk=step.pk).update(due_at=timezone.now())

    def killed_before_the_commit(**kwargs: Any) -> None:
        raise WorkerKilled

    complete = bookkeeping.step_complete
    monkeypatch.setattr(bookkeeping, "step_complete", killed_before_the_commit)
    with pytest.raises(WorkerKilled):
        send(step)
    monkeypatch.setattr(bookkeeping, "step_complete", complete)
    Step.objects.filter(pk=step.pk).update(claimed_at=timezone.now() - timedelta(hours=1))
    reconciler.reconcile()
    assert send(step).status == Step.Status.COMPLETED
    other = send(email_step())

    refused, killed, sent, another = (
        message_from_bytes(envelope.content, policy=policy.default)["Message-ID"]
        for envelope in smtp_server.envelopes
    )
    message = Message.objects.get(step=step)
    assert refused == killed == sent == f"<{message.pk}.{step.notification_id}@mail.example.com>"
    assert not sent.defects and message.provider_message_id == str(message.pk)
    other_message = Message.objects.get(step=other)
    assert another == f"<{other_message.pk}.{other.notification_id}@mail.example.com>"


def test_an_email_sent_at_once_records_when(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    before = timezone.now()
    send(email_step())
    message = Message.objects.get()
    assert message.status == Message.Status.SENT
    assert message.sent_at is not None and before <= message.sent_at <= timezone.now()


@contextlib.contextmanager
def smtp_requiring_login(settings: Any, inbox: Inbox, password: str) -> Iterator[None]:
    """As smtp_serving, a server that takes no email before a login as "norm" with
    `password` (over plain SMTP, on loopback)."""

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        return AuthResult(success=data == LoginPassword(b"norm", password.encode()), handled=False)

    with smtp_serving(
        settings, inbox, auth_required=True, auth_require_tls=False, authenticator=authenticate
    ):
        yield


@pytest.mark.parametrize(
    ("user", "error"),
    [
        (
            "norm",
            "the SMTP login failed (EMAIL_HOST_USER, EMAIL_HOST_PASSWORD): "
            "535 5.7.8 Authentication credentials invalid",
        ),
        ("", "SMTP 530: 5.7.0 Authentication required"),  # no login set, and one required
    ],
)
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_an_smtp_login_refused_is_retried_and_fails_after_norm_send_max_attempts(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any, user: str, error: str
) -> None:
    """A login refused is the server's configuration or norm's (a password being rotated),
    not the email's: failed for good at once, as a 5xx, every email of a broadcast sent
    meanwhile was lost. Retried as a 4xx, and failed with the reason, no password in it."""
    settings.NORM_SEND_MAX_ATTEMPTS = 2
    inbox = Inbox()
    with smtp_requiring_login(settings, inbox, "new-secret"):
        settings.EMAIL_HOST_PASSWORD = "old-secret" if user else ""
        settings.EMAIL_HOST_USER = user
        step = send(email_step())
        assert (step.status, step.error) == (Step.Status.SCHEDULED, error)
        assert Message.objects.get().status == Message.Status.SENDING
        Step.objects.filter(pk=step.pk).update(due_at=timezone.now())
        step = send(step)

    assert (step.status, step.error, step.attempts) == (Step.Status.FAILED, error, 2)
    assert Message.objects.values_list("status", "error").get() == (Message.Status.FAILED, error)
    assert inbox.envelopes == []


@pytest.mark.parametrize(
    "reply",
    [
        "530 5.7.1 Client was not authenticated",
        "534 5.7.9 Authentication mechanism is too weak",
        "535 5.7.8 Authentication credentials invalid",
        "538 5.7.11 Encryption required for requested authentication mechanism",
    ],
)
def test_a_recipient_refused_for_want_of_a_login_is_retried_after_a_backoff(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any, reply: str
) -> None:
    """A server relaying for those logged in only may say so for each recipient, with
    any of RFC 4954's login replies: the server's configuration or norm's, not the
    address's, and failed for good it lost every email of a broadcast sent meanwhile."""
    with smtp_serving(settings, _Refusing("RCPT", reply)):
        step = send(email_step())

    assert step.status == Step.Status.SCHEDULED
    assert step.error == f"the SMTP server refused ann@example.com: {reply}"
    assert Message.objects.get().status == Message.Status.SENDING


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_an_email_refused_a_login_is_sent_on_its_retry_once_the_password_is_rotated(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    inbox = Inbox()
    with smtp_requiring_login(settings, inbox, "new-secret"):
        settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = "norm", "old-secret"
        step = send(email_step())
        assert step.status == Step.Status.SCHEDULED and "SMTP login failed" in step.error
        settings.EMAIL_HOST_PASSWORD = "new-secret"
        Step.objects.filter(pk=step.pk).update(due_at=timezone.now())
        step = send(step)

    assert (step.status, step.attempts) == (Step.Status.COMPLETED, 2)
    assert [envelope.rcpt_tos for envelope in inbox.envelopes] == [["ann@example.com"]]
    assert Message.objects.values_list("status", "error").get() == (Message.Status.SENT, "")


class _CramMd5(Inbox):
    """Takes a CRAM-MD5 login (RFC 2195) of `user` with `password`, as UTF-8."""

    def __init__(self, user: str, password: str) -> None:
        super().__init__()
        self.user, self.password = user, password

    async def auth_CRAM__MD5(self, server: Any, args: list[str]) -> AuthResult:
        challenge = b"<1.1@norm.test>"
        user, _, digest = (await server.challenge_auth(challenge)).rpartition(b" ")
        expected = hmac.HMAC(self.password.encode(), challenge, "md5").hexdigest().encode()
        return AuthResult(success=(user, digest) == (self.user.encode(), expected), handled=False)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_an_smtp_login_beyond_ascii_is_sent_as_utf_8(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any, mechanism: str
) -> None:
    """smtplib encodes a login as ASCII: a password (or user) with "ä" or "€" failed
    every email for good before AUTH went out, its reason "'ascii' codec can't encode
    character '\\xe4' in position 1" giving away a character of the password and its place
    to each client reading its messages. It goes as UTF-8, as SASL PLAIN has it."""
    user, password = "zoë", "pä55wörd€"
    inbox = _CramMd5(user, password)

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        return AuthResult(success=data == LoginPassword(user.encode(), password.encode()))

    others = [m for m in ("PLAIN", "LOGIN", "CRAM-MD5") if m != mechanism]
    with smtp_serving(
        settings,
        inbox,
        auth_required=True,
        auth_require_tls=False,
        authenticator=authenticate,
        auth_exclude_mechanism=others,
    ):
        settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = user, password
        step = send(email_step())

    assert (step.status, step.error) == (Step.Status.COMPLETED, "")
    assert [envelope.rcpt_tos for envelope in inbox.envelopes] == [["ann@example.com"]]


class _RefusesItsName(Inbox):
    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        return ["550 5.7.1 Not taking mail from this host"]

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        return "550 5.7.1 Not taking mail from this host"


class _RefusesService(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"554 5.7.1 No SMTP service for this address\r\n")
        with contextlib.suppress(OSError):
            self.request.recv(1024)  # its QUIT


@pytest.mark.parametrize("at", ["greeting", "HELO"])
def test_a_server_refusing_norms_connection_is_tried_again_after_a_backoff(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any, at: str
) -> None:
    """A 554 greeting (an address the server does not serve) or a HELO refused (a name it
    does not take) is before any email: the server's or norm's configuration, not the
    email's. Failed for good, as a 5xx to the email, every email sent meanwhile was lost."""
    if at == "HELO":
        with smtp_serving(settings, _RefusesItsName()):
            step = send(email_step())
        error = "SMTP 550: 5.7.1 Not taking mail from this host"
    else:
        with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _RefusesService) as server:
            serve_in_background(server)
            smtp_unreachable(settings)
            settings.EMAIL_PORT = server.server_address[1]
            step = send(email_step())
            server.shutdown()
        error = "SMTP 554: 5.7.1 No SMTP service for this address"

    assert (step.status, step.error) == (Step.Status.SCHEDULED, error)
    assert Message.objects.values_list("status", "error").get() == (Message.Status.SENDING, error)


def test_a_from_address_django_refuses_fails_the_step_at_once_unsent(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """An address no retry can make valid: failed for good, not retried
    NORM_SEND_MAX_ATTEMPTS times over the backoff."""
    step = send(email_step(outputs={"subject": "Hi", "body": "x", "from": {"email": "shop@"}}))

    assert smtp_server.envelopes == [] and enqueued.of(pipeline.MESSAGE) == []
    assert (step.status, step.attempts) == (Step.Status.FAILED, 1)
    assert step.error == 'the message cannot be sent: Invalid address "shop@"'
    assert Message.objects.values_list("status", "attempts").get() == (Message.Status.FAILED, 1)


@pytest.mark.parametrize("reply_to", ["ann@", "support@shop.example, ann@", "not an address"])
def test_a_reply_to_address_django_refuses_fails_the_step_at_once_unsent(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox, reply_to: str
) -> None:
    """Django checks From and To as it sends, not Reply-To: "ann@" went out as the
    email's Reply-To, and the subscriber's reply bounced."""
    step = send(email_step(outputs={"subject": "Hi", "body": "x", "replyTo": reply_to}))

    assert smtp_server.envelopes == [] and enqueued.of(pipeline.MESSAGE) == []
    assert (step.status, step.attempts) == (Step.Status.FAILED, 1)
    assert step.error == f"the step's output has a replyTo that is no email address ({reply_to!r})"


def test_a_reply_to_of_several_addresses_is_sent_with_each(
    send: Callable[[Step], Step], smtp_server: Inbox
) -> None:
    reply_to = 'support@shop.example, "Acme, Inc." <sales@shop.example>'
    step = send(email_step(outputs={"subject": "Hi", "body": "x", "replyTo": reply_to}))

    assert step.status == Step.Status.COMPLETED
    (sent,) = (message_from_bytes(e.content, policy=policy.default) for e in smtp_server.envelopes)
    assert [a.addr_spec for a in sent["Reply-To"].addresses] == [
        "support@shop.example",
        "sales@shop.example",
    ]


@pytest.mark.parametrize(
    ("recipient", "reply_to"),
    [
        ("ann@example.com", "support@shop.example, rené@shop.example"),
        ("ann@example.com", "rené@shop.example, support@shop.example"),
        ("josé@example.com", 'support@shop.example, "Acme, Inc." <rené@shop.example>'),
    ],
)
def test_each_address_of_a_reply_to_list_is_sent_as_written_with_smtputf8(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any, recipient: str, reply_to: str
) -> None:
    """A list was taken for one address: one beyond ASCII after the first went out as an
    encoded word (=?utf-8?b?cmVuw6k=?=@shop.example), a mailbox the replies bounced
    from, and a list with one first, or to a recipient beyond ASCII, failed for good
    ("Invalid address")."""
    inbox = Inbox()
    outputs = {"subject": "Hi", "body": "x", "replyTo": reply_to}
    step = email_step(notification__subscriber__email=recipient, outputs=outputs)
    with smtp_serving(settings, inbox, enable_SMTPUTF8=True):
        step = send(step)

    assert (step.status, step.error) == (Step.Status.COMPLETED, "")
    [envelope] = inbox.envelopes
    assert "SMTPUTF8" in envelope.mail_options
    head = envelope.original_content.split(b"\r\n\r\n")[0].decode()
    [header] = [line for line in head.split("\r\n") if line.startswith("Reply-To:")]
    assert "=?" not in header  # as written, no encoded word
    sent = message_from_string(envelope.original_content.decode(), policy=policy.SMTPUTF8)
    assert sorted(a.addr_spec for a in sent["Reply-To"].addresses) == [
        "rené@shop.example",
        "support@shop.example",
    ]


def test_a_provider_that_breaks_fails_the_step_at_once_rather_than_retrying_it(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    ended: Callable[[Step], Notification],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in a provider (any error but SendError) would fail the same way on every
    try: the step fails now, with the error named, instead of being sent again."""

    def broken(self: providers.Provider, message: Message) -> str:
        raise KeyError("subject")

    monkeypatch.setattr(providers.DjangoEmailProvider, "send", broken)
    step = send(email_step())

    assert (step.status, step.attempts) == (Step.Status.FAILED, 1)
    assert step.error == "the provider failed: KeyError('subject')"
    assert enqueued.of(pipeline.MESSAGE) == []
    message = Message.objects.get()
    assert (message.status, message.attempts) == (Message.Status.FAILED, 1)
    assert ended(step).error_code == "SendFailed"


def test_a_provider_bug_every_email_trips_on_is_one_traceback_a_minute_not_one_each(
    send: Callable[[Step], Step], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Failed for good, each email of a broadcast logged the provider's traceback: a
    hundred thousand for one bug, each message's error already naming it. One a minute
    (see test_logs), the messages after it counted in the next."""

    def broken(self: providers.Provider, message: Message) -> str:
        raise KeyError("subject")

    monkeypatch.setattr(providers.DjangoEmailProvider, "send", broken)
    steps = [send(email_step()) for _ in range(3)]

    assert {s.error for s in steps} == {"the provider failed: KeyError('subject')"}
    [record] = [r for r in caplog.records if r.name == "messaging.services"]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    first = Message.objects.get(step=steps[0])
    assert record.getMessage() == (
        f"provider django-email on message {first.pk} failed (0 more such since the last such line)"
    )


def test_a_provider_named_for_another_channel_sends_nothing_and_skips_the_step(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    """NORM_PROVIDERS mapping sms to the email provider is a mistake in the setting: an
    sms step's text is not sent as an email, its step skipped as with no provider."""
    settings.EMAIL_BACKEND = LOCMEM
    settings.NORM_PROVIDERS = {"email": "django-email", "sms": "django-email"}
    step = send(
        StepFactory(
            type="sms",
            outputs={"subject": "Hi", "body": "Your code is 1234"},
            notification__subscriber__email="ann@example.com",
        )
    )

    assert mail.outbox == [] and not Message.objects.exists()
    assert step.status == Step.Status.SKIPPED
    assert step.error == "no provider is configured for the sms channel (NORM_PROVIDERS)"


LINK = "https://shop.example/orders/track?token=" + "a1b2c3d4e5" * 120  # 1,240 characters


@pytest.mark.parametrize("smtputf8", [False, True])
@pytest.mark.parametrize("field", ["subject", "from name"])
def test_a_header_with_a_word_longer_than_a_line_is_sent_on_lines_smtp_carries(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any, smtputf8: bool, field: str
) -> None:
    """SMTP carries lines of 998 characters at most (RFC 5321, 4.5.3.1.6): a subject or
    a from name with a longer word (a link) went out on one line, which a server refuses
    or cuts (Postfix breaks a line at 2,048), the rest of the header read as the body.
    Sent as encoded words, the header's lines fit and a mail client reads it whole."""
    outputs: dict[str, Any] = {"subject": f"Track it: {LINK}", "body": "x"}
    if field == "from name":
        outputs = {"subject": "Hi", "from": {"name": f"Orders {LINK}"}, "body": "x"}
    recipient = "josé@example.com" if smtputf8 else "ann@example.com"
    inbox = Inbox()
    step = email_step(notification__subscriber__email=recipient, outputs=outputs)
    with smtp_serving(settings, inbox, enable_SMTPUTF8=smtputf8):
        assert (send(step).status, step.error) == (Step.Status.COMPLETED, "")

    [envelope] = inbox.envelopes
    raw = envelope.original_content
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    sent = message_from_bytes(raw, policy=policy.SMTPUTF8)
    if field == "subject":
        assert sent["Subject"] == f"Track it: {LINK}"
    else:
        # Decoded as RFC 2047 has it (6.2): Python's parser of addresses keeps the space
        # between two encoded words of a name, which mail clients drop.
        name, address = parseaddr(str(message_from_bytes(raw)["From"]))
        assert (str(make_header(decode_header(name))), address) == (
            f"Orders {LINK}",
            "norm@localhost",
        )


@pytest.mark.parametrize("smtputf8", [False, True])
@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("from", '"' * 600),
        ("from", "C:\\" * 300),
        ("replyTo", '"' * 600),
    ],
    ids=["from name of quotes", "from name of backslashes", "reply-to name of quotes"],
)
def test_a_name_longer_than_a_line_once_quoted_is_sent_on_lines_smtp_carries(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    settings: Any,
    smtputf8: bool,
    field: str,
    name: str,
) -> None:
    """A name's word was measured as the bridge wrote it, 600 characters, but goes out
    quoted, each quote and backslash doubled: 1,200 on one line, which the server
    refused (500, the email failed for good) or cut. Sent as encoded words, it fits."""
    outputs: dict[str, Any] = {"subject": "Hi", "body": "x", "from": {"name": name}}
    if field == "replyTo":
        outputs = {"subject": "Hi", "body": "x", "replyTo": f'"{quote(name)}" <s@shop.example>'}
    recipient = "josé@example.com" if smtputf8 else "ann@example.com"
    inbox = Inbox()
    step = email_step(notification__subscriber__email=recipient, outputs=outputs)
    with smtp_serving(settings, inbox, enable_SMTPUTF8=smtputf8):
        assert (send(step).status, step.error) == (Step.Status.COMPLETED, "")

    [envelope] = inbox.envelopes
    raw = envelope.original_content
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    header = "From" if field == "from" else "Reply-To"
    sent_name, address = parseaddr(str(message_from_bytes(raw)[header]))
    assert str(make_header(decode_header(sent_name))) == name
    assert address == ("norm@localhost" if field == "from" else "s@shop.example")


@pytest.mark.parametrize("smtputf8", [False, True])
@pytest.mark.parametrize(
    "separator",
    ["", "\x0b", "\x0c", "\x1c", "\x85", "\u2028"],
    ids=["one line", "vertical tab", "form feed", "file separator", "NEL", "U+2028"],
)
def test_a_body_line_longer_than_smtp_carries_is_encoded_onto_shorter_ones(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any, smtputf8: bool, separator: str
) -> None:
    """A body line over 998 octets goes out quoted-printable, on lines SMTP carries. Django
    measured the lines as Python splits them (str.splitlines), at a vertical tab, a form
    feed or U+2028 too, which SMTP carries as text: a line of 700 characters, one of
    those, 700 more, went out as it was, on one line of 1,400, which the server refused
    (500, the email failed for good) or cut."""
    # Each part of it, split as Python splits it, under 998 octets: 700, then 800.
    text = f"{'a' * 700}{separator}{'é' * 400}" if separator else "a" * 5000
    line = f"<p>{text}</p>"
    recipient = "josé@example.com" if smtputf8 else "ann@example.com"
    inbox = Inbox()
    step = email_step(
        notification__subscriber__email=recipient, outputs={"subject": "Hi", "body": line}
    )
    with smtp_serving(settings, inbox, enable_SMTPUTF8=smtputf8):
        assert (send(step).status, step.error) == (Step.Status.COMPLETED, "")

    [envelope] = inbox.envelopes
    raw = envelope.original_content
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    sent = message_from_bytes(raw, policy=policy.default)
    assert sent.get_body(("html",)).get_content() == line
    plain = sent.get_body(("plain",)).get_content()
    assert plain.startswith("a" * 700) and plain.endswith(text[-400:])


def test_a_servers_long_reply_is_stored_bounded_on_the_message_step_and_notification(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    ended: Callable[[Step], Notification],
    smtp_server: Inbox,
) -> None:
    """The reason is shown in every page of the API and the admin that lists the row: a
    server's reply of any length (smtplib reads as many lines as it sends) is cut."""
    lines = [f"550-5.7.1 policy line {n}: " + "x" * 400 for n in range(250)]
    smtp_server.replies = [_answered_at_once("\r\n".join([*lines, "550 5.7.1 refused"]))]

    step = send(email_step())

    message = Message.objects.get(step=step)
    assert message.status == Message.Status.FAILED and step.status == Step.Status.FAILED
    notification = ended(step)
    for error in (message.error, step.error, notification.error):
        assert error.startswith(("SMTP 550: 5.7.1 policy line 0: ", "step '"))
        assert "SMTP 550: 5.7.1 policy line 0: " in error
        assert len(error) <= 1200 and error.endswith("…")


def test_an_smtp_server_down_is_a_warning_naming_the_message_once_a_minute(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retried, so no traceback; but said: the worker's log had no line of it, at any
    level, while every email waited. Not once per email: a broadcast's would each say it."""
    smtp_unreachable(settings)

    steps = [send(email_step()) for _ in range(3)]

    assert {s.status for s in steps} == {Step.Status.SCHEDULED}  # retried later
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING and record.exc_info is None
    first, message = steps[0], Message.objects.get(step=steps[0])
    line = record.getMessage()
    assert f"message {message.pk} (step {first.pk}, notification {first.notification_id}, " in line
    assert f"client {first.notification.client_id})" in line
    assert "SMTP connection failed: " in line and "retried in " in line


def test_an_email_failed_for_good_is_said_though_one_retried_was_within_the_minute(
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Held back once a minute per provider and per outcome: an email failed for good
    (an address no server takes) had no line of its own while its provider's emails were
    being retried, behind the other's "retried in"."""
    smtp_unreachable(settings)

    send(email_step())
    send(email_step(notification__subscriber__email="ann@example.com\x0bevil"))

    lines = [r.getMessage() for r in caplog.records if r.name == "messaging.services"]
    assert len(lines) == 2, lines
    assert "retried in " in lines[0] and "for good" in lines[1]


@pytest.mark.parametrize(
    ("sender", "sent_from"),
    [
        ("josé@acme.example", "josé@acme.example"),  # with SMTPUTF8
        ("orders@straße.example", "orders@xn--strae-oqa.example"),
    ],
)
def test_a_from_name_with_a_word_longer_than_a_line_goes_with_any_address(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any, sender: str, sent_from: str
) -> None:
    """A from name sent as encoded words (on_lines) beside an address beyond ASCII had
    its From parsed as addresses, the words decoded, and folded by Python under SMTPUTF8,
    which cut the link into pieces and left the name unquoted: read back, a group named
    "Orders https:" and a name of the link's pieces. Beside a domain beyond ASCII, the
    From written anew with the domain's ASCII form quoted the encoded words, which no
    mail client may decode there (RFC 2047, 5): the name read "=?utf-8?q?Orders_…"."""
    outputs = {"subject": "Hi", "from": {"name": f"Orders {LINK}", "email": sender}, "body": "x"}
    inbox = Inbox()
    step = email_step(outputs=outputs)
    with smtp_serving(settings, inbox, enable_SMTPUTF8=True):
        assert (send(step).status, step.error) == (Step.Status.COMPLETED, "")

    [envelope] = inbox.envelopes
    raw = envelope.original_content
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    name, address = parseaddr(str(message_from_bytes(raw, policy=policy.SMTPUTF8)["From"]))
    assert address == sent_from
    name, _ = parseaddr(str(message_from_bytes(raw)["From"]))
    assert str(make_header(decode_header(name))) == f"Orders {LINK}"


def test_a_backend_that_sends_the_fields_gets_the_subject_and_names_as_written(
    send: Callable[[Step], Step], enqueued: Enqueued, settings: Any
) -> None:
    """The encoded words that fit a long word onto SMTP's lines are the MIME message's
    only: a backend sending the subject and the from as fields of an HTTP API (anymail's)
    read the encoded words as the subject's text."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    outputs = {
        "subject": f"Track it: {LINK}",
        "from": {"name": f"Orders {LINK}"},
        "replyTo": f'"Help {LINK}" <help@example.com>',
        "body": "x",
    }
    assert send(email_step(outputs=outputs)).status == Step.Status.COMPLETED

    [email] = mail.outbox
    assert email.subject == f"Track it: {LINK}"
    assert parseaddr(email.from_email)[0] == f"Orders {LINK}"
    raw = email.message().as_bytes(linesep="\r\n")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    sent = message_from_bytes(raw)
    assert str(make_header(decode_header(sent["Subject"]))) == f"Track it: {LINK}"
    for header, name in (("From", f"Orders {LINK}"), ("Reply-To", f"Help {LINK}")):
        assert str(make_header(decode_header(parseaddr(sent[header])[0]))) == name


def test_a_reply_to_list_with_a_long_name_keeps_each_address_and_its_name(
    send: Callable[[Step], Step], enqueued: Enqueued, smtp_server: Inbox
) -> None:
    """A replyTo listing a name too long for a line (written as encoded words) beside a
    name beyond ASCII had that one written anew as raw UTF-8: the generator then encoded
    the whole header as encoded words, addresses and all, and the reply went to no one."""
    outputs = {
        "subject": "Hi",
        "replyTo": f'Jörg <jorg@example.com>, "Help {LINK}" <help@example.com>',
        "body": "x",
    }
    assert send(email_step(outputs=outputs)).status == Step.Status.COMPLETED

    [envelope] = smtp_server.envelopes
    sent = message_from_bytes(envelope.original_content)
    assert [
        (str(make_header(decode_header(name))), address)
        for name, address in getaddresses([str(sent["Reply-To"])])
    ] == [("Jörg", "jorg@example.com"), (f"Help {LINK}", "help@example.com")]


def test_addresses_at_a_domain_literal_are_sent_on_every_python(
    send: Callable[[Step], Step], smtp_server: Inbox
) -> None:
    """Python's fix for CVE-2023-27043 (3.13, 3.12.6, 3.11.10 on) reads every address at a
    domain literal (hello@[192.0.2.1]) as none: there a client's email_from or a replyTo
    at one failed the step for good, where an older Python, and Django, sent it."""
    acme = ClientFactory(email_from="Acme <hello@[192.0.2.1]>")
    reply_to = "help@[192.0.2.2], Sales <sales@[IPv6:2001:db8::1]>"
    outputs = {"subject": "Hi", "body": "x", "from": {"name": "Billing"}, "replyTo": reply_to}
    step = send(email_step(notification__trigger_event__client=acme, outputs=outputs))

    assert (step.status, step.error) == (Step.Status.COMPLETED, "")
    [envelope] = smtp_server.envelopes
    assert envelope.mail_from == "hello@[192.0.2.1]"  # a from.name alone goes with it
    sent = message_from_bytes(envelope.content, policy=policy.default)
    assert [(a.display_name, a.addr_spec) for a in sent["From"].addresses] == [
        ("Billing", "hello@[192.0.2.1]")
    ]
    assert [a.addr_spec for a in sent["Reply-To"].addresses] == [
        "help@[192.0.2.2]",
        "sales@[IPv6:2001:db8::1]",
    ]
