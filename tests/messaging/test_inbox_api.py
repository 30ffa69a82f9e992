from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from messaging.models import Message
from tests.factories import (
    ClientFactory,
    MessageFactory,
    NotificationFactory,
    StepFactory,
    SubscriberFactory,
    TriggerEventFactory,
)
from workflows.models import Step
from workflows.selectors import bridge_state

pytestmark = pytest.mark.django_db


def _in_app(subscriber: Any, step_id: str = "inbox", **kwargs: Any) -> Message:
    notification = NotificationFactory(
        trigger_event=TriggerEventFactory(client=subscriber.client),
        subscriber=subscriber,
        status="running",
    )
    step = StepFactory(
        notification=notification,
        step_id=step_id,
        type="in_app",
        position=0,
        status=Step.Status.COMPLETED,
        outputs={"subject": "Welcome!", "body": f"Hi from {step_id}", "data": {"k": 1}},
    )
    return MessageFactory(step=step, content=step.outputs, sent_at=timezone.now(), **kwargs)


def test_feed_lists_the_subscribers_in_app_messages_newest_first(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    older = _in_app(ann, "first")
    Message.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(hours=1))
    newer = _in_app(ann, "second", seen_at=timezone.now())
    email = _in_app(ann, "mail")
    Message.objects.filter(pk=email.pk).update(channel="email")
    _in_app(ann, "broken", status=Message.Status.FAILED)
    _in_app(SubscriberFactory(client=client), "someone-else")

    response = api.get("/v1/subscribers/ann/notifications/feed")

    assert response.status_code == 200
    body = response.json()
    assert [m["_id"] for m in body["data"]] == [str(newer.pk), str(older.pk)]
    assert body["totalCount"] == 2 and body["hasMore"] is False
    first = body["data"][0]
    assert first["subject"] == "Welcome!"
    assert first["body"] == first["content"] == "Hi from second"
    assert first["data"] == {"k": 1}
    assert first["seen"] is True and first["read"] is False
    assert first["transactionId"] == newer.step.notification.trigger_event.transaction_id
    assert first["createdAt"]


def test_feed_paginates(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    for i in range(3):
        _in_app(ann, f"s{i}")

    body = api.get("/v1/subscribers/ann/notifications/feed?page=1&limit=2.0").json()

    assert len(body["data"]) == 1
    assert (body["page"], body["pageSize"], body["totalCount"], body["hasMore"]) == (1, 2, 3, False)


def test_feed_of_unknown_or_foreign_subscriber_is_404(tenant) -> None:
    _, api = tenant
    _in_app(SubscriberFactory(client=ClientFactory(), subscriber_id="theirs"))

    assert api.get("/v1/subscribers/nobody/notifications/feed").status_code == 404
    assert api.get("/v1/subscribers/theirs/notifications/feed").status_code == 404


def test_mark_read_changes_what_the_bridge_sees(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    message = _in_app(ann)
    notification = message.step.notification
    assert bridge_state(notification=notification)[0]["outputs"]["read"] is False

    response = api.post(
        "/v1/subscribers/ann/messages/markAs",
        {"messageId": str(message.pk), "mark": {"read": True}},
        format="json",
    )

    assert response.status_code == 201
    [data] = response.json()["data"]
    assert data["_id"] == str(message.pk)
    assert data["read"] is True and data["seen"] is True
    [state] = bridge_state(notification=notification)
    assert state["stepId"] == "inbox"
    assert state["outputs"]["read"] is True and state["outputs"]["seen"] is True
    assert state["outputs"]["lastReadDate"] is not None


def test_mark_several_seen_then_unread(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    a, b = _in_app(ann, "a"), _in_app(ann, "b", read_at=timezone.now())

    seen = api.post(
        "/v1/subscribers/ann/messages/mark-as",
        {"messageId": [a.pk, str(b.pk)], "mark": {"seen": True}},
        format="json",
    )
    unread = api.post(
        "/v1/subscribers/ann/messages/markAs",
        {"messageId": [str(b.pk)], "mark": {"read": False}},
        format="json",
    )

    assert seen.status_code == 201 and unread.status_code == 201
    assert {m["_id"] for m in seen.json()["data"]} == {str(a.pk), str(b.pk)}
    a.refresh_from_db()
    b.refresh_from_db()
    assert a.seen_at is not None and a.read_at is None
    assert b.seen_at is not None and b.read_at is None


def test_mark_refuses_messages_of_other_subscribers_or_clients(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    mine = _in_app(ann)
    bobs = _in_app(SubscriberFactory(client=client, subscriber_id="bob"))
    theirs = _in_app(SubscriberFactory(client=ClientFactory(), subscriber_id="ann"))

    # And ids no message has: not ASCII digits ("²" passes str.isdigit), beyond bigint.
    odd = ("²", "٣", "1" * 5000, "9" * 19)
    for message_id in (bobs.pk, theirs.pk, [mine.pk, theirs.pk], "abc", *odd):
        response = api.post(
            "/v1/subscribers/ann/messages/markAs",
            {"messageId": message_id, "mark": {"read": True}},
            format="json",
        )
        assert response.status_code == 404, message_id

    assert not Message.objects.filter(read_at__isnull=False).exists()


@pytest.mark.parametrize(
    "body",
    [
        {"messageId": "1"},
        {"messageId": "1", "mark": {}},
        {"messageId": [], "mark": {"read": True}},
        {"messageId": {"id": 1}, "mark": {"read": True}},
        {"messageId": "1", "mark": {"read": "maybe"}},
    ],
)
def test_mark_validates_the_body(tenant, body: dict[str, Any]) -> None:
    client, api = tenant
    SubscriberFactory(client=client, subscriber_id="ann")

    response = api.post("/v1/subscribers/ann/messages/markAs", body, format="json")

    # Novu's shape for a body that fails validation: 422, errors keyed by field.
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert errors and all(e["messages"] for e in errors.values())
