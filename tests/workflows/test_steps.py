"""A workflow's steps after the first, driven through the whole pipeline against norm's
SDK served over loopback: delays, steps norm has no provider for, skips, and what a
duplicate task does."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from email import message_from_bytes, policy
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.db.models import F

from config import pipeline
from config.dates import iso_z
from messaging import services as messaging_services
from messaging.models import Message
from tests.conftest import Enqueued, Respond, json_serving, sdk_serving, while_held
from tests.factories import BridgeSyncFactory, BridgeWorkflowFactory, api_for, client_with_key
from tests.messaging.test_message_worker import Inbox, smtp_serving
from tests.workflows.conftest import Capture, run_task
from workflows import selectors
from workflows import tasks as workflow_tasks
from workflows.models import Notification, Step
from workflows.sdk import Bridge, Context, WorkflowExecutionFailedError, workflow
from workflows.services import echo

pytestmark = pytest.mark.django_db


@workflow("steps")
def steps(ctx: Context) -> None:
    """The steps the payload lists, in order: `[type, stepId, outputs]` each."""
    for step_type, step_id, outputs in ctx.payload.get("steps", []):
        getattr(ctx.step, step_type)(step_id, (lambda o: lambda: o)(outputs))


# What the next calls of `reminder` do once they have read the in-app step's result:
# each call takes the first (to interleave two echo runs at the bridge).
HOOKS: list[Callable[[dict[str, Any]], None]] = []


@workflow("reminder")
def reminder(ctx: Context) -> None:
    """An in-app message, then a reminder an hour later if it is still unread."""
    inbox = ctx.step.in_app("inbox", lambda: {"body": "Your order shipped"})
    if HOOKS:
        HOOKS.pop(0)(inbox)
    if not inbox["read"]:
        ctx.step.delay("wait", lambda: {"amount": 1, "unit": "hours"})
        ctx.step.email("nudge", lambda: {"subject": "Unread", "body": "Your order shipped"})


@workflow("skipping")
def skipping(ctx: Context) -> None:
    """One step of each kind, each skipped when the payload's `skip` lists it."""
    skip = ctx.payload.get("skip", [])
    ctx.step.in_app("inbox", lambda: {"body": "Hello"}, skip=lambda: "inbox" in skip)
    ctx.step.delay("wait", lambda: {"amount": 0, "unit": "seconds"}, skip=lambda: "wait" in skip)
    ctx.step.email("mail", lambda: {"subject": "Hi", "body": "Hello"}, skip=lambda: "mail" in skip)
    ctx.step.custom("calc", lambda: {"total": 3}, skip=lambda: "calc" in skip)


class Pipeline:
    """norm's stages run one task at a time, as the broker would hand them out."""

    def __init__(self, key: str, enqueued: Enqueued, capture: Capture) -> None:
        self.api, self.enqueued, self.capture = api_for(key), enqueued, capture

    def trigger(self, workflow_id: str, payload: dict[str, Any], **subscriber: Any) -> Notification:
        body = {
            "name": workflow_id,
            "to": {"subscriberId": "ann", "email": "ann@example.com", **subscriber},
            "payload": payload,
            "transactionId": "tx-1",
        }
        with self.capture(execute=True):
            response = self.api.post(
                "/v1/events/trigger", data=json.dumps(body), content_type="application/json"
            )
        assert response.status_code == 201, response.content
        self.drain()
        return Notification.objects.get()

    def drain(self, until: Callable[[], bool] = lambda: False) -> None:
        """Every task enqueued, and those they enqueue, until none is left (or `until`
        holds); a step not due yet is left waiting by its message task, as a broker's
        countdown would."""
        while self.enqueued.calls and not until():
            task, args, _ = self.enqueued.calls.pop(0)
            run_task(task, args, self.capture)

    def reconcile(self) -> None:
        with self.capture(execute=True):
            workflow_tasks.reconcile()
        self.drain()

    @staticmethod
    def time_passes(seconds: float) -> None:
        """Every time the pipeline wrote is `seconds` further in the past."""
        back = timedelta(seconds=seconds)
        Step.objects.update(
            created_at=F("created_at") - back,
            due_at=F("due_at") - back,
            enqueued_at=F("enqueued_at") - back,
        )
        Notification.objects.update(updated_at=F("updated_at") - back)


