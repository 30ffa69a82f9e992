"""A subscriber command the broker delivered again after its worker died: counted on its
event by task id, and given up at NORM_MAX_CLAIMS runs lost, its recipients' notifications
failed with the reason. (tests/faults/test_poison_command.py: the same on a real worker.)"""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from config import pipeline
from notify.models import TriggerEvent
from subscribers import services, tasks
from subscribers.models import Subscriber
from tests.conftest import Enqueued
from tests.factories import SubscriberFactory, TriggerEventFactory
from workflows.models import Notification

pytestmark = pytest.mark.django_db

GIVEN_UP = (
    "its subscriber command never finished in 3 runs, each lost with its worker (a command "
    "that kills its worker?); given up after NORM_MAX_CLAIMS"
)


class WorkerKilled(BaseException):
    """The worker process dies mid-command (out of memory, SIGKILL): nothing after runs."""


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch, settings: Any) -> list[str]:
    """Every command's work ends its worker; the ids of the subscribers it was for."""
    settings.NORM_MAX_CLAIMS = 3
    ran: list[str] = []

    def one(*, trigger_event_id: int, recipient: dict[str, Any], again: bool = False) -> None:
        ran.append(recipient["subscriberId"])
        raise WorkerKilled

    def chunk(*, trigger_event_id: int, subscriber_ids: list[str]) -> None:
        ran.extend(subscriber_ids)
        raise WorkerKilled

    monkeypatch.setattr(services, "_subscriber_process", one)
    monkeypatch.setattr(services, "_subscribers_process", chunk)
    return ran


def delivered(run: Any, times: int, **command: Any) -> None:
    """`run` (a command's service) delivered `times`: first as sent, then again as the
    broker delivers the message of a worker that died, each run killing its worker."""
    for delivery in range(times):
        with pytest.raises(WorkerKilled):
            run(**command, redelivered="task-1" if delivery else "")


def test_a_listed_recipients_command_fails_its_notification_once_norm_max_claims_runs_died(
    kills: list[str], enqueued: Enqueued
) -> None:
    event = TriggerEventFactory(to=["ann"])
    recipient = {"subscriberId": "ann", "firstName": "Ann"}
    command = {"trigger_event_id": event.pk, "recipient": recipient}
    delivered(services.subscriber_process, 3, **command)

    services.subscriber_process(**command, redelivered="task-1")  # after 3 runs lost

    assert kills == ["ann"] * 3  # not run a fourth time
    notification = Notification.objects.select_related("subscriber").get(trigger_event=event)
    assert (notification.status, notification.error) == (Notification.Status.FAILED, GIVEN_UP)
    assert notification.completed_at is not None
    # Created by its id alone: its attributes may be what ended the worker.
    assert (notification.subscriber.subscriber_id, notification.subscriber.first_name) == (
        "ann",
        "",
    )
    assert enqueued.of(pipeline.ECHO) == []
    event.refresh_from_db()
    assert event.redelivered == {"task-1": 3}
    assert event.error == f"subscriber 'ann': {GIVEN_UP}"


def test_a_chunks_command_fails_its_subscribers_notifications_keeping_those_it_reached(
    kills: list[str], enqueued: Enqueued
) -> None:
    """Those reached already keep their notification; one deleted meanwhile is not made
    anew."""
    event = TriggerEventFactory(mode=TriggerEvent.Mode.BROADCAST)
    ann, bob, cy = (SubscriberFactory(client=event.client, subscriber_id=s) for s in "abc")
    reached = Notification.objects.create(
        trigger_event=event,
        subscriber=ann,
        client=event.client,
        workflow_id=event.workflow_id,
        resource=event.resource,
        status=Notification.Status.COMPLETED,
    )
    command = {"trigger_event_id": event.pk, "subscriber_ids": ["a", "b", "c"]}
    delivered(services.subscribers_process, 3, **command)
    cy.delete()

    services.subscribers_process(**command, redelivered="task-1")

    assert len(kills) == 9
    notifications = {n.subscriber_id: n for n in Notification.objects.filter(trigger_event=event)}
    assert notifications[ann.pk].status == Notification.Status.COMPLETED
    assert notifications[ann.pk].pk == reached.pk
    assert (notifications[bob.pk].status, notifications[bob.pk].error) == ("failed", GIVEN_UP)
    assert set(notifications) == {ann.pk, bob.pk}
    assert not Subscriber.objects.filter(subscriber_id="c").exists()
    assert TriggerEvent.objects.get(pk=event.pk).error == f"3 subscribers ('a', …): {GIVEN_UP}"


def test_each_command_counts_its_own_runs(kills: list[str], enqueued: Enqueued) -> None:
    """Two commands of one event, each delivered again twice: neither lost 3 runs."""
    event = TriggerEventFactory(to=["ann", "bob"])
    for task_id, subscriber_id in (("task-1", "ann"), ("task-2", "bob")):
        command = {"trigger_event_id": event.pk, "recipient": {"subscriberId": subscriber_id}}
        for _ in range(2):
            with pytest.raises(WorkerKilled):
                services.subscriber_process(**command, redelivered=task_id)

    assert TriggerEvent.objects.get(pk=event.pk).redelivered == {"task-1": 2, "task-2": 2}
    assert not Notification.objects.exists()
    assert kills == ["ann", "ann", "bob", "bob"]


