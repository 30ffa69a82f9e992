"""A subscriber deleted while a trigger's fan-out reaches it, on real connections (hence
`transaction=True`): neither the delete nor the fan-out fails, and the subscriber stays
deleted unless the fan-out's command for it comes after the delete."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models.signals import pre_delete
from django.utils import timezone

from config import pipeline
from messaging import services as messaging_services
from messaging.models import Message
from notify.models import TriggerEvent
from subscribers import services, tasks
from subscribers.models import Subscriber, Topic, TopicSubscription
from tests.conftest import (
    Enqueued,
    InThread,
    Meanwhile,
    another_waits_for_a_lock,
    held,
    lock_waiters,
    while_held,
)
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
from workflows.models import Notification, Step
from workflows.services import bookkeeping, echo, operations

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def keyed() -> Iterator[tuple[Any, str]]:
    yield client_with_key()


def test_a_chunk_inserted_while_one_of_its_subscribers_is_deleted_reaches_the_others(
    enqueued: Enqueued,
) -> None:
    """The deleted subscriber's notification was refused by its foreign key, and with it
    the whole chunk: up to 500 notifications waited for the reconciler."""
    event = TriggerEventFactory(mode=TriggerEvent.Mode.BROADCAST, to=None)
    ann, bob, cid = (SubscriberFactory(client=event.client) for _ in range(3))

    while_held(
        lambda: services.subscriber_delete(subscriber=ann),
        lambda: services.subscribers_process(
            trigger_event_id=event.pk,
            subscriber_ids=[s.subscriber_id for s in (ann, bob, cid)],
        ),
    )

    assert not Subscriber.objects.filter(pk=ann.pk).exists()
    notifications = Notification.objects.filter(trigger_event=event)
    assert sorted(notifications.values_list("subscriber_id", flat=True)) == [bob.pk, cid.pk]
    assert sorted(enqueued.of(pipeline.ECHO)) == sorted((str(n.pk),) for n in notifications)


def test_a_delete_while_a_chunk_inserts_the_subscribers_notification_succeeds(
    keyed: tuple[Any, str], enqueued: Enqueued
) -> None:
    """The notification committed after the delete had collected the subscriber's
    notifications: the delete was refused by the foreign key at commit, a 500."""
    client, key = keyed
    event = TriggerEventFactory(client=client, mode=TriggerEvent.Mode.BROADCAST, to=None)
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    bob = SubscriberFactory(client=client, subscriber_id="bob")
    chunks: list[Meanwhile] = []

    def chunk_meanwhile(sender: Any, **_: Any) -> None:
        if sender is Subscriber and not chunks:
            chunks.append(
                Meanwhile(
                    lambda: services.subscribers_process(
                        trigger_event_id=event.pk, subscriber_ids=["ann", "bob"]
                    )
                )
            )

    pre_delete.connect(chunk_meanwhile)
    try:
        response = api_for(key).delete("/v2/subscribers/ann")
    finally:
        pre_delete.disconnect(chunk_meanwhile)
    chunks[0].join()

    assert response.status_code == 200, response.content
    assert not Subscriber.objects.filter(pk=ann.pk).exists()
    assert list(Notification.objects.values_list("subscriber_id", flat=True)) == [bob.pk]


def test_a_delete_while_the_subscribers_command_runs_waits_and_deletes_its_notification(
    keyed: tuple[Any, str], enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleted between the command's upsert and its notification, the subscriber's
    notification was refused and the command failed; its event, short of a recipient,
    was fanned out again, which created the deleted subscriber anew and sent it the
    workflow. The delete now waits for the command, and counts the event out."""
    client, key = keyed
    event = TriggerEventFactory(
        client=client,
        to=[{"subscriberId": "ann", "email": "ann@example.com"}],
        status=TriggerEvent.Status.PROCESSED,
        recipients=1,
        processed_at=timezone.now(),
        recheck_from=timezone.now(),
    )
    SubscriberFactory(client=client, subscriber_id="ann", email="old@example.com")
    deletes: list[Meanwhile] = []
    real_create = services.notification_create

    def deleted_meanwhile(**kwargs: Any) -> Any:
        deletes.append(Meanwhile(lambda: api_for(key).delete("/v2/subscribers/ann")))
        return real_create(**kwargs)

    monkeypatch.setattr(services, "notification_create", deleted_meanwhile)
    services.subscriber_process(
        trigger_event_id=event.pk, recipient={"subscriberId": "ann", "email": "ann@example.com"}
    )
    deletes[0].join()

    assert not Subscriber.objects.exists()
    assert not Notification.objects.exists()
    event.refresh_from_db()
    assert (event.recipients, event.forgotten) == (0, ["ann"])