@pytest.fixture
def smtp(settings: Any) -> Iterator[Inbox]:
    inbox = Inbox()
    with smtp_serving(settings, inbox):
        yield inbox


@pytest.fixture
def norm(enqueued: Enqueued, django_capture_on_commit_callbacks: Capture) -> Iterator[Pipeline]:
    client, key = client_with_key()
    with sdk_serving(Bridge(workflows=[steps, reminder, skipping], secret_key=key)) as url:
        client.bridge_url = url
        client.save(update_fields=["bridge_url"])
        BridgeWorkflowFactory(client=client, workflow_id="steps")
        BridgeWorkflowFactory(client=client, workflow_id="reminder")
        BridgeWorkflowFactory(client=client, workflow_id="skipping")
        BridgeSyncFactory(client=client, flavour="norm")
        yield Pipeline(key, enqueued, django_capture_on_commit_callbacks)
    HOOKS.clear()


def states(notification: Notification) -> list[tuple[str, str, str]]:
    return [(s.step_id, s.status, s.error) for s in notification.steps.order_by("position")]


def test_steps_of_channels_without_a_provider_are_skipped_and_the_workflow_goes_on(
    norm: Pipeline, smtp: Inbox
) -> None:
    """norm has no sms, push or chat provider: such a step failed the notification, so
    the email after it was never sent (nor on a retry), where Novu goes on."""
    notification = norm.trigger(
        "steps",
        {
            "steps": [
                ["in_app", "inbox", {"body": "Hello"}],
                ["sms", "text", {"body": "Hello"}],
                ["push", "phone", {"subject": "Hi", "body": "Hello"}],
                ["chat", "slack", {"body": "Hello"}],
                ["email", "mail", {"subject": "Hi", "body": "Hello"}],
            ]
        },
    )

    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("completed", "")
    no_provider = "no provider is configured for the {} channel (NORM_PROVIDERS)"
    assert states(notification) == [
        ("inbox", "completed", ""),
        ("text", "skipped", no_provider.format("sms")),
        ("phone", "skipped", no_provider.format("push")),
        ("slack", "skipped", no_provider.format("chat")),
        ("mail", "completed", ""),
    ]
    assert [e.rcpt_tos for e in smtp.envelopes] == [["ann@example.com"]]
    assert sorted(Message.objects.values_list("channel", "status")) == [
        ("email", "sent"),
        ("in_app", "sent"),
    ]


def read_inbox() -> None:
    messaging_services.messages_mark(messages=Message.objects.filter(channel="in_app"), read=True)


def at_the_echo_after_the_inbox(norm: Pipeline) -> Notification:
    """`reminder` triggered, its in-app message sent; its next echo is the one due."""
    body = {"name": "reminder", "to": "ann", "payload": {}}
    response = norm.api.post(
        "/v1/events/trigger", data=json.dumps(body), content_type="application/json"
    )
    assert response.status_code == 201, response.content
    norm.drain(until=lambda: Step.objects.filter(status=Step.Status.COMPLETED).exists())
    assert norm.enqueued.of(pipeline.ECHO) and len(norm.enqueued.calls) == 1
    norm.enqueued.clear()
    return Notification.objects.get()


