"""One client's ids in another client's calls, on every route of the API.

Each route's own tests check its isolation where it was written; this sweep keeps the
whole list in one place, and fails for a route added without a line here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from messaging.models import Message
from notify.models import TriggerEvent
from subscribers.models import Subscriber, Topic, TopicSubscription
from tests.factories import (
    BridgeWorkflowFactory,
    MessageFactory,
    NotificationFactory,
    StepFactory,
    api_for,
    client_with_key,
)
from workflows.models import Notification, Step

pytestmark = pytest.mark.django_db


def _routes(patterns: list[Any], prefix: str = "") -> set[str]:
    found: set[str] = set()
    for entry in patterns:
        if isinstance(entry, URLResolver):
            found |= _routes(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            found.add(prefix + str(entry.pattern))
    return found


def _state(client: Any) -> Any:
    """What a call of another client could change of this client's data."""
    return (
        list(Subscriber.objects.filter(client=client).order_by("pk").values()),
        list(Topic.objects.filter(client=client).order_by("pk").values()),
        list(TopicSubscription.objects.filter(topic__client=client).order_by("pk").values()),
        list(
            TriggerEvent.objects.filter(client=client)
            .order_by("pk")
            .values("pk", "status", "canceled_at")
        ),
        list(Notification.objects.filter(client=client).order_by("pk").values("pk", "status")),
        list(
            Step.objects.filter(notification__client=client).order_by("pk").values("pk", "status")
        ),
        list(
            Message.objects.filter(client=client)
            .order_by("pk")
            .values("pk", "seen_at", "read_at", "action")
        ),
    )


INBOX_ACTION = (
    "v2/subscribers/<trimmed:subscriber_id>/notifications/<str:notification_id>"
    "/actions/<str:action_type>"
)
MESSAGE_ACTION = (
    "v1/subscribers/<trimmed:subscriber_id>/messages/<str:message_id>/actions/<str:action_type>"
)


