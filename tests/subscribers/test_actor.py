"""A trigger's actor through the real fan-out and subscriber commands, run in each order
the broker could deliver them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import OperationalError

from config import pipeline
from notify.models import TriggerEvent
from subscribers import services, tasks
from subscribers.models import Subscriber
from tests.conftest import Enqueued
from tests.factories import SubscriberFactory, TriggerEventFactory
from workflows import bridge
from workflows import tasks as workflow_tasks
from workflows.models import Notification
from workflows.services import echo

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]

# The subscriber worker's commands, by task name (the echoes they enqueue are not run).
COMMANDS: dict[str, Callable[..., None]] = {
    pipeline.SUBSCRIBER.task: tasks.subscriber_process,
    pipeline.SUBSCRIBER_BATCH.task: tasks.subscribers_process,
    "norm.subscriber.actor": tasks.actor_process,
}


def fanned_out(event: TriggerEvent, enqueued: Enqueued, *, reverse: bool) -> None:
    """The fan-out, then the commands it sent, in the order sent or the reverse: one
    worker process each, the subscribers queue delivers them in either order."""
    workflow_tasks.workflow_run(event.pk)
    commands = [(task, args) for task, args, _ in enqueued.calls if task in COMMANDS]
    enqueued.clear()
    for task, args in reversed(commands) if reverse else commands:
        COMMANDS[task](*args)


def stored(event: TriggerEvent, subscriber_id: str) -> Subscriber:
    return Subscriber.objects.get(client=event.client, subscriber_id=subscriber_id)


@pytest.mark.parametrize("reverse", [False, True])
def test_an_actor_listed_in_to_with_attributes_of_its_own_keeps_those_whatever_the_order(
    enqueued: Enqueued, reverse: bool
) -> None:
    """Novu upserts the actor, then each recipient: an actor that `to` lists with
    attributes of its own ends with those (over the actor's), and the actor's others.
    Its command and the recipient's went out together, and whichever ran last won."""
    event = TriggerEventFactory(
        actor={"subscriberId": "ann", "firstName": "A", "lastName": "Lee", "locale": "de"},
        to=[{"subscriberId": "ann", "firstName": "B", "locale": "xx yy"}, "bob"],
    )
    SubscriberFactory(client=event.client, subscriber_id="ann", first_name="old", email="a@x.io")

    fanned_out(event, enqueued, reverse=reverse)

    ann = stored(event, "ann")
    # The recipient's invalid locale is left out (and named), not the actor's valid one.
    assert (ann.first_name, ann.last_name, ann.locale, ann.email) == ("B", "Lee", "de", "a@x.io")
    assert Notification.objects.filter(trigger_event=event).count() == 2

    tasks.actor_process(event.pk)  # an actor command still in the broker from before
    ann.refresh_from_db()
    assert (ann.first_name, ann.last_name, ann.locale) == ("B", "Lee", "de")


@pytest.mark.parametrize("reverse", [False, True])
def test_an_actor_listed_in_to_by_its_id_alone_keeps_the_actors_attributes(
    enqueued: Enqueued, reverse: bool
) -> None:
    """A recipient given by subscriberId alone changes nothing in Novu, after the actor's
    upsert: the actor's attributes stand."""
    event = TriggerEventFactory(
        actor={"subscriberId": "ann", "firstName": "A"}, to=["ann", {"subscriberId": "bob"}]
    )
    SubscriberFactory(client=event.client, subscriber_id="ann", first_name="old")

    fanned_out(event, enqueued, reverse=reverse)

    assert stored(event, "ann").first_name == "A"
    assert Notification.objects.filter(trigger_event=event).count() == 2


@pytest.mark.parametrize("reverse", [False, True])
def test_every_step_gets_the_actor_as_stored_the_same_as_its_subscriber(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch, reverse: bool
) -> None:
    """The bridge got the actor as the trigger gave it: the stored subscriber's
    `{{subscriber.firstName}}` was B where `{{actor.firstName}}` was A for the same
    person, with a locale norm did not store. It now gets the actor as stored, the same
    for every recipient; an actor gone since, as the trigger gave it."""
    bodies: dict[str, dict[str, Any]] = {}

    def execute(url: str, *, workflow_id: str, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        bodies[body["subscriber"]["subscriberId"]] = body
        return {"done": True}

    monkeypatch.setattr(bridge, "execute", execute)
    event = TriggerEventFactory(
        actor={"subscriberId": "ann", "firstName": "A", "locale": "xx yy"},
        to=[{"subscriberId": "ann", "firstName": "B", "email": "ann@x.io"}, "bob"],
    )
    fanned_out(event, enqueued, reverse=reverse)
    for notification in Notification.objects.filter(trigger_event=event):
        echo.echo_run(notification_id=str(notification.pk))

    ann = {"subscriberId": "ann", "firstName": "B", "email": "ann@x.io", "data": {}}
    assert bodies["ann"]["subscriber"] == ann
    assert bodies["ann"]["actor"] == bodies["bob"]["actor"] == ann

    stored(event, "ann").delete()
    notification = Notification.objects.get(trigger_event=event)  # bob's
    Notification.objects.filter(pk=notification.pk).update(status=Notification.Status.RUNNING)
    echo.echo_run(notification_id=str(notification.pk))
    assert bodies["bob"]["actor"] == event.actor


def test_an_actor_command_the_database_cuts_off_is_retried_and_upserts_the_actor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An actor command from before the upgrade is in no row the reconciler reads: failed
    on a database error (a restart, a failover), the actor's attributes were lost for good.
    Celery retries it with backoff (DB_RETRY), as every stage's task."""
    event = TriggerEventFactory(actor={"subscriberId": "ann", "firstName": "A"}, to=["bob"])
    upsert, runs = services.actor_process, []

    def database_away_once(**kwargs: Any) -> None:
        runs.append(kwargs)
        if len(runs) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        upsert(**kwargs)

    monkeypatch.setattr(services, "actor_process", database_away_once)

    result = tasks.actor_process.apply(args=[event.pk])

    assert result.state == "SUCCESS" and len(runs) == 2
    assert stored(event, "ann").first_name == "A"
