"""A bug in norm's own code (an exception none of the message worker's handlers expects)
that ends a step's task: its reason on the step, its message and its notification, the
step run again a bounded number of times, then failed with that reason; and a message the
provider had taken before the bug is not sent again.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.core import mail
from django.db import OperationalError
from django.db.models import JSONField, Value
from django.utils import timezone

from config import pipeline
from messaging import providers, services, tasks
from messaging.models import Message
from tests.conftest import GRACE, MAX_CLAIMS, STALE, DatabaseAway, Enqueued, a_bug, ago
from tests.factories import StepFactory
from workflows import selectors
from workflows.models import Notification, Step
from workflows.services import bookkeeping, operations, reconciler

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("bug_bounds")]


@pytest.fixture(autouse=True)
def _locmem_email(settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def email_step() -> Step:
    return StepFactory(
        type="email",
        notification__subscriber__email="ann@example.com",
        outputs={"subject": "Your order", "body": "<p>It shipped</p>"},
    )


def run_until_final(step: Step, enqueued: Enqueued, check: Any) -> int:
    """Run the step's task, then the reconciler once the step is due again (its claim
    stale too, for a run that left it claimed), until the step ends; its runs."""
    for attempt in range(1, 10):
        tasks.message_send.apply(args=[step.pk])
        step.refresh_from_db()
        if step.status == Step.Status.FAILED:
            return attempt
        check(step)
        Step.objects.filter(pk=step.pk).update(
            due_at=ago(GRACE + 1), enqueued_at=ago(GRACE + 1), claimed_at=ago(STALE + 1)
        )
        enqueued.clear()
        reconciler.reconcile()
        assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]
    raise AssertionError("run again for good")


def test_a_step_a_bug_ends_before_its_send_is_retried_a_bounded_number_of_times_then_fails(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(providers.DjangoEmailProvider, "recipient", a_bug)
    step = email_step()

    def still_trying(step: Step) -> None:
        # The reason on the step, its message and its notification, for the admin and
        # the API to show, while the step waits for its next run.
        assert step.status == Step.Status.SCHEDULED, step.status
        assert step.error.startswith("KeyError: 'stepId'"), step.error
        assert Message.objects.get(step=step).error.startswith("KeyError: 'stepId'")
        notification = Notification.objects.get(pk=step.notification_id)
        assert notification.status == Notification.Status.RUNNING
        assert notification.error.startswith(f"step '{step.step_id}': KeyError: 'stepId'")

    with caplog.at_level(logging.ERROR, logger="messaging.services"):
        runs = run_until_final(step, enqueued, still_trying)

    assert runs == MAX_CLAIMS and step.attempts == MAX_CLAIMS
    assert step.error.startswith("KeyError: 'stepId'") and "NORM_MAX_CLAIMS" in step.error
    notification = Notification.objects.get(pk=step.notification_id)
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "InternalError"
    assert notification.error.startswith(f"step '{step.step_id}': KeyError: 'stepId'")
    assert "Traceback" not in notification.error and "\n" not in notification.error
    message = Message.objects.get(step=step)
    assert message.status == Message.Status.FAILED and message.error.startswith("KeyError")
    assert mail.outbox == []
    # The traceback went to the log, once: the runs after it, within the minute, are
    # held back (one a minute per bug, see test_logs).
    assert sum(r.exc_info is not None for r in caplog.records) == 1


@pytest.mark.django_db(transaction=True)  # autocommit, as a worker: the error ends no transaction
def test_a_constraint_the_messages_insert_violates_is_a_bug_and_fails_as_internal_error(
    enqueued: Enqueued,
) -> None:
    """An IntegrityError that is not the subscriber's delete (its step still there): here
    a step whose outputs are JSON null, which norm does not store (the bridge's answer is
    checked) and the message's content refuses (NOT NULL), for any constraint a bug would
    violate. A bug, as any other: its reason on the step, run again a bounded number of times, then failed as
    InternalError. Taken for the database away (ClaimInterrupted), the task's retries
    took the claim back, the step stayed claimed without a reason, and the reconciler
    failed it as TooManyClaims, "taken by workers that never finished it"."""
    step = email_step()
    Step.objects.filter(pk=step.pk).update(outputs=Value(None, JSONField()))

    def still_trying(step: Step) -> None:
        assert step.status == Step.Status.SCHEDULED, step.status
        assert "violates not-null constraint" in step.error, step.error

    runs = run_until_final(step, enqueued, still_trying)

    assert runs == MAX_CLAIMS and step.attempts == MAX_CLAIMS
    assert "violates not-null constraint" in step.error and "NORM_MAX_CLAIMS" in step.error
    notification = Notification.objects.get(pk=step.notification_id)
    assert (notification.status, notification.error_code) == (
        Notification.Status.FAILED,
        "InternalError",
    )
    assert not Message.objects.exists() and mail.outbox == []


def test_a_bug_after_the_provider_took_the_message_does_not_send_it_again(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The email went out, then the bookkeeping failed: the message was rolled back to
    unsent with the rest, and each run of the step sent the email again, up to
    NORM_MAX_CLAIMS times. It is recorded sent; the step's runs send nothing more."""
    monkeypatch.setattr(bookkeeping, "step_complete", a_bug)
    step = email_step()

    def still_trying(step: Step) -> None:
        assert len(mail.outbox) == 1, "sent again"

    runs = run_until_final(step, enqueued, still_trying)

    assert len(mail.outbox) == 1
    # The send that returned does not count against the bound; the runs after it do.
    assert runs == MAX_CLAIMS + 1
    notification = Notification.objects.get(pk=step.notification_id)
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "InternalError"
    assert step.error.startswith("KeyError: 'stepId'") and "NORM_MAX_CLAIMS" in step.error
    message = Message.objects.get(step=step)
    assert (message.status, message.attempts) == (Message.Status.SENT, 1)


