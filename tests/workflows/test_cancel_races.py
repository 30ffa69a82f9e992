"""A trigger's cancel racing its fan-out and sends, on real connections: once the cancel
has answered, nothing of the trigger goes out that had not started before it."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.core import mail
from django.db import connection

from messaging import services as messaging_services
from notify import services as notify_services
from notify.models import TriggerEvent
from subscribers.models import Subscriber
from tests.conftest import (
    Enqueued,
    InThread,
    another_waits_for_a_lock,
    held,
    lock_waiters,
    while_held,
)
from tests.factories import (
    BridgeSyncFactory,
    NotificationFactory,
    StepFactory,
    SubscriberFactory,
    TriggerEventFactory,
    api_for,
    client_with_key,
)
from workflows import bridge
from workflows.models import Notification, Step
from workflows.services import echo, fanout, operations

pytestmark = pytest.mark.django_db(transaction=True)

MAIL = {
    "done": False,
    "stepId": "mail",
    "type": "email",
    "outputs": {"subject": "Hi", "body": "Yo"},
}


def test_a_notification_created_as_its_trigger_is_canceled_sends_nothing_after_the_cancel(
    monkeypatch: pytest.MonkeyPatch, settings: Any, enqueued: Enqueued
) -> None:
    """A subscriber command read the event before the cancel and creates its
    notification while the cancel's transaction is open (so the cancel does not list
    it); the notification's echo reads the event then too, and the bridge answers once
    the cancel has committed. The echo found the trigger not canceled (the cancel had
    not committed), recorded the step after the cancel had answered, and the email went
    out: for a broadcast canceled mid fan-out, the cancel's transaction is seconds long."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    event = TriggerEventFactory(status=TriggerEvent.Status.PROCESSING)
    BridgeSyncFactory(client=event.client, flavour="norm")
    ann = SubscriberFactory(client=event.client, email="ann@example.com")
    as_the_command_read_it = TriggerEvent.objects.get(pk=event.pk)

    held, release = threading.Event(), threading.Event()
    real_cancel = notify_services.trigger_notifications_cancel

    def cancel_then_hold(**kwargs: Any) -> tuple[int, bool]:
        canceled = real_cancel(**kwargs)
        held.set()
        release.wait(10)  # the cancel's transaction stays open meanwhile (if it has one)
        return canceled

    monkeypatch.setattr(notify_services, "trigger_notifications_cancel", cancel_then_hold)
    answered: dict[str, Any] = {}

    def cancel() -> None:
        try:
            answered["canceled"] = notify_services.trigger_event_cancel(
                client=event.client, transaction_id=event.transaction_id
            ).stopped
        finally:
            connection.close()

    canceling = threading.Thread(target=cancel)
    canceling.start()
    try:
        assert held.wait(10)
        notification = fanout.notification_create(
            trigger_event=as_the_command_read_it, subscriber=ann
        )
        assert notification is not None

        def answer_once_the_cancel_answered(*args: Any, **kwargs: Any) -> dict[str, Any]:
            release.set()
            canceling.join(10)
            return MAIL

        monkeypatch.setattr(bridge, "execute", answer_once_the_cancel_answered)
        echo.echo_run(notification_id=str(notification.pk))
    finally:
        release.set()
        canceling.join(10)
    assert answered == {"canceled": True}

    for step in Step.objects.filter(notification=notification):
        messaging_services.message_send(step_id=step.pk)

    assert mail.outbox == []
    notification.refresh_from_db()
    assert notification.status == Notification.Status.CANCELED