def interleaved_echoes(
    notification: Notification,
    first_at_bridge: Callable[[dict[str, Any]], None],
    second_at_bridge: Callable[[dict[str, Any]], None],
) -> None:
    """Two echo runs of `notification` (one re-sent by the reconciler, say). The first, at
    the bridge, runs `first_at_bridge` and starts the second; the second's call to the
    bridge runs `second_at_bridge` once the first run has recorded its answer (it may
    raise, as the workflow's code would)."""
    second_called, first_recorded = threading.Event(), threading.Event()
    second = threading.Thread(
        target=lambda: (
            echo.echo_run(notification_id=str(notification.pk)),
            connection.close(),
        )
    )

    def first(inbox: dict[str, Any]) -> None:
        first_at_bridge(inbox)
        second.start()
        assert second_called.wait(10)

    def then_second(inbox: dict[str, Any]) -> None:
        second_called.set()
        assert first_recorded.wait(10)
        second_at_bridge(inbox)

    HOOKS[:] = [first, then_second]
    echo.echo_run(notification_id=str(notification.pk))
    first_recorded.set()
    second.join(10)
    assert not HOOKS


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_echo_answered_done_on_an_older_state_leaves_the_step_recorded_meanwhile(
    norm: Pipeline,
) -> None:
    """Two echo runs of one notification read the state on either side of the subscriber
    reading the in-app message: the first is answered the delay, the second done. The
    second completed the notification under the delay, whose email then never went out."""
    notification = at_the_echo_after_the_inbox(norm)

    def reads_it(inbox: dict[str, Any]) -> None:
        assert not inbox["read"]
        read_inbox()  # the subscriber reads it; the second run's state says so
        connection.close()

    def sees_it_read(inbox: dict[str, Any]) -> None:
        assert inbox["read"]  # and so is answered done

    interleaved_echoes(notification, reads_it, sees_it_read)

    notification.refresh_from_db()
    assert (notification.status, notification.completed_at) == ("running", None)
    assert list(notification.steps.values_list("step_id", "status")) == [
        ("inbox", "completed"),
        ("wait", "scheduled"),
    ]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("error", "code"),
    [
        # An error the bridge does not type: a 500, retried, here at the task's last try.
        (RuntimeError("the shop's API is down"), "BridgeError"),
        (WorkflowExecutionFailedError("the shop's API is down"), "WorkflowExecutionFailedError"),
    ],
)
def test_a_duplicate_echo_refused_on_an_older_state_does_not_fail_under_the_step_recorded_meanwhile(
    norm: Pipeline, error: Exception, code: str
) -> None:
    """As above, but the workflow's code throws for the second run's older state: that
    failed the notification under the delay the first run had recorded, whose email then
    never went out."""
    notification = at_the_echo_after_the_inbox(norm)

    def throws(inbox: dict[str, Any]) -> None:
        raise error

    interleaved_echoes(notification, lambda inbox: None, throws)

    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("running", ""), notification.error
    assert list(notification.steps.values_list("step_id", "status")) == [
        ("inbox", "completed"),
        ("wait", "scheduled"),
    ]
    # The next echo asks with the current state: the same refusal then stands.
    HOOKS[:] = [throws]
    Step.objects.filter(step_id="wait").update(status=Step.Status.COMPLETED)
    echo.echo_run(notification_id=str(notification.pk))
    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("failed", code)
    assert "the shop's API is down" in notification.error


@pytest.mark.django_db(transaction=True)
def test_a_done_answer_waiting_for_a_step_being_recorded_does_not_complete_under_it(
    norm: Pipeline,
) -> None:
    """The same, with the second run's UPDATE waiting for the first run's transaction:
    PostgreSQL re-checks the row it waited for, but would not see the new step."""
    notification = at_the_echo_after_the_inbox(norm)
    state = selectors.bridge_state(notification=notification)
    wait = {"stepId": "wait", "type": "delay", "outputs": {"amount": 1, "unit": "hours"}}

    def record_the_delay() -> None:
        echo._record_answer(notification=notification, state=state, answer=wait)

    def answered_done() -> None:
        echo.echo_run(notification_id=str(notification.pk))

    read_inbox()  # the second run reads it read: done
    while_held(record_the_delay, answered_done)

    notification.refresh_from_db()
    assert (notification.status, notification.completed_at) == ("running", None)
    assert notification.steps.get(step_id="wait").status == Step.Status.SCHEDULED