def test_a_delete_while_a_given_up_command_fails_its_notification_waits_for_it(
    keyed: tuple[Any, str], enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """A recipient's command given up at NORM_MAX_CLAIMS (services.command_given_up) let
    go of its subscriber before its failed notification went in: a delete meanwhile
    found no notification to count the event out of, and the notification was refused.
    The event was short of a recipient, and the reconciler's rerun created the deleted
    subscriber anew and sent it the workflow. As for a command that runs (above)."""
    settings.NORM_MAX_CLAIMS = 1
    client, key = keyed
    event = TriggerEventFactory(
        client=client,
        to=["ann"],
        status=TriggerEvent.Status.PROCESSED,
        recipients=1,
        processed_at=timezone.now(),
        recheck_from=timezone.now(),
    )
    SubscriberFactory(client=client, subscriber_id="ann")
    deletes: list[Meanwhile] = []
    real_create = services.notifications_create

    def deleted_meanwhile(**kwargs: Any) -> Any:
        deletes.append(Meanwhile(lambda: api_for(key).delete("/v2/subscribers/ann")))
        return real_create(**kwargs)

    monkeypatch.setattr(services, "notifications_create", deleted_meanwhile)
    services.subscriber_process(
        trigger_event_id=event.pk, recipient={"subscriberId": "ann"}, redelivered="task-1"
    )
    assert deletes[0].join().status_code == 200

    assert not Subscriber.objects.exists()
    assert not Notification.objects.exists()
    event.refresh_from_db()
    assert (event.recipients, event.forgotten) == (0, ["ann"])


def _deleted_as_the_upsert_comes(
    subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch, *, waits: bool
) -> list[InThread]:
    """The subscriber's delete, as a command's upsert of it comes (the command read its
    event before): committed first, or (`waits`) holding the subscriber's lock until the
    upsert waits for it. The delete's thread, once it started."""
    deletes: list[InThread] = []
    upsert = services.subscriber_upsert

    def delete() -> None:
        with transaction.atomic():
            services.subscriber_delete(subscriber=subscriber)
            if waits:
                deleting.set()
                another_waits_for_a_lock()

    def deleted_first(**kwargs: Any) -> Subscriber:
        if not deletes:
            deletes.append(InThread(delete))
            if waits:
                assert deleting.wait(10)
            else:
                deletes[0].join()
        return upsert(**kwargs)

    deleting = threading.Event()
    monkeypatch.setattr(services, "subscriber_upsert", deleted_first)
    return deletes


@pytest.mark.parametrize("waits", [False, True], ids=["deleted first", "waiting for the delete"])
@pytest.mark.parametrize(
    ("again", "given_up"),
    [
        ("redelivered", False),
        ("redelivered", True),
        ("retried", False),
        ("a retry of the task", False),
        ("refanned", False),
    ],
    ids=[
        "redelivered",
        "redelivered and given up",
        "retried",
        "a retry of the task",
        "sent by a fan-out run again",
    ],
)
def test_a_command_delivered_again_as_its_subscriber_is_deleted_does_not_make_it_anew(
    keyed: tuple[Any, str],
    enqueued: Enqueued,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    waits: bool,
    again: str,
    given_up: bool,
) -> None:
    """The command ran (its acknowledgement lost) and the broker delivered it again. It
    read its event before the subscriber's delete counted the event out (forgotten) and
    committed, and its upsert came after the delete or waited for its lock: it found no
    row and made the deleted subscriber anew, and its notification (a failed one, given
    up at NORM_MAX_CLAIMS) sent it the workflow a second time. So did a retry of it (a
    database error after its notification), and a command for the same recipient that a
    fan-out run again sent, its first only late."""
    settings.NORM_MAX_CLAIMS = 1 if given_up else 3
    client, _ = keyed
    event = TriggerEventFactory(client=client, to=["ann"])
    command = {"trigger_event_id": event.pk, "recipient": {"subscriberId": "ann"}}
    services.subscriber_process(**command)
    deletes = _deleted_as_the_upsert_comes(Subscriber.objects.get(), monkeypatch, waits=waits)

    if again == "refanned":
        TriggerEvent.objects.filter(pk=event.pk).update(refanned=1)
    marks = {"redelivered": {"redelivered": "task-1"}, "retried": {"retried": True}}
    if again == "a retry of the task":  # Celery's request counts it: the task says so
        tasks.subscriber_process.apply(kwargs=command, retries=1)
    else:
        services.subscriber_process(**command, **marks.get(again, {}))
    deletes[0].join()

    assert not Subscriber.objects.exists()
    assert not Notification.objects.exists()
    event.refresh_from_db()
    assert (event.forgotten, event.error) == (["ann"], "")


def test_a_command_run_while_its_subscriber_is_deleted_does_not_fail(enqueued: Enqueued) -> None:
    """It read the subscriber before the delete committed, and its update of the inline
    attributes found no row: the command failed. It now waits for the delete, and, run
    after it, creates the subscriber as a trigger naming it would."""
    event = TriggerEventFactory()
    ann = SubscriberFactory(client=event.client, subscriber_id="ann", email="old@example.com")

    while_held(
        lambda: services.subscriber_delete(subscriber=ann),
        lambda: services.subscriber_process(
            trigger_event_id=event.pk,
            recipient={"subscriberId": "ann", "email": "ann@example.com"},
        ),
    )

    subscriber = Subscriber.objects.get()
    assert (subscriber.subscriber_id, subscriber.email) == ("ann", "ann@example.com")
    assert subscriber.pk != ann.pk
    assert Notification.objects.get().subscriber == subscriber


# --- the API's other writes, racing a delete of what they change ----------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("patch", "/v2/subscribers/ann", {"firstName": "Ann"}),
        ("put", "/v2/subscribers/ann", {"firstName": "Ann"}),
        ("patch", "/v1/subscribers/ann/online-status", {"isOnline": False}),
    ],
)
def test_an_update_while_the_subscriber_is_deleted_is_a_404(
    keyed: tuple[Any, str], method: str, path: str, body: dict[str, Any]
) -> None:
    """It read the subscriber before the delete committed, and its save then found no
    row: Django's DatabaseError, a 500."""
    client, key = keyed
    ann = SubscriberFactory(client=client, subscriber_id="ann")

    _, response = while_held(
        lambda: services.subscriber_delete(subscriber=ann),
        lambda: getattr(api_for(key), method)(path, body, format="json"),
    )

    assert response.status_code == 404, response.content
    assert response.json()["message"] == "Subscriber 'ann' was not found"
    assert not Subscriber.objects.exists()