def test_a_retry_racing_a_cancel_leaves_nothing_to_send_once_the_cancel_answered(
    settings: Any, enqueued: Enqueued
) -> None:
    """An admin retry checked the trigger was not canceled, then reopened the failed
    notification. A cancel committing in between found the notification failed (final,
    so not its to cancel), and the retry then reopened it: the email went out after the
    cancel had answered. Here a third connection holds the notification's row, so the
    retry has checked and waits to reopen while the cancel runs."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    notification = StepFactory(
        notification__status=Notification.Status.FAILED, status=Step.Status.FAILED
    ).notification
    step = notification.steps.get()
    event = notification.trigger_event

    locked, unlock = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        from django.db import transaction

        try:
            with transaction.atomic():
                Notification.objects.select_for_update().get(pk=notification.pk)
                locked.set()
                unlock.wait(10)
        finally:
            connection.close()

    answered: dict[str, Any] = {}

    def run(name: str, work: Any) -> threading.Thread:
        def target() -> None:
            try:
                answered[name] = work()
            finally:
                connection.close()

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    assert locked.wait(10)
    retrying = run("retried", lambda: operations.notification_retry(notification=notification))
    # The cancel starts once the retry waits for the row (or has ended): a fixed 0.5 s, on
    # a loaded machine, could start it before the retry had checked the trigger, and
    # the cancel came first, the race not run.
    lock_waiters(1, retrying)
    canceling = run(
        "canceled",
        lambda: (
            notify_services.trigger_event_cancel(
                client=event.client, transaction_id=event.transaction_id
            ).stopped
        ),
    )
    lock_waiters(2, canceling)  # and runs until it waits too (or has ended)
    unlock.set()
    for thread in (holder, retrying, canceling):
        thread.join(10)
        assert not thread.is_alive()

    assert answered["canceled"] is True
    notification.refresh_from_db()
    assert notification.status in Notification.FINAL
    messaging_services.message_send(step_id=step.pk)  # what the retry may have enqueued
    assert mail.outbox == []


def test_a_large_triggers_cancel_commits_each_chunk_before_it_reaches_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broadcast's cancel was one transaction: 200,000 notifications stayed locked
    for the 15-20 s it took (their echoes and sends waiting on them), none of them seen
    canceled before the last was. Now CANCEL_CHUNK go to a transaction: with the last
    notification's row held by another connection, the chunks before it are canceled,
    with their steps, while the cancel waits for that row."""
    monkeypatch.setattr(operations, "CANCEL_CHUNK", 2)
    event = TriggerEventFactory(status=TriggerEvent.Status.PROCESSED)
    # In subscriber order, the order of the chunks: the last one is a chunk of its own.
    steps = [StepFactory(notification__trigger_event=event) for _ in range(5)]
    last = steps[-1].notification_id

    locked, unlock = threading.Event(), threading.Event()

    def hold_the_last() -> None:
        from django.db import transaction

        try:
            with transaction.atomic():
                Notification.objects.select_for_update().get(pk=last)
                locked.set()
                unlock.wait(10)
        finally:
            connection.close()

    answered: dict[str, Any] = {}

    def cancel() -> None:
        try:
            answered["canceled"] = operations.notifications_cancel(trigger_event_id=event.pk)
        finally:
            connection.close()

    def seen() -> dict[Any, tuple[str, str]]:
        return {
            step.notification_id: (step.notification.status, step.status)
            for step in Step.objects.select_related("notification")
        }

    canceled = (Notification.Status.CANCELED, Step.Status.CANCELED)
    holder, canceling = threading.Thread(target=hold_the_last), threading.Thread(target=cancel)
    holder.start()
    try:
        assert locked.wait(10)
        canceling.start()
        another_waits_for_a_lock()  # the cancel, at the last chunk
        assert seen() == {
            step.notification_id: canceled
            if step.notification_id != last
            else (Notification.Status.RUNNING, Step.Status.SCHEDULED)
            for step in steps
        }
    finally:
        unlock.set()
        holder.join(10)
        if canceling.ident is not None:
            canceling.join(10)
    assert not holder.is_alive() and not canceling.is_alive()
    assert answered == {"canceled": 5}
    assert seen() == {step.notification_id: canceled for step in steps}


