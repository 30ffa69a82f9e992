"""Two transactions reaching the same rows at once, on real connections.

Each test holds a transaction open in one thread at the moment the other thread's
statement reaches the same row, so the second waits for the row lock (an UPDATE is then
re-checked against the row the first committed; an INSERT waits for the same key).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from config import pipeline
from tests.conftest import Enqueued, while_held
from tests.factories import StepFactory, SubscriberFactory, TriggerEventFactory
from workflows import services
from workflows.models import Notification, Step

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_tasks_claiming_one_step_at_once_one_wins() -> None:
    step = StepFactory()

    first, second = while_held(
        lambda: services.step_claim(step_id=step.pk, claim="task-a"),
        lambda: services.step_claim(step_id=step.pk, claim="task-b"),
    )

    step.refresh_from_db()
    assert first is not None and second is None
    assert (step.claimed_by, step.attempts) == ("task-a", 1)


def test_the_reconciler_leaves_a_stale_claim_alone_if_it_completes_meanwhile(
    enqueued: Enqueued,
) -> None:
    step = StepFactory()
    long_ago = timezone.now() - timedelta(hours=1)
    Step.objects.filter(pk=step.pk).update(
        status=Step.Status.PROCESSING, claimed_at=long_ago, claimed_by="slow-task"
    )

    while_held(
        lambda: Step.objects.filter(pk=step.pk, status=Step.Status.PROCESSING).update(
            status=Step.Status.COMPLETED, completed_at=timezone.now()
        ),
        services.reconcile,
    )

    step.refresh_from_db()
    assert step.status == Step.Status.COMPLETED  # not reopened, so not sent again
    assert enqueued.of(pipeline.MESSAGE) == []


def test_two_chunks_of_one_fanout_reaching_the_same_subscribers_do_not_deadlock(
    enqueued: Enqueued,
) -> None:
    """Two topics of one trigger share members: their chunks run at once on two workers.
    The first holds `ann`'s notification while the second chunk starts, then takes
    `bob`'s. Inserted in the order given, the second would hold `bob` and wait for
    `ann`: a deadlock, and one chunk retried."""
    event = TriggerEventFactory()
    ann, bob = (SubscriberFactory(client=event.client, subscriber_id=s) for s in ("ann", "bob"))

    while_held(
        lambda: services.notifications_create(trigger_event=event, subscribers=[ann]),
        lambda: services.notifications_create(trigger_event=event, subscribers=[bob, ann]),
        and_then=lambda: services.notifications_create(trigger_event=event, subscribers=[bob]),
    )

    created = {
        str(pk)
        for pk in Notification.objects.filter(trigger_event=event).values_list("pk", flat=True)
    }
    assert len(created) == 2
    # Both chunks found both pending and enqueued their echoes (a second is harmless).
    assert {args[0] for args in enqueued.of(pipeline.ECHO)} == created