def test_a_delay_ending_past_the_year_9999_fails_as_an_unsupported_delay(norm: Pipeline) -> None:
    """3,000,000 days is a valid delay to Novu's schema and fits a timedelta, but no
    date holds its end: norm failed the notification as BridgeInvalidResponse ("norm
    could not record the bridge's answer: OverflowError"), blaming the bridge, with an
    error's traceback in the worker's log; 1e10 days was an UnsupportedDelay."""
    notification = norm.trigger(
        "steps", {"steps": [["delay", "wait", {"amount": 3_000_000, "unit": "days"}]]}
    )

    notification.refresh_from_db()
    assert (notification.status, notification.error_code, notification.error) == (
        "failed",
        "UnsupportedDelay",
        "step 'wait': delay of 3000000 days is too long",
    )
    assert not notification.steps.exists()


@pytest.mark.parametrize(
    ("unit", "seconds"),
    [
        ("seconds", 1),
        ("minutes", 60),
        ("hours", 3600),
        ("days", 86400),
        ("weeks", 7 * 86400),
        ("months", 30 * 86400),  # as Novu counts one
    ],
)
def test_a_delay_waits_its_amount_in_every_unit_novus_framework_allows(
    norm: Pipeline, unit: str, seconds: int, settings: Any
) -> None:
    notification = norm.trigger(
        "steps", {"steps": [["delay", "wait", {"amount": 2.5, "unit": unit}]]}
    )

    wait = notification.steps.get()
    assert wait.status == Step.Status.SCHEDULED
    assert wait.due_at - wait.created_at == pytest.approx(
        timedelta(seconds=2.5 * seconds), abs=timedelta(seconds=1)
    )
    on_broker = 2.5 * seconds <= settings.NORM_BROKER_MAX_COUNTDOWN
    assert (wait.enqueued_at is not None) == on_broker


@pytest.mark.parametrize("timed", [{"type": "timed"}, {}], ids=["typed", "cron alone"])
def test_a_timed_delay_waits_for_its_crons_next_fire_on_the_subscribers_clock(
    norm: Pipeline, smtp: Inbox, settings: Any, timed: dict[str, str]
) -> None:
    """Nine in the morning in New York, on weekdays: the step is due then, waits as a
    regular delay does (the reconciler drives it once due) and its result is the time it
    actually waited. Without a `type`, a cron makes the delay timed, as in Novu."""
    cron = "0 9 * * MON-FRI"
    notification = norm.trigger(
        "steps",
        {
            "steps": [
                ["in_app", "inbox", {"body": "Hello"}],
                ["delay", "wait", timed | {"cron": cron}],
                ["email", "mail", {"subject": "Hi", "body": "Hello"}],
            ]
        },
        timezone="America/New_York",
    )

    wait = notification.steps.get(step_id="wait")
    assert wait.status == Step.Status.SCHEDULED and wait.outputs == timed | {"cron": cron}
    due = wait.due_at.astimezone(ZoneInfo("America/New_York"))
    assert (due.hour, due.minute, due.second, due.microsecond) == (9, 0, 0, 0)
    assert due.isoweekday() <= 5
    # The first such time after the step was reached: at most three days on (Friday's
    # to Monday's), and no weekday nine o'clock in between.
    assert wait.created_at < wait.due_at <= wait.created_at + timedelta(days=3, hours=1)
    day = (wait.due_at - timedelta(days=1)).astimezone(ZoneInfo("America/New_York"))
    assert day.isoweekday() > 5 or day < wait.created_at

    norm.time_passes(
        (wait.due_at - wait.created_at).total_seconds() + 2 * settings.NORM_RECONCILE_GRACE
    )
    norm.reconcile()

    notification.refresh_from_db()
    assert notification.status == Notification.Status.COMPLETED
    assert states(notification) == [
        ("inbox", "completed", ""),
        ("wait", "completed", ""),
        ("mail", "completed", ""),
    ]
    wait.refresh_from_db()
    assert wait.result["duration"] >= (wait.due_at - wait.created_at).total_seconds() * 1000
    assert len(smtp.envelopes) == 1


