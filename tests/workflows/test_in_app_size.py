"""An in-app step's outputs are bounded (IN_APP_MAX_BYTES): every page of a feed, the
inbox and the activity lists up to 100 in-app messages, built whole in a web process."""

from __future__ import annotations

import pytest

from messaging.models import Message
from tests.conftest import Enqueued
from tests.workflows.conftest import sdk_triggered
from workflows.models import Notification
from workflows.sdk import Context, workflow

pytestmark = pytest.mark.django_db(transaction=True)

IN_APP_MAX_BYTES = 64 * 1024  # workflows.services.echo's


@workflow("inbox")
def inbox(ctx: Context) -> None:
    """An in-app message whose body is as long as the payload says."""
    length = int(ctx.payload.get("length", 1))
    ctx.step.in_app("note", lambda: {"subject": "Hi", "body": "é" * length})


def _trigger_and_run(enqueued: Enqueued, length: int) -> Notification:
    """Trigger `inbox` with a body of `length` characters and run every task it leads to."""
    client = sdk_triggered(enqueued, inbox, {"length": length}, at_most=20)
    return Notification.objects.get(client=client)


def test_an_in_app_step_whose_outputs_exceed_the_bound_fails_unstored(enqueued: Enqueued) -> None:
    # Two bytes a character in UTF-8: the bound is on bytes, as the pages are sent.
    notification = _trigger_and_run(enqueued, IN_APP_MAX_BYTES // 2 + 1)

    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "BridgeResponseTooLarge"
    assert f"at most {IN_APP_MAX_BYTES}" in notification.error
    assert not notification.steps.exists()
    assert not Message.objects.exists()


def test_an_in_app_step_within_the_bound_is_sent(enqueued: Enqueued) -> None:
    notification = _trigger_and_run(enqueued, IN_APP_MAX_BYTES // 2 - 100)

    assert notification.status == Notification.Status.COMPLETED, notification.error
    assert Message.objects.get().status == Message.Status.SENT


@workflow("inbox-overridden")
def inbox_overridden(ctx: Context) -> None:
    """A short in-app message whose provider override is as long as the payload says."""
    length = int(ctx.payload.get("length", 1))
    ctx.step.in_app(
        "note",
        lambda: {"subject": "Hi", "body": "Hello"},
        providers={"novu": lambda: {"data": "é" * length}},
    )


def test_an_in_app_step_whose_providers_bring_its_message_over_the_bound_fails_unstored(
    enqueued: Enqueued,
) -> None:
    # The overrides are kept in the message's content, which every page of the feed reads
    # whole: a bridge's megabytes there were built into each page, as outputs were.
    client = sdk_triggered(enqueued, inbox_overridden, {"length": IN_APP_MAX_BYTES // 2 + 1})
    notification = Notification.objects.get(client=client)

    assert notification.status == Notification.Status.FAILED
    assert notification.error_code == "BridgeResponseTooLarge"
    assert f"at most {IN_APP_MAX_BYTES}" in notification.error
    assert not Message.objects.exists()


def test_an_in_app_step_with_providers_within_the_bound_is_sent(enqueued: Enqueued) -> None:
    client = sdk_triggered(enqueued, inbox_overridden, {"length": IN_APP_MAX_BYTES // 2 - 100})
    notification = Notification.objects.get(client=client)

    assert notification.status == Notification.Status.COMPLETED, notification.error
    assert Message.objects.get().content["providers"]["novu"]["data"].startswith("é")
