"""Deletes, deactivations, revocations and moved bridges while notifications are in
flight: each notification still ends with a reason, and nothing goes where it should not."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.utils import timezone

from config import pipeline
from messaging.models import Message
from notify.models import Client, TriggerEvent
from subscribers import tasks as subscriber_tasks
from subscribers.models import Subscriber
from tests.conftest import Enqueued
from tests.e2e.harness import smtp_start
from tests.factories import (
    BridgeSyncFactory,
    BridgeWorkflowFactory,
    NotificationFactory,
    api_for,
)
from tests.workflows.conftest import INBOX, WAIT, Capture, FakeBridge, delay_over, run_task
from workflows import tasks as workflow_tasks
from workflows.models import Notification, Step
from workflows.services import bookkeeping, echo, operations

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("change", ["bridge_url", "allowed_bridge_urls"])
def test_a_bridge_url_the_client_no_longer_has_is_never_called_again(
    change: str,
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    enqueued: Enqueued,
    fake_bridge: FakeBridge,
) -> None:
    """The issue: "only the client's registered ones are ever called". A notification
    keeps the URL it was triggered with; once the client's bridge moved (or the URL left
    its allowed list), the echo called it anyway at every step after."""
    client, _ = keyed
    old = "http://old-bridge.test/api"
    if change == "bridge_url":
        client.bridge_url = old
    else:
        client.allowed_bridge_urls = [old]
    client.save()
    BridgeWorkflowFactory(client=client, bridge_url=old, workflow_id="welcome")
    BridgeSyncFactory(client=client, bridge_url=old, flavour="norm")
    trigger(["ann"], bridgeUrl=old)
    drain()
    assert [c["url"] for c in fake_bridge.calls] == [old]  # the delay is waiting

    if change == "bridge_url":
        client.bridge_url = "http://new-bridge.test/api"
    else:
        client.allowed_bridge_urls = ["http://another.test/api"]
    client.save()
    delay_over(enqueued)
    drain()

    assert [c["url"] for c in fake_bridge.calls] == [old]
    notification = Notification.objects.get()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "BridgeNotAllowed"
    assert old in notification.error
    assert notification.steps.get(step_id="wait").status == Step.Status.COMPLETED


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        # Its basic-auth password being rotated, the old URL left the client's.
        (
            "https://ops-user:old-pass@bridge.test/api/novu",
            "https://ops-user:new-pass@bridge.test/api/novu",
            "https://ops-user:***@bridge.test/api/novu",
        ),
        # The same with a token in the URL's query.
        (
            "https://bridge.test/api/novu?token=old-tok",
            "https://bridge.test/api/novu?token=new-tok",
            "https://bridge.test/api/novu?token=***",
        ),
    ],
    ids=["password", "query token"],
)
def test_a_bridge_no_longer_allowed_is_named_without_its_secret(
    old: str, new: str, named: str
) -> None:
    """The error, shown in the admin and the activity feed, held the old URL's secret
    in full."""
    notification = NotificationFactory(
        trigger_event__resource=old,
        trigger_event__client__bridge_url=new,
        status=Notification.Status.RUNNING,
    )

    echo.echo_run(notification_id=str(notification.pk))

    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("failed", "BridgeNotAllowed")
    assert notification.error == f"the bridge {named} is no longer one of the client's bridge URLs"


def deactivate(client: Client) -> None:
    Client.objects.filter(pk=client.pk).update(is_active=False)


def test_a_client_deactivated_during_a_delay_sends_nothing_more(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    enqueued: Enqueued,
    fake_bridge: FakeBridge,
) -> None:
    """The API refused the client at once, but its notifications went on: asked its
    bridge for the next step and sent it."""
    trigger(["ann"])
    drain()
    deactivate(keyed[0])
    delay_over(enqueued)
    drain()

    assert len(fake_bridge.calls) == 1
    assert not Message.objects.exists()
    notification = Notification.objects.get()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "ClientInactive"
    assert not Step.objects.filter(status__in=[Step.Status.SCHEDULED, Step.Status.PROCESSING])


def test_a_notification_whose_client_was_deactivated_before_its_echo_asks_no_bridge(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    fake_bridge: FakeBridge,
) -> None:
    trigger(["ann"])
    drain(until=pipeline.ECHO)
    deactivate(keyed[0])
    drain()

    assert fake_bridge.calls == []
    notification = Notification.objects.get()
    assert (notification.status, notification.error_code) == ("failed", "ClientInactive")


def test_a_step_recorded_before_its_client_was_deactivated_is_not_sent(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    fake_bridge: FakeBridge,
) -> None:
    fake_bridge.steps = [INBOX]
    trigger(["ann"])
    drain(until=pipeline.MESSAGE)
    assert Notification.objects.get().steps.get(step_id="inbox").status == Step.Status.SCHEDULED

    deactivate(keyed[0])
    drain()

    assert not Message.objects.exists()
    notification = Notification.objects.get()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "ClientInactive"
    assert notification.steps.get(step_id="inbox").status == Step.Status.FAILED


def test_a_trigger_of_a_client_deactivated_before_its_fan_out_reaches_no_one(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    fake_bridge: FakeBridge,
) -> None:
    trigger(["ann", "bob"])
    deactivate(keyed[0])
    drain()

    assert fake_bridge.calls == []
    assert not Notification.objects.exists()
    event = TriggerEvent.objects.get()
    assert event.status == TriggerEvent.Status.FAILED
    assert "deactivated" in event.error


def reconcile_after_the_grace(settings: Any) -> None:
    """The reconciler, a grace period after everything so far: it checks that each
    recent fan-out reached every recipient it counted."""
    settings.NORM_RECONCILE_GRACE = 60
    before = timezone.now() - timedelta(seconds=120)
    TriggerEvent.objects.update(
        created_at=before, claimed_at=before, processed_at=before, recheck_from=before
    )
    Notification.objects.update(created_at=before)
    workflow_tasks.reconcile()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_subscriber_deleted_after_a_trigger_is_not_created_and_notified_again(
    version: str,
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    fake_bridge: FakeBridge,
    settings: Any,
) -> None:
    """The subscriber's notification went with it, so its event looked short of a
    recipient, as if the command had been lost with the broker: the reconciler fanned it
    out again, which created the deleted subscriber anew (from the trigger's inline
    attributes) and ran the workflow for it a second time."""
    fake_bridge.steps = [INBOX]
    trigger([{"subscriberId": "ann", "email": "ann@example.com"}, "bob"])
    drain()
    assert sorted(c["subscriber"]["subscriberId"] for c in fake_bridge.calls) == [
        "ann",
        "ann",
        "bob",
        "bob",
    ]

    response = api_for(keyed[1]).delete(f"/{version}/subscribers/ann")
    assert response.status_code == 200
    reconcile_after_the_grace(settings)
    drain()

    assert not Subscriber.objects.filter(subscriber_id="ann").exists()
    assert [c["subscriber"]["subscriberId"] for c in fake_bridge.calls].count("ann") == 2
    event = TriggerEvent.objects.get()
    assert (event.status, event.recipients, event.refanned) == ("processed", 1, 0)
    assert Notification.objects.get().status == Notification.Status.COMPLETED


MAIL = {"stepId": "mail", "type": "email", "outputs": {"subject": "Hi", "body": "Hello"}}


def run_next(enqueued: Enqueued, capture: Capture) -> None:
    """Run the next task the pipeline enqueued, only that one."""
    task, args, _ = enqueued.calls.pop(0)
    run_task(task, args, capture)


class InterruptedBackend(BaseEmailBackend):
    """An SMTP server that answers 451 (try later), after `meanwhile` has run: what
    happens elsewhere while the worker waits for the answer."""

    meanwhile: Callable[[], None] = staticmethod(lambda: None)

    def send_messages(self, email_messages: Any) -> int:
        InterruptedBackend.meanwhile()
        raise smtplib.SMTPResponseException(451, b"4.3.0 Try again later")


def test_a_duplicate_echo_while_a_step_is_sending_leaves_it_to_the_message_worker(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    enqueued: Enqueued,
    fake_bridge: FakeBridge,
    django_capture_on_commit_callbacks: Capture,
    settings: Any,
) -> None:
    """The client is deactivated while its email is being sent, and a second echo of the
    notification runs (the reconciler's, say): it failed the notification at once, so the
    send's 451 canceled the step, and after the client was reactivated an admin retry
    never ended (the bridge named the canceled step again, which could not be recorded
    twice; the reconciler asked the bridge again every minute)."""
    fake_bridge.steps = [MAIL]
    trigger([{"subscriberId": "ann", "email": "ann@example.com"}])
    drain(until=pipeline.MESSAGE)
    notification = Notification.objects.get()

    def deactivated_and_echoed() -> None:
        deactivate(keyed[0])
        with django_capture_on_commit_callbacks(execute=True):
            workflow_tasks.echo_run.apply(args=[str(notification.pk)], throw=True)

    settings.EMAIL_BACKEND = f"{__name__}.InterruptedBackend"
    InterruptedBackend.meanwhile = staticmethod(deactivated_and_echoed)
    run_next(enqueued, django_capture_on_commit_callbacks)

    notification.refresh_from_db()
    step = notification.steps.get()
    assert notification.status == Notification.Status.RUNNING
    assert step.status == Step.Status.SCHEDULED and "451" in step.error
    # The retry finds the client deactivated: the message worker fails the step.
    InterruptedBackend.meanwhile = staticmethod(lambda: None)
    Step.objects.update(due_at=timezone.now())
    run_next(enqueued, django_capture_on_commit_callbacks)
    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("failed", "ClientInactive")

    Client.objects.filter(pk=keyed[0].pk).update(is_active=True)
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    with django_capture_on_commit_callbacks(execute=True):
        assert operations.notification_retry(notification=notification)
    drain()

    notification.refresh_from_db()
    assert notification.status == Notification.Status.COMPLETED
    assert [m.to for m in mail.outbox] == [["ann@example.com"]]


def test_a_retry_runs_again_the_step_canceled_when_the_notification_failed_under_it(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    fake_bridge: FakeBridge,
    django_capture_on_commit_callbacks: Capture,
    settings: Any,
) -> None:
    """The history such an echo left behind (or one racing the echo that recorded the
    step, with a bridge error): a failed notification whose last step was canceled by a
    send that failed for now. A retry sends that step and the notification ends."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    fake_bridge.steps = [MAIL]
    trigger([{"subscriberId": "ann", "email": "ann@example.com"}])
    drain(until=pipeline.MESSAGE)
    notification = Notification.objects.get()
    step = bookkeeping.step_claim(step_id=notification.steps.get().pk, claim="task")
    assert step is not None
    echo.notification_fail(notification_id=notification.pk, code="ClientInactive", message="x")
    bookkeeping.step_retry_later(step=step, message="451 try later", backoff=1)
    assert Step.objects.get().status == Step.Status.CANCELED
    drain()

    with django_capture_on_commit_callbacks(execute=True):
        assert operations.notification_retry(notification=notification)
    drain()
    settings.NORM_RECONCILE_GRACE = 0
    workflow_tasks.reconcile()
    drain()

    notification.refresh_from_db()
    assert notification.status == Notification.Status.COMPLETED
    assert Step.objects.get().status == Step.Status.COMPLETED
    assert len(mail.outbox) == 1


def test_a_subscriber_deleted_is_not_created_again_by_a_fan_out_rerun_for_a_lost_command(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    enqueued: Enqueued,
    fake_bridge: FakeBridge,
    settings: Any,
) -> None:
    """The deleted subscriber is counted out of its trigger's recipients, but a command
    for another recipient was really lost with the broker: the reconciler ran the
    fan-out again, which sent a command to every listed recipient without a
    notification, the deleted one too, created it anew from the trigger's inline
    attributes and ran the workflow for it a second time."""
    fake_bridge.steps = [INBOX]
    trigger([{"subscriberId": "ann", "email": "ann@example.com"}, "bob"])
    drain(until=pipeline.SUBSCRIBER)
    lost = [c for c in enqueued.calls if c[1][1] == {"subscriberId": "bob"}]
    enqueued.calls.remove(lost[0])  # bob's command, lost with the broker
    drain()
    assert [c["subscriber"]["subscriberId"] for c in fake_bridge.calls] == ["ann", "ann"]

    response = api_for(keyed[1]).delete("/v2/subscribers/ann")
    assert response.status_code == 200
    reconcile_after_the_grace(settings)
    drain()

    assert not Subscriber.objects.filter(subscriber_id="ann").exists()
    assert [c["subscriber"]["subscriberId"] for c in fake_bridge.calls] == ["ann"] * 2 + ["bob"] * 2
    event = TriggerEvent.objects.get()
    assert (event.status, event.recipients, event.refanned) == ("processed", 1, 1)
    assert Notification.objects.get().subscriber.subscriber_id == "bob"


def test_a_subscriber_renamed_in_the_admin_is_not_made_anew_by_a_fan_out_rerun(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    enqueued: Enqueued,
    fake_bridge: FakeBridge,
    settings: Any,
    admin_client: Any,
) -> None:
    """ann's subscriberId is changed in the admin after the trigger reached it, and a
    command for another recipient was lost with the broker: the reconciler's rerun found
    no notification for a subscriber "ann", made ann anew from the trigger's inline
    attributes (the same address) and sent it the workflow a second time."""
    fake_bridge.steps = [INBOX]
    trigger([{"subscriberId": "ann", "email": "ann@example.com"}, "bob"])
    drain(until=pipeline.SUBSCRIBER)
    lost = [c for c in enqueued.calls if c[1][1] == {"subscriberId": "bob"}]
    enqueued.calls.remove(lost[0])  # bob's command, lost with the broker
    drain()
    ann = Subscriber.objects.get(subscriber_id="ann")
    fields = ["email", "first_name", "last_name", "phone", "avatar", "locale", "timezone"]
    form = {field: getattr(ann, field) or "" for field in fields}

    response = admin_client.post(
        f"/admin/subscribers/subscriber/{ann.pk}/change/",
        {**form, "subscriber_id": "ann-2024", "data": "{}"},
    )
    assert response.status_code == 302
    reconcile_after_the_grace(settings)
    drain()

    assert [c["subscriber"]["subscriberId"] for c in fake_bridge.calls] == ["ann"] * 2 + ["bob"] * 2
    assert sorted(Subscriber.objects.values_list("subscriber_id", flat=True)) == ["ann-2024", "bob"]
    event = TriggerEvent.objects.get()
    assert (event.status, event.recipients, event.refanned) == ("processed", 2, 1)
    assert event.forgotten == ["ann"]


def test_a_subscriber_deleted_while_its_trigger_is_still_fanned_out_is_not_created_again(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    enqueued: Enqueued,
    fake_bridge: FakeBridge,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    """A worker ran ann's command while the fan-out was still sending the others, and ann
    was deleted meanwhile: the delete counted out only events already fanned out, so the
    fan-out's count still held ann, the reconciler took the missing notification for a
    command lost with the broker, created ann anew and sent it the workflow."""
    fake_bridge.steps = [INBOX]
    capture = pipeline.send_now

    def ann_deleted_meanwhile(stage: pipeline.Stage, *args: Any, **options: Any) -> None:
        capture(stage, *args, **options)
        if stage == pipeline.SUBSCRIBER and args[1]["subscriberId"] == "bob":
            ann = [c for c in enqueued.calls if c[1][1:] == ({"subscriberId": "ann"},)]
            enqueued.calls.remove(ann[0])
            subscriber_tasks.subscriber_process.apply(args=ann[0][1], throw=True)
            assert api_for(keyed[1]).delete("/v2/subscribers/ann").status_code == 200

    monkeypatch.setattr(pipeline, "send_now", ann_deleted_meanwhile)
    trigger(["ann", "bob"])
    drain()
    reconcile_after_the_grace(settings)
    drain()

    assert not Subscriber.objects.filter(subscriber_id="ann").exists()
    assert [c["subscriber"]["subscriberId"] for c in fake_bridge.calls] == ["bob"] * 2
    event = TriggerEvent.objects.get()
    assert (event.status, event.recipients, event.forgotten) == ("processed", 1, ["ann"])


def test_an_address_changed_during_a_delay_is_the_one_the_bridge_sees_and_the_email_goes_to(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    enqueued: Enqueued,
    fake_bridge: FakeBridge,
    settings: Any,
) -> None:
    """As README says (work in flight follows the subscriber as it is now): the address
    the API gives the subscriber while its notification waits is the one the next call to
    the bridge carries and the one the email goes to, recorded on its message."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    fake_bridge.steps = [WAIT, MAIL]
    trigger([{"subscriberId": "ann", "email": "ann@example.com"}])
    drain()

    response = api_for(keyed[1]).patch(
        "/v2/subscribers/ann", {"email": "ann@new.example"}, format="json"
    )
    assert response.status_code == 200
    delay_over(enqueued)
    drain()

    assert [c["subscriber"]["email"] for c in fake_bridge.calls] == [
        "ann@example.com",
        "ann@new.example",
        "ann@new.example",
    ]
    assert [m.to for m in mail.outbox] == [["ann@new.example"]]
    assert Message.objects.get().recipient == "ann@new.example"
    assert Notification.objects.get().status == Notification.Status.COMPLETED


REMINDER = {"stepId": "reminder", "type": "email", "outputs": {"subject": "Still", "body": "Hi"}}


def _email_through(controller: Any, settings: Any) -> None:
    """norm's email through the SMTP server `controller` runs: plain, no login."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""


def test_a_retry_sends_again_every_email_the_workflow_went_on_past(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    fake_bridge: FakeBridge,
    django_capture_on_commit_callbacks: Capture,
    settings: Any,
) -> None:
    """Two emails refused for good (a mailbox not yet made), an in-app message between
    them: the notification ends failed, naming the last. An admin's retry sent that one
    alone again, and the notification ended failed once more, now naming the first,
    which only a second retry sent (after the reminder that follows it)."""
    controller, server = smtp_start()
    _email_through(controller, settings)
    server.refused.add("ann@example.com")
    fake_bridge.steps = [MAIL, INBOX, REMINDER]
    try:
        trigger([{"subscriberId": "ann", "email": "ann@example.com"}])
        drain()
        notification = Notification.objects.get()
        assert [(s.step_id, s.status) for s in notification.steps.order_by("position")] == [
            ("mail", "failed"),
            ("inbox", "completed"),
            ("reminder", "failed"),
        ]
        assert notification.error.startswith("step 'reminder': ")

        server.refused.clear()
        with django_capture_on_commit_callbacks(execute=True):
            assert operations.notification_retry(notification=notification)
        drain()
    finally:
        controller.stop()

    notification.refresh_from_db()
    assert (notification.status, notification.error) == (Notification.Status.COMPLETED, "")
    assert sorted(m.subject for m in server.messages) == ["Hi", "Still"]
    assert set(notification.steps.values_list("status", flat=True)) == {"completed"}


def test_a_retried_step_left_waiting_when_another_failed_the_notification_is_canceled(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    enqueued: Enqueued,
    fake_bridge: FakeBridge,
    django_capture_on_commit_callbacks: Capture,
    settings: Any,
) -> None:
    """The retry reopens both refused emails; the client is deactivated before they are
    sent, so the first one's task fails the notification (ClientInactive). The second,
    its task refused by the failed notification, is canceled with its message given up,
    not left scheduled with the message `sending` for good; the next retry sends both."""
    controller, server = smtp_start()
    _email_through(controller, settings)
    server.refused.add("ann@example.com")
    fake_bridge.steps = [MAIL, INBOX, REMINDER]
    try:
        trigger([{"subscriberId": "ann", "email": "ann@example.com"}])
        drain()
        notification = Notification.objects.get()
        server.refused.clear()
        with django_capture_on_commit_callbacks(execute=True):
            assert operations.notification_retry(notification=notification)
        deactivate(keyed[0])
        drain()

        notification.refresh_from_db()
        assert (notification.status, notification.error_code) == ("failed", "ClientInactive")
        steps = notification.steps.order_by("position")
        assert [s.status for s in steps] == ["failed", "completed", "canceled"]
        assert Message.objects.filter(status=Message.Status.SENDING).count() == 0

        Client.objects.filter(pk=keyed[0].pk).update(is_active=True)
        with django_capture_on_commit_callbacks(execute=True):
            assert operations.notification_retry(notification=notification)
        drain()
    finally:
        controller.stop()

    notification.refresh_from_db()
    assert notification.status == Notification.Status.COMPLETED
    assert sorted(m.subject for m in server.messages) == ["Hi", "Still"]


def test_a_subscriber_command_delivered_again_after_its_subscriber_was_deleted_creates_nothing(
    keyed: tuple[Client, str],
    trigger: Callable[..., None],
    drain: Callable[..., None],
    enqueued: Enqueued,
    fake_bridge: FakeBridge,
) -> None:
    """The broker delivers a command again once its acknowledgement was lost (acks_late:
    the worker lost the broker after the command ran, and Redis gives it out again after
    the visibility timeout). Ann was deleted meanwhile, counted out of her trigger as
    forgotten: the command ran again as a first one, made her anew and sent her the
    workflow a second time, though the fan-out's own rerun passes her by."""
    fake_bridge.steps = [INBOX]
    trigger([{"subscriberId": "ann", "email": "ann@example.com"}])
    drain(until=pipeline.SUBSCRIBER)
    [command] = enqueued.calls
    drain()
    assert [c["subscriber"]["subscriberId"] for c in fake_bridge.calls] == ["ann", "ann"]

    assert api_for(keyed[1]).delete("/v2/subscribers/ann").status_code == 200
    enqueued.calls.append(command)  # delivered again
    drain()

    assert not Subscriber.objects.filter(subscriber_id="ann").exists()
    assert not Notification.objects.exists()
    assert len(fake_bridge.calls) == 2
    assert TriggerEvent.objects.get().forgotten == ["ann"]