def test_a_timed_delay_with_an_invalid_cron_fails_naming_the_step_and_the_cron(
    norm: Pipeline, smtp: Inbox
) -> None:
    notification = norm.trigger(
        "steps",
        {
            "steps": [
                ["email", "mail", {"subject": "Hi", "body": "Hello"}],
                ["delay", "wait", {"type": "timed", "cron": "0 25 * * *"}],
                ["email", "later", {"subject": "Hi", "body": "Again"}],
            ]
        },
    )

    notification.refresh_from_db()
    assert (notification.status, notification.error_code, notification.error) == (
        "failed",
        "UnsupportedDelay",
        "step 'wait': delay cron '0 25 * * *' is not a valid cron expression: bad hour",
    )
    assert states(notification) == [("mail", "completed", "")]  # the steps before it ran
    assert len(smtp.envelopes) == 1


@pytest.mark.parametrize("amount", [0, 0.0])
def test_a_zero_delay_goes_on_at_once(norm: Pipeline, smtp: Inbox, amount: float) -> None:
    notification = norm.trigger(
        "steps",
        {
            "steps": [
                ["delay", "wait", {"amount": amount, "unit": "seconds"}],
                ["email", "mail", {"subject": "Hi", "body": "Hello"}],
            ]
        },
    )

    notification.refresh_from_db()
    assert notification.status == Notification.Status.COMPLETED
    assert states(notification) == [("wait", "completed", ""), ("mail", "completed", "")]
    assert len(smtp.envelopes) == 1


def test_delays_in_a_row_and_last_are_driven_from_the_database_alone(
    norm: Pipeline, smtp: Inbox, settings: Any
) -> None:
    """Workers and broker down while the delays come due (the broker emptied): the
    reconciler finds each due step in the database and the workflow runs to its end,
    each step once."""
    notification = norm.trigger(
        "steps",
        {
            "steps": [
                ["delay", "short", {"amount": 2, "unit": "minutes"}],  # kept by the broker
                ["email", "mail", {"subject": "Hi", "body": "Hello"}],
                ["delay", "long", {"amount": 2, "unit": "days"}],  # waits in the database
                ["delay", "last", {"amount": 1, "unit": "minutes"}],
            ]
        },
    )
    assert states(notification) == [("short", "scheduled", "")]

    for recorded in (["short", "mail", "long"], ["short", "mail", "long", "last"], None):
        norm.time_passes(2 * 86400 + 2 * settings.NORM_RECONCILE_GRACE)
        norm.reconcile()
        if recorded:
            assert [step_id for step_id, *_ in states(notification)] == recorded

    notification.refresh_from_db()
    assert notification.status == Notification.Status.COMPLETED
    assert {s for _, s, _ in states(notification)} == {"completed"}
    waited = dict(notification.steps.filter(type="delay").values_list("step_id", "result"))
    assert waited["short"]["duration"] >= 120_000 and waited["last"]["duration"] >= 60_000
    assert waited["long"]["duration"] >= 2 * 86400_000
    assert len(smtp.envelopes) == 1
    norm.reconcile()  # nothing left to drive
    assert norm.enqueued.calls == []


@pytest.mark.parametrize("skipped", [["inbox"], ["inbox", "wait", "mail", "calc"]])
def test_a_workflow_whose_steps_skip_from_the_first_completes(
    norm: Pipeline, smtp: Inbox, skipped: list[str]
) -> None:
    notification = norm.trigger("skipping", {"skip": skipped})

    notification.refresh_from_db()
    assert notification.status == Notification.Status.COMPLETED
    assert notification.completed_at is not None
    assert {step_id: status for step_id, status, _ in states(notification)} == {
        step_id: "skipped" if step_id in skipped else "completed"
        for step_id in ("inbox", "wait", "mail", "calc")
    }
    assert len(smtp.envelopes) == (0 if "mail" in skipped else 1)