def test_a_subscriber_deleted_while_the_admin_cancels_its_notifications_is_deleted(
    enqueued: Enqueued,
) -> None:
    """The admin's cancel of several notifications (and a trigger's, a chunk at a time)
    locked them in the order its UPDATE read them, by the table's order over a large
    one, and a subscriber's delete in id order: the cancel held a later notification of
    the subscriber and waited for an earlier one the delete held, while the delete
    waited for the later one. PostgreSQL ended the delete (a 503, the subscriber still
    there) or the cancel (a 500 in the admin)."""
    client, key = client_with_key()
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    first, second = sorted(
        (NotificationFactory(trigger_event__client=client, subscriber=ann) for _ in range(2)),
        key=lambda n: n.pk,
    )
    other = NotificationFactory(trigger_event__client=client)
    # Written last, `first` is the table's last row: the cancel reads `second`, `other`
    # (which a send holds), then `first`.
    for notification in (second, other, first):
        Notification.objects.filter(pk=notification.pk).update(status=Notification.Status.RUNNING)
    release = threading.Event()
    holder = held(Notification.objects.filter(pk=other.pk), release)

    def admin_cancel() -> int:
        with connection.cursor() as cursor:  # the plan of a chunk in a large table
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("SET enable_indexscan = off")
        return operations.notifications_cancel(notification_ids=[first.pk, second.pk, other.pk])

    cancel = InThread(admin_cancel)  # holds `second`, waits for `other`
    lock_waiters(1, cancel)
    delete = InThread(lambda: api_for(key).delete("/v2/subscribers/ann"))
    lock_waiters(2, cancel, delete)  # the delete holds `first`, waits for `second`
    release.set()  # the cancel goes on to `first`
    holder.join()
    response = delete.join()
    cancel.join()

    assert response.status_code == 200, response.content
    assert not Subscriber.objects.filter(pk=ann.pk).exists()
    assert Notification.objects.get(pk=other.pk).status == Notification.Status.CANCELED


def test_two_cancels_of_one_trigger_at_once_cancel_it_once() -> None:
    """Two app servers cancel the same trigger: the second's UPDATE of the trigger waits
    for the first's, then finds it canceled. It answers that it stopped nothing (200,
    false), and the trigger keeps the time of the cancel that did."""
    client, key = client_with_key()
    event = TriggerEventFactory(client=client, status=TriggerEvent.Status.PROCESSED)
    step = StepFactory(
        notification=NotificationFactory(trigger_event=event, status=Notification.Status.RUNNING),
        type="delay",
    )

    def cancel() -> tuple[bool, Any]:
        stopped = notify_services.trigger_event_cancel(
            client=client, transaction_id=event.transaction_id
        ).stopped
        return stopped, TriggerEvent.objects.get(pk=event.pk).canceled_at

    (stopped, canceled_at), response = while_held(
        cancel, lambda: api_for(key).delete(f"/v1/events/trigger/{event.transaction_id}")
    )

    assert stopped is True
    assert response.status_code == 200, response.content
    assert response.json() == {"data": False}
    event.refresh_from_db()
    assert event.canceled_at == canceled_at
    step.refresh_from_db()
    assert step.status == Step.Status.CANCELED
    assert step.notification.status == Notification.Status.CANCELED


def test_an_echo_recording_a_step_while_a_cancel_holds_its_notification_records_none(
    monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """The echo read its notification before the admin's cancel of it, which commits
    while the echo's record waits for the row: the record's own UPDATE finds the
    notification canceled once the cancel commits. Checked by a read before it, the
    echo found it pending (the cancel not committed), made it running again over the
    cancel, and its step went out."""
    notification = NotificationFactory(status=Notification.Status.PENDING)
    monkeypatch.setattr(bridge, "execute", lambda *a, **kw: MAIL)

    canceled, _ = while_held(
        lambda: operations.notifications_cancel(notification_ids=[notification.pk]),
        lambda: echo.echo_run(notification_id=str(notification.pk)),
    )

    assert canceled == 1
    notification.refresh_from_db()
    assert notification.status == Notification.Status.CANCELED
    assert not Step.objects.filter(notification=notification).exists()
    assert enqueued.calls == []
