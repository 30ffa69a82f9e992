from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import kombu.exceptions
import pytest
from celery.exceptions import Retry
from django.db import OperationalError, connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from config import pipeline
from config.celery import app as celery_app
from notify.models import TriggerEvent
from subscribers.models import Subscriber
from tests.conftest import DatabaseAway, Enqueued, FailsOnce, task_retry
from tests.factories import (
    ClientFactory,
    NotificationFactory,
    SubscriberFactory,
    TriggerEventFactory,
)
from workflows import tasks
from workflows.services import fanout, reconciler

pytestmark = pytest.mark.django_db


def test_multicast_enqueues_one_command_per_distinct_recipient(enqueued: Enqueued) -> None:
    event = TriggerEventFactory(
        to=[
            "ann",
            {"subscriberId": "bob", "email": "bob@example.com", "data": {"plan": "pro"}},
            {"subscriberId": "ann", "email": "ann@example.com"},  # merged into the first
            "bob",
        ]
    )
    tasks.workflow_run(event.pk)

    commands = enqueued.of(pipeline.SUBSCRIBER)
    assert commands == [
        (event.pk, {"subscriberId": "ann", "email": "ann@example.com"}),
        (event.pk, {"subscriberId": "bob", "email": "bob@example.com", "data": {"plan": "pro"}}),
    ]
    # Task arguments travel as JSON.
    assert json.loads(json.dumps(commands)) == [list(c) for c in commands]
    event.refresh_from_db()
    assert event.status == TriggerEvent.Status.PROCESSED
    assert event.recipients == 2 and event.processed_at is not None
    # The workflow worker only hands out commands; subscribers are the next stage's job.
    assert Subscriber.objects.count() == 0


@pytest.mark.parametrize("mode", [TriggerEvent.Mode.MULTICAST, TriggerEvent.Mode.BROADCAST])
def test_an_actor_is_upserted_by_the_fan_out_before_anyone_is_reached_not_on_a_rerun(
    enqueued: Enqueued, mode: str
) -> None:
    """Novu creates or updates a trigger's actor as it does a recipient, before its
    fan-out; so does norm's, with no command of its own, so a broadcast reaches a new
    actor too. A rerun for lost recipients' commands leaves it: an actor deleted since
    would be made anew."""
    actor = {"subscriberId": "carl", "firstName": "Carl"}
    event = TriggerEventFactory(mode=mode, to=["ann"], actor=actor)
    tasks.workflow_run(event.pk)
    carl = Subscriber.objects.get(client=event.client)
    assert (carl.subscriber_id, carl.first_name) == ("carl", "Carl")
    if mode == TriggerEvent.Mode.BROADCAST:  # created before the audience is drawn
        assert enqueued.of(pipeline.SUBSCRIBER_BATCH) == [(event.pk, ["carl"])]

    carl.delete()
    NotificationFactory(trigger_event=event)  # one reached: the reconciler's rerun
    TriggerEvent.objects.filter(pk=event.pk).update(status=TriggerEvent.Status.RECEIVED)
    tasks.workflow_run(event.pk)
    assert not Subscriber.objects.filter(client=event.client, subscriber_id="carl").exists()

    none = TriggerEventFactory(mode=mode, to=["ann"], actor=None)
    tasks.workflow_run(none.pk)
    assert not Subscriber.objects.filter(client=none.client).exists()


def _reached_then_deleted(event: TriggerEvent, enqueued: Enqueued, *deleted: str) -> None:
    """The fan-out, the first recipient's command alone (the others' lost), then the
    subscribers `deleted` deleted as the API does."""
    from subscribers import services as subscriber_services
    from subscribers import tasks as subscriber_tasks

    tasks.workflow_run(event.pk)
    subscriber_tasks.subscriber_process(*enqueued.of(pipeline.SUBSCRIBER)[0])
    for subscriber_id in deleted:
        subscriber = Subscriber.objects.get(client=event.client, subscriber_id=subscriber_id)
        subscriber_services.subscriber_delete(subscriber=subscriber)
    enqueued.clear()


