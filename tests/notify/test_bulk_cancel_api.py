"""Bulk trigger (`POST /v1/events/trigger/bulk`) and cancel (`DELETE /v1/events/trigger/{id}`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.core import mail
from django.db import OperationalError, connection
from django.db.models import DateTimeField, F
from django.http import HttpResponse
from django.utils import timezone

from config import pipeline
from messaging import providers
from messaging import tasks as messaging_tasks
from messaging.models import Message
from notify import services as notify_services
from notify.models import Client, TriggerEvent
from subscribers import tasks as subscriber_tasks
from tests.conftest import Enqueued, ago
from tests.factories import (
    MessageFactory,
    NotificationFactory,
    StepFactory,
    SubscriberFactory,
    TriggerEventFactory,
    api_for,
    client_with_key,
)
from workflows import bridge
from workflows import tasks as workflow_tasks
from workflows.demo import demo_bridge
from workflows.models import Notification, Step
from workflows.services import operations

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]
BULK = "/v1/events/trigger/bulk"
TASKS: dict[str, Callable[..., None]] = {
    pipeline.WORKFLOW.task: workflow_tasks.workflow_run,
    pipeline.SUBSCRIBER.task: subscriber_tasks.subscriber_process,
    pipeline.ECHO.task: workflow_tasks.echo_run,
    pipeline.MESSAGE.task: messaging_tasks.message_send,
    pipeline.CANCEL.task: workflow_tasks.trigger_cancel_finish,
}


class Api:
    """The API as one client; hand-offs registered on commit go to `enqueued`."""

    def __init__(self, key: str, capture: Capture) -> None:
        self.key, self.capture = key, capture

    def __call__(self, method: str, path: str, body: Any = None) -> HttpResponse:
        api = api_for(self.key)
        data = json.dumps(body) if body is not None else None
        with self.capture(execute=True):
            return getattr(api, method)(path, data=data, content_type="application/json")

    def cancel(self, transaction_id: str) -> Any:
        response = self("delete", f"/v1/events/trigger/{transaction_id}")
        assert response.status_code == 200, response.content
        assert response["Content-Type"].startswith("application/json")
        return response.json()


@pytest.fixture
def execute_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The bridge at the network edge: the demo workflows, answered in process."""
    calls: list[str] = []

    def execute(
        url: str, *, secrets: Sequence[str], workflow_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        calls.append(workflow_id)
        answer = demo_bridge.workflows[workflow_id].execute(json.loads(json.dumps(body)))
        return json.loads(json.dumps(answer))

    monkeypatch.setattr(bridge, "discover", lambda url, *, secrets: demo_bridge.discover())
    monkeypatch.setattr(bridge, "execute", execute)
    return calls


@pytest.fixture
def keyed() -> tuple[Client, str]:
    return client_with_key()


@pytest.fixture
def api(keyed: tuple[Client, str], django_capture_on_commit_callbacks: Capture) -> Api:
    return Api(keyed[1], django_capture_on_commit_callbacks)


@pytest.fixture
def pump(enqueued: Enqueued, django_capture_on_commit_callbacks: Capture) -> Callable[[], None]:
    """Run every captured hand-off in order, as the workers would, except delayed ones."""

    def run() -> None:
        while enqueued.taken < len(enqueued.calls):
            task, args, options = enqueued.calls[enqueued.taken]
            enqueued.taken += 1
            if options["countdown"]:
                continue  # still waiting on the broker
            with django_capture_on_commit_callbacks(execute=True):
                TASKS[task](*json.loads(json.dumps(args)))

    return run


def welcome(subscriber_id: str, **extra: Any) -> dict[str, Any]:
    to = {"subscriberId": subscriber_id, "email": f"{subscriber_id}@example.com"}
    return {"name": "welcome", "to": to, "payload": {"delaySeconds": 60}, **extra}


# --- bulk ----------------------------------------------------------------------------------


def test_bulk_answers_each_event_on_its_own(
    api: Api, keyed: tuple[Client, str], execute_calls: list[str], enqueued: Enqueued
) -> None:
    events = [
        welcome("ann"),
        {"name": "nope", "to": "bob", "transactionId": "tx-bad"},
        {"name": "welcome", "to": []},
        "not an event",
        welcome("cid", transactionId="tx-cid"),
        {"to": "dan", "transactionId": "tx-unnamed"},
    ]
    response = api("post", BULK, {"events": events})
    assert response.status_code == 201, response.content
    results = response.json()["data"]

    statuses = ["processed", "error", "error", "error", "processed", "error"]
    assert [r["status"] for r in results] == statuses
    assert all(r["acknowledged"] is True for r in results)
    assert "nope" in results[1]["error"][0] and results[1]["transactionId"] == "tx-bad"
    assert results[2]["error"][0] and results[3]["error"][0]
    assert results[4]["transactionId"] == "tx-cid"
    # A field refused reads as the trigger's 400 says it, not as the serializer's repr.
    assert results[5] == {
        "acknowledged": True,
        "status": "error",
        "error": ["name: This field is required."],
        "transactionId": "tx-unnamed",
    }
    stored = TriggerEvent.objects.filter(client=keyed[0])
    assert sorted(stored.values_list("transaction_id", flat=True)) == sorted(
        [results[0]["transactionId"], "tx-cid"]
    )
    assert sorted(args[0] for args in enqueued.of(pipeline.WORKFLOW)) == sorted(
        stored.values_list("pk", flat=True)
    )


def test_bulk_repeats_of_a_transaction_id_store_one_event(
    api: Api, execute_calls: list[str]
) -> None:
    events = [welcome("ann", transactionId="tx-1"), welcome("ann", transactionId="tx-1")]
    results = api("post", BULK, {"events": events}).json()["data"]
    assert [(r["status"], r["transactionId"]) for r in results] == [("processed", "tx-1")] * 2
    assert TriggerEvent.objects.count() == 1


def test_bulk_takes_100_events(api: Api, execute_calls: list[str], enqueued: Enqueued) -> None:
    events = [welcome(f"user-{i}") for i in range(100)]
    response = api("post", BULK, {"events": events})
    assert response.status_code == 201, response.content
    assert {r["status"] for r in response.json()["data"]} == {"processed"}
    assert len(response.json()["data"]) == 100
    assert len(enqueued.of(pipeline.WORKFLOW)) == 100


def test_bulk_stores_all_of_its_events_in_one_transaction_or_none(
    api: Api, execute_calls: list[str], enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_insert = notify_services.insert_once
    inserts: list[TriggerEvent] = []

    def insert_then_lose_the_database(row: TriggerEvent) -> bool:
        inserts.append(row)
        if len(inserts) == 3:
            raise OperationalError("the database went away")
        return real_insert(row)

    monkeypatch.setattr(notify_services, "insert_once", insert_then_lose_the_database)
    events = [welcome(f"user-{i}", transactionId=f"tx-{i}") for i in range(5)]

    assert api("post", BULK, {"events": events}).status_code == 503  # nothing stored
    assert not TriggerEvent.objects.exists() and enqueued.calls == []

    # novu-py retries a 5xx with the same body: every event is stored, once.
    assert api("post", BULK, {"events": events}).status_code == 201
    assert TriggerEvent.objects.count() == 5 and len(enqueued.of(pipeline.WORKFLOW)) == 5


@pytest.mark.parametrize(
    "body",
    [
        {"events": [{"name": "welcome", "to": f"user-{i}"} for i in range(101)]},
        {"events": []},
        {"events": {"name": "welcome", "to": "ann"}},
        {},
    ],
)
def test_bulk_over_100_events_or_no_list_is_400(
    api: Api, execute_calls: list[str], enqueued: Enqueued, body: Any
) -> None:
    response = api("post", BULK, body)
    assert response.status_code == 400, response.content
    error = response.json()
    # novu-py raises its typed PayloadValidationExceptionDto only with these keys.
    assert (error["statusCode"], error["path"]) == (400, BULK)
    assert error["type"] and error["errors"][0]["field"] == "events"
    assert not TriggerEvent.objects.exists()
    assert enqueued.calls == []


# --- cancel -------------------------------------------------------------------------------


def test_cancel_stops_a_notification_waiting_on_its_delay(
    api: Api, execute_calls: list[str], pump: Callable[[], None], enqueued: Enqueued
) -> None:
    api("post", "/v1/events/trigger", welcome("ann", transactionId="tx-1"))
    pump()
    notification = Notification.objects.get()
    wait = notification.steps.get(step_id="wait")
    assert (notification.status, wait.status) == ("running", "scheduled")
    assert wait.due_at > timezone.now() + timedelta(seconds=50)

    assert api.cancel("tx-1") == {"data": True}
    assert api.cancel("tx-1") == {"data": False}

    notification.refresh_from_db()
    assert notification.status == Notification.Status.CANCELED
    assert {s.step_id: s.status for s in notification.steps.all()} == {
        "inbox": "completed",
        "wait": "canceled",
    }
    # Ended when canceled, as the activity's completedAt and its last job's time show.
    assert notification.completed_at is not None
    assert notification.steps.get(step_id="wait").completed_at is not None
    # A minute later the broker delivers the delayed hand-off; the reconciler could too.
    Step.objects.filter(pk=wait.pk).update(due_at=timezone.now() - timedelta(seconds=1))
    enqueued.clear()
    bridge_calls = len(execute_calls)
    with api.capture(execute=True):
        messaging_tasks.message_send(wait.pk)
        workflow_tasks.echo_run(str(notification.pk))

    assert Step.objects.get(pk=wait.pk).status == Step.Status.CANCELED
    assert enqueued.calls == []
    assert len(execute_calls) == bridge_calls
    assert list(Message.objects.values_list("step__step_id", flat=True)) == ["inbox"]
    assert not notification.steps.filter(step_id="reminder").exists()


def test_cancel_stops_a_scheduled_message_before_it_is_sent(
    api: Api, keyed: tuple[Client, str]
) -> None:
    subscriber = SubscriberFactory(client=keyed[0], email="ann@example.com")
    step = StepFactory(
        notification__trigger_event__client=keyed[0],
        notification__subscriber=subscriber,
        notification__trigger_event__transaction_id="tx-1",
        type="email",
    )
    assert api.cancel("tx-1") == {"data": True}
    messaging_tasks.message_send(step.pk)

    step.refresh_from_db()
    assert step.status == Step.Status.CANCELED
    assert Notification.objects.get().status == Notification.Status.CANCELED
    assert not Message.objects.exists()
    assert mail.outbox == []


def test_cancel_stops_only_the_named_triggers_notifications(
    api: Api, keyed: tuple[Client, str]
) -> None:
    """Another trigger of the client, and another client's trigger of the same
    transactionId, go on."""
    other_client, _ = client_with_key()
    steps = {
        (client, transaction_id): StepFactory(
            notification__trigger_event__client=client,
            notification__trigger_event__transaction_id=transaction_id,
        )
        for client, transaction_id in [
            (keyed[0], "tx-1"),
            (keyed[0], "tx-2"),
            (other_client, "tx-1"),
        ]
    }

    assert api.cancel("tx-1") == {"data": True}

    statuses = {
        key: (
            Notification.objects.get(pk=step.notification_id).status,
            Step.objects.get(pk=step.pk).status,
        )
        for key, step in steps.items()
    }
    assert statuses == {
        (keyed[0], "tx-1"): (Notification.Status.CANCELED, Step.Status.CANCELED),
        (keyed[0], "tx-2"): (Notification.Status.RUNNING, Step.Status.SCHEDULED),
        (other_client, "tx-1"): (Notification.Status.RUNNING, Step.Status.SCHEDULED),
    }


def test_a_triggers_cancel_ends_every_notification_however_the_table_stores_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each chunk starts after the last subscriber of the one before: it must be read in
    subscriber order. Read in the order the table stores them, a notification updated
    since (its row rewritten at the table's end) came last in a chunk, the next chunk
    started after its subscriber, and those between were never canceled: sent, a day's
    delay later, or shown running until their echo came back."""
    monkeypatch.setattr(operations, "CANCEL_CHUNK", 2)
    event = TriggerEventFactory(status=TriggerEvent.Status.PROCESSED)
    made = [NotificationFactory(trigger_event=event) for _ in range(5)]
    # Rewritten: stored after the others now, as each step recorded rewrites its row.
    Notification.objects.filter(pk__in=[made[0].pk, made[1].pk]).update(
        status=Notification.Status.RUNNING
    )
    TriggerEvent.objects.filter(pk=event.pk).update(canceled_at=timezone.now())

    with connection.cursor() as cursor:
        # The table read as stored, as PostgreSQL reads a trigger's notifications when they
        # are most of the table (here, a few rows, it would use an index).
        cursor.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
        assert operations.notifications_cancel(trigger_event_id=event.pk) == 5

    assert set(Notification.objects.values_list("status", flat=True)) == {
        Notification.Status.CANCELED
    }


def test_cancel_of_a_trigger_larger_than_a_chunk_ends_every_chunk(
    api: Api, keyed: tuple[Client, str], monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """A broadcast's cancel goes CANCEL_CHUNK notifications to a transaction: those of
    every chunk end with their waiting steps, and a message waiting to be sent again is
    given up; a notification that had ended, and a step being sent, are left as they are."""
    monkeypatch.setattr(operations, "CANCEL_CHUNK", 2)
    event = TriggerEventFactory(
        client=keyed[0], transaction_id="tx-1", status=TriggerEvent.Status.PROCESSED
    )

    def step(
        status: str = Step.Status.SCHEDULED,
        notification: str = Notification.Status.RUNNING,
        message: str | None = None,
    ) -> Step:
        made = StepFactory(
            notification__trigger_event=event, notification__status=notification, status=status
        )
        if message is not None:
            MessageFactory(step=made, status=message)
        return made

    # Made in subscriber order, the order of the chunks: three, the ended one between two.
    steps = {
        "waiting": step(),
        "retrying": step(message=Message.Status.SENDING),
        "ended": step(Step.Status.COMPLETED, Notification.Status.COMPLETED, Message.Status.SENT),
        "sending": step(Step.Status.PROCESSING, message=Message.Status.SENDING),
        "retrying too": step(message=Message.Status.SENDING),
        "waiting too": step(),
    }

    assert api.cancel("tx-1") == {"data": True}

    def now(step: Step) -> tuple[str, str, tuple[str, str] | None]:
        step.refresh_from_db()
        message = Message.objects.filter(step=step).values_list("status", "error").first()
        return step.notification.status, step.status, message

    ended = (Notification.Status.CANCELED, Step.Status.CANCELED)
    given_up = (Message.Status.FAILED, operations.CANCELED_BEFORE_RETRY)
    assert {name: now(s) for name, s in steps.items()} == {
        "waiting": (*ended, None),
        "retrying": (*ended, given_up),
        "ended": (Notification.Status.COMPLETED, Step.Status.COMPLETED, ("sent", "")),
        "sending": (Notification.Status.CANCELED, Step.Status.PROCESSING, ("sending", "")),
        "retrying too": (*ended, given_up),
        "waiting too": (*ended, None),
    }
    assert enqueued.of(pipeline.CANCEL) == []  # all of it within the request's budget


def test_a_step_being_sent_is_left_to_finish(
    api: Api, keyed: tuple[Client, str], monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """Cancel arrives while the provider is sending: the send is not half-canceled."""
    subscriber = SubscriberFactory(client=keyed[0], email="ann@example.com")
    step = StepFactory(
        notification__trigger_event__client=keyed[0],
        notification__subscriber=subscriber,
        notification__trigger_event__transaction_id="tx-1",
        type="email",
    )
    answers, send = [], providers.DjangoEmailProvider.send

    def send_while_canceled(provider: providers.Provider, message: Message) -> str:
        answers.append(api.cancel("tx-1"))
        answers.append(Step.objects.get(pk=step.pk).status)
        return send(provider, message)

    monkeypatch.setattr(providers.DjangoEmailProvider, "send", send_while_canceled)
    with api.capture(execute=True):
        messaging_tasks.message_send(step.pk)

    assert answers == [{"data": True}, Step.Status.PROCESSING]
    step.refresh_from_db()
    assert step.status == Step.Status.COMPLETED
    assert Message.objects.get(step=step).status == Message.Status.SENT
    assert [m.to for m in mail.outbox] == [["ann@example.com"]]
    assert Notification.objects.get().status == Notification.Status.CANCELED
    # The echo the finished step hands back finds its notification canceled and stops.
    [(notification_id,)] = enqueued.of(pipeline.ECHO)
    workflow_tasks.echo_run(notification_id)
    assert Notification.objects.get().status == Notification.Status.CANCELED
    assert Step.objects.count() == 1


def test_a_trigger_canceled_before_its_fan_out_notifies_nobody(
    api: Api, execute_calls: list[str], pump: Callable[[], None], enqueued: Enqueued
) -> None:
    api("post", "/v1/events/trigger", welcome("ann", transactionId="tx-1"))
    assert api.cancel("tx-1") == {"data": True}
    pump()

    assert enqueued.of(pipeline.SUBSCRIBER) == []
    assert not Notification.objects.exists()
    assert execute_calls == []
    assert api.cancel("tx-1") == {"data": False}
    # Final: it stayed received, and the admin showed it waiting for its fan-out forever.
    assert TriggerEvent.objects.get().status == TriggerEvent.Status.CANCELED


def test_a_trigger_canceled_between_fan_out_and_subscriber_notifies_nobody(
    api: Api, execute_calls: list[str], enqueued: Enqueued
) -> None:
    api("post", "/v1/events/trigger", {"name": "welcome", "to": ["ann", "bob"]})
    [(event_id,)] = enqueued.of(pipeline.WORKFLOW)
    workflow_tasks.workflow_run(event_id)
    commands = enqueued.of(pipeline.SUBSCRIBER)
    assert len(commands) == 2

    event = TriggerEvent.objects.get()
    assert api.cancel(event.transaction_id) == {"data": True}
    for args in commands:
        with api.capture(execute=True):
            subscriber_tasks.subscriber_process(*args)
    assert not Notification.objects.exists()
    assert enqueued.of(pipeline.ECHO) == []


def test_cancel_of_an_unknown_or_foreign_transaction_is_false(
    api: Api,
    execute_calls: list[str],
    enqueued: Enqueued,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    assert api.cancel("never-triggered") == {"data": False}

    api("post", "/v1/events/trigger", welcome("ann", transactionId="tx-1"))
    other = Api(client_with_key()[1], django_capture_on_commit_callbacks)
    assert other.cancel("tx-1") == {"data": False}
    assert TriggerEvent.objects.get().canceled_at is None


def test_cancel_of_a_finished_trigger_is_false(
    api: Api, execute_calls: list[str], pump: Callable[[], None]
) -> None:
    order = {"name": "order-update", "to": "ann", "payload": {"status": "delayed", "orderId": "7"}}
    api("post", "/v1/events/trigger", order | {"transactionId": "tx-1"})
    pump()
    assert Notification.objects.get().status == Notification.Status.COMPLETED

    assert api.cancel("tx-1") == {"data": False}
    assert Notification.objects.get().status == Notification.Status.COMPLETED


def test_cancel_of_a_finished_trigger_short_of_a_recipient_deleted_since_is_false(
    api: Api, execute_calls: list[str], pump: Callable[[], None]
) -> None:
    """A recipient deleted once the reconciler no longer checks the fan-out (its hour
    over) is not counted out of the trigger, which stays a notification short for good:
    taken for a fan-out still under way, its cancel answered true, with nothing to stop."""
    order = {"name": "order-update", "payload": {"status": "delayed", "orderId": "7"}}
    api("post", "/v1/events/trigger", order | {"to": ["ann", "bob"], "transactionId": "tx-1"})
    pump()
    assert set(Notification.objects.values_list("status", flat=True)) == {"completed"}
    TriggerEvent.objects.update(recheck_from=ago(2 * 3600))
    assert api("delete", "/v1/subscribers/bob").status_code == 200

    assert api.cancel("tx-1") == {"data": False}


def test_a_due_step_of_a_canceled_trigger_the_cancel_has_not_reached_is_not_sent(
    keyed: tuple[Client, str], enqueued: Enqueued
) -> None:
    """A broadcast's cancel commits `canceled_at`, then ends its notifications a chunk at
    a time, the last of them seconds later (or, its request cut off, never). A step of one
    it had not reached yet was claimed and sent by the message worker meanwhile; now the
    message worker stops that notification, as the echo does."""
    subscriber = SubscriberFactory(client=keyed[0], email="ann@example.com")
    step = StepFactory(
        notification__trigger_event__client=keyed[0],
        notification__trigger_event__canceled_at=timezone.now(),
        notification__subscriber=subscriber,
        type="email",
    )

    messaging_tasks.message_send(step.pk)
    messaging_tasks.message_send(step.pk)  # a duplicate delivery, or the reconciler's

    assert mail.outbox == []
    assert not Message.objects.exists()
    step.refresh_from_db()
    assert step.status == Step.Status.CANCELED
    assert Notification.objects.get().status == Notification.Status.CANCELED
    assert enqueued.calls == []


@pytest.fixture
def past_the_budget(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    """A cancel's request ends a chunk of two notifications, its budget spent by it, and
    hands the rest to its task."""
    monkeypatch.setattr(operations, "CANCEL_CHUNK", 2)
    settings.NORM_CANCEL_BUDGET_SECONDS = 0


def _broadcast(client: Client, size: int) -> tuple[TriggerEvent, list[Step]]:
    """A processed trigger of `size` notifications, each running with an email step due
    now; made in subscriber order, the order of the cancel's chunks."""
    event = TriggerEventFactory(
        client=client, transaction_id="tx-1", status=TriggerEvent.Status.PROCESSED, recipients=size
    )
    steps = [
        StepFactory(
            notification__trigger_event=event,
            notification__subscriber=SubscriberFactory(client=client, email=f"s{i}@example.com"),
        )
        for i in range(size)
    ]
    return event, steps


def _statuses() -> set[tuple[str, str]]:
    return set(Step.objects.values_list("notification__status", "status"))


def test_cancel_past_its_budget_answers_and_its_task_cancels_the_rest(
    api: Api,
    keyed: tuple[Client, str],
    past_the_budget: None,
    enqueued: Enqueued,
    pump: Callable[[], None],
) -> None:
    """A broadcast's cancel would take 80 s for 1,000,000 notifications, in its request:
    gunicorn kills it at 30 s (a 502), the rest left running. Now the request cancels for
    NORM_CANCEL_BUDGET_SECONDS (a chunk at least) and hands the rest to a task, once
    `canceled_at` has committed; the task, run twice, cancels the rest once."""
    event, steps = _broadcast(keyed[0], 5)

    assert api.cancel("tx-1") == {"data": True}

    canceled = (Notification.Status.CANCELED, Step.Status.CANCELED)
    assert [s.notification.status for s in Step.objects.order_by("pk")] == [
        Notification.Status.CANCELED
    ] * 2 + [Notification.Status.RUNNING] * 3
    assert enqueued.of(pipeline.CANCEL) == [(event.pk,)]
    assert enqueued.options_of(pipeline.CANCEL) == [{"countdown": None, "queue": "workflows"}]
    assert pipeline.CANCEL.queue in pipeline.all_queues()

    pump()  # the workflow worker runs the task

    assert _statuses() == {canceled}
    assert enqueued.of(pipeline.CANCEL) == [(event.pk,)]  # it hands nothing on
    # Run again (a redelivery, a second cancel's task): nothing left to cancel.
    assert operations.trigger_cancel_finish(trigger_event_id=event.pk) == 0
    workflow_tasks.trigger_cancel_finish(event.pk)
    assert _statuses() == {canceled}
    for step in steps:
        messaging_tasks.message_send(step.pk)
    assert mail.outbox == [] and not Message.objects.exists()
    assert api.cancel("tx-1") == {"data": False}  # nothing left, nothing handed on
    assert enqueued.of(pipeline.CANCEL) == [(event.pk,)]


def test_a_cancel_task_the_database_cuts_off_is_retried_and_cancels_the_rest(
    api: Api,
    keyed: tuple[Client, str],
    past_the_budget: None,
    enqueued: Enqueued,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database lost as the task begins (a restart, a failover): Celery retries it
    with backoff (DB_RETRY), as every stage's task, and the retry cancels the rest, rather
    than the task failing and the rest running on until the reconciler sends it again."""
    event, _ = _broadcast(keyed[0], 5)
    assert api.cancel("tx-1") == {"data": True}
    finish, runs = operations.trigger_cancel_finish, []

    def database_away_once(**kwargs: Any) -> int:
        runs.append(kwargs)
        if len(runs) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return finish(**kwargs)

    monkeypatch.setattr(operations, "trigger_cancel_finish", database_away_once)

    result = workflow_tasks.trigger_cancel_finish.apply(args=[event.pk])

    assert result.state == "SUCCESS" and len(runs) == 2
    assert _statuses() == {(Notification.Status.CANCELED, Step.Status.CANCELED)}


def test_the_cancel_task_cancels_nothing_of_a_trigger_not_canceled(
    keyed: tuple[Client, str],
) -> None:
    event, _ = _broadcast(keyed[0], 2)
    workflow_tasks.trigger_cancel_finish(event.pk)
    assert _statuses() == {(Notification.Status.RUNNING, Step.Status.SCHEDULED)}


def test_the_admin_says_a_large_triggers_cancel_goes_on_in_the_background(
    admin_client: Any,
    keyed: tuple[Client, str],
    past_the_budget: None,
    enqueued: Enqueued,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    event, _ = _broadcast(keyed[0], 3)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/notify/triggerevent/",
            {"action": "cancel", "_selected_action": [str(event.pk)]},
            follow=True,
        )
    assert "Canceled 1 trigger(s) (1 still being canceled in the background)" in (
        response.content.decode()
    )
    assert enqueued.of(pipeline.CANCEL) == [(event.pk,)]


def test_a_cancel_whose_task_was_lost_still_ends_every_notification(
    api: Api,
    keyed: tuple[Client, str],
    settings: Any,
    past_the_budget: None,
    enqueued: Enqueued,
    pump: Callable[[], None],
    execute_calls: list[str],
) -> None:
    """The broker lost the cancel's task (Redis flushed): what the request left ends
    canceled through the reconciler, the echo and the message worker, none of it sent.
    A notification pending (its echo lost too), one running between steps, one with a
    step due now, and ones whose delay or send retry is due an hour later."""
    event = TriggerEventFactory(
        client=keyed[0], transaction_id="tx-1", status=TriggerEvent.Status.PROCESSED
    )

    def notification(**fields: Any) -> Notification:
        subscriber = SubscriberFactory(client=keyed[0], email="ann@example.com")
        return NotificationFactory(trigger_event=event, subscriber=subscriber, **fields)

    def step(type: str = "email", due: float = 0, **fields: Any) -> Step:
        made = StepFactory(
            notification=notification(status=Notification.Status.RUNNING), type=type, **fields
        )
        Step.objects.filter(pk=made.pk).update(due_at=ago(due), enqueued_at=ago(due))
        return made

    # The first chunk, the one the request has time for.
    step(), step()
    pending = notification()
    between = notification(status=Notification.Status.RUNNING)
    StepFactory(notification=between, status=Step.Status.COMPLETED, type="in_app")
    due_now = step()
    delayed = step("delay", due=-3600)
    retrying = step(due=-3600)
    MessageFactory(step=retrying, status=Message.Status.SENDING, channel="email")

    assert api.cancel("tx-1") == {"data": True}
    assert Notification.objects.filter(status=Notification.Status.CANCELED).count() == 2
    assert enqueued.of(pipeline.CANCEL) == [(event.pk,)]
    enqueued.clear()  # lost with the broker

    def a_while_later(seconds: float) -> None:
        """Time passes: every timestamp moves `seconds` into the past."""
        Notification.objects.update(updated_at=ago(seconds))
        for s in Step.objects.all():
            Step.objects.filter(pk=s.pk).update(
                due_at=s.due_at - timedelta(seconds=seconds),
                enqueued_at=s.enqueued_at - timedelta(seconds=seconds) if s.enqueued_at else None,
            )

    grace = settings.NORM_RECONCILE_GRACE
    a_while_later(grace + 1)
    workflow_tasks.reconcile()
    pump()
    unfinished = Notification.objects.exclude(status__in=Notification.FINAL)
    assert set(unfinished.values_list("pk", flat=True)) == {
        delayed.notification_id,
        retrying.notification_id,
    }
    assert {pending.pk, between.pk, due_now.notification_id}.isdisjoint(
        unfinished.values_list("pk", flat=True)
    )

    a_while_later(3600)  # the delay and the retry come due
    workflow_tasks.reconcile()
    pump()
    assert not unfinished.exists()
    assert set(Notification.objects.values_list("status", flat=True)) == {
        Notification.Status.CANCELED
    }
    assert Step.objects.filter(status=Step.Status.SCHEDULED).count() == 0
    assert Message.objects.get(step=retrying).status == Message.Status.FAILED
    assert mail.outbox == [] and execute_calls == []


def test_the_admins_cancel_of_several_triggers_keeps_to_one_budget(
    admin_client: Any,
    keyed: tuple[Client, str],
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    enqueued: Enqueued,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    """The admin's action cancels every trigger selected in one request: each had
    NORM_CANCEL_BUDGET_SECONDS of its own, so ten broadcasts took 50 s and gunicorn cut
    the request off at 30 s (a 502, the later triggers not canceled at all). They now
    share one budget; past it, each trigger cancels a chunk and hands on the rest."""
    monkeypatch.setattr(operations, "CANCEL_CHUNK", 2)
    settings.NORM_CANCEL_BUDGET_SECONDS = 3
    # A second passes between one look at the clock and the next: three chunks' worth.
    ticks = iter(range(1, 1000))
    monkeypatch.setattr(operations, "time", SimpleNamespace(monotonic=lambda: next(ticks)))
    events = []
    for n in range(3):
        event = TriggerEventFactory(
            client=keyed[0], transaction_id=f"tx-{n}", status=TriggerEvent.Status.PROCESSED
        )
        for i in range(8):
            subscriber = SubscriberFactory(client=keyed[0], subscriber_id=f"s{n}-{i}")
            StepFactory(notification__trigger_event=event, notification__subscriber=subscriber)
        events.append(event)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/notify/triggerevent/",
            {"action": "cancel", "_selected_action": [str(e.pk) for e in events]},
            follow=True,
        )

    assert "Canceled 3 trigger(s) (3 still being canceled in the background)" in (
        response.content.decode()
    )
    canceled = Notification.objects.filter(status=Notification.Status.CANCELED)
    assert canceled.count() == 3 * 2 + 2 + 2  # the budget's three chunks, then one each
    assert sorted(enqueued.of(pipeline.CANCEL)) == sorted((e.pk,) for e in events)


def _time_passes(seconds: float) -> None:
    """`seconds` pass: every timestamp of the pipeline's rows moves that far into the past."""
    for model in (TriggerEvent, Notification, Step):
        stamps = [f.name for f in model._meta.concrete_fields if isinstance(f, DateTimeField)]
        model.objects.update(**{name: F(name) - timedelta(seconds=seconds) for name in stamps})


def test_the_reconciler_sends_a_lost_cancel_task_again_once_a_grace_period_old(
    api: Api,
    keyed: tuple[Client, str],
    settings: Any,
    past_the_budget: None,
    enqueued: Enqueued,
    pump: Callable[[], None],
) -> None:
    """The broker lost the cancel's task (Redis flushed, a worker killed): past the first
    chunk, a notification waiting out an hour's delay showed running for the hour, ended
    only when the delay came due. The reconciler now sends the task again once it is a
    grace period old, once a grace period (while the task may still be queued), and
    never after a run of it got to the end."""
    event, steps = _broadcast(keyed[0], 3)
    waiting = steps[-1]  # past the request's chunk of two
    in_an_hour = timezone.now() + timedelta(hours=1)
    Step.objects.filter(pk=waiting.pk).update(type="delay", due_at=in_an_hour, enqueued_at=ago(0))

    assert api.cancel("tx-1") == {"data": True}
    assert enqueued.of(pipeline.CANCEL) == [(event.pk,)]
    enqueued.clear()  # lost with the broker
    grace = settings.NORM_RECONCILE_GRACE

    workflow_tasks.reconcile()
    assert enqueued.of(pipeline.CANCEL) == []  # it may still be queued
    _time_passes(grace + 1)
    workflow_tasks.reconcile()
    assert enqueued.of(pipeline.CANCEL) == [(event.pk,)]
    # Lost again, its queue empty: still queued, it was a backlog the next tick sends
    # nothing behind, whether or not the tick before marked the task sent.
    enqueued.clear()
    workflow_tasks.reconcile()  # the next tick: sent once a grace period, not every tick
    assert enqueued.of(pipeline.CANCEL) == []
    _time_passes(grace + 1)
    workflow_tasks.reconcile()
    assert enqueued.of(pipeline.CANCEL) == [(event.pk,)]

    pump()  # the workflow worker runs it: the waiting notification ends now

    waiting.refresh_from_db()
    assert (waiting.notification.status, waiting.status) == ("canceled", "canceled")
    assert _statuses() == {(Notification.Status.CANCELED, Step.Status.CANCELED)}
    _time_passes(grace + 1)
    workflow_tasks.reconcile()
    assert enqueued.of(pipeline.CANCEL) == [(event.pk,)]
    assert enqueued.of(pipeline.MESSAGE) == [] and mail.outbox == []


def test_a_cancel_that_got_to_the_end_in_its_request_is_never_sent_again(
    api: Api, keyed: tuple[Client, str], settings: Any, enqueued: Enqueued
) -> None:
    _broadcast(keyed[0], 3)
    assert api.cancel("tx-1") == {"data": True}
    assert _statuses() == {(Notification.Status.CANCELED, Step.Status.CANCELED)}

    _time_passes(settings.NORM_RECONCILE_GRACE + 1)
    workflow_tasks.reconcile()
    assert enqueued.calls == []


def test_the_cancel_task_goes_to_the_queue_its_workflow_is_routed_to(
    api: Api,
    keyed: tuple[Client, str],
    settings: Any,
    past_the_budget: None,
    enqueued: Enqueued,
) -> None:
    """A workflow routed to a queue of its own (NORM_WORKFLOW_QUEUES) had its cancel's task
    sent to `workflows`, by the request and the reconciler alike: a deployment whose
    workers serve only the routed queue never ran it. It goes where the fan-out goes."""
    settings.NORM_WORKFLOW_QUEUES = {"welcome": "critical"}
    event, _ = _broadcast(keyed[0], 3)

    assert api.cancel("tx-1") == {"data": True}
    assert enqueued.of(pipeline.CANCEL) == [(event.pk,)]
    assert enqueued.options_of(pipeline.CANCEL) == [{"countdown": None, "queue": "critical"}]
    enqueued.clear()  # lost with the broker

    _time_passes(settings.NORM_RECONCILE_GRACE + 1)
    workflow_tasks.reconcile()
    assert enqueued.of(pipeline.CANCEL) == [(event.pk,)]
    assert enqueued.options_of(pipeline.CANCEL) == [{"countdown": None, "queue": "critical"}]
    assert "critical" in pipeline.all_queues()


def test_a_cancel_task_longer_than_a_grace_period_is_not_sent_again_while_it_runs(
    api: Api,
    keyed: tuple[Client, str],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    past_the_budget: None,
    enqueued: Enqueued,
) -> None:
    """A million notifications take the cancel task longer than a grace period: each chunk
    it ends tells the reconciler it is alive, or a second task is sent to race the first
    over the same rows, and a third a grace period later, for as long as it runs."""
    event, _ = _broadcast(keyed[0], 8)
    grace = settings.NORM_RECONCILE_GRACE
    assert api.cancel("tx-1") == {"data": True}  # the request's chunk, then the task
    assert enqueued.of(pipeline.CANCEL) == [(event.pk,)]
    # A worker took the task: its queue is empty. Still queued, it was a backlog the
    # reconciler sends nothing behind, whether or not the task told it that it runs.
    enqueued.clear()
    chunk = operations._listed_notifications_cancel

    def slow_chunk(ids: list[Any], now: Any) -> int:
        # Each chunk takes most of a grace period: the task is soon older than one.
        _time_passes(grace * 0.6)
        workflow_tasks.reconcile()
        return chunk(ids, now)

    monkeypatch.setattr(operations, "_listed_notifications_cancel", slow_chunk)
    workflow_tasks.trigger_cancel_finish(event.pk)  # four chunks: 2.4 grace periods

    assert _statuses() == {(Notification.Status.CANCELED, Step.Status.CANCELED)}
    assert enqueued.of(pipeline.CANCEL) == []  # none since the request's