def test_a_create_while_the_subscriber_is_deleted_creates_it_anew(keyed: tuple[Any, str]) -> None:
    client, key = keyed
    ann = SubscriberFactory(client=client, subscriber_id="ann", email="old@example.com")

    _, response = while_held(
        lambda: services.subscriber_delete(subscriber=ann),
        lambda: api_for(key).post(
            "/v1/subscribers", {"subscriberId": "ann", "email": "ann@example.com"}, format="json"
        ),
    )

    assert response.status_code < 300, response.content
    assert Subscriber.objects.get().email == "ann@example.com"


@pytest.mark.parametrize(
    ("path", "body", "not_found"),
    [
        (
            "/v2/topics/news/subscriptions",
            {"subscriptions": ["ann", "bob"]},
            lambda answer: [e["subscriberId"] for e in answer["errors"]],
        ),
        (
            "/v1/topics/news/subscribers",
            {"subscribers": ["ann", "bob"]},
            lambda answer: answer["data"]["failed"]["notFound"],
        ),
    ],
)
def test_subscribing_a_subscriber_being_deleted_counts_it_not_found(
    keyed: tuple[Any, str], path: str, body: dict[str, Any], not_found: Callable[..., Any]
) -> None:
    """The subscription was refused by its foreign key at commit, a 500, and bob's with it."""
    client, key = keyed
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    bob = SubscriberFactory(client=client, subscriber_id="bob")
    topic = Topic.objects.create(client=client, key="news")

    _, response = while_held(
        lambda: services.subscriber_delete(subscriber=ann),
        lambda: api_for(key).post(path, body, format="json"),
    )

    assert response.status_code < 300, response.content
    assert not_found(response.json()) == ["ann"]
    assert list(TopicSubscription.objects.values_list("topic", "subscriber")) == [
        (topic.pk, bob.pk)
    ]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/topics/news/subscribers", {"subscribers": ["ann"]}),
        ("post", "/v1/topics/news/subscribers/removal", {"subscribers": ["ann"]}),
        ("patch", "/v2/topics/news", {"name": "News"}),
    ],
)
def test_changing_a_topic_being_deleted_is_a_404(
    keyed: tuple[Any, str], method: str, path: str, body: dict[str, Any]
) -> None:
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann")
    topic = Topic.objects.create(client=client, key="news", name="old")

    _, response = while_held(
        lambda: services.topic_delete(topic=topic),
        lambda: getattr(api_for(key), method)(path, body, format="json"),
    )

    assert response.status_code == 404, response.content
    assert response.json()["message"] == "Topic 'news' was not found"
    assert not Topic.objects.exists() and not TopicSubscription.objects.exists()