def test_another_clients_key_reads_and_changes_nothing_of_the_first_clients(
    enqueued: object,
) -> None:
    first, _ = client_with_key(bridge_url="http://first.test/bridge")
    second, key = client_with_key()
    BridgeWorkflowFactory(client=second, workflow_id="welcome")
    notification = NotificationFactory(
        trigger_event__client=first,
        trigger_event__transaction_id="tx-1",
        subscriber__subscriber_id="ann",
        status=Notification.Status.RUNNING,
    )
    ann = notification.subscriber
    topic = Topic.objects.create(client=first, key="news")
    TopicSubscription.objects.create(topic=topic, subscriber=ann)
    step = StepFactory(
        notification=notification, type="in_app", position=0, status=Step.Status.COMPLETED
    )
    message = MessageFactory(step=step, content={"body": "Hi"}, sent_at=timezone.now())
    before = _state(first)
    mid, nid = str(message.pk), str(notification.pk)
    ann_body = {"subscriberId": "ann"}
    marks = {"messageId": mid, "markAs": "read"}

    # (method, route, path, body, status, what the answer must hold of the first client: nothing)
    calls: list[tuple[str, str, str, Any, int]] = [
        ("post", "v1/events/trigger", "/v1/events/trigger",
         {"name": "welcome", "to": [{"type": "Topic", "topicKey": "news"}]}, 404),
        ("post", "v1/events/trigger", "/v1/events/trigger",
         {"name": "welcome", "to": "bob", "resource": first.bridge_url}, 400),
        ("post", "v1/events/trigger/broadcast", "/v1/events/trigger/broadcast",
         {"name": "welcome"}, 201),  # fanned out to its own subscribers: test_workflow_worker
        ("post", "v1/events/trigger/bulk", "/v1/events/trigger/bulk",
         {"events": [{"name": "welcome", "to": {"type": "Topic", "topicKey": "news"}}]}, 201),
        ("get", "v1/events/trigger/<text:transaction_id>", "/v1/events/trigger/tx-1", None, 404),
        ("delete", "v1/events/trigger/<text:transaction_id>", "/v1/events/trigger/tx-1", None, 200),
        ("get", "v2/subscribers", "/v2/subscribers?subscriberId=ann", None, 200),
        ("get", "v2/subscribers", f"/v2/subscribers?after={ann.pk + 1}", None, 200),
        # A bare id in an order by another field is the place of its item: none here.
        ("get", "v2/subscribers", f"/v2/subscribers?orderBy=updatedAt&after={ann.pk}", None, 400),
        ("get", "v1/subscribers", "/v1/subscribers?subscriberId=ann", None, 200),
        ("post", "v1/subscribers/bulk", "/v1/subscribers/bulk", {"subscribers": []}, 201),
        ("get", "v2/subscribers/<trimmed:subscriber_id>", "/v2/subscribers/ann", None, 404),
        ("patch", "v2/subscribers/<trimmed:subscriber_id>", "/v2/subscribers/ann",
         {"email": "e@x.y"}, 404),
        ("delete", "v2/subscribers/<trimmed:subscriber_id>", "/v2/subscribers/ann", None, 404),
        ("put", "v1/subscribers/<trimmed:subscriber_id>", "/v1/subscribers/ann",
         {"email": "e@x.y"}, 400),
        ("get", "v2/subscribers/<trimmed:subscriber_id>/subscriptions",
         "/v2/subscribers/ann/subscriptions", None, 404),
        ("get", "v2/topics", "/v2/topics?key=news", None, 200),
        ("get", "v2/topics", f"/v2/topics?before={topic.pk + 1}&orderDirection=ASC", None, 200),
        ("get", "v2/topics", f"/v2/topics?orderBy=updatedAt&before={topic.pk}", None, 400),
        ("get", "v1/topics", "/v1/topics?key=news", None, 200),
        ("get", "v2/topics/<trimmed:key>", "/v2/topics/news", None, 404),
        ("patch", "v2/topics/<trimmed:key>", "/v2/topics/news", {"name": "Mine"}, 404),
        ("delete", "v2/topics/<trimmed:key>", "/v2/topics/news", None, 404),
        ("get", "v1/topics/<trimmed:key>", "/v1/topics/news", None, 404),
        ("get", "v2/topics/<trimmed:key>/subscriptions", "/v2/topics/news/subscriptions", None, 404),
        ("get", "v2/topics/<trimmed:key>/subscriptions/<trimmed:identifier>",
         "/v2/topics/news/subscriptions/news:ann", None, 204),
        ("delete", "v2/topics/<trimmed:key>/subscriptions", "/v2/topics/news/subscriptions",
         {"subscriberIds": ["ann"]}, 404),
        ("post", "v1/topics/<trimmed:key>/subscribers", "/v1/topics/news/subscribers",
         {"subscribers": ["ann"]}, 404),
        ("post", "v1/topics/<trimmed:key>/subscribers/removal",
         "/v1/topics/news/subscribers/removal", {"subscribers": ["ann"]}, 404),
        ("get", "v1/topics/<trimmed:key>/subscribers/<trimmed:subscriber_id>",
         "/v1/topics/news/subscribers/ann", None, 404),
        ("get", "v1/messages", "/v1/messages?transactionId=tx-1&subscriberId=ann", None, 404),
        # Unnarrowed, or by channel alone: only the client filter keeps the first's out.
        ("get", "v1/messages", "/v1/messages", None, 200),
        ("get", "v1/messages", "/v1/messages?channel=in_app", None, 200),
        ("get", "v1/subscribers/<trimmed:subscriber_id>/notifications/feed",
         "/v1/subscribers/ann/notifications/feed", None, 400),
        ("post", "v1/subscribers/<trimmed:subscriber_id>/messages/markAs",
         "/v1/subscribers/ann/messages/markAs", marks, 404),
        ("post", "v1/subscribers/<trimmed:subscriber_id>/messages/mark-as",
         "/v1/subscribers/ann/messages/mark-as", marks, 404),
        ("post", "v1/subscribers/<trimmed:subscriber_id>/messages/mark-all",
         "/v1/subscribers/ann/messages/mark-all", {"markAs": "read"}, 404),
        ("get", "v1/subscribers/<trimmed:subscriber_id>/notifications/unseen",
         "/v1/subscribers/ann/notifications/unseen", None, 400),
        ("get", "v2/subscribers/<trimmed:subscriber_id>/notifications",
         f"/v2/subscribers/ann/notifications?after={mid}", None, 404),
        ("get", "v2/subscribers/<trimmed:subscriber_id>/notifications/count",
         "/v2/subscribers/ann/notifications/count", None, 400),
        ("post", "v2/subscribers/<trimmed:subscriber_id>/notifications/read",
         "/v2/subscribers/ann/notifications/read", {"notificationIds": [mid]}, 404),
        ("post", "v2/subscribers/<trimmed:subscriber_id>/notifications/seen",
         "/v2/subscribers/ann/notifications/seen", None, 404),
        ("patch", "v2/subscribers/<trimmed:subscriber_id>/notifications/<str:notification_id>/read",
         f"/v2/subscribers/ann/notifications/{mid}/read", None, 404),
        ("patch", "v2/subscribers/<trimmed:subscriber_id>/notifications/<str:notification_id>/unread",
         f"/v2/subscribers/ann/notifications/{mid}/unread", None, 404),
        ("patch", f"{INBOX_ACTION}/complete", f"/v2/subscribers/ann/notifications/{mid}/actions/primary/complete", None, 404),
        ("patch", f"{INBOX_ACTION}/revert", f"/v2/subscribers/ann/notifications/{mid}/actions/primary/revert", None, 404),
        ("post", MESSAGE_ACTION, f"/v1/subscribers/ann/messages/{mid}/actions/primary", {"status": "done"}, 404),
        ("patch", "v1/subscribers/<trimmed:subscriber_id>/online-status",
         "/v1/subscribers/ann/online-status", {"isOnline": True}, 404),
        ("get", "v1/notifications", "/v1/notifications?transactionId=tx-1", None, 200),
        ("get", "v1/notifications", "/v1/notifications?subscriberIds=ann&channels=in_app",
         None, 200),
        ("get", "v1/notifications/<str:notification_id>", f"/v1/notifications/{nid}", None, 404),
    ]  # fmt: skip
    # Now with a subscriber "ann" of its own: the first client's ids still reach nothing.
    own = [
        ("post", "v2/subscribers", "/v2/subscribers?failIfExists=true", ann_body, 201),
        ("post", "v1/subscribers", "/v1/subscribers", ann_body, 201),
        ("post", "v2/topics", "/v2/topics?failIfExists=true", {"key": "news"}, 201),
        ("post", "v1/topics", "/v1/topics", {"key": "sports"}, 201),
        ("post", "v2/topics/<trimmed:key>/subscriptions", "/v2/topics/news/subscriptions",
         {"subscriberIds": ["ann"]}, 201),
        ("post", "v1/subscribers/<trimmed:subscriber_id>/messages/markAs",
         "/v1/subscribers/ann/messages/markAs", marks, 404),
        ("post", "v1/subscribers/<trimmed:subscriber_id>/messages/mark-all",
         "/v1/subscribers/ann/messages/mark-all", {"markAs": "read"}, 201),
        ("get", "v1/subscribers/<trimmed:subscriber_id>/notifications/feed",
         "/v1/subscribers/ann/notifications/feed", None, 200),
        ("get", "v2/subscribers/<trimmed:subscriber_id>/notifications",
         f"/v2/subscribers/ann/notifications?after={mid}", None, 200),
        ("get", "v2/subscribers/<trimmed:subscriber_id>/notifications/count",
         "/v2/subscribers/ann/notifications/count", None, 200),
        ("post", "v2/subscribers/<trimmed:subscriber_id>/notifications/read",
         "/v2/subscribers/ann/notifications/read", {"notificationIds": [mid]}, 204),
        ("patch", "v2/subscribers/<trimmed:subscriber_id>/notifications/<str:notification_id>/read",
         f"/v2/subscribers/ann/notifications/{mid}/read", None, 404),
        ("get", "v1/messages", "/v1/messages?transactionId=tx-1&subscriberId=ann", None, 200),
        ("get", "v1/notifications", "/v1/notifications?transactionId=tx-1", None, 200),
        ("patch", f"{INBOX_ACTION}/complete", f"/v2/subscribers/ann/notifications/{mid}/actions/primary/complete", None, 404),
        ("post", MESSAGE_ACTION, f"/v1/subscribers/ann/messages/{mid}/actions/primary", {"status": "done"}, 404),
        ("patch", "v1/subscribers/<trimmed:subscriber_id>/online-status",
         "/v1/subscribers/ann/online-status", {"isOnline": False}, 200),
    ]  # fmt: skip

    api = api_for(key)
    for method, _, path, body, status in [*calls, *own]:
        data = json.dumps(body) if body is not None else None
        response = getattr(api, method)(path, data=data, content_type="application/json")
        assert response.status_code == status, (method, path, response.content)
        answer = response.json() if response.content else {}
        if isinstance(answer, dict):
            answer.pop("path", None)  # an error names the path asked, ids and all
        text = json.dumps(answer)
        if isinstance(body, dict) and "resource" in body:
            # A refused resource is named as sent, beside the client's own URLs: the
            # caller's words back, nothing of the first client's it did not send.
            text = text.replace(body["resource"], "<the resource sent>")
        # Nothing of the first client's in any answer: its message's or notification's id,
        # its client id (Novu's _organizationId), its bridge URL.
        for secret in (nid, f'"{first.pk}"', first.bridge_url):
            assert secret not in text, (method, path, secret)
        if method == "get" and status == 200 and isinstance(answer, dict):
            assert answer["data"] in ([], {"count": 0}, [{"count": 0, "filter": {}}]), (
                method,
                path,
            )

    assert _state(first) == before
    api_routes = {r for r in _routes(get_resolver().url_patterns) if r.startswith(("v1/", "v2/"))}
    assert api_routes - {"v1/openapi.json"} == {route for _, route, *_ in [*calls, *own]}