def test_a_step_whose_bug_goes_away_completes_and_its_message_is_sent_once(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Any
) -> None:
    bug = pytest.MonkeyPatch()
    bug.setattr(bookkeeping, "step_complete", a_bug)
    step = email_step()
    tasks.message_send.apply(args=[step.pk])
    bug.undo()
    Step.objects.filter(pk=step.pk).update(due_at=timezone.now())

    with django_capture_on_commit_callbacks(execute=True):
        tasks.message_send.apply(args=[step.pk])

    step.refresh_from_db()
    assert (step.status, step.error) == (Step.Status.COMPLETED, "")
    assert len(mail.outbox) == 1
    assert enqueued.of(pipeline.ECHO) == [(str(step.notification_id),)]


def test_a_step_whose_bug_went_away_leaves_no_reason_on_its_notification(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Any
) -> None:
    """The bug's reason is the notification's while its step waits to run again; once
    the step completes it is no longer: left there until the bridge named the next step,
    the activity API showed the notification waiting on a failed call to the bridge,
    being retried."""
    bug = pytest.MonkeyPatch()
    bug.setattr(providers.DjangoEmailProvider, "recipient", a_bug)
    step = email_step()
    tasks.message_send.apply(args=[step.pk])
    assert Notification.objects.get(pk=step.notification_id).error.startswith(
        f"step '{step.step_id}'"
    )
    bug.undo()
    Step.objects.filter(pk=step.pk).update(due_at=timezone.now())

    with django_capture_on_commit_callbacks(execute=True):
        tasks.message_send.apply(args=[step.pk])

    notification = Notification.objects.get(pk=step.notification_id)
    assert (notification.status, notification.error) == (Notification.Status.RUNNING, "")
    (waiting,) = [j for j in selectors.notification_jobs(notification) if j["type"] == "trigger"]
    assert [d["status"] for d in waiting["executionDetails"]] == ["Pending"], waiting


def test_a_step_whose_bug_went_away_leaves_another_steps_reason_on_its_notification(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Any
) -> None:
    """Two steps open at once (an admin's retry reopens each failed one), a bug in each
    run: the notification holds the last one's reason. The first completing takes off
    its own reason only: taking off whichever step's, it left the notification looking
    as if nothing was wrong while the second still waited on its bug."""
    bug = pytest.MonkeyPatch()
    bug.setattr(providers.DjangoEmailProvider, "recipient", a_bug)
    first = email_step()
    second = StepFactory(
        notification=first.notification, step_id="second", type="email", outputs=first.outputs
    )
    tasks.message_send.apply(args=[first.pk])
    tasks.message_send.apply(args=[second.pk])
    bug.undo()
    reason = Notification.objects.get(pk=first.notification_id).error
    assert reason.startswith("step 'second'"), reason
    Step.objects.filter(pk=first.pk).update(due_at=timezone.now())

    with django_capture_on_commit_callbacks(execute=True):
        tasks.message_send.apply(args=[first.pk])

    first.refresh_from_db()
    assert first.status == Step.Status.COMPLETED
    assert Notification.objects.get(pk=first.notification_id).error == reason


def test_the_database_away_is_no_bug_the_step_stays_its_tasks_for_its_retry(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(providers.DjangoEmailProvider, "recipient", DatabaseAway())
    step = email_step()

    with pytest.raises(OperationalError):
        services.message_send(step_id=step.pk, claim="task-1")

    step.refresh_from_db()
    assert (step.status, step.claimed_by, step.error) == (Step.Status.PROCESSING, "task-1", "")
    assert Notification.objects.get(pk=step.notification_id).error == ""
    assert enqueued.of(pipeline.MESSAGE) == []


def test_a_bug_in_a_send_whose_notification_was_canceled_meanwhile_leaves_it_as_canceled(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel lets a step already sending finish; a bug then ends the send. Its reason
    goes on the step (canceled: nothing more to try), not on the canceled notification,
    which showed the bug's reason in the activity API and the admin, as if norm had
    failed it."""
    step = email_step()

    def canceled_then_a_bug(*args: Any, **kwargs: Any) -> Any:
        operations.notification_cancel(notification=step.notification)
        return a_bug()

    monkeypatch.setattr(providers.DjangoEmailProvider, "recipient", canceled_then_a_bug)
    tasks.message_send.apply(args=[step.pk])

    step.refresh_from_db()
    assert step.status == Step.Status.CANCELED
    assert step.error.startswith("KeyError: 'stepId'")
    notification = Notification.objects.get(pk=step.notification_id)
    assert (notification.status, notification.error) == (Notification.Status.CANCELED, "")
    assert mail.outbox == []