def test_a_command_of_a_canceled_trigger_given_up_leaves_no_reason(
    kills: list[str], enqueued: Enqueued
) -> None:
    """Canceled, the event's commands make nothing: given up, neither does this one, nor
    does it say on the event that a recipient failed."""
    event = TriggerEventFactory(to=["ann"])
    command = {"trigger_event_id": event.pk, "recipient": {"subscriberId": "ann"}}
    delivered(services.subscriber_process, 3, **command)
    TriggerEvent.objects.filter(pk=event.pk).update(
        canceled_at=timezone.now(), status=TriggerEvent.Status.CANCELED
    )

    services.subscriber_process(**command, redelivered="task-1")

    assert len(kills) == 3
    assert not Notification.objects.exists()
    assert TriggerEvent.objects.get(pk=event.pk).error == ""


@pytest.mark.parametrize("batch", [False, True], ids=["listed recipient", "chunk"])
def test_the_task_counts_a_delivery_the_broker_marks_redelivered_under_its_id(
    kills: list[str], enqueued: Enqueued, batch: bool
) -> None:
    """The task reads Celery's delivery info: a first delivery counts nothing, one the
    broker marks redelivered (its worker died) counts under the task's id. Read as none,
    a command that kills its worker was delivered again and again, for good, each time
    taking a worker down (the tests above call the service, which is told)."""
    event = TriggerEventFactory(
        mode=TriggerEvent.Mode.BROADCAST if batch else TriggerEvent.Mode.MULTICAST
    )
    task, args = (
        (tasks.subscribers_process, (event.pk, ["ann"]))
        if batch
        else (tasks.subscriber_process, (event.pk, {"subscriberId": "ann"}))
    )
    for redelivered in (False, True, True):
        # As a worker runs the task: its request, with the message's delivery info.
        task.push_request(id="task-1", delivery_info={"redelivered": redelivered})
        try:
            with pytest.raises(WorkerKilled):
                task.run(*args)
        finally:
            task.pop_request()

    assert TriggerEvent.objects.get(pk=event.pk).redelivered == {"task-1": 2}


def test_a_given_up_command_passes_by_its_recipient_deleted_since_it_was_reached(
    enqueued: Enqueued, settings: Any
) -> None:
    """The command ran (its acknowledgement lost), the subscriber was deleted, and the
    broker delivered it again until NORM_MAX_CLAIMS: given up, it made the deleted
    subscriber anew and gave it a failed notification, and named it on the event. A run
    passes it by (the event forgot it), and so does the command given up."""
    settings.NORM_MAX_CLAIMS = 1
    event = TriggerEventFactory(to=["ann"])
    command = {"trigger_event_id": event.pk, "recipient": {"subscriberId": "ann"}}
    services.subscriber_process(**command)
    services.subscriber_delete(subscriber=Subscriber.objects.get(subscriber_id="ann"))

    services.subscriber_process(**command, redelivered="task-1")

    assert not Subscriber.objects.exists()
    assert not Notification.objects.exists()
    event.refresh_from_db()
    assert (event.forgotten, event.redelivered, event.error) == (["ann"], {"task-1": 1}, "")


def test_a_command_delivered_again_unflagged_passes_by_its_recipient_deleted_since(
    enqueued: Enqueued,
) -> None:
    """The command ran (its acknowledgement lost), the subscriber was deleted, and the
    broker delivered the command again without marking it redelivered: run as a first
    one, it made the deleted subscriber anew and sent it the workflow a second time. The
    event forgot the subscriber, and the command passes it by."""
    event = TriggerEventFactory(to=["ann"])
    command = {"trigger_event_id": event.pk, "recipient": {"subscriberId": "ann"}}
    services.subscriber_process(**command)
    services.subscriber_delete(subscriber=Subscriber.objects.get(subscriber_id="ann"))

    services.subscriber_process(**command)

    assert not Subscriber.objects.exists()
    assert not Notification.objects.exists()
    event.refresh_from_db()
    assert (event.forgotten, event.redelivered) == (["ann"], {})


def _chunk_run_then_ann_made_anew() -> tuple[dict[str, Any], Notification, Subscriber]:
    """A broadcast's chunk of ann and bob run once, then ann deleted and made anew under
    her subscriberId. Returns the chunk's command, bob's notification and the new ann."""
    event = TriggerEventFactory(mode=TriggerEvent.Mode.BROADCAST)
    ann, bob = (SubscriberFactory(client=event.client, subscriber_id=s) for s in ("ann", "bob"))
    command = {"trigger_event_id": event.pk, "subscriber_ids": ["ann", "bob"]}
    services.subscribers_process(**command)
    reached = Notification.objects.get(subscriber=bob)
    services.subscriber_delete(subscriber=ann)
    return command, reached, SubscriberFactory(client=event.client, subscriber_id="ann")


def test_a_chunk_delivered_again_unflagged_passes_by_a_subscriber_made_anew_since(
    enqueued: Enqueued,
) -> None:
    """As a recipient's command (above), a chunk of a broadcast delivered again without
    the redelivered flag: the subscriber made anew under a deleted one's subscriberId is
    a new one, which the broadcast never reached."""
    command, reached, _ = _chunk_run_then_ann_made_anew()

    services.subscribers_process(**command)

    assert list(Notification.objects.all()) == [reached]


def test_a_given_up_chunk_passes_by_a_subscriber_made_anew_since_it_was_deleted(
    enqueued: Enqueued, settings: Any
) -> None:
    """As a chunk's run does (_subscribers_process): the subscriber made anew under the
    same subscriberId is a new one, which the broadcast never reached."""
    settings.NORM_MAX_CLAIMS = 1
    command, reached, anew = _chunk_run_then_ann_made_anew()

    services.subscribers_process(**command, redelivered="task-1")

    assert list(Notification.objects.all()) == [reached]
    assert not Notification.objects.filter(subscriber=anew).exists()
    event = TriggerEvent.objects.get(pk=command["trigger_event_id"])
    assert event.error == f"subscriber 'bob': {GIVEN_UP.replace('3 runs', '1 runs')}"