# A skipped step's result as Novu's worker sends it back, which Novu's framework holds to
# the type's result schema when it replays the step, skipped or not.
REQUIRED_IN_RESULT = {"digest": "events", "throttle": "throttled", "tool": "", "http_request": ""}


def comments_bridge(step_type: str) -> Respond:
    """A bridge in norm's mode (BRIDGE.md) whose workflow is Novu's digest example: a
    `collect` step of `step_type`, skipped (one comment needs no digest), then an email
    listing the digest's events. norm's SDK declares no digest, throttle, tool or
    http_request step, so the bridge is this one, which replays `collect` as Novu's
    framework does: its result refused without the key the type's schema requires."""

    def answer(step_id: str, kind: str, outputs: dict[str, Any], *, skip: bool) -> Any:
        return (
            200,
            {
                "stepId": step_id,
                "type": kind,
                "done": False,
                "outputs": outputs,
                "providers": {},
                "options": {"skip": skip},
                "metadata": {"status": "success", "error": False, "duration": 0.5},
            },
            {},
        )

    def respond(method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
        if method != "POST":
            return 200, {"status": "ok"}, {}
        state = {e["stepId"]: e for e in json.loads(body)["state"]}
        if "collect" not in state:
            return answer("collect", step_type, {}, skip=True)
        result, required = state["collect"]["outputs"], REQUIRED_IN_RESULT[step_type]
        if required and required not in result:
            message = f"must have required property '{required}' (step `collect`)"
            return 400, {"code": "ExecutionStateResultInvalidError", "message": message}, {}
        if "mail" in state:
            return 200, {"done": True, "outputs": {}, "options": {"skip": False}}, {}
        events = result.get("events", [{"payload": {"comment": "no digest"}}])
        lines = "; ".join(event["payload"]["comment"] for event in events)
        return answer("mail", "email", {"subject": f"{len(events)} new", "body": lines}, skip=False)

    return respond


@pytest.mark.parametrize("step_type", sorted(REQUIRED_IN_RESULT))
def test_a_skipped_step_of_a_type_norm_does_not_run_is_recorded_and_the_workflow_goes_on(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture, smtp: Inbox, step_type: str
) -> None:
    """A digest (or throttle, tool, http_request) step norm does not run failed the
    notification with UnsupportedStepType even when the bridge skipped it, though a skipped
    step asks nothing of norm: the email after it was never sent. It is recorded skipped,
    with Novu's result for the type (a digest's: the run's own event), and the workflow
    goes on."""
    client, key = client_with_key()
    with json_serving(comments_bridge(step_type)) as url:
        client.bridge_url = url
        client.save(update_fields=["bridge_url"])
        BridgeWorkflowFactory(client=client, workflow_id="comments")
        BridgeSyncFactory(client=client, flavour="norm")
        norm = Pipeline(key, enqueued, django_capture_on_commit_callbacks)
        notification = norm.trigger("comments", {"comment": "First!"})

    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("completed", "")
    assert states(notification) == [("collect", "skipped", ""), ("mail", "completed", "")]
    own_event = {
        "id": str(notification.pk),
        "time": iso_z(notification.created_at),
        "payload": {"comment": "First!"},
    }
    assert notification.steps.get(step_id="collect").result == {
        "digest": {"events": [own_event], "eventCount": 1},
        "throttle": {"throttled": False},
    }.get(step_type, {})
    [envelope] = smtp.envelopes
    sent = message_from_bytes(envelope.content, policy=policy.default)
    assert sent["Subject"] == "1 new"
    shown = "First!" if step_type == "digest" else "no digest"
    assert shown in sent.get_body().get_content()
