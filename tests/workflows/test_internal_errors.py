"""A bug in norm's own code (an exception none of the pipeline's handlers expects) that
ends an echo or a fan-out: recorded on the row, tried a bounded number of times, then
failed with that reason, rather than acknowledged and sent again by the reconciler forever.
"""

from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions
import pytest
from django.db import InterfaceError, OperationalError

from config import pipeline
from notify.models import TriggerEvent
from tests.conftest import (
    GRACE,
    MAX_CLAIMS,
    STALE,
    DatabaseAway,
    Enqueued,
    a_bug,
    ago,
    while_held,
)
from tests.factories import BridgeSyncFactory, NotificationFactory, TriggerEventFactory
from workflows import bridge, selectors, tasks
from workflows.models import Notification, Step
from workflows.services import echo, fanout, operations, reconciler
from workflows.services.common import GIVEN_UP

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("bug_bounds")]


def test_an_echo_a_bug_ends_is_retried_a_bounded_number_of_times_then_fails_with_the_reason(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(selectors, "bridge_state", a_bug)
    notification = NotificationFactory()
    resent = 0
    for attempt in range(1, 10):  # noqa: B007 (counted after the loop)
        with caplog.at_level(logging.ERROR, logger="workflows.services"):
            tasks.echo_run.apply(args=[str(notification.pk)])
        notification.refresh_from_db()
        if notification.status == Notification.Status.FAILED:
            break
        # Still trying: the reason is on the row, for the admin and the API to show.
        assert notification.error.startswith("KeyError: 'stepId'"), notification.error
        # The reconciler, a grace period later, asks again.
        Notification.objects.filter(pk=notification.pk).update(updated_at=ago(GRACE + 1))
        enqueued.clear()
        reconciler.reconcile()
        assert enqueued.of(pipeline.ECHO) == [(str(notification.pk),)]
        resent += 1
    assert notification.status == Notification.Status.FAILED, "sent again for good"
    assert (attempt, resent) == (MAX_CLAIMS, MAX_CLAIMS - 1)
    assert notification.error_code == "InternalError"
    assert notification.error.startswith("KeyError: 'stepId'")
    assert notification.error.endswith(f"({GIVEN_UP})")  # not a bug that is still retried
    assert "Traceback" not in notification.error and "\n" not in notification.error
    assert notification.completed_at is not None
    # The traceback went to the log, once: the attempts after it, within the minute, are
    # held back (one a minute per bug, see test_logs).
    assert sum(r.exc_info is not None for r in caplog.records) == 1
    # Failed is final: the reconciler leaves it alone.
    Notification.objects.filter(pk=notification.pk).update(updated_at=ago(GRACE + 1))
    enqueued.clear()
    reconciler.reconcile()
    assert enqueued.of(pipeline.ECHO) == []


def test_a_retried_notification_gets_its_attempts_back(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(selectors, "bridge_state", a_bug)
    notification = NotificationFactory()
    for _ in range(MAX_CLAIMS):
        tasks.echo_run.apply(args=[str(notification.pk)])
    notification.refresh_from_db()
    assert notification.status == Notification.Status.FAILED

    assert operations.notification_retry(notification=notification)
    tasks.echo_run.apply(args=[str(notification.pk)])
    notification.refresh_from_db()
    # One attempt of a fresh budget, not the last of the old one.
    assert notification.status == Notification.Status.RUNNING
    assert notification.error.startswith("KeyError")


def test_bugs_that_went_away_count_only_until_the_next_step(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NORM_MAX_CLAIMS bounds the runs a bug ends at one point of a workflow. Counted over
    the notification's whole life, three bugs that each went away failed a long workflow
    that was moving on."""
    real_state = selectors.bridge_state
    notification = NotificationFactory()
    monkeypatch.setattr(selectors, "bridge_state", a_bug)
    for _ in range(MAX_CLAIMS - 1):
        tasks.echo_run.apply(args=[str(notification.pk)])
    notification.refresh_from_db()
    assert (notification.status, notification.internal_errors) == ("pending", MAX_CLAIMS - 1)

    # The bug goes away: the bridge answers the next step, which is recorded.
    monkeypatch.setattr(selectors, "bridge_state", real_state)
    email = {"stepId": "mail", "type": "email", "outputs": {"subject": "Hi", "body": "Hello"}}
    monkeypatch.setattr(bridge, "execute", lambda *args, **kwargs: email)
    tasks.echo_run.apply(args=[str(notification.pk)])
    notification.refresh_from_db()
    assert (notification.status, notification.internal_errors) == ("running", 0)

    # A bug after it is the first at this point of the workflow, not the last of all.
    Step.objects.filter(notification=notification).update(status=Step.Status.COMPLETED)
    monkeypatch.setattr(selectors, "bridge_state", a_bug)
    tasks.echo_run.apply(args=[str(notification.pk)])
    notification.refresh_from_db()
    assert (notification.status, notification.internal_errors) == ("running", 1)


# InterfaceError: what psycopg raises on a connection already closed, as the next query
# of a task meets it after PostgreSQL restarted under it.
@pytest.mark.parametrize("error", [OperationalError, InterfaceError])
def test_a_database_error_in_the_echo_is_no_bug_and_is_retried_by_celery(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    database_away = DatabaseAway(error)
    monkeypatch.setattr(selectors, "bridge_state", database_away)
    notification = NotificationFactory()
    tasks.echo_run.apply(args=[str(notification.pk)])
    assert database_away.calls == 11  # DB_RETRY: the first run and its 10 retries
    notification.refresh_from_db()
    assert notification.status == Notification.Status.PENDING
    assert (notification.error, notification.error_code) == ("", "")


def test_a_long_error_message_is_one_bounded_line(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    def long_bug(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("x" * 5000 + "\nsecond line")

    monkeypatch.setattr(selectors, "bridge_state", long_bug)
    notification = NotificationFactory()
    for _ in range(MAX_CLAIMS):
        tasks.echo_run.apply(args=[str(notification.pk)])
    notification.refresh_from_db()
    assert notification.error_code == "InternalError"
    assert notification.error.startswith("TypeError: xxx")
    assert len(notification.error) <= 1000 and "second line" not in notification.error


def test_a_fan_out_a_bug_ends_is_retried_a_bounded_number_of_times_then_fails_with_the_reason(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fanout, "parse_recipients", a_bug)
    event = TriggerEventFactory()
    resent = 0
    for attempt in range(1, 10):  # noqa: B007 (counted after the loop)
        with caplog.at_level(logging.ERROR, logger="workflows.services"):
            tasks.workflow_run.apply(args=[event.pk])
        event.refresh_from_db()
        if event.status == TriggerEvent.Status.FAILED:
            break
        assert event.error.startswith("KeyError: 'stepId'"), event.error
        # The reconciler sends it again once its claim is stale (before the fix) or a
        # grace period after the failed run (with it): both have passed here.
        TriggerEvent.objects.filter(pk=event.pk).update(
            created_at=ago(STALE + 1), claimed_at=ago(STALE + 1), reenqueued_at=ago(GRACE + 1)
        )
        enqueued.clear()
        reconciler.reconcile()
        assert enqueued.of(pipeline.WORKFLOW) == [(event.pk,)]
        resent += 1
    assert event.status == TriggerEvent.Status.FAILED, "sent again for good"
    assert (attempt, resent) == (MAX_CLAIMS, MAX_CLAIMS - 1)
    assert event.error.startswith("KeyError: 'stepId'") and "\n" not in event.error
    # Failed for good, the reason says so: the bug's own text alone read as a run that
    # failed once, and an operator waited for the reconciler's next run that never came.
    assert event.error.endswith(f"({GIVEN_UP})"), event.error
    assert event.processed_at is not None
    assert sum(r.exc_info is not None for r in caplog.records) == 1  # once a minute
    TriggerEvent.objects.filter(pk=event.pk).update(created_at=ago(STALE + 1))
    enqueued.clear()
    reconciler.reconcile()
    assert enqueued.of(pipeline.WORKFLOW) == []


def test_a_fan_out_a_bug_ended_waits_a_grace_period_before_the_reconciler_runs_it_again(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grace runs from the failed run, not from the trigger: an old trigger whose
    fan-out a bug ends is not run again at every pass of the reconciler."""
    monkeypatch.setattr(fanout, "parse_recipients", a_bug)
    event = TriggerEventFactory()
    TriggerEvent.objects.filter(pk=event.pk).update(created_at=ago(STALE + 1))
    tasks.workflow_run.apply(args=[event.pk])
    event.refresh_from_db()
    assert (event.status, event.internal_errors) == (TriggerEvent.Status.RECEIVED, 1)

    reconciler.reconcile()
    assert enqueued.of(pipeline.WORKFLOW) == []

    TriggerEvent.objects.filter(pk=event.pk).update(reenqueued_at=ago(GRACE + 1))
    reconciler.reconcile()
    assert enqueued.of(pipeline.WORKFLOW) == [(event.pk,)]


def test_a_broker_refusing_the_fan_out_is_no_bug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr(pipeline, "send_now", broker_down)
    event = TriggerEventFactory()
    for _ in range(MAX_CLAIMS + 1):
        tasks.workflow_run.apply(args=[event.pk])
    event.refresh_from_db()
    # Let go for the reconciler to send again, however often: never failed for it.
    assert event.status == TriggerEvent.Status.RECEIVED
    assert event.error == ""


def test_a_bug_in_the_echo_of_a_notification_canceled_meanwhile_leaves_it_as_canceled(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug counts on an active notification only: one canceled while its echo ran
    (the admin's cancel, between the echo's read and its bug) keeps the cancel's record.
    Counted on it anyway, a canceled notification showed the bug's reason in the
    activity API and the admin, as if norm had failed it."""

    def canceled_then_a_bug(*args: Any, **kwargs: Any) -> Any:
        operations.notification_cancel(notification=notification)
        return a_bug()

    monkeypatch.setattr(selectors, "bridge_state", canceled_then_a_bug)
    notification = NotificationFactory()
    tasks.echo_run.apply(args=[str(notification.pk)])
    notification.refresh_from_db()
    assert notification.status == Notification.Status.CANCELED
    assert (notification.error, notification.error_code) == ("", "")
    assert notification.internal_errors == 0


def test_an_echo_a_bug_ended_waits_a_grace_period_before_the_reconciler_runs_it_again(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grace runs from the failed run, as a bridge down's does, not from the
    notification's last step: one idle long before its bug (a delay's step completed
    hours ago) was run again at the reconciler's next pass, and a passing bug used its
    NORM_MAX_CLAIMS runs up within minutes."""
    monkeypatch.setattr(selectors, "bridge_state", a_bug)
    notification = NotificationFactory()
    Notification.objects.filter(pk=notification.pk).update(updated_at=ago(GRACE * 10))
    tasks.echo_run.apply(args=[str(notification.pk)])
    notification.refresh_from_db()
    assert (notification.status, notification.internal_errors) == ("pending", 1)

    reconciler.reconcile()
    assert enqueued.of(pipeline.ECHO) == []

    Notification.objects.filter(pk=notification.pk).update(updated_at=ago(GRACE + 1))
    reconciler.reconcile()
    assert enqueued.of(pipeline.ECHO) == [(str(notification.pk),)]


@pytest.mark.django_db(transaction=True)  # two transactions at once, on real connections
@pytest.mark.parametrize("max_claims", [MAX_CLAIMS, 1])
def test_a_bug_in_a_duplicate_echo_on_a_state_another_run_moved_on_from_is_not_counted(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch, settings: Any, max_claims: int
) -> None:
    """A duplicate echo (a redelivered task, the reconciler's re-send) read the notification
    before another run recorded its next step, a day's delay, then met a bug: counted on
    the row as it then was, its reason showed on the notification waiting out the delay,
    the quiet period the step set (its due time) began again from the bug, and at
    NORM_MAX_CLAIMS the notification failed under its step, which then never ran."""
    settings.NORM_MAX_CLAIMS = max_claims
    delay = {
        "done": False,
        "stepId": "wait",
        "type": "delay",
        "outputs": {"amount": 1, "unit": "days"},
    }
    calls: list[Any] = []

    def execute(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return delay if len(calls) == 1 else a_bug()  # the recording run's, the duplicate's

    monkeypatch.setattr(bridge, "execute", execute)
    notification = NotificationFactory()
    # Its flavour known: no sync, whose row the duplicate would wait for before its bug.
    BridgeSyncFactory(client=notification.client, flavour="norm")

    # The recording run holds its step uncommitted; the duplicate reads the state before
    # it, meets its bug, and waits for the row to count it.
    while_held(
        lambda: tasks.echo_run.apply(args=[str(notification.pk)], throw=True),
        lambda: tasks.echo_run.apply(args=[str(notification.pk)], throw=True),
    )

    assert len(calls) == 2
    notification.refresh_from_db()
    step = notification.steps.get()
    assert (notification.status, step.status) == ("running", "scheduled")
    assert (notification.error, notification.internal_errors) == ("", 0)
    assert notification.updated_at == step.due_at  # quiet until the step is due


def test_a_bug_after_the_echo_counted_a_bridge_down_is_counted(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row moved since the run read it, but by the run itself (the bridge's try
    counted): the bug still counts. Were it taken for another run's move, each of the
    reconciler's re-sends could end alike, uncounted, for good."""

    def down(*args: Any, **kwargs: Any) -> Any:
        raise bridge.BridgeUnavailable("HTTP503", "down for maintenance", status=503)

    monkeypatch.setattr(bridge, "execute", down)
    monkeypatch.setattr(echo, "_bridge_down_log", a_bug)
    notification = NotificationFactory()

    echo.echo_run(notification_id=str(notification.pk), final_attempt=False)

    notification.refresh_from_db()
    assert (notification.bridge_attempts, notification.internal_errors) == (1, 1)
    assert notification.error.startswith("KeyError: 'stepId'")
