from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from config import pipeline
from notify.models import TriggerEvent
from subscribers import services, tasks
from subscribers.models import Subscriber
from tests.conftest import Enqueued, ago, while_held
from tests.factories import (
    BridgeWorkflowFactory,
    SubscriberFactory,
    TriggerEventFactory,
    api_for,
    client_with_key,
)
from workflows import tasks as workflow_tasks
from workflows.models import Notification

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]

RECIPIENT = {
    "subscriberId": "ann",
    "email": "ann@example.com",
    "phone": "+15550100",
    "firstName": "Ann",
    "lastName": "Lee",
    "locale": "fr-FR",
    "timezone": "Europe/Paris",
    "data": {"plan": "pro"},
}


def test_creates_the_subscriber_and_its_notification(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    event = TriggerEventFactory(payload={"name": "Ann"}, resource="http://bridge.test/other")
    with django_capture_on_commit_callbacks(execute=True):
        tasks.subscriber_process(event.pk, RECIPIENT)

    subscriber = Subscriber.objects.get()
    assert (subscriber.client, subscriber.subscriber_id) == (event.client, "ann")
    assert (subscriber.email, subscriber.phone) == ("ann@example.com", "+15550100")
    assert (subscriber.first_name, subscriber.last_name) == ("Ann", "Lee")
    assert (subscriber.locale, subscriber.timezone) == ("fr-FR", "Europe/Paris")
    assert subscriber.data == {"plan": "pro"}

    notification = Notification.objects.get()
    assert notification.trigger_event == event and notification.subscriber == subscriber
    assert notification.client == event.client
    assert notification.workflow_id == event.workflow_id == "welcome"
    assert notification.resource == "http://bridge.test/other"
    assert notification.status == Notification.Status.PENDING
    assert enqueued.calls == [
        (pipeline.ECHO.task, (str(notification.pk),), {"countdown": None, "queue": "echo"})
    ]


def test_the_first_echo_is_sent_once_the_notification_is_committed(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    """The notification is made in the command's transaction: an echo sent before it
    commits may run first, find no notification (not yet, or never: a transaction rolled
    back), and end; the notification then waited, pending, for the reconciler a grace
    period later."""
    event = TriggerEventFactory()
    with django_capture_on_commit_callbacks(execute=False) as on_commit:
        tasks.subscriber_process(event.pk, RECIPIENT)
    assert enqueued.calls == []

    for callback in on_commit:
        callback()
    assert enqueued.of(pipeline.ECHO) == [(str(Notification.objects.get().pk),)]


def test_a_recipients_command_does_not_read_the_events_thousand_recipients(
    enqueued: Enqueued,
) -> None:
    """Each of a trigger's 1,000 commands read and decoded all 1,000 recipients (some 1.4
    ms of CPU each, a million entries decoded for the trigger): it needs none of them."""
    to = [{"subscriberId": f"user-{i}", "email": f"user-{i}@example.com"} for i in range(1000)]
    event = TriggerEventFactory(to=to, payload={"n": 1})

    with CaptureQueriesContext(connection) as queries:
        tasks.subscriber_process(event.pk, to[7])
        tasks.subscribers_process(event.pk, ["user-7"])

    assert Notification.objects.get().trigger_event_id == event.pk
    reads = [q["sql"] for q in queries.captured_queries if 'FROM "notify_triggerevent"' in q["sql"]]
    assert len(reads) == 2
    assert not [sql for sql in reads if '"notify_triggerevent"."to"' in sql]


def test_updates_an_existing_subscriber_from_the_trigger(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    event = TriggerEventFactory()
    existing = SubscriberFactory(
        client=event.client, subscriber_id="ann", email="old@example.com", first_name="Ann"
    )
    with django_capture_on_commit_callbacks(execute=True):
        tasks.subscriber_process(
            event.pk, {"subscriberId": "ann", "email": "new@example.com", "data": {"a": 1}}
        )

    existing.refresh_from_db()
    assert Subscriber.objects.count() == 1
    assert existing.email == "new@example.com" and existing.data == {"a": 1}
    assert existing.first_name == "Ann"  # not given inline: kept
    assert Notification.objects.get().subscriber == existing


def test_a_trigger_repeating_the_stored_attributes_writes_no_update(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    """Each trigger of a subscriber names its attributes again: only a change is saved,
    so its updatedAt says when it last changed, and the row is not rewritten (nor its
    lock taken for a write) by every notification sent it."""
    event = TriggerEventFactory()
    existing = SubscriberFactory(
        client=event.client, subscriber_id="ann", email="ann@example.com", first_name="Ann"
    )
    updated_at = existing.updated_at

    with CaptureQueriesContext(connection) as queries:
        services.subscriber_upsert(
            client_id=event.client_id,
            recipient={"subscriberId": "ann", "email": "ann@example.com", "firstName": "Ann"},
        )

    existing.refresh_from_db()
    assert existing.updated_at == updated_at
    assert not [q for q in queries if q["sql"].startswith("UPDATE")]


def test_a_trigger_changing_an_attribute_moves_the_subscribers_updated_at(
    enqueued: Enqueued,
) -> None:
    """A change a trigger makes is a change of the subscriber as an update's is: its
    updatedAt says so (GET /v2/subscribers?orderBy=updatedAt lists it by its last one)."""
    event = TriggerEventFactory()
    existing = SubscriberFactory(client=event.client, subscriber_id="ann", email="old@example.com")
    Subscriber.objects.filter(pk=existing.pk).update(updated_at=ago(3600))

    services.subscriber_upsert(
        client_id=event.client_id, recipient={"subscriberId": "ann", "email": "new@example.com"}
    )

    existing.refresh_from_db()
    assert existing.email == "new@example.com"
    assert existing.updated_at > ago(60)


def test_a_recipients_invalid_locale_or_timezone_is_not_stored_and_it_is_still_notified(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    """A trigger's inline subscriber is checked as the subscriber API checks it (Novu's
    IsLocale, IsTimeZone): the invalid value is not stored, the stored one is kept, and
    the recipient is still notified (Novu's worker drops the whole recipient). The event
    says what was not stored."""
    event = TriggerEventFactory()
    SubscriberFactory(client=event.client, subscriber_id="ann", locale="fr-FR", timezone="")
    recipients = [
        {"subscriberId": "ann", "locale": "fr FR", "timezone": "europe/paris", "firstName": "A"},
        {"subscriberId": "bob", "locale": "en-GB", "timezone": "Mars/Olympus"},
    ]
    with django_capture_on_commit_callbacks(execute=True):
        for recipient in recipients:
            tasks.subscriber_process(event.pk, recipient)

    stored = {
        s.subscriber_id: (s.locale, s.timezone, s.first_name) for s in Subscriber.objects.all()
    }
    assert stored == {"ann": ("fr-FR", "Europe/Paris", "A"), "bob": ("en-GB", "", "")}
    assert Notification.objects.count() == 2 and len(enqueued.of(pipeline.ECHO)) == 2
    event.refresh_from_db()
    assert event.error == "subscriber 'ann': locale must be locale ('fr FR' was not stored)"


def test_recipients_attributes_refused_are_one_warning_a_minute_per_event_not_one_each(
    enqueued: Enqueued,
    django_capture_on_commit_callbacks: Capture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A `to` of up to 1,000 recipients, each with the locale of the same typo in the
    client's code: one line saying so, not a thousand."""
    event = TriggerEventFactory()
    with django_capture_on_commit_callbacks(execute=True):
        for n in range(5):
            tasks.subscriber_process(event.pk, {"subscriberId": f"s{n}", "locale": "fr FR"})

    assert Notification.objects.count() == 5
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.getMessage().startswith(
        f"trigger event {event.pk}: subscriber 's0': locale must be locale"
    )


def test_an_actor_object_is_created_or_updated_with_no_notification(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    """As Novu's trigger does with an actor (string or object): created or updated with
    its attributes, an invalid locale left out as for a recipient; safe to run twice."""
    actor = {"subscriberId": " carl ", "firstName": "Carl", "avatar": "https://x.test/c.png"}
    event = TriggerEventFactory(actor=actor | {"locale": "xx yy"})
    SubscriberFactory(client=event.client, subscriber_id="carl", first_name="C", locale="de")
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(2):
            tasks.actor_process(event.pk)

    carl = Subscriber.objects.get()
    assert (carl.subscriber_id, carl.client) == ("carl", event.client)
    assert (carl.first_name, carl.avatar, carl.locale) == ("Carl", "https://x.test/c.png", "de")
    assert not Notification.objects.exists() and enqueued.calls == []
    event.refresh_from_db()
    assert event.error.startswith("subscriber 'carl': locale must be locale")

    named = TriggerEventFactory(actor="dora")  # a subscriberId alone: created, as in Novu
    tasks.actor_process(named.pk)
    assert Subscriber.objects.get(client=named.client).subscriber_id == "dora"


@pytest.mark.parametrize("actor", [None, "", ["carl"], {"firstName": "no id"}])
def test_no_actor_or_one_stored_before_norm_checked_it_creates_nothing(actor: Any) -> None:
    event = TriggerEventFactory(actor=actor)
    tasks.actor_process(event.pk)
    tasks.actor_process(987654321)  # a missing event
    assert not Subscriber.objects.exists()
    event.refresh_from_db()
    assert event.error == ""


def test_same_subscriber_id_of_another_client_is_another_subscriber(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    other = SubscriberFactory(subscriber_id="ann", email="other@example.com")
    event = TriggerEventFactory()
    with django_capture_on_commit_callbacks(execute=True):
        tasks.subscriber_process(event.pk, {"subscriberId": "ann", "email": "ann@example.com"})
    other.refresh_from_db()
    assert other.email == "other@example.com"
    assert Notification.objects.get().subscriber.client == event.client


def test_running_twice_adds_nothing(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    event = TriggerEventFactory()
    with django_capture_on_commit_callbacks(execute=True):
        tasks.subscriber_process(event.pk, RECIPIENT)
    notification = Notification.objects.get()
    assert len(enqueued.of(pipeline.ECHO)) == 1
    # The echo worker has started it: a redelivered command must not start it again.
    Notification.objects.filter(pk=notification.pk).update(status=Notification.Status.RUNNING)
    enqueued.clear()

    with django_capture_on_commit_callbacks(execute=True):
        tasks.subscriber_process(event.pk, RECIPIENT)

    assert Subscriber.objects.count() == 1
    assert Notification.objects.count() == 1
    assert enqueued.calls == []


def test_rerun_before_the_echo_started_resends_the_echo(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    # A crash after the commit but before the enqueue must not strand the notification.
    event = TriggerEventFactory()
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            tasks.subscriber_process(event.pk, {"subscriberId": "ann"})
    notification = Notification.objects.get()
    assert enqueued.of(pipeline.ECHO) == [(str(notification.pk),)] * 2


def test_a_missing_event_is_ignored(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        tasks.subscriber_process(987654321, {"subscriberId": "ann"})
    assert Subscriber.objects.count() == 0 and enqueued.calls == []


def test_a_recipients_command_of_a_canceled_trigger_creates_no_notification(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    """As a chunk's (test_subscriber_batch): a command still queued when its trigger was
    canceled makes no notification. Made, it was one the cancel had not listed, pending
    with its echo enqueued, until that echo found the trigger canceled."""
    event = TriggerEventFactory(canceled_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        tasks.subscriber_process(event.pk, {"subscriberId": "ann"})
    assert not Notification.objects.exists()
    assert enqueued.calls == []


@pytest.mark.django_db(transaction=True)
def test_a_subscriber_another_command_creates_meanwhile_is_the_one_updated() -> None:
    """Two commands for one new subscriberId: the second finds no row, and its INSERT
    waits for the first's; it then updates the subscriber the first created."""
    event = TriggerEventFactory()
    held, used = while_held(
        lambda: SubscriberFactory(client=event.client, subscriber_id="ann"),
        lambda: services.subscriber_upsert(
            client_id=event.client_id, recipient={"subscriberId": "ann", "email": "ann@example.com"}
        ),
    )
    assert used.pk == held.pk
    assert Subscriber.objects.get().email == "ann@example.com"


def test_an_invalid_inline_email_is_not_stored_and_the_stored_address_is_kept(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    """A trigger's inline email is checked as the subscriber API checks it: "ann@" (or
    two addresses, or a display name) overwrote a good stored address, and every email
    step after it failed. Left out, as an invalid locale is, and the event says so."""
    client, key = client_with_key()
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    SubscriberFactory(client=client, subscriber_id="ann", email="ann@example.com")
    SubscriberFactory(client=client, subscriber_id="carl", email="carl@example.com")
    body = {
        "name": "welcome",
        "to": [
            {"subscriberId": "ann", "email": "ann@", "firstName": "Ann"},
            {"subscriberId": "bob", "email": "Bob <bob@example.com>"},
            {"subscriberId": "dora", "email": "dora@example.com"},
        ],
        "actor": {"subscriberId": "carl", "email": "carl@example.com, x@example.com"},
        "payload": {},
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = api_for(key).post("/v1/events/trigger", data=body, format="json")
    assert response.status_code == 201, response.content

    [(event_id,)] = enqueued.of(pipeline.WORKFLOW)
    workflow_tasks.workflow_run(event_id)  # upserts the actor first
    for args in json.loads(json.dumps(enqueued.of(pipeline.SUBSCRIBER))):
        with django_capture_on_commit_callbacks(execute=True):
            services.subscriber_process(trigger_event_id=args[0], recipient=args[1])

    stored = {s.subscriber_id: (s.email, s.first_name) for s in Subscriber.objects.all()}
    assert stored == {
        "ann": ("ann@example.com", "Ann"),
        "bob": ("", ""),
        "carl": ("carl@example.com", ""),
        "dora": ("dora@example.com", ""),
    }
    assert Notification.objects.count() == 3
    event = TriggerEvent.objects.get(pk=event_id)
    # The first reason stays: the others are in the log.
    assert event.error == (
        "subscriber 'carl': email must be an email "
        "('carl@example.com, x@example.com' was not stored)"
    )


def test_inline_attributes_are_trimmed_as_the_subscriber_api_trims_them(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    """POST /v2/subscribers stores " ann@example.com\\n" (a line of a file, say) as
    ann@example.com; a trigger naming the subscriber so left the address out as no email
    ("email must be an email"), and every email step to a new subscriber was skipped."""
    client, key = client_with_key()
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    to = {
        "subscriberId": "ann",
        "email": " ann@example.com\n",
        "firstName": " Ann ",
        "timezone": "Europe/Paris\n",
    }
    body = {"name": "welcome", "to": [to], "payload": {}}
    with django_capture_on_commit_callbacks(execute=True):
        response = api_for(key).post("/v1/events/trigger", data=body, format="json")
    assert response.status_code == 201, response.content

    [(event_id,)] = enqueued.of(pipeline.WORKFLOW)
    workflow_tasks.workflow_run(event_id)
    for args in json.loads(json.dumps(enqueued.of(pipeline.SUBSCRIBER))):
        with django_capture_on_commit_callbacks(execute=True):
            services.subscriber_process(trigger_event_id=args[0], recipient=args[1])

    ann = Subscriber.objects.get()
    assert (ann.email, ann.first_name, ann.timezone) == ("ann@example.com", "Ann", "Europe/Paris")
    assert TriggerEvent.objects.get(pk=event_id).error == ""


def test_a_chunks_notifications_go_in_one_insert_without_copies_of_the_payload(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Capture
) -> None:
    """Each notification carried its copy of the payload: a broadcast of a 480 KB payload
    to 1,000 subscribers wrote some 470 MB, and a chunk of 500 in one INSERT took the
    subscriber worker past 1 GB. A notification reads its trigger's payload instead, and a
    chunk's rows, of a few ids each, go in one INSERT however large the payload."""
    note = "x" * 100_000
    event = TriggerEventFactory(mode=TriggerEvent.Mode.BROADCAST, payload={"note": note})
    ids = [f"user-{n}" for n in range(10)]
    for subscriber_id in ids:
        SubscriberFactory(client=event.client, subscriber_id=subscriber_id)

    with (
        CaptureQueriesContext(connection) as queries,
        django_capture_on_commit_callbacks(execute=True),
    ):
        tasks.subscribers_process(event.pk, ids)

    inserts = [
        q["sql"] for q in queries if q["sql"].startswith('INSERT INTO "workflows_notification"')
    ]
    assert len(inserts) == 1 and note not in inserts[0]
    assert Notification.objects.filter(trigger_event=event).count() == 10
    assert len(enqueued.of(pipeline.ECHO)) == 10
