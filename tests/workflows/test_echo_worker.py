from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import kombu.exceptions
import kombu.message
import kombu.serialization
import pytest
from celery.exceptions import Retry
from celery.worker.request import Request
from django.utils import timezone

from config import pipeline
from config.celery import app as celery_app
from config.dates import iso_z
from notify import services as notify_services
from notify.models import TriggerEvent
from tests.conftest import Enqueued, a_bug, task_retry
from tests.factories import (
    MessageFactory,
    NotificationFactory,
    StepFactory,
    SubscriberFactory,
)
from workflows import bridge, selectors, tasks
from workflows.models import Notification, Step
from workflows.services import echo, operations, reconciler

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]
EMAIL = {"stepId": "reminder", "type": "email", "outputs": {"subject": "Hi", "body": "Hello"}}


@dataclass
class FakeExecute:
    """The bridge's `execute` at the network edge: scripted answers, recorded calls."""

    answers: list[dict[str, Any] | Exception] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(
        self, url: str, *, secrets: Sequence[str], workflow_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        self.calls.append(
            {"url": url, "secrets": secrets, "workflow_id": workflow_id, "body": body}
        )
        answer = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def execute(monkeypatch: pytest.MonkeyPatch) -> FakeExecute:
    fake = FakeExecute()
    monkeypatch.setattr(bridge, "execute", fake)
    return fake


@pytest.fixture
def run(django_capture_on_commit_callbacks: Capture) -> Callable[..., None]:
    def do(notification: Notification, **kwargs: Any) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            echo.echo_run(notification_id=str(notification.pk), **kwargs)

    return do


def test_the_bridge_gets_payload_subscriber_and_state_in_run_order(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    subscriber = SubscriberFactory(subscriber_id="ann", email="ann@example.com", first_name="Ann")
    notification = NotificationFactory(
        subscriber=subscriber,
        trigger_event__client=subscriber.client,
        trigger_event__actor="boss",
        status=Notification.Status.RUNNING,
        trigger_event__payload={"name": "Ann"},
    )
    _, key = notify_services.secret_key_create(client=notification.client)
    # Created out of order: the state follows positions, not insertion.
    StepFactory(
        notification=notification,
        step_id="wait",
        type="delay",
        position=1,
        status=Step.Status.COMPLETED,
        result={"duration": 5000},
    )
    skipped = StepFactory(
        notification=notification,
        step_id="nudge",
        type="email",
        position=2,
        status=Step.Status.SKIPPED,
        result={},
    )
    inbox = StepFactory(
        notification=notification,
        step_id="inbox",
        type="in_app",
        position=0,
        status=Step.Status.COMPLETED,
        result={"stale": True},
    )
    message = MessageFactory(step=inbox)
    read_at = timezone.now()
    type(message).objects.filter(pk=message.pk).update(seen_at=read_at, read_at=read_at)
    execute.answers = [{"done": True}]

    run(notification)

    call = execute.calls[0]
    assert (call["url"], call["secrets"][0], call["workflow_id"]) == (
        notification.resource,
        key,  # the newest live key signs first
        "welcome",
    )
    body = call["body"]
    assert body["payload"] == {"name": "Ann"}
    assert body["subscriber"] == {
        "subscriberId": "ann",
        "email": "ann@example.com",
        "firstName": "Ann",
        "data": {},
    }
    assert body["actor"] == {"subscriberId": "boss"}
    iso = iso_z(read_at)
    assert body["state"] == [
        {
            "stepId": "inbox",
            # Read live from the message, not from the stored result.
            "outputs": {"seen": True, "read": True, "lastSeenDate": iso, "lastReadDate": iso},
            "state": {"status": "completed"},
        },
        {"stepId": "wait", "outputs": {"duration": 5000}, "state": {"status": "completed"}},
        {"stepId": skipped.step_id, "outputs": {}, "state": {"status": "skipped"}},
    ]


@pytest.mark.parametrize("actor", [7, " 7 ", {"subscriberId": 7, "firstName": "Sev"}])
def test_an_actor_given_as_a_number_reaches_the_bridge_as_its_subscriberid(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None], actor: Any
) -> None:
    """The trigger takes a number as a subscriberId; the bridge got `actor: {}` for it (an
    actor no longer stored is sent as the trigger gave it, read as a recipient is)."""
    notification = NotificationFactory(trigger_event__actor=actor)
    execute.answers = [{"done": True}]
    run(notification)
    assert execute.calls[0]["body"]["actor"]["subscriberId"] == "7"


def test_an_actor_is_read_from_the_notifications_client_never_from_another(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    """Subscriber ids are each client's own: another client's subscriber of the actor's
    id is someone else, whose email and name would reach this client's bridge (and its
    templates, and its emails) as the actor's. This client's actor gone, the bridge gets
    the actor as the trigger gave it."""
    given = {"subscriberId": "boss", "firstName": "Given"}
    notification = NotificationFactory(trigger_event__actor=given)
    other = SubscriberFactory(subscriber_id="boss", first_name="Other", email="boss@other.io")
    assert other.client_id != notification.client_id
    execute.answers = [{"done": True}]

    run(notification)

    assert execute.calls[0]["body"]["actor"] == given


def test_a_channel_step_is_scheduled_and_the_message_worker_enqueued(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    # Running: a notification turns running with its first step.
    notification = NotificationFactory(status=Notification.Status.RUNNING)
    done = StepFactory(
        notification=notification, step_id="inbox", position=0, status=Step.Status.COMPLETED
    )
    execute.answers = [{**EMAIL, "providers": {"smtp": {"x": 1}}, "options": {"skip": False}}]
    before = timezone.now()

    run(notification)

    notification.refresh_from_db()
    assert notification.status == Notification.Status.RUNNING
    step = notification.steps.exclude(pk=done.pk).get()
    assert (step.step_id, step.type, step.position) == ("reminder", "email", 1)
    assert step.outputs == {"subject": "Hi", "body": "Hello"}
    assert step.providers == {"smtp": {"x": 1}}
    assert step.status == Step.Status.SCHEDULED and step.result == {}
    assert before <= step.due_at <= timezone.now()
    assert step.enqueued_at is not None
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]
    assert not enqueued.options_of(pipeline.MESSAGE)[0]["countdown"]


def test_a_broker_failing_after_the_step_commits_leaves_it_to_the_reconciler(
    execute: FakeExecute, run: Callable[..., None], monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr(celery_app, "send_task", broker_down)
    notification = NotificationFactory()
    execute.answers = [EMAIL]

    run(notification)

    notification.refresh_from_db()
    step = notification.steps.get()
    # The step was recorded: the notification is not failed for the broker's fault ...
    assert notification.status == Notification.Status.RUNNING and notification.error == ""
    assert step.status == Step.Status.SCHEDULED
    # ... and once the grace has passed, the reconciler sends it from the database.
    sent: list[tuple[str, list[Any]]] = []
    monkeypatch.setattr(celery_app, "send_task", lambda name, args, **_: sent.append((name, args)))
    past_grace = timezone.now() - timedelta(seconds=settings.NORM_RECONCILE_GRACE + 1)
    Step.objects.update(enqueued_at=past_grace, due_at=past_grace)
    # The reconciler re-sends only to an empty queue (_room), and this process's Redis db
    # holds what earlier tests in it enqueued for no worker: emptied, as a worker leaves it.
    with celery_app.connection_for_write() as connection:
        connection.default_channel.queue_purge(pipeline.MESSAGE.queue)
    reconciler.reconcile()
    assert (pipeline.MESSAGE.task, [step.pk]) in sent


def test_a_delay_step_is_due_after_the_delay_with_a_countdown(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    notification = NotificationFactory()
    execute.answers = [
        {"stepId": "wait", "type": "delay", "outputs": {"amount": 2, "unit": "minutes"}}
    ]
    before = timezone.now()

    run(notification)

    step = Step.objects.get()
    assert before + timedelta(minutes=2) <= step.due_at <= timezone.now() + timedelta(minutes=2)
    assert step.status == Step.Status.SCHEDULED and step.enqueued_at is not None
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]
    assert enqueued.options_of(pipeline.MESSAGE)[0]["countdown"] == 120


def test_a_timed_delay_step_is_due_at_its_crons_next_fire_with_a_countdown(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    """Scheduled as a regular delay is, for the time its cron fires next."""
    notification = NotificationFactory()
    execute.answers = [
        {"stepId": "wait", "type": "delay", "outputs": {"type": "timed", "cron": "* * * * *"}}
    ]
    next_minute = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=1)

    run(notification)

    step = Step.objects.get()
    # The next minute's start, or the one after if a minute began during the run.
    assert step.due_at in (next_minute, next_minute + timedelta(minutes=1))
    assert step.status == Step.Status.SCHEDULED and step.enqueued_at is not None
    assert step.outputs == {"type": "timed", "cron": "* * * * *"}
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]
    countdown = enqueued.options_of(pipeline.MESSAGE)[0]["countdown"]
    assert countdown == (step.due_at - step.enqueued_at).total_seconds()


def test_a_timed_delay_fires_on_the_subscribers_clock_and_waits_in_the_database(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    """New Year's midnight in Tokyo, as Novu reads the cron in the subscriber's zone: as
    far off as that, the step waits in the database for the reconciler."""
    notification = NotificationFactory(subscriber__timezone="Asia/Tokyo")
    execute.answers = [
        {"stepId": "wait", "type": "delay", "outputs": {"type": "timed", "cron": "0 0 1 1 *"}}
    ]

    run(notification)

    step = Step.objects.get()
    tokyo = ZoneInfo("Asia/Tokyo")
    new_year = datetime(step.created_at.astimezone(tokyo).year + 1, 1, 1, tzinfo=tokyo)
    assert step.due_at == new_year
    assert (step.due_at.hour, step.due_at.minute) == (15, 0)  # UTC: 31 December, 15:00
    assert step.status == Step.Status.SCHEDULED and step.enqueued_at is None
    assert enqueued.calls == []


def test_a_delay_longer_than_the_broker_holds_waits_in_the_database(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None], settings: Any
) -> None:
    settings.NORM_BROKER_MAX_COUNTDOWN = 300
    notification = NotificationFactory()
    execute.answers = [
        {"stepId": "wait", "type": "delay", "outputs": {"amount": 2, "unit": "hours"}}
    ]

    run(notification)

    step = Step.objects.get()
    assert step.status == Step.Status.SCHEDULED
    assert step.due_at >= timezone.now() + timedelta(hours=2) - timedelta(minutes=1)
    assert step.enqueued_at is None  # the reconciler's to pick up when due
    assert enqueued.calls == []


@pytest.mark.parametrize(
    "outputs",
    [
        {"type": "timed", "cron": "* * * *"},
        {"type": "dynamic", "dynamicKey": "payload.sendAt"},
        {"amount": 1, "unit": "fortnights"},
        {"amount": True, "unit": "days"},  # no number, though Python counts it as 1
    ],
)
def test_an_unsupported_delay_fails_the_notification_naming_the_step(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None], outputs: dict[str, Any]
) -> None:
    notification = NotificationFactory()
    execute.answers = [{"stepId": "wait", "type": "delay", "outputs": outputs}]
    run(notification)
    notification.refresh_from_db()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "UnsupportedDelay"
    # README: it names the step, as UnsupportedStepType does (a workflow may have several).
    assert notification.error.startswith("step 'wait': ")
    assert Step.objects.count() == 0 and enqueued.calls == []


@pytest.mark.parametrize(
    ("step_type", "result"),
    [
        ("email", {}),
        ("delay", {"duration": 0}),
        ("in_app", {"seen": False, "read": False, "lastSeenDate": None, "lastReadDate": None}),
    ],
)
def test_a_skipped_step_is_recorded_with_its_default_result_and_echo_re_enqueued(
    execute: FakeExecute,
    enqueued: Enqueued,
    run: Callable[..., None],
    step_type: str,
    result: dict[str, Any],
) -> None:
    notification = NotificationFactory()
    execute.answers = [
        {
            "stepId": "s",
            "type": step_type,
            "outputs": {"amount": 9, "unit": "days"},
            "options": {"skip": True},
        }
    ]

    run(notification)

    step = Step.objects.get()
    assert step.status == Step.Status.SKIPPED and step.completed_at is not None
    assert step.result == result
    assert enqueued.of(pipeline.ECHO) == [(str(notification.pk),)]
    assert enqueued.of(pipeline.MESSAGE) == []


@pytest.mark.parametrize("skip", ["true", "false", 1, None])
def test_only_a_skip_of_true_skips_the_step(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None], skip: Any
) -> None:
    """The SDKs answer `skip` as a boolean; anything else a bridge writes there (a
    string, a number) leaves the step to be sent, not silently dropped."""
    notification = NotificationFactory()
    execute.answers = [{**EMAIL, "options": {"skip": skip}}]

    run(notification)

    step = Step.objects.get()
    assert step.status == Step.Status.SCHEDULED
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]