def test_an_actor_deleted_with_the_only_notification_reached_is_not_made_anew(
    enqueued: Enqueued,
) -> None:
    """The actor is also a recipient, and its notification the only one reached when a
    broker error let the event go (bob's command not sent). Deleted, the actor took that
    notification with it, so the rerun found no one reached, took itself for the first
    run and created the deleted actor anew (not notified: the event forgot it)."""
    event = TriggerEventFactory(to=["carl", "bob"], actor={"subscriberId": "carl"})
    _reached_then_deleted(event, enqueued, "carl")
    TriggerEvent.objects.filter(pk=event.pk).update(status=TriggerEvent.Status.RECEIVED)
    tasks.workflow_run(event.pk)
    assert enqueued.of(pipeline.SUBSCRIBER) == [(event.pk, {"subscriberId": "bob"})]
    assert not Subscriber.objects.filter(client=event.client, subscriber_id="carl").exists()


def test_the_reconcilers_rerun_makes_no_deleted_actor_anew_when_no_one_reached_is_left(
    enqueued: Enqueued,
) -> None:
    """The reconciler runs the event again for bob's lost command; ann, the one reached,
    was deleted since, and so was the actor: the rerun found no one reached, took itself
    for the first run and created the deleted actor anew."""
    event = TriggerEventFactory(to=["ann", "bob"], actor={"subscriberId": "carl"})
    _reached_then_deleted(event, enqueued, "ann", "carl")
    TriggerEvent.objects.filter(pk=event.pk).update(
        status=TriggerEvent.Status.RECEIVED, refanned=F("refanned") + 1
    )
    tasks.workflow_run(event.pk)
    assert enqueued.of(pipeline.SUBSCRIBER) == [(event.pk, {"subscriberId": "bob"})]
    assert not Subscriber.objects.filter(client=event.client, subscriber_id="carl").exists()


def test_single_subscriber_id_as_to(enqueued: Enqueued) -> None:
    event = TriggerEventFactory(to="ann")
    tasks.workflow_run(event.pk)
    assert enqueued.of(pipeline.SUBSCRIBER) == [(event.pk, {"subscriberId": "ann"})]


def test_broadcast_streams_every_subscriber_of_the_client_in_chunks(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "BROADCAST_CHUNK", 3)
    client, other = ClientFactory(), ClientFactory()
    mine = [SubscriberFactory(client=client).subscriber_id for _ in range(7)]
    SubscriberFactory.create_batch(4, client=other)
    event = TriggerEventFactory(client=client, mode=TriggerEvent.Mode.BROADCAST, to=None)

    with CaptureQueriesContext(connection) as queries:
        tasks.workflow_run(event.pk)

    # One batch command per chunk, in subscriber order: not one command per subscriber.
    assert enqueued.of(pipeline.SUBSCRIBER) == []
    commands = enqueued.of(pipeline.SUBSCRIBER_BATCH)
    assert [len(ids) for _, ids in commands] == [3, 3, 1]
    assert sorted(i for _, ids in commands for i in ids) == sorted(mine)
    assert all(pk == event.pk for pk, _ in commands)
    # 7 subscribers in chunks of 3: three full-or-partial pages and one empty page.
    pages = [q for q in queries if 'FROM "subscribers_subscriber"' in q["sql"]]
    assert len(pages) == 4
    assert all("LIMIT 3" in q["sql"] for q in pages)
    event.refresh_from_db()
    assert event.status == TriggerEvent.Status.PROCESSED and event.recipients == 7


