"""The Activity API's `jobs`: each step in the shape of Novu's job, as novu-py reads it,
so that a novu-py user sees what happened to each step and why one failed."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from novu_py.models import ActivitiesResponseDto, ActivityNotificationResponseDto

from messaging import tasks as messaging_tasks
from tests.conftest import Enqueued
from tests.factories import (
    ClientFactory,
    MessageFactory,
    NotificationFactory,
    StepFactory,
    TriggerEventFactory,
)
from workflows.models import Notification, Step
from workflows.services import echo, operations

pytestmark = pytest.mark.django_db

SMTP = "django.core.mail.backends.smtp.EmailBackend"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def send(django_capture_on_commit_callbacks: Callable[..., Any]) -> Callable[[Step], Step]:
    """Run the real message worker on a step; return the step as stored afterwards."""

    def do(step: Step) -> Step:
        with django_capture_on_commit_callbacks(execute=True):
            messaging_tasks.message_send(step.pk)
        step.refresh_from_db()
        return step

    return do


@pytest.fixture
def smtp_refused(settings: Any) -> None:
    """An SMTP server nobody listens on, and no second attempt: a send fails for good."""
    settings.EMAIL_BACKEND = SMTP
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", _free_port()
    settings.NORM_SEND_MAX_ATTEMPTS = 1


def _notification(client: Any, **kwargs: Any) -> Notification:
    return NotificationFactory(
        trigger_event=TriggerEventFactory(client=client),
        status=Notification.Status.RUNNING,
        subscriber__email="ann@example.com",
        **kwargs,
    )


def _sent_in_app_then_failed_email(
    client: Any, send: Callable[[Step], Step], ended: Callable[[Step], Notification]
) -> Notification:
    notification = _notification(client)
    inbox = StepFactory(
        notification=notification,
        step_id="inbox",
        type="in_app",
        position=0,
        outputs={"body": "Hi"},
    )
    assert send(inbox).status == Step.Status.COMPLETED
    email = StepFactory(notification=notification, step_id="mail", type="email", position=1)
    assert send(email).status == Step.Status.FAILED
    return ended(email)  # the workflow went on past it, to its end


def test_a_failed_step_shows_as_a_failed_job_with_its_reason_to_novu_py(
    tenant: Any,
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    smtp_refused: None,
    ended: Callable[[Step], Notification],
) -> None:
    client, api = tenant
    notification = _sent_in_app_then_failed_email(client, send, ended)
    reason = Step.objects.get(step_id="mail").error
    assert "SMTP connection failed" in reason

    body = api.get(f"/v1/notifications/{notification.pk}").json()
    parsed = ActivityNotificationResponseDto.model_validate(body["data"])

    assert parsed.jobs is not None
    inbox, email = parsed.jobs
    assert (inbox.type, inbox.status, inbox.provider_id) == ("in_app", "completed", "novu")
    assert [d.detail for d in inbox.execution_details] == [
        "Step queued",
        "Message created",
        "Message sent",
    ]
    assert (email.type, email.status, email.provider_id) == ("email", "failed", "nodemailer")
    assert email.step.id == "mail"
    failure = email.execution_details[-1]
    assert (failure.status, failure.detail) == ("Failed", reason)
    # The list reads the same, as novu-py's activities.
    page = ActivitiesResponseDto.model_validate(api.get("/v1/notifications").json())
    [listed] = page.data
    assert listed.jobs is not None and listed.jobs[1].execution_details[-1].detail == reason


def test_a_completed_workflow_shows_completed_jobs(
    tenant: Any, send: Callable[[Step], Step], enqueued: Enqueued
) -> None:
    client, api = tenant
    notification = _notification(client)
    for position, (step_id, step_type) in enumerate(
        [("inbox", "in_app"), ("wait", "delay"), ("tag", "custom")]
    ):
        step = StepFactory(
            notification=notification,
            step_id=step_id,
            type=step_type,
            position=position,
            outputs={"body": "Hi"},
        )
        assert send(step).status == Step.Status.COMPLETED
    # The bridge's answer after the last step (no other step) ends it.
    Notification.objects.filter(pk=notification.pk).update(
        status=Notification.Status.COMPLETED, completed_at=timezone.now()
    )

    data = api.get(f"/v1/notifications/{notification.pk}").json()["data"]
    jobs = ActivityNotificationResponseDto.model_validate(data).jobs

    assert jobs is not None
    assert [(j.step.id, j.type, j.status) for j in jobs] == [
        ("inbox", "in_app", "completed"),
        ("wait", "delay", "completed"),
        ("tag", "custom", "completed"),
    ]
    assert [j.execution_details[-1].status for j in jobs] == ["Success"] * 3
    assert [j.execution_details[-1].detail for j in jobs] == [
        "Message sent",
        "Step completed",
        "Step completed",
    ]
    assert all(d["createdAt"] for j in data["jobs"] for d in j["executionDetails"])


def test_each_step_status_maps_to_novus_job_status(tenant: Any) -> None:
    client, api = tenant
    notification = _notification(client)
    later = timezone.now() + timedelta(hours=1)
    rows = [
        ("wait", "delay", Step.Status.SCHEDULED, "", later),
        ("mail", "email", Step.Status.SCHEDULED, "", timezone.now()),
        ("retry", "email", Step.Status.SCHEDULED, "SMTP said 421, try later", later),
        ("sending", "email", Step.Status.PROCESSING, "", timezone.now()),
        ("sms", "sms", Step.Status.SKIPPED, "no provider is configured for sms", timezone.now()),
        ("late", "push", Step.Status.CANCELED, "the trigger was canceled", timezone.now()),
    ]
    for position, (step_id, step_type, status, error, due_at) in enumerate(rows):
        StepFactory(
            notification=notification,
            step_id=step_id,
            type=step_type,
            position=position,
            status=status,
            error=error,
            due_at=due_at,
        )

    data = api.get(f"/v1/notifications/{notification.pk}").json()["data"]
    jobs = ActivityNotificationResponseDto.model_validate(data).jobs

    assert jobs is not None
    assert [j.status for j in jobs] == [
        "delayed",
        "queued",
        "queued",
        "running",
        "skipped",
        "canceled",
    ]
    last = {
        j.step.id: (j.execution_details[-1].status, j.execution_details[-1].detail) for j in jobs
    }
    assert last["retry"] == ("Warning", "SMTP said 421, try later")
    assert last["sms"] == ("Warning", "no provider is configured for sms")
    assert last["late"] == ("Warning", "the trigger was canceled")
    assert last["mail"] == ("Pending", "Step queued")


def test_a_steps_end_is_a_retry_only_after_a_first_attempt(tenant: Any) -> None:
    """Novu's `isRetry` marks the detail of an attempt after the first: a step sent at
    its first attempt (every sent step has one at least) is no retry."""
    client, api = tenant
    notification = _notification(client)
    for position, attempts in enumerate((1, 2)):
        StepFactory(
            notification=notification,
            step_id=f"mail-{attempts}",
            type="email",
            position=position,
            status=Step.Status.COMPLETED,
            attempts=attempts,
            completed_at=timezone.now(),
        )

    data = api.get(f"/v1/notifications/{notification.pk}").json()["data"]
    jobs = ActivityNotificationResponseDto.model_validate(data).jobs or []

    ends = {
        j.step.id: (j.execution_details[-1].detail, j.execution_details[-1].is_retry)
        for j in jobs
        if j.type == "email"  # not the run's job, waiting for the bridge's next step
    }
    assert ends == {"mail-1": ("Step completed", False), "mail-2": ("Step completed", True)}


def test_a_failure_between_steps_is_one_more_job_after_them(tenant: Any) -> None:
    """The bridge refused the state after a step that completed: no step failed, and a
    novu-py user, who reads jobs and no notification status, saw nothing wrong."""
    client, api = tenant
    notification = _notification(client)
    StepFactory(
        notification=notification,
        step_id="inbox",
        position=0,
        type="custom",
        status=Step.Status.COMPLETED,
        completed_at=timezone.now(),
    )
    echo.notification_fail(
        notification_id=notification.pk,
        code="BridgeInvalidResponse",
        message="the bridge returned step 'inbox' again, which already ran",
    )

    data = api.get(f"/v1/notifications/{notification.pk}").json()["data"]
    jobs = ActivityNotificationResponseDto.model_validate(data).jobs

    assert jobs is not None
    assert [(j.type, j.status) for j in jobs] == [("custom", "completed"), ("trigger", "failed")]
    assert jobs[1].execution_details[-1].detail == (
        "the bridge returned step 'inbox' again, which already ran"
    )
    assert jobs[1].updated_at is not None


@pytest.mark.parametrize("after", ["at the bridge", "at the end"])
def test_a_failure_after_an_undelivered_step_gone_on_from_is_shown_once(
    tenant: Any, after: str
) -> None:
    """The workflow went on past an email refused for good (as Novu's worker does), and
    then the bridge failed it: that failure is one more job, though a step failed
    before it. Ended failed by the undelivered email itself, the email's job shows it."""
    client, api = tenant
    notification = _notification(client)
    email = StepFactory(
        notification=notification,
        step_id="receipt",
        position=0,
        type="email",
        status=Step.Status.FAILED,
        error="the SMTP server refused ann@example.com: 550 User unknown",
    )
    StepFactory(
        notification=notification,
        step_id="inbox",
        position=1,
        type="in_app",
        status=Step.Status.COMPLETED,
    )
    if after == "at the bridge":
        echo.notification_fail(
            notification_id=notification.pk, code="BridgeTimeout", message="timed out"
        )
    else:
        echo.notification_fail(
            notification_id=notification.pk,
            code="SendFailed",
            message=f"step 'receipt': {email.error}",
        )

    data = api.get(f"/v1/notifications/{notification.pk}").json()["data"]
    jobs = ActivityNotificationResponseDto.model_validate(data).jobs

    assert jobs is not None
    shown = [("email", "failed"), ("in_app", "completed")]
    if after == "at the bridge":
        shown.append(("trigger", "failed"))
    assert [(j.type, j.status) for j in jobs] == shown


def test_a_notification_canceled_between_steps_shows_a_canceled_job(tenant: Any) -> None:
    client, api = tenant
    notification = _notification(client, error="the bridge is unreachable")  # an earlier try
    StepFactory(notification=notification, type="custom", status=Step.Status.COMPLETED)
    assert operations.notification_cancel(notification=notification)

    data = api.get(f"/v1/notifications/{notification.pk}").json()["data"]
    jobs = ActivityNotificationResponseDto.model_validate(data).jobs

    assert jobs is not None
    assert [(j.type, j.status) for j in jobs] == [("custom", "completed"), ("trigger", "canceled")]
    end = jobs[1].execution_details[-1]
    assert (end.status, end.detail) == ("Warning", "Notification canceled")


def test_another_clients_failed_notification_stays_invisible(
    tenant: Any,
    send: Callable[[Step], Step],
    enqueued: Enqueued,
    smtp_refused: None,
    ended: Callable[[Step], Notification],
) -> None:
    _, api = tenant
    theirs = _sent_in_app_then_failed_email(ClientFactory(), send, ended)

    listed = api.get("/v1/notifications")
    detail = api.get(f"/v1/notifications/{theirs.pk}")

    assert listed.json()["data"] == [] and listed.json()["totalCount"] == 0
    assert detail.status_code == 404
    assert "SMTP" not in listed.content.decode() + detail.content.decode()


def _with_jobs(client: Any) -> None:
    notification = _notification(client)
    failed = StepFactory(
        notification=notification, type="email", position=0, status=Step.Status.FAILED
    )
    MessageFactory(step=failed, error="refused")
    MessageFactory(step__notification=notification, step__position=1)


def test_the_list_reads_jobs_in_a_constant_number_of_queries(tenant: Any) -> None:
    client, api = tenant

    def queries(notifications: int) -> int:
        for _ in range(notifications):
            _with_jobs(client)
        with CaptureQueriesContext(connection) as captured:
            response = api.get("/v1/notifications")
        assert response.status_code == 200
        assert all(len(n["jobs"]) == 2 for n in response.json()["data"])
        return len(captured)

    one = queries(1)
    assert queries(9) == one  # ten notifications now, as many queries as for one


def test_a_notification_waiting_for_the_bridge_shows_a_queued_job(tenant: Any) -> None:
    """novu-py shows no notification status, only jobs: one waiting for the bridge's
    first answer had none, and one between steps had every job completed, as if it had
    ended. Either has one more job of type trigger, queued, with the reason of a call
    to the bridge that failed for now."""
    client, api = tenant
    first = NotificationFactory(trigger_event=TriggerEventFactory(client=client))  # pending
    between = _notification(client, error="the bridge is unreachable")
    StepFactory(notification=between, type="custom", position=0, status=Step.Status.COMPLETED)
    StepFactory(notification=between, type="sms", position=1, status=Step.Status.SKIPPED)
    waiting = _notification(client)  # a step of it waits: that job says so, no other
    StepFactory(notification=waiting, type="delay", status=Step.Status.SCHEDULED)

    def jobs(notification: Notification) -> list[Any]:
        data = api.get(f"/v1/notifications/{notification.pk}").json()["data"]
        return ActivityNotificationResponseDto.model_validate(data).jobs or []

    assert [(j.type, j.status) for j in jobs(first)] == [("trigger", "queued")]
    [detail] = jobs(first)[0].execution_details
    assert (detail.status, detail.detail) == ("Pending", "Waiting for the bridge")
    assert [(j.type, j.status) for j in jobs(between)] == [
        ("custom", "completed"),
        ("sms", "skipped"),
        ("trigger", "queued"),
    ]
    [detail] = jobs(between)[-1].execution_details
    assert (detail.status, detail.detail) == ("Warning", "the bridge is unreachable")
    assert detail.is_retry is True
    assert [(j.type, j.status) for j in jobs(waiting)] == [("delay", "delayed")]
    # Its list is the same.
    listed = ActivitiesResponseDto.model_validate(api.get("/v1/notifications").json())
    by_id = {n.id: [j.type for j in n.jobs or []] for n in listed.data}
    assert by_id[str(first.pk)] == ["trigger"]