@pytest.mark.parametrize("done", ["true", "false", 1])
def test_only_a_done_of_true_ends_the_notification(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None], done: Any
) -> None:
    """The SDKs answer `done` as a boolean, as `skip`: anything else a bridge writes there
    (a string, a number) beside a step leaves the step to be sent. Taken as done, the
    notification completed and the step it answered was never sent, nor said so."""
    notification = NotificationFactory()
    execute.answers = [{**EMAIL, "done": done}]

    run(notification)

    notification.refresh_from_db()
    assert notification.status == Notification.Status.RUNNING
    step = Step.objects.get()
    assert step.status == Step.Status.SCHEDULED
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]


def test_done_completes_the_notification(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    notification = NotificationFactory()
    execute.answers = [{"done": True, "outputs": {}}]
    run(notification)
    notification.refresh_from_db()
    assert notification.status == Notification.Status.COMPLETED
    assert notification.completed_at is not None
    assert Step.objects.count() == 0 and enqueued.calls == []


def test_a_bridge_error_fails_the_notification_with_its_code(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    notification = NotificationFactory()
    execute.answers = [
        bridge.BridgeError(
            "ExecutionStateOrderError", "step 'inbox' was expected before 'wait'", status=400
        )
    ]
    run(notification)
    notification.refresh_from_db()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "ExecutionStateOrderError"
    assert notification.error == "step 'inbox' was expected before 'wait'"
    assert Step.objects.count() == 0 and enqueued.calls == []


def test_a_bridge_down_is_a_warning_naming_the_notification_once_a_minute_per_bridge(
    execute: FakeExecute, run: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    """Retried, so no traceback; but said, naming what it concerns: at Celery's default
    level (WARNING) a bridge down was nowhere in the worker's log. Not once per
    notification: a broadcast's would each say the same."""
    url = "https://user:hunter2@acme.test/api/novu?token=s3cret"
    first = NotificationFactory(trigger_event__client__bridge_url=url)
    others = NotificationFactory.create_batch(3, trigger_event=first.trigger_event)
    execute.answers = [bridge.BridgeUnavailable("HTTP503", "down for maintenance", status=503)]

    for notification in (first, *others):
        with pytest.raises(bridge.BridgeUnavailable):
            run(notification, final_attempt=False)

    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING and record.exc_info is None
    line = record.getMessage()
    assert f"notification {first.pk} (client {first.client_id}, workflow " in line
    assert "HTTP503: down for maintenance" in line
    assert "https://user:***@acme.test/api/novu?token=***" in line
    assert "hunter2" not in line and "s3cret" not in line


def test_a_failed_notification_is_a_warning_naming_it_once_a_minute_per_reason(
    execute: FakeExecute, run: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    """A bridge refusing norm's signature fails every notification of its client: the
    operator learned of it from the admin alone. One line, not one per notification."""
    first = NotificationFactory()
    others = NotificationFactory.create_batch(2, trigger_event=first.trigger_event)
    execute.answers = [bridge.BridgeError("HTTP400", "no such workflow", status=400)]

    for notification in (first, *others):
        run(notification)

    assert {n.status for n in Notification.objects.all()} == {Notification.Status.FAILED}
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING and record.exc_info is None
    line = record.getMessage()
    assert f"notification {first.pk} (client {first.client_id}, workflow welcome)" in line
    assert "failed: HTTP400: no such workflow" in line


@pytest.mark.parametrize("status", [Notification.Status.COMPLETED, Notification.Status.CANCELED])
def test_a_failure_that_finds_the_notification_ended_says_nothing(
    caplog: pytest.LogCaptureFixture, status: str
) -> None:
    """A failure that comes too late (a bridge down on the last retry of an echo whose
    notification completed, or was canceled, meanwhile) fails nothing: the operator was
    told a notification failed that the admin shows completed or canceled."""
    notification = NotificationFactory(status=status)

    echo.notification_fail(
        notification_id=notification.pk, code="NeverFailed", message="the bridge is unreachable"
    )

    notification.refresh_from_db()
    assert notification.status == status
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_an_answer_no_notification_can_record_is_one_traceback_a_minute_not_one_each(
    execute: FakeExecute,
    run: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broadcast's bridge gives each notification the same answer: one norm cannot
    record logged a traceback for each, every notification's reason already naming it.
    One a minute (see test_logs), the notifications after it counted in the next."""
    first = NotificationFactory()
    others = NotificationFactory.create_batch(2, trigger_event=first.trigger_event)
    execute.answers = [{"stepId": "mail", "type": "email", "outputs": {}}]
    monkeypatch.setattr(echo, "_record_answer", a_bug)

    for notification in (first, *others):
        run(notification)

    assert {n.error_code for n in Notification.objects.all()} == {"BridgeInvalidResponse"}
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None
    assert record.getMessage() == (
        f"echo: the record of the answer for {first.pk} failed (0 more such since the last "
        "such line)"
    )


def test_an_echo_whose_subscriber_was_deleted_meanwhile_is_an_info_line_not_a_warning(
    execute: FakeExecute, run: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    """A subscriber deleted (through the API, or with its client) takes its notifications
    with it, and their echoes already sent find none: an expected race, with nothing to
    mend, as the message and subscriber workers end theirs quietly. It was a WARNING, a
    line an operator is to look at, one for each notification of a client deleted."""
    notification = NotificationFactory()
    notification.subscriber.delete()
    caplog.set_level(logging.INFO, logger="workflows.services")

    run(notification)

    assert execute.calls == []
    [record] = [r for r in caplog.records if r.name == "workflows.services.echo"]
    assert record.levelno == logging.INFO
    assert record.getMessage() == f"echo: notification {notification.pk} is gone"


def test_bridge_unavailable_is_raised_for_retry_unless_final(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    notification = NotificationFactory()
    execute.answers = [bridge.BridgeUnavailable("HTTP503", "down for maintenance", status=503)]

    with pytest.raises(bridge.BridgeUnavailable):
        run(notification, final_attempt=False)
    notification.refresh_from_db()
    assert notification.status == Notification.Status.PENDING  # no step recorded yet
    assert notification.bridge_attempts == 1 and "down for maintenance" in notification.error

    run(notification, final_attempt=True)
    notification.refresh_from_db()
    assert notification.status == Notification.Status.FAILED
    assert notification.bridge_attempts == 2
    assert (notification.error_code, notification.error) == ("HTTP503", "down for maintenance")
    assert enqueued.calls == []
    # Retried from the admin: the bridge calls it shows count from the retry.
    assert operations.notification_retry(notification=notification)
    notification.refresh_from_db()
    assert notification.bridge_attempts == 0


def test_a_bridge_url_requests_cannot_use_fails_the_notification_at_once(
    enqueued: Enqueued, run: Callable[..., None]
) -> None:
    """A port past 65535 passes Django's URLField; requests refuses it before any
    connection, every time: it was retried for minutes as an unreachable bridge."""
    url = "http://localhost:99999/api/norm"
    notification = NotificationFactory(trigger_event__client__bridge_url=url)

    run(notification, final_attempt=False)  # raising here would mean a retry

    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("failed", "BridgeInvalidURL")
    assert notification.error.startswith(f"norm cannot call the bridge URL {url}: ")
    assert notification.bridge_attempts == 0 and enqueued.calls == []


def test_an_answer_repeating_a_step_in_the_state_fails(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    # Running: a notification turns running with its first step.
    notification = NotificationFactory(status=Notification.Status.RUNNING)
    StepFactory(
        notification=notification, step_id="reminder", position=0, status=Step.Status.COMPLETED
    )
    execute.answers = [EMAIL]
    run(notification)
    notification.refresh_from_db()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "BridgeInvalidResponse"
    assert "already ran" in notification.error
    assert Step.objects.count() == 1 and enqueued.calls == []


@pytest.mark.parametrize(
    "answer",
    [
        # With outputs: an answer without them fails for its outputs, whatever its stepId.
        {**EMAIL, "stepId": ""},
        {"stepId": "x", "type": "fax", "outputs": {}},
        {"outputs": {}},
    ],
)
def test_an_answer_without_a_valid_step_fails(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None], answer: dict[str, Any]
) -> None:
    """An empty stepId is no step's: recorded, its email went out under no name, and
    every later call carried a state entry the bridge could match to none of its steps."""
    notification = NotificationFactory()
    execute.answers = [answer]
    run(notification)
    notification.refresh_from_db()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "BridgeInvalidResponse"
    assert notification.error.startswith("the bridge answered no valid next step")
    assert Step.objects.count() == 0


@pytest.mark.parametrize("step_type", [["email"], {"email": True}], ids=["list", "object"])
def test_an_answer_whose_type_is_no_string_fails_as_no_valid_step(
    execute: FakeExecute,
    enqueued: Enqueued,
    run: Callable[..., None],
    step_type: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Looked up in the set of types norm does not run, it raised TypeError (unhashable),
    logged with its traceback as a bug in norm's echo, and the reason was Python's words
    for it, not what the bridge got wrong."""
    notification = NotificationFactory()
    execute.answers = [{"stepId": "mail", "type": step_type, "outputs": {}}]
    run(notification)
    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("failed", "BridgeInvalidResponse")
    assert notification.error.startswith("the bridge answered no valid next step (stepId='mail'")
    assert not [r for r in caplog.records if r.exc_info]
    assert Step.objects.count() == 0 and enqueued.calls == []


@pytest.mark.parametrize(
    ("shape", "named"),
    [
        ({}, "outputs: NoneType, providers: dict"),
        ({"outputs": ["hello"]}, "outputs: list, providers: dict"),
        ({"outputs": "hello"}, "outputs: str, providers: dict"),
        ({"outputs": {"n": 1}, "providers": ["sendgrid"]}, "outputs: dict, providers: list"),
    ],
)
def test_an_answer_whose_outputs_or_providers_are_no_objects_fails(
    execute: FakeExecute,
    enqueued: Enqueued,
    run: Callable[..., None],
    shape: dict[str, Any],
    named: str,
) -> None:
    """Outputs that were no object were taken as {}: a custom step's result, which the
    steps after it read, was {}, and an email's message failed for a missing subject."""
    notification = NotificationFactory()
    execute.answers = [{"stepId": "score", "type": "custom", "done": False, **shape}]
    run(notification)
    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("failed", "BridgeInvalidResponse")
    assert f"step 'score' with outputs and providers that are not both objects ({named})" in (
        notification.error
    )
    assert Step.objects.count() == 0 and enqueued.calls == []


@pytest.mark.parametrize("step_type", ["digest", "throttle", "tool", "http_request"])
def test_a_step_type_norm_does_not_run_yet_fails_with_that_reason(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None], step_type: str
) -> None:
    notification = NotificationFactory()
    execute.answers = [{"stepId": "batch", "type": step_type, "outputs": {}}]
    run(notification)
    notification.refresh_from_db()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "UnsupportedStepType"
    assert "'batch' is a " + step_type in notification.error
    assert Step.objects.count() == 0 and enqueued.calls == []


@pytest.mark.parametrize("status", [Step.Status.SCHEDULED, Step.Status.PROCESSING])
def test_an_open_step_means_the_echo_does_nothing(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None], status: str
) -> None:
    step = StepFactory(status=status)
    execute.answers = [{"done": True}]
    run(step.notification)
    assert execute.calls == [] and enqueued.calls == []
    step.notification.refresh_from_db()
    assert step.notification.status == Notification.Status.RUNNING


@pytest.mark.parametrize("status", Notification.FINAL)
def test_a_final_notification_is_left_alone(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None], status: str
) -> None:
    notification = NotificationFactory(status=status)
    execute.answers = [EMAIL]
    run(notification)
    assert execute.calls == [] and enqueued.calls == []
    notification.refresh_from_db()
    assert notification.status == status


def test_a_missing_notification_is_ignored(execute: FakeExecute, run: Callable[..., None]) -> None:
    notification = NotificationFactory.build()
    run(notification)
    assert execute.calls == []


def test_canceled_while_the_bridge_answered_records_no_step(
    execute: FakeExecute,
    enqueued: Enqueued,
    run: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notification = NotificationFactory()

    def cancel_then_answer(url: str, **kwargs: Any) -> dict[str, Any]:
        operations.notification_cancel(notification=notification)
        return EMAIL

    monkeypatch.setattr(bridge, "execute", cancel_then_answer)
    run(notification)
    assert Step.objects.count() == 0 and enqueued.calls == []


def test_running_twice_records_one_step(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    notification = NotificationFactory()
    execute.answers = [EMAIL]
    run(notification)
    run(notification)
    assert Step.objects.filter(notification=notification).count() == 1
    assert len(execute.calls) == 1
    assert len(enqueued.of(pipeline.MESSAGE)) == 1


def test_two_runs_racing_on_the_same_state_insert_one_step(
    execute: FakeExecute,
    enqueued: Enqueued,
    run: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notification = NotificationFactory()

    def answer_after_a_concurrent_run(url: str, **kwargs: Any) -> dict[str, Any]:
        # The other run recorded the same step while this one waited for the bridge.
        if not Step.objects.exists():
            StepFactory(notification=notification, step_id="reminder", position=0)
        return EMAIL

    monkeypatch.setattr(bridge, "execute", answer_after_a_concurrent_run)
    run(notification)
    assert Step.objects.count() == 1
    notification.refresh_from_db()
    # Not failed: the step is the other run's to carry (the bare row here stands in for
    # that run, which would also have marked the notification running).
    assert notification.status == Notification.Status.PENDING
    assert enqueued.calls == []


# --- the Celery task wrapper -------------------------------------------------------------


def test_task_retries_transient_errors_then_fails_on_the_last_attempt(
    execute: FakeExecute, enqueued: Enqueued, settings: Any
) -> None:
    settings.NORM_BRIDGE_MAX_RETRIES = 2
    notification = NotificationFactory()
    execute.answers = [bridge.BridgeUnavailable("BridgeTimeout", "no answer")]

    # apply() runs the retries eagerly, in-process.
    tasks.echo_run.apply(args=[str(notification.pk)])

    assert len(execute.calls) == 3
    notification.refresh_from_db()
    assert notification.status == Notification.Status.FAILED
    assert (notification.error_code, notification.bridge_attempts) == ("BridgeTimeout", 3)


def test_retries_for_the_database_leave_the_bridge_its_own(
    execute: FakeExecute, enqueued: Enqueued, settings: Any
) -> None:
    """A run retried five times for the database (a failover) whose bridge then fails
    for now is retried: the request's retries count both, and made it the last attempt."""
    settings.NORM_BRIDGE_MAX_RETRIES = 2
    notification = NotificationFactory()
    execute.answers = [bridge.BridgeUnavailable("BridgeTimeout", "no answer"), {"done": True}]

    tasks.echo_run.apply(args=[str(notification.pk)], retries=5)

    assert len(execute.calls) == 2
    notification.refresh_from_db()
    assert (notification.status, notification.bridge_attempts) == ("completed", 1)


def test_a_bridge_retry_is_a_message_the_release_before_runs(
    execute: FakeExecute, enqueued: Enqueued, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a rolling upgrade the retry goes to any echo worker, the release before's among
    them, whose echo_run takes the notification's id alone: the count of bridge retries
    sent as an argument (bridge_retries=1) failed there with TypeError, and the
    notification waited for the reconciler. It goes in a header, which a worker reads as
    the message's own (and the release before ignores)."""
    settings.NORM_BRIDGE_MAX_RETRIES = 1
    notification = NotificationFactory()
    execute.answers = [bridge.BridgeUnavailable("BridgeTimeout", "no answer")]

    with pytest.raises(Retry) as retried:
        tasks.echo_run.apply(args=[str(notification.pk)], throw=True)

    assert task_retry(retried.value) == {"args": [str(notification.pk)], "kwargs": {}}
    headers = retried.value.sig.options["headers"]
    assert headers == {tasks.BRIDGE_RETRIES: 1}
    # As a worker takes the retry: its message's headers, Celery's and this one.
    sent, properties, body, _ = celery_app.amqp.as_task_v2(
        "retry-1", tasks.echo_run.name, args=[str(notification.pk)], kwargs={}, retries=1
    )
    content_type, encoding, data = kombu.serialization.dumps(body, serializer="json")
    message = kombu.message.Message(
        body=data,
        headers={**sent, **headers},
        content_type=content_type,
        content_encoding=encoding,
        properties=properties,
        delivery_info={},
    )
    # A worker's task drops a connection in a transaction (the test's) as it starts.
    monkeypatch.setattr("django.db.close_old_connections", lambda: None)
    Request(message, app=celery_app, task=tasks.echo_run).execute()

    notification.refresh_from_db()  # its last attempt: failed, not retried again
    assert (notification.status, notification.bridge_attempts) == ("failed", 2)


def test_task_retry_succeeds_once_the_bridge_is_back(
    execute: FakeExecute, enqueued: Enqueued, settings: Any
) -> None:
    settings.NORM_BRIDGE_MAX_RETRIES = 5
    notification = NotificationFactory()
    execute.answers = [bridge.BridgeUnavailable("HTTP502", "bad gateway"), {"done": True}]

    tasks.echo_run.apply(args=[str(notification.pk)])

    assert len(execute.calls) == 2
    notification.refresh_from_db()
    assert notification.status == Notification.Status.COMPLETED
    assert notification.bridge_attempts == 1
    # The failed attempt's reason was shown while it retried; completed, it shows none.
    assert (notification.error, notification.error_code) == ("", "")


@pytest.mark.parametrize(
    "reason", ["HTTP502: bad gateway", "step 'inbox': KeyError: 'stepId'", "KeyError: 'stepId'"]
)
def test_a_step_recorded_clears_the_reason_an_earlier_attempt_left(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None], reason: str
) -> None:
    """A bridge that failed once, or a bug in a step or in an echo that went away, left
    its reason on the notification while it went on and sent its steps: shown as failing
    in the admin and the API until it completed."""
    notification = NotificationFactory(status=Notification.Status.RUNNING, error=reason)
    StepFactory(
        notification=notification, step_id="inbox", position=0, status=Step.Status.COMPLETED
    )
    execute.answers = [EMAIL]

    run(notification)

    notification.refresh_from_db()
    assert notification.steps.filter(step_id="reminder").exists()
    assert (notification.status, notification.error) == ("running", "")


def test_task_backs_off_exponentially_with_jitter(
    execute: FakeExecute, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Doubling from the setting, and up to half as much again at random: notifications
    that failed together (a bridge down) do not all come back at the same instant."""
    settings.NORM_BRIDGE_MAX_RETRIES = 5
    settings.NORM_BRIDGE_RETRY_BACKOFF = 3.0
    notification = NotificationFactory()
    execute.answers = [bridge.BridgeUnavailable("BridgeTimeout", "no answer")]
    countdowns: list[float] = []

    class Retried(Exception):
        pass

    def fake_retry(*, countdown: float, exc: Exception, **kwargs: Any) -> Exception:
        countdowns.append(countdown)
        return Retried()

    monkeypatch.setattr(tasks.echo_run, "retry", fake_retry)
    for retries in (0, 1, 2, 2):
        with pytest.raises(Retried):
            tasks.echo_run.apply(
                args=[str(notification.pk)], headers={tasks.BRIDGE_RETRIES: retries}, throw=True
            )
    first, second, third, third_again = countdowns
    assert 3.0 <= first <= 4.5 and 6.0 <= second <= 9.0
    assert 12.0 <= third <= 18.0 and 12.0 <= third_again <= 18.0
    assert third != third_again


def test_a_notification_created_as_its_trigger_was_canceled_is_canceled_unsent(
    execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    notification = NotificationFactory()
    TriggerEvent.objects.filter(pk=notification.trigger_event_id).update(canceled_at=timezone.now())
    execute.answers = [EMAIL]
    run(notification)

    notification.refresh_from_db()
    assert notification.status == Notification.Status.CANCELED
    assert execute.calls == [] and Step.objects.count() == 0 and enqueued.calls == []


@pytest.mark.parametrize(
    "answer", [{"done": True}, bridge.BridgeError("StepFailed", "the bridge refused")]
)
def test_canceled_while_the_bridge_answered_stays_canceled_whatever_the_answer(
    enqueued: Enqueued,
    run: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    answer: dict[str, Any] | Exception,
) -> None:
    notification = NotificationFactory()

    def cancel_then_answer(url: str, **kwargs: Any) -> dict[str, Any]:
        operations.notification_cancel(notification=notification)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(bridge, "execute", cancel_then_answer)
    run(notification)

    notification.refresh_from_db()
    assert (notification.status, notification.error) == (Notification.Status.CANCELED, "")


def test_an_in_app_steps_state_says_when_it_was_seen_and_when_read() -> None:
    """What the bridge gets as an in-app step's result (all four keys, as Novu's
    framework requires): whether and when the subscriber saw it, and read it."""
    seen = timezone.now() - timedelta(hours=2)
    read = seen + timedelta(hours=1)
    message = MessageFactory(step__status=Step.Status.COMPLETED, seen_at=seen, read_at=read)

    [state] = selectors.bridge_state(notification=message.step.notification)

    assert state["outputs"] == {
        "seen": True,
        "read": True,
        "lastSeenDate": iso_z(seen),
        "lastReadDate": iso_z(read),
    }
    assert selectors.in_app_result(None) == {
        "seen": False,
        "read": False,
        "lastSeenDate": None,
        "lastReadDate": None,
    }