def test_a_broadcast_reaches_every_subscriber_however_the_table_stores_them(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk starts after the last subscriber of the one before, by pk: it must be
    read in pk order. Read in the order the table stores them, a subscriber updated
    since (its row rewritten at the table's end) came last in a chunk, the next chunk
    started after it, and the subscribers between were never sent the broadcast."""
    monkeypatch.setattr(fanout, "BROADCAST_CHUNK", 3)
    client = ClientFactory()
    mine = [SubscriberFactory(client=client) for _ in range(7)]
    # Rewritten: stored after the others now, as a PATCH of their attributes does.
    Subscriber.objects.filter(pk__in=[mine[0].pk, mine[1].pk]).update(email="new@example.com")
    event = TriggerEventFactory(client=client, mode=TriggerEvent.Mode.BROADCAST, to=None)

    with connection.cursor() as cursor:
        # The table read as stored, as PostgreSQL reads a client's subscribers when they
        # are most of the table (here, a few rows, it would use the primary key).
        cursor.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
        tasks.workflow_run(event.pk)

    commands = enqueued.of(pipeline.SUBSCRIBER_BATCH)
    sent = [i for _, ids in commands for i in ids]
    assert sent == [s.subscriber_id for s in sorted(mine, key=lambda s: s.pk)]
    event.refresh_from_db()
    assert event.recipients == 7


def test_broadcast_to_a_client_without_subscribers_enqueues_nothing(enqueued: Enqueued) -> None:
    SubscriberFactory()  # someone else's
    event = TriggerEventFactory(mode=TriggerEvent.Mode.BROADCAST, to=None)
    tasks.workflow_run(event.pk)
    assert enqueued.calls == []
    event.refresh_from_db()
    assert event.status == TriggerEvent.Status.PROCESSED and event.recipients == 0


@pytest.mark.parametrize("mode", [TriggerEvent.Mode.MULTICAST, TriggerEvent.Mode.BROADCAST])
def test_running_twice_enqueues_nothing_the_second_time(enqueued: Enqueued, mode: str) -> None:
    event = TriggerEventFactory(mode=mode, to=["ann", "bob"])
    SubscriberFactory.create_batch(2, client=event.client)
    tasks.workflow_run(event.pk)
    singles, batches = enqueued.of(pipeline.SUBSCRIBER), enqueued.of(pipeline.SUBSCRIBER_BATCH)
    assert len(singles) + sum(len(ids) for _, ids in batches) == 2
    enqueued.clear()
    tasks.workflow_run(event.pk)
    assert enqueued.calls == []


def test_an_event_being_processed_elsewhere_is_left_alone(enqueued: Enqueued) -> None:
    event = TriggerEventFactory(status=TriggerEvent.Status.PROCESSING)
    tasks.workflow_run(event.pk)
    assert enqueued.calls == []


def test_the_retry_of_a_run_whose_trigger_was_canceled_meanwhile_fans_out_nothing(
    enqueued: Enqueued,
) -> None:
    """Its claim is its own, but the trigger was canceled after the claim (the run then
    failed on a database error): its recipients are neither created nor sent commands."""
    event = TriggerEventFactory(
        to=["ann", "bob"],
        status=TriggerEvent.Status.PROCESSING,
        claimed_by="task-a",
        claimed_at=timezone.now(),
        canceled_at=timezone.now(),
    )

    fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-a")

    assert enqueued.calls == []
    event.refresh_from_db()
    assert (event.status, event.recipients) == (TriggerEvent.Status.PROCESSING, 0)


def test_a_missing_event_is_ignored(enqueued: Enqueued) -> None:
    tasks.workflow_run(987654321)
    assert enqueued.calls == []


def test_the_fanning_tasks_retry_takes_its_claim_back_and_no_other_task_does(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL went away after the claim: the task's retry (same task id) fans the
    event out at once, rather than after NORM_STALE_CLAIM_SECONDS; a duplicate task
    (another id) leaves it alone."""
    event = TriggerEventFactory(to=["ann", "bob"])
    parse = FailsOnce(fanout.parse_recipients, OperationalError("the server closed"))
    monkeypatch.setattr(fanout, "parse_recipients", parse)
    with pytest.raises(OperationalError):
        fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-1")

    fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-2")
    assert enqueued.calls == [] and parse.calls == 1

    fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-1")
    assert [recipient for _, recipient in enqueued.of(pipeline.SUBSCRIBER)] == [
        {"subscriberId": "ann"},
        {"subscriberId": "bob"},
    ]
    event.refresh_from_db()
    assert (event.status, event.claimed_by) == (TriggerEvent.Status.PROCESSED, "task-1")


class WorkerKilled(BaseException):
    """The worker process dies mid-fan-out (out of memory, SIGKILL): nothing after runs."""


def test_a_fan_out_whose_task_kills_its_worker_each_time_fails_after_norm_max_claims(
    enqueued: Enqueued, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery delivers the task of a worker that died again (reject on worker lost: the
    same task id), and it took its own claim back uncounted: a fan-out that kills its
    worker each time was run again at once, for good. It fails at NORM_MAX_CLAIMS."""
    settings.NORM_MAX_CLAIMS = 3
    runs = 0

    def dies(*args: Any) -> None:
        nonlocal runs
        runs += 1
        raise WorkerKilled

    monkeypatch.setattr(fanout, "parse_recipients", dies)  # mid-fan-out
    event = TriggerEventFactory()
    for _ in range(3):
        with pytest.raises(WorkerKilled):
            fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-1")

    fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-1")

    assert runs == 3
    event.refresh_from_db()
    assert (event.status, event.internal_errors) == (TriggerEvent.Status.FAILED, 3)
    assert event.error.startswith("its fan-out never finished in 3 runs, the last one lost")
    assert event.processed_at is not None and enqueued.calls == []


def test_database_errors_while_the_event_is_claimed_do_not_count_against_norm_max_claims(
    enqueued: Enqueued, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task's retries take the claim back resumed, not as runs that never came back:
    a flapping PostgreSQL does not fail the event. Redelivered after its worker died, a
    retry carries a time its own claim has moved on from, and counts."""
    settings.NORM_MAX_CLAIMS = 2
    event = TriggerEventFactory(to=["ann"])
    parse: Any = fanout.parse_recipients
    for _ in range(3):  # the first three runs fail on the database
        parse = FailsOnce(parse, OperationalError("the server closed"))
    monkeypatch.setattr(fanout, "parse_recipients", parse)
    retry: dict[str, Any] = {"args": [event.pk]}
    for retries in range(3):
        with pytest.raises(Retry) as retried:
            tasks.workflow_run.apply(**retry, task_id="task-1", retries=retries, throw=True)
        retry = task_retry(retried.value)
        assert TriggerEvent.objects.get(pk=event.pk).internal_errors == 0

    tasks.workflow_run.apply(**retry, task_id="task-1", retries=3, throw=True)

    event.refresh_from_db()
    assert (event.status, event.internal_errors) == (TriggerEvent.Status.PROCESSED, 0)
    assert enqueued.of(pipeline.SUBSCRIBER) == [(event.pk, {"subscriberId": "ann"})]
    # The last retry delivered again (its worker died after it claimed): counted.
    TriggerEvent.objects.filter(pk=event.pk).update(status=TriggerEvent.Status.PROCESSING)
    tasks.workflow_run.apply(**retry, task_id="task-1", retries=3, throw=True)
    assert TriggerEvent.objects.get(pk=event.pk).internal_errors == 1


def test_a_broker_failing_mid_fan_out_leaves_the_event_to_the_reconciler_after_a_grace_period(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """Redis refused the second command (down, a failover): the event stayed processing
    under the dead task's claim, so the reconciler sent it again only once the claim went
    stale (NORM_STALE_CLAIM_SECONDS, ten minutes), the other recipients waiting; failed
    publishes elsewhere wait a grace period (NORM_RECONCILE_GRACE)."""
    event = TriggerEventFactory(to=["ann", "bob"])
    sent: list[tuple[str, list[Any]]] = []

    def broker_fails_on_the_second(name: str, args: list[Any], **kwargs: Any) -> None:
        if len(sent) == 1:
            raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379")
        sent.append((name, args))

    monkeypatch.setattr(celery_app, "send_task", broker_fails_on_the_second)
    with pytest.raises(kombu.exceptions.OperationalError):
        fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-1")
    assert sent == [(pipeline.SUBSCRIBER.task, [event.pk, {"subscriberId": "ann"}])]

    monkeypatch.setattr(celery_app, "send_task", lambda name, args, **_: sent.append((name, args)))
    monkeypatch.setattr(pipeline, "backlog", lambda queue: 0)  # nothing reached the broker
    sent.clear()
    past_grace = timezone.now() - timedelta(seconds=settings.NORM_RECONCILE_GRACE + 1)
    assert settings.NORM_RECONCILE_GRACE + 1 < settings.NORM_STALE_CLAIM_SECONDS
    TriggerEvent.objects.update(created_at=past_grace, claimed_at=past_grace)
    reconciler.reconcile()
    assert sent == [(pipeline.WORKFLOW.task, [event.pk])]

    sent.clear()
    fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-2")
    assert [args[1] for _, args in sent] == [{"subscriberId": "ann"}, {"subscriberId": "bob"}]
    event.refresh_from_db()
    assert (event.status, event.recipients) == (TriggerEvent.Status.PROCESSED, 2)


@pytest.mark.django_db(transaction=True)  # autocommit, as a worker runs: no test transaction
def test_the_database_failing_as_the_fan_out_lets_go_after_a_broker_error_counts_no_run(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """Redis and PostgreSQL away together (the worker's network, a failover of both): the
    release after the broker's error failed on the database, and the task's retry took
    its own claim back as a run that never came back, though it did."""
    event = TriggerEventFactory(to=["ann"])
    broker_down, database_down = True, False

    def send_task(name: str, args: list[Any], **kwargs: Any) -> None:
        nonlocal database_down
        if broker_down:
            database_down = True  # from here on, until the broker is back
            raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379")

    def database(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if database_down and broker_down:
            raise OperationalError("the server closed the connection")
        return execute(sql, params, many, context)

    monkeypatch.setattr(celery_app, "send_task", send_task)
    with connection.execute_wrapper(database), pytest.raises(Retry) as retried:
        tasks.workflow_run.apply(args=[event.pk], task_id="task-1", throw=True)
    broker_down = False

    tasks.workflow_run.apply(**task_retry(retried.value), task_id="task-1", retries=1, throw=True)

    event.refresh_from_db()
    assert (event.status, event.internal_errors) == (TriggerEvent.Status.PROCESSED, 0)


DB_RETRY_BOUND = pipeline.DB_RETRY["retry_kwargs"]["max_retries"]


def test_a_claimed_runs_database_retries_wait_and_last_as_db_retry_says(
    enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run the database cut off while it held the claim is retried by hand (db_retry),
    resuming its claim: backing off as DB_RETRY does, up to twice as long each time to a
    minute, for ten retries, each carrying when this run took the claim. Retried within a
    second each time, the retries outlasted no failover: the event waited out its stale
    claim (and a send whose record failed was sent again). Past Celery's default of three,
    the retries carried an older claim's time, each one counted as a run lost with its
    worker."""
    event = TriggerEventFactory(to=["ann"])
    monkeypatch.setattr(fanout, "parse_recipients", DatabaseAway())
    # Full jitter waits a random part of the backoff: here, all of it.
    monkeypatch.setattr(random, "randrange", lambda stop: stop - 1)
    retry: dict[str, Any] = {"args": [event.pk]}
    for retries in range(DB_RETRY_BOUND):
        with pytest.raises(Retry) as retried:
            tasks.workflow_run.apply(**retry, task_id="task-1", retries=retries, throw=True)
        assert retried.value.when == min(2**retries, pipeline.DB_RETRY["retry_backoff_max"])
        retry = task_retry(retried.value)
        # Resumed from this run's claim: not counted as a run that never came back.
        assert TriggerEvent.objects.get(pk=event.pk).internal_errors == 0

    with pytest.raises(OperationalError):
        tasks.workflow_run.apply(**retry, task_id="task-1", retries=DB_RETRY_BOUND, throw=True)