def test_a_subscriptions_rename_while_its_subscriber_is_deleted_is_a_404(
    keyed: tuple[Any, str],
) -> None:
    """The rename read the subscription before the delete committed; its UPDATE waited
    for the delete's lock on the row, and then met no row: it answered 200, renamed, a
    subscription that no longer was, where a rename a moment later answers 404."""
    client, key = keyed
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    topic = Topic.objects.create(client=client, key="news")
    services.topic_subscribe(topic=topic, subscriber_ids=["ann"])

    _, response = while_held(
        lambda: services.subscriber_delete(subscriber=ann),
        lambda: api_for(key).patch(
            "/v2/topics/news/subscriptions/tk_news:si_ann", {"name": "Weekly"}, format="json"
        ),
    )

    assert response.status_code == 404, response.content
    assert response.json()["code"] == "subscription_not_found"
    assert not Subscriber.objects.exists() and not TopicSubscription.objects.exists()


def test_a_topic_deleted_while_a_subscription_is_added_goes_with_it(
    keyed: tuple[Any, str],
) -> None:
    """The delete collected the topic's subscriptions before the new one committed, which
    its foreign key then refused: a 500 for the subscribe, after the delete had answered."""
    client, key = keyed
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    topic = Topic.objects.create(client=client, key="news")

    subscribed, response = while_held(
        lambda: services.topic_subscribe(topic=topic, subscriber_ids=[ann.subscriber_id]),
        lambda: api_for(key).delete("/v2/topics/news"),
    )

    assert subscribed == ([ann], [])
    assert response.status_code == 200, response.content
    assert not Topic.objects.exists() and not TopicSubscription.objects.exists()


