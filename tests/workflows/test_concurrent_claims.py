"""Claims of one step by two transactions at once, on real connections.

Each test holds a transaction open in one thread at the moment the other thread's
UPDATE reaches the same row, so the second waits for the row lock and PostgreSQL
re-checks it against the row the first committed.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from config import pipeline
from tests.conftest import Enqueued, while_held
from tests.factories import StepFactory
from workflows import services
from workflows.models import Step

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
