"""A notification runs at most NORM_MAX_STEPS steps: the bridge names each next one, and
one that never says done would hold an echo worker (every client's) for good."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Enqueued
from tests.workflows.conftest import sdk_triggered
from workflows.models import Notification
from workflows.sdk import Context, workflow

pytestmark = pytest.mark.django_db(transaction=True)


@workflow("per-item")
def per_item(ctx: Context) -> None:
    """A step for each item of the payload: as many steps as the caller sends items."""
    for i in range(int(ctx.payload.get("items", 0))):
        ctx.step.custom(f"item-{i}", lambda i=i: {"item": i})


def test_a_workflow_that_answers_more_steps_than_norm_max_steps_fails_at_the_bound(
    enqueued: Enqueued, settings: Any
) -> None:
    settings.NORM_MAX_STEPS = 3
    sdk_triggered(enqueued, per_item, {"items": 20})

    notification = Notification.objects.get()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "TooManySteps"
    assert "NORM_MAX_STEPS (3)" in notification.error
    # The three allowed ran; the fourth the bridge named was never recorded.
    assert [s.step_id for s in notification.steps.order_by("position")] == [
        "item-0",
        "item-1",
        "item-2",
    ]
    assert enqueued.calls == []  # nothing more to run: no echo asks the bridge again


def test_a_workflow_done_after_exactly_norm_max_steps_completes(
    enqueued: Enqueued, settings: Any
) -> None:
    """The bound is checked on the bridge's answer: one that says done after the last
    allowed step is no step too many."""
    settings.NORM_MAX_STEPS = 3
    sdk_triggered(enqueued, per_item, {"items": 3})

    notification = Notification.objects.get()
    assert notification.status == Notification.Status.COMPLETED, notification.error
    assert notification.steps.count() == 3


@workflow("large-results")
def large_results(ctx: Context) -> None:
    """Custom steps whose results, as large as the payload says, each later call carries."""
    for i in range(5):
        ctx.step.custom(f"part-{i}", lambda: {"blob": "x" * int(ctx.payload["size"])})


def test_steps_whose_results_the_state_cannot_carry_fail_the_notification(
    enqueued: Enqueued, settings: Any
) -> None:
    """The bridge gets every step's result back on each call: outputs of 10 MB a step,
    each within what norm reads of one answer, made calls of 100 MB by the tenth step
    (NORM_MAX_STEPS allows 100). The state is bounded as one answer is."""
    settings.NORM_BRIDGE_MAX_RESPONSE_BYTES = 250_000
    sdk_triggered(enqueued, large_results, {"size": 100_000})

    notification = Notification.objects.get()
    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "BridgeResponseTooLarge"
    assert "NORM_BRIDGE_MAX_RESPONSE_BYTES (250000)" in notification.error
    # Two results carried (200 KB); with the third's they would be 300 KB.
    assert [s.step_id for s in notification.steps.order_by("position")] == ["part-0", "part-1"]