def test_a_subscriber_deleted_while_an_echo_records_a_step_of_its_notification_is_deleted(
    monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """The echo worker records a notification's next step while the subscriber is being
    deleted: the delete read the notification's steps before that step committed, then
    deleted the notification under it, and was refused by the step's foreign key at
    commit, a 500 with the subscriber still there."""
    first = StepFactory(status=Step.Status.COMPLETED, step_id="first", position=0)
    notification = first.notification
    monkeypatch.setattr(
        bridge,
        "execute",
        lambda *a, **kw: {"done": False, "stepId": "mail", "type": "email", "outputs": {}},
    )

    while_held(
        lambda: echo.echo_run(notification_id=str(notification.pk)),
        lambda: services.subscriber_delete(subscriber=notification.subscriber),
    )

    assert not Subscriber.objects.filter(pk=notification.subscriber_id).exists()
    assert not Notification.objects.exists()
    assert not Step.objects.exists()


def test_a_subscriber_deleted_while_a_step_of_its_notification_fails_is_deleted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The message worker fails a step (its send refused for good) while the subscriber
    is being deleted. step_fail took the step and its message, then the notification; the
    delete takes the notification, then the message and the step: each waited for the
    other, and PostgreSQL ended the delete (a 500, the subscriber still there)."""
    message = MessageFactory(
        step__status=Step.Status.PROCESSING,
        step__claimed_by="task",
        status=Message.Status.SENDING,
    )
    step, subscriber = message.step, message.subscriber
    given_up = threading.Event()
    give_up = bookkeeping.messages_give_up

    def give_up_then_hold(step_ids: Any, error: str) -> None:
        give_up(step_ids, error)
        given_up.set()
        # Until the delete waits for a row step_fail holds. A fixed pause (0.5 s) could
        # end, on a loaded machine, before the delete reached its first lock: the delete
        # then came after step_fail's commit, and the test passed with no race run.
        another_waits_for_a_lock()

    monkeypatch.setattr(bookkeeping, "messages_give_up", give_up_then_hold)
    errors: list[Exception] = []

    def fail() -> None:
        try:
            bookkeeping.step_fail(step=step, code="SendFailed", message="refused")
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    failing = threading.Thread(target=fail)
    failing.start()
    assert given_up.wait(10)

    services.subscriber_delete(subscriber=subscriber)
    failing.join(20)

    assert not errors

    assert not Subscriber.objects.filter(pk=subscriber.pk).exists()
    assert not Notification.objects.exists()
    assert not Step.objects.exists() and not Message.objects.exists()


@pytest.mark.parametrize("victim", ["the delete", "the message"])
def test_a_subscriber_deleted_while_the_message_of_its_step_is_stored_is_deleted(
    keyed: tuple[Any, str], monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued, victim: str
) -> None:
    """The message worker stores a step's message while its subscriber is being deleted.
    The message's foreign keys were checked at commit, its step's first: the INSERT held
    the step (key share) and waited for the subscriber, which the delete held, while the
    delete waited for the step. PostgreSQL ended whichever waited its deadlock_timeout
    first: the delete (a 503 from the API, a 500 from the admin, the subscriber still
    there), or the message task, retried a second later."""
    client, key = keyed
    step = StepFactory(
        type="in_app", notification__client=client, notification__subscriber__client=client
    )
    subscriber = step.notification.subscriber
    sends: list[Meanwhile] = []

    def send() -> None:
        if victim == "the delete":  # it waits longer: the delete's check finds the cycle
            with connection.cursor() as cursor:
                cursor.execute("SET deadlock_timeout = '10s'")
        messaging_services.message_send(step_id=step.pk)

    forget = services.fan_outs_forget

    def stored_meanwhile(**kwargs: Any) -> None:
        # The subscriber is locked: the message's INSERT now waits for it.
        sends.append(Meanwhile(send))
        another_waits_for_a_lock()
        forget(**kwargs)

    monkeypatch.setattr(services, "fan_outs_forget", stored_meanwhile)
    response = api_for(key).delete(f"/v2/subscribers/{subscriber.subscriber_id}")
    sends[0].join()

    assert response.status_code == 200, response.content
    assert not Subscriber.objects.filter(pk=subscriber.pk).exists()
    assert not Step.objects.exists() and not Message.objects.exists()
    assert not enqueued.of(pipeline.ECHO)  # nothing stored as sent, nothing more to do


def test_a_subscriber_deleted_while_a_send_of_its_canceled_notification_fails_for_now_is_deleted(
    keyed: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send fails for now (a timeout) after its notification was canceled, while the
    subscriber is being deleted. step_retry_later cancels the step, then gives its message
    up; the delete takes the notification, then the message and the step: each waited
    for the other, and PostgreSQL ended the delete (a 503, the subscriber still there)."""
    client, key = keyed
    message = MessageFactory(
        step__notification__client=client,
        step__notification__subscriber__client=client,
        step__notification__status=Notification.Status.CANCELED,
        step__status=Step.Status.PROCESSING,
        step__claimed_by="task",
        status=Message.Status.SENDING,
    )
    step, subscriber = message.step, message.subscriber
    give_up = bookkeeping.messages_give_up
    canceled = threading.Event()

    def give_up_once_the_delete_waits(step_ids: Any, error: str) -> None:
        canceled.set()  # the step is canceled: the delete may come
        another_waits_for_a_lock()
        give_up(step_ids, error)

    monkeypatch.setattr(bookkeeping, "messages_give_up", give_up_once_the_delete_waits)
    retrying = InThread(
        lambda: bookkeeping.step_retry_later(step=step, message="timed out", backoff=5)
    )
    assert canceled.wait(10)
    response = api_for(key).delete(f"/v2/subscribers/{subscriber.subscriber_id}")
    retrying.join()

    assert response.status_code == 200, response.content
    assert not Subscriber.objects.filter(pk=subscriber.pk).exists()
    assert not Step.objects.exists() and not Message.objects.exists()


def test_a_subscriber_deleted_while_a_cancel_locks_its_notifications_in_id_order_is_deleted(
    keyed: tuple[Any, str], enqueued: Enqueued
) -> None:
    """A cancel of several notifications (the admin's, a trigger's chunk) locks them in
    id order; the subscriber's delete locks its own in id order too. Locked as read
    instead (the table's order, or its index's), the delete held a later notification of
    the subscriber and waited for an earlier one the cancel held, while the cancel, on
    its way through the ids, came to the later one: PostgreSQL ended one of them (the
    delete, a 503, the subscriber still there)."""
    client, key = keyed
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    low, middle, high = sorted(
        (NotificationFactory(trigger_event__client=client, subscriber=ann) for _ in range(3)),
        key=lambda n: n.pk,
    )
    # Between ann's two in id order, another subscriber's, which a send holds.
    Notification.objects.filter(pk=middle.pk).update(subscriber=SubscriberFactory(client=client))
    # Written last, `low` is the table's last row: read in the table's order, ann's
    # notifications come `high` first.
    for notification in (high, middle, low):
        Notification.objects.filter(pk=notification.pk).update(status=Notification.Status.RUNNING)
    release = threading.Event()
    holder = held(Notification.objects.filter(pk=middle.pk), release)
    cancel = InThread(
        lambda: operations.notifications_cancel(
            notification_ids=[n.pk for n in (low, middle, high)]
        )
    )
    lock_waiters(1, cancel)  # the cancel holds `low`, waits for `middle`
    delete = InThread(lambda: api_for(key).delete("/v2/subscribers/ann"))
    lock_waiters(2, cancel, delete)  # the delete waits for `low` (holding `high`, unsorted)
    release.set()  # the cancel goes on to `high`
    holder.join()
    response = delete.join()
    canceled = cancel.join()

    assert response.status_code == 200, response.content
    assert canceled == 3
    assert not Subscriber.objects.filter(pk=ann.pk).exists()
    assert list(Notification.objects.values_list("pk", "status")) == [
        (middle.pk, Notification.Status.CANCELED)
    ]


def test_two_subscribers_deleted_at_once_reached_by_the_same_events_are_deleted(
    keyed: tuple[Any, str], enqueued: Enqueued
) -> None:
    """Each delete counts its subscriber out of the events that reached it, locking them
    (fan_outs_forget) in id order. Locked as read, they came in the order of the
    subscriber's notifications (PostgreSQL reads the events through them), which two
    fan-outs' chunks running at once write in either order: ann's delete held an event
    bob's waited for, and waited for one bob's held. PostgreSQL ended one (a 503)."""
    client, key = keyed
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    bob = SubscriberFactory(client=client, subscriber_id="bob")
    first, second, third = (TriggerEventFactory(client=client) for _ in range(3))
    # Ann's notifications written for `first`, `third`, then `second`; bob's for `second`,
    # then `first`. `third` is held meanwhile (a fan-out recording its count).
    for event, subscriber in ((first, ann), (third, ann), (second, ann), (second, bob)):
        NotificationFactory(trigger_event=event, subscriber=subscriber, client=client)
    NotificationFactory(trigger_event=first, subscriber=bob, client=client)
    release = threading.Event()
    holder = held(TriggerEvent.objects.filter(pk=third.pk), release)
    delete_ann = InThread(lambda: api_for(key).delete("/v2/subscribers/ann"))
    lock_waiters(1, delete_ann)  # holds `first` (and `second`, in id order), waits for `third`
    delete_bob = InThread(lambda: api_for(key).delete("/v2/subscribers/bob"))
    lock_waiters(2, delete_ann, delete_bob)  # waits for `first` (holding `second`, unsorted)
    release.set()  # ann's delete goes on past `third`
    holder.join()
    answers = [delete_ann.join(), delete_bob.join()]

    assert [a.status_code for a in answers] == [200, 200], [a.content for a in answers]
    assert not Subscriber.objects.exists() and not Notification.objects.exists()
    forgotten = TriggerEvent.objects.order_by("pk").values_list("forgotten", flat=True)
    assert [sorted(f) for f in forgotten] == [["ann", "bob"], ["ann", "bob"], ["ann"]]
