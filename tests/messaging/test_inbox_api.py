from __future__ import annotations

import base64
import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone
from novu.api import SubscriberApi
from novu.enums.message import MessageActionStatus
from novu_py.models import (
    ErrorDto,
    GetSubscriberNotificationsCountResponseDto,
    GetSubscriberNotificationsResponseDto,
    InboxNotificationDto,
    MessageResponseDto,
    NotificationFeedItemDto,
)

from config.parsers import MAX_DEPTH
from messaging.models import Message
from notify.models import TriggerEvent
from subscribers import services
from tests.conftest import InThread, lock_waiters
from tests.factories import (
    NOVU_114_URL,
    ClientFactory,
    MessageFactory,
    NotificationFactory,
    StepFactory,
    SubscriberFactory,
    TriggerEventFactory,
    api_for,
    client_with_key,
    novu_114_session,
    novu_py_for,
)
from tests.novu_nulls import nulls_novu_refuses
from workflows.models import Notification, Step
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


def _feed_payload(value: Any) -> str:
    """novu-py's `payload` of the v1 feed: the base64 of a JSON object."""
    return base64.b64encode(json.dumps(value).encode()).decode()


def test_the_feed_lists_only_the_messages_whose_payload_matches_the_payload_filter(
    tenant,
) -> None:
    """The filter was ignored: every message came back as if it matched."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    order, other, nested, none = (_in_app(ann, f"s{i}") for i in range(4))
    payloads = {
        order: {"orderId": "A-1", "total": 5, "shop": {"id": 7, "name": "Acme"}},
        other: {"orderId": "A-2", "total": 5, "a__b": True, "note": ">>>"},
        nested: {"orderId": 1, "shop": {"id": 8}},
        none: {},
    }
    for message, payload in payloads.items():
        TriggerEvent.objects.filter(notifications__pk=message.step.notification_id).update(
            payload=payload
        )
    url = "/v1/subscribers/ann/notifications/feed?payload="

    def ids(value: Any) -> list[str]:
        response = api.get(url + _feed_payload(value))
        assert response.status_code == 200, response.content
        return sorted(m["_id"] for m in response.json()["data"])

    assert ids({"orderId": "A-1"}) == [str(order.pk)]
    assert ids({"total": 5}) == sorted([str(order.pk), str(other.pk)])
    assert ids({"orderId": "A-1", "total": 6}) == []
    assert ids({"orderId": "1"}) == []  # a string is no number
    assert ids({"shop": {"id": 7}}) == [str(order.pk)]  # a part of an object, as Novu's
    assert ids({}) == sorted(str(m.pk) for m in payloads)
    assert ids({"shop": {}}) == sorted(str(m.pk) for m in payloads)  # no path: Novu's flattening
    assert ids({"a__b": True}) == [str(other.pk)]  # a key is a key, not a lookup
    unpadded = _feed_payload({"shop": {"name": "Acme"}})  # as Node's Buffer takes it
    assert unpadded.endswith("=")
    unpadded = unpadded.rstrip("=")
    assert [m["_id"] for m in api.get(url + unpadded).json()["data"]] == [str(order.pk)]
    url_safe = base64.urlsafe_b64encode(json.dumps({"note": ">>>"}).encode()).decode()
    assert "-" in url_safe  # "+" in the standard alphabet, as Node's Buffer takes both
    assert [m["_id"] for m in api.get(url + url_safe).json()["data"]] == [str(other.pk)]
    body = api.get(url + _feed_payload({"total": 5}) + "&limit=1").json()
    assert (body["totalCount"], body["hasMore"]) == (2, True)


@pytest.mark.parametrize(
    "payload",
    [
        "not base64!",
        base64.b64encode(b"{not json").decode(),
        _feed_payload(["a"]),
        _feed_payload({"tags": ["a"]}),
        _feed_payload("a"),
        _feed_payload(7),
    ],
)
def test_a_payload_filter_norm_cannot_match_is_a_400(tenant, payload: str) -> None:
    client, api = tenant
    _in_app(SubscriberFactory(client=client, subscriber_id="ann"))

    response = api.get("/v1/subscribers/ann/notifications/feed", {"payload": payload})

    assert response.status_code == 400
    assert "payload" in response.json()["message"]


def _nested(depth: int) -> dict[str, Any]:
    """{"a": {"a": ... 1}}, `depth` objects deep."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def test_a_payload_filter_nested_deeper_than_a_body_may_be_is_a_400(tenant) -> None:
    """The filter is a query parameter, so the body's bound on nesting did not hold for
    it: one 150 objects deep hit Python's recursion limit (a 500) as Django built its
    lookup. A payload no deeper than a body may be is matched as before."""
    client, api = tenant
    _in_app(SubscriberFactory(client=client, subscriber_id="ann"))
    url = "/v1/subscribers/ann/notifications/feed"

    assert api.get(url, {"payload": _feed_payload(_nested(MAX_DEPTH))}).status_code == 200
    for depth in (MAX_DEPTH + 1, 150, 900):
        response = api.get(url, {"payload": _feed_payload(_nested(depth))})
        assert response.status_code == 400, depth
        assert "payload" in response.json()["message"]


def test_feed_and_unseen_count_of_unknown_or_foreign_subscriber_are_novus_400() -> None:
    # Novu's GetNotificationsFeed and GetFeedCount refuse a subscriber they do not find
    # with an ApiException, a 400 (its own e2e tests of novu's SDK expect it), where
    # the v2 inbox and the marks answer 404.
    _, key = client_with_key()
    _in_app(SubscriberFactory(client=ClientFactory(), subscriber_id="theirs"))
    inbox = novu_py_for(key).subscribers.notifications

    for subscriber_id in ("nobody", "theirs"):
        with pytest.raises(ErrorDto) as feed:
            inbox.feed(request={"subscriber_id": subscriber_id})
        with pytest.raises(ErrorDto) as unseen:
            inbox.unseen_count(subscriber_id=subscriber_id)
        assert (feed.value.data.status_code, unseen.value.data.status_code) == (400, 400)
        assert "subscriber_not_found" in feed.value.body
    with pytest.raises(ErrorDto) as listed:
        inbox.list(request={"subscriber_id": "nobody"})
    assert listed.value.data.status_code == 404


def test_v2_count_of_unknown_or_foreign_subscriber_is_novus_400() -> None:
    # Novu's NotificationsCount looks the subscriber up itself and refuses one it does
    # not find with an ApiException, a 400, where the v2 list answers 404.
    _, key = client_with_key()
    _in_app(SubscriberFactory(client=ClientFactory(), subscriber_id="theirs"))
    inbox = novu_py_for(key).subscribers.notifications

    for subscriber_id in ("nobody", "theirs"):
        with pytest.raises(ErrorDto) as counted:
            inbox.count(subscriber_id=subscriber_id, filters='[{"read": false}]')
        assert counted.value.data.status_code == 400
        assert "subscriber_not_found" in counted.value.body


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


def test_marking_unread_by_name_marks_seen_as_novu_does(tenant) -> None:
    """Novu's `unread` (v1's markAs, v2's /unread) marks the message seen too: the
    subscriber opened it to mark it. norm left it unseen, so the bell of a subscriber
    who had marked a message unread still counted it as new."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    a, b, legacy = _in_app(ann, "a"), _in_app(ann, "b"), _in_app(ann, "legacy")

    unread = api.post(
        "/v1/subscribers/ann/messages/mark-as",
        {"messageId": [str(a.pk)], "markAs": "unread"},
        format="json",
    )
    assert unread.status_code == 201
    assert api.patch(f"/v2/subscribers/ann/notifications/{b.pk}/unread").status_code == 200
    # v1's older form sets only what it names, as Novu's changeStatus.
    older = api.post(
        "/v1/subscribers/ann/messages/markAs",
        {"messageId": [str(legacy.pk)], "mark": {"read": False}},
        format="json",
    )
    assert older.status_code == 201

    marks = {m.pk: (m.seen_at is not None, m.read_at is not None) for m in Message.objects.all()}
    assert marks == {a.pk: (True, False), b.pk: (True, False), legacy.pk: (False, False)}
    count = api.get("/v1/subscribers/ann/notifications/unseen")
    assert count.json()["data"]["count"] == 1


def test_marking_all_unread_leaves_those_never_read_unseen(tenant) -> None:
    """Novu's mark-all unread changes the read ones only (already seen, as read implies)."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    read = _in_app(ann, "read", seen_at=timezone.now(), read_at=timezone.now())
    new = _in_app(ann, "new")

    response = api.post(
        "/v1/subscribers/ann/messages/mark-all", {"markAs": "unread"}, format="json"
    )

    assert (response.status_code, response.json()) == (201, {"data": 1})
    read.refresh_from_db()
    new.refresh_from_db()
    assert (read.seen_at is not None, read.read_at) == (True, None)
    assert (new.seen_at, new.read_at) == (None, None)


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
        # A JSON true is no id (Python's bool is an int): refused, not looked for as 1.
        {"messageId": True, "mark": {"read": True}},
        {"messageId": ["1", False], "mark": {"read": True}},
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


def test_an_error_of_a_nested_object_as_a_whole_is_keyed_by_that_object(tenant) -> None:
    """`mark` with neither seen nor read is wrong as a whole: the 422 names `mark`, not ""."""
    client, api = tenant
    SubscriberFactory(client=client, subscriber_id="ann")

    response = api.post(
        "/v1/subscribers/ann/messages/markAs", {"messageId": "1", "mark": {}}, format="json"
    )

    assert response.status_code == 422
    assert list(response.json()["errors"]) == ["mark"]
    assert response.json()["message"].startswith("mark: ")


def test_an_error_of_a_nested_field_is_keyed_by_its_path(tenant) -> None:
    """`mark.seen`, as Novu's class-validator names a nested property: keyed `seen` alone,
    the 422 named no field of the body."""
    client, api = tenant
    SubscriberFactory(client=client, subscriber_id="ann")

    response = api.post(
        "/v1/subscribers/ann/messages/markAs",
        {"messageId": "1", "mark": {"seen": "maybe"}},
        format="json",
    )

    assert response.status_code == 422
    assert list(response.json()["errors"]) == ["mark.seen"]
    assert response.json()["message"].startswith("mark.seen: ")


# --- what novu-py's models and novu 1.14 need ---------------------------------------------


def test_the_feed_validates_as_novu_pys_feed_items_and_filters_on_read(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    unread, read = (
        _in_app(ann, "a"),
        _in_app(ann, "b", seen_at=timezone.now(), read_at=timezone.now()),
    )

    body = api.get("/v1/subscribers/ann/notifications/feed?page=0.0&limit=10.0").json()
    unread_only = api.get("/v1/subscribers/ann/notifications/feed?read=false").json()

    items = [NotificationFeedItemDto.model_validate(item) for item in body["data"]]
    assert [i.id for i in items] == [str(read.pk), str(unread.pk)]
    assert items[1].notification_id == str(unread.step.notification_id)
    assert (items[1].read, items[1].archived, items[1].status) == (False, False, "sent")
    assert [i["_id"] for i in unread_only["data"]] == [str(unread.pk)]


def test_the_feed_gives_an_in_app_outputs_redirect_and_actions_as_novus_cta(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    plain = _in_app(ann, "plain")
    linked = _in_app(ann, "linked")
    linked.content |= {
        "redirect": {"url": "/orders/7", "target": "_self"},
        "primaryAction": {"label": "Track", "redirect": {"url": "/track/7"}},
        "secondaryAction": {"label": "Later"},
    }
    linked.save(update_fields=["content"])

    body = api.get("/v1/subscribers/ann/notifications/feed").json()

    by_id = {item["_id"]: item["cta"] for item in body["data"]}
    assert by_id[str(linked.pk)] == {
        "type": "redirect",
        "data": {"url": "/orders/7", "target": "_self"},
        "action": {
            "result": {},
            "buttons": [
                {"type": "primary", "content": "Track", "url": "/track/7"},
                {"type": "secondary", "content": "Later"},
            ],
        },
    }
    no_links = {"type": "redirect", "data": {}, "action": {"result": {}, "buttons": []}}
    assert by_id[str(plain.pk)] == no_links
    [item] = [i for i in body["data"] if i["_id"] == str(linked.pk)]
    cta = NotificationFeedItemDto.model_validate(item).cta
    assert cta.data.url == "/orders/7" and [b.content for b in cta.action.buttons] == [
        "Track",
        "Later",
    ]


def test_the_unseen_count(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    for step_id in ("a", "b", "c"):
        _in_app(ann, step_id)
    _in_app(ann, "d", seen_at=timezone.now())
    url = "/v1/subscribers/ann/notifications/unseen"

    assert api.get(url).json() == {"data": {"count": 3}}
    assert api.get(f"{url}?seen=false&limit=2.0").json() == {"data": {"count": 2}}
    assert api.get(f"{url}?seen=true").json() == {"data": {"count": 1}}
    assert api.get(f"{url}?limit=0").status_code == 400  # counting none is no count
    assert api.get("/v1/subscribers/bob/notifications/unseen").status_code == 400  # as Novu


def test_the_unseen_count_counts_up_to_novus_default_limit_of_100(tenant) -> None:
    """novu 1.14 asks for the count with no limit, and Novu counts up to 100 then: a
    bell showing 99 for 150 unread would be a count Novu never gives."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    notification = NotificationFactory(
        trigger_event=TriggerEventFactory(client=client), subscriber=ann, status="running"
    )
    for position in range(101):
        step = StepFactory(
            notification=notification,
            step_id=f"s{position}",
            type="in_app",
            position=position,
            status=Step.Status.COMPLETED,
        )
        MessageFactory(step=step, content={"body": "Hi"}, sent_at=timezone.now())

    count = api.get("/v1/subscribers/ann/notifications/unseen").json()

    assert count == {"data": {"count": 100}}


@pytest.mark.parametrize(
    ("mark_as", "seen", "read"),
    [("read", True, True), ("seen", True, False), ("unread", True, False), ("unseen", False, True)],
)
def test_mark_as_takes_novu_pys_mark_as_and_answers_its_message_model(
    tenant, mark_as: str, seen: bool, read: bool
) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    # Seen and read before, for unread and unseen; neither before, for read and seen.
    before = {"seen_at": timezone.now(), "read_at": timezone.now()} if "un" in mark_as else {}
    message = _in_app(ann, **before)

    response = api.post(
        "/v1/subscribers/ann/messages/mark-as",
        {"messageId": str(message.pk), "markAs": mark_as},
        format="json",
    )

    assert response.status_code == 201, response.content
    [dto] = [MessageResponseDto.model_validate(m) for m in response.json()["data"]]
    message.refresh_from_db()
    assert (message.seen_at is not None, message.read_at is not None) == (seen, read)
    assert (dto.seen, dto.read) == (seen, read)
    # A date of what it is not (unread, unseen) is left out: @novu/api refuses a null.
    assert nulls_novu_refuses(MessageResponseDto, response.json()["data"][0]) == []


def test_mark_as_answers_each_message_as_the_message_list_does() -> None:
    # Both are novu-py's MessageResponseDto, and Novu answers the same message entity
    # from both: the marked one lacked its providerId and errorText.
    client, key = client_with_key()
    message = _in_app(SubscriberFactory(client=client, subscriber_id="ann"), provider="inbox")
    novu = novu_py_for(key)

    [marked] = novu.subscribers.messages.mark_all_as(
        subscriber_id="ann",
        message_mark_as_request_dto={"message_id": str(message.pk), "mark_as": "read"},
    ).result
    [listed] = novu.messages.retrieve(request={"subscriber_id": "ann"}).result.data

    assert (marked.provider_id, marked.error_text) == ("novu", "")
    assert marked == listed


def test_mark_all_marks_every_message_of_the_subscriber_only(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    mine = [_in_app(ann, "a"), _in_app(ann, "b"), _in_app(ann, "c", read_at=timezone.now())]
    bobs = _in_app(SubscriberFactory(client=client, subscriber_id="bob"))
    url = "/v1/subscribers/ann/messages/mark-all"

    response = api.post(url, {"markAs": "read"}, format="json")

    assert (response.status_code, response.json()) == (201, {"data": 2})
    assert all(m.read_at and m.seen_at for m in Message.objects.filter(pk__in=[m.pk for m in mine]))
    assert Message.objects.get(pk=bobs.pk).read_at is None
    assert api.post(url, {"markAs": "unread"}, format="json").json() == {"data": 3}
    # Marked seen or unseen alone, what changed is their seen marks.
    assert api.post(url, {"markAs": "unseen"}, format="json").json() == {"data": 3}
    assert api.post(url, {"markAs": "never"}, format="json").status_code == 422


@pytest.mark.parametrize("feed", ["billing", ["billing", "news"]])
def test_mark_all_of_a_feed_is_refused_rather_than_marking_every_feed(tenant, feed: Any) -> None:
    """norm keeps no feeds: marking all of them when one was named marks more than asked."""
    client, api = tenant
    _in_app(SubscriberFactory(client=client, subscriber_id="ann"))
    body = {"markAs": "read", "feedIdentifier": feed}

    response = api.post("/v1/subscribers/ann/messages/mark-all", body, format="json")

    assert response.status_code == 400
    assert "feedIdentifier" in response.json()["message"]
    assert not Message.objects.filter(read_at__isnull=False).exists()


# --- v2: novu-py's subscribers.notifications ------------------------------------------------


def test_v2_list_is_novu_pys_inbox_newest_first_by_cursor_and_filter(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann", first_name="Ann")
    oldest, middle = _in_app(ann, "a"), _in_app(ann, "b", read_at=timezone.now())
    newest = _in_app(ann, "c", seen_at=timezone.now())
    url = "/v2/subscribers/ann/notifications"

    first = api.get(f"{url}?limit=2.0").json()
    rest = api.get(f"{url}?limit=2.0&after={first['data'][-1]['id']}").json()

    items = [InboxNotificationDto.model_validate(i) for i in first["data"] + rest["data"]]
    assert [i.id for i in items] == [str(newest.pk), str(middle.pk), str(oldest.pk)]
    assert (first["hasMore"], rest["hasMore"]) == (True, False)
    assert api.get(f"{url}?limit=3").json()["hasMore"] is False  # exactly one page
    assert (items[0].to.subscriber_id, items[0].to.first_name) == ("ann", "Ann")
    assert (items[0].is_seen, items[0].is_read, items[1].is_read) == (True, False, True)
    # When, too: @novu/js shows a notification's firstSeenAt and readAt.
    assert items[0].first_seen_at == first["data"][0]["firstSeenAt"] is not None
    assert (items[0].read_at, items[1].first_seen_at) == (None, None)
    assert items[1].read_at is not None
    assert items[0].body == "Hi from c" and items[0].subject == "Welcome!"

    unread = api.get(f"{url}?read=false&archived=false").json()
    assert [i["id"] for i in unread["data"]] == [str(newest.pk), str(oldest.pk)]
    assert unread["filter"] == {"read": False, "archived": False}
    assert api.get(f"{url}?archived=true").json()["data"] == []  # norm archives nothing
    assert api.get(f"{url}?snoozed=true").json()["data"] == []  # nor snoozes
    snoozed = api.get(f"{url}/count", {"filters": json.dumps([{"snoozed": True}])}).json()
    assert snoozed["data"][0]["count"] == 0
    assert api.get(f"{url}?after=x").status_code == 400
    assert api.get("/v2/subscribers/bob/notifications").status_code == 404


def test_v2_list_has_the_in_app_steps_avatar_actions_and_redirect(tenant) -> None:
    """They were stored and never listed: an inbox drawn from norm's API had no buttons
    and no link. One not shaped as Novu's (a bridge other than the SDKs) is left out,
    rather than fail novu-py's check of the whole list."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    message = _in_app(ann)
    action = {"label": "Track", "redirect": {"url": "https://shop.example/t/1", "target": "_blank"}}
    Message.objects.filter(pk=message.pk).update(
        content={
            "body": "Shipped",
            "avatar": "https://shop.example/logo.png",
            "primaryAction": action,
            "secondaryAction": {"label": "Later"},
            "redirect": {"url": "/orders/1", "target": "_new"},  # a target Novu has not
        }
    )
    odd = _in_app(ann, "odd")
    Message.objects.filter(pk=odd.pk).update(
        content={
            "body": "Odd",
            "avatar": 7,
            "primaryAction": {"redirect": {"url": "/x"}},
            "secondaryAction": "Later",
            "redirect": {"url": "/y", "target": ["_blank"]},
        }
    )

    rows = api.get("/v2/subscribers/ann/notifications").json()["data"]

    odd_item, item = (InboxNotificationDto.model_validate(row) for row in rows)
    assert item.avatar == "https://shop.example/logo.png"
    assert item.primary_action is not None and item.secondary_action is not None
    assert (item.primary_action.label, item.primary_action.is_completed) == ("Track", False)
    assert item.primary_action.redirect is not None
    assert item.primary_action.redirect.url == "https://shop.example/t/1"
    assert item.primary_action.redirect.target == "_blank"
    assert (item.secondary_action.label, item.secondary_action.redirect) == ("Later", None)
    assert item.redirect is not None and item.redirect.url == "/orders/1"
    assert item.redirect.target is None
    assert (odd_item.avatar, odd_item.primary_action, odd_item.secondary_action) == (None,) * 3
    assert odd_item.redirect is not None and odd_item.redirect.target is None


@pytest.mark.parametrize(
    "url",
    ["javascript:alert(1)", "JavaScript:alert(1)", " javascript:alert(1)", "data:text/html,x"],
)
def test_a_redirect_to_a_url_novu_refuses_is_left_out_of_every_listing(tenant, url: str) -> None:
    """A bridge other than the SDKs may store any URL: the inbox would put a
    `javascript:` one in a link's href, to run in the subscriber's browser. Only
    http(s) and paths are given, as the framework's in-app schema allows."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    message = _in_app(ann)
    Message.objects.filter(pk=message.pk).update(
        content={
            "body": "Hi",
            "redirect": {"url": url},
            "primaryAction": {"label": "Open", "redirect": {"url": url, "target": "_self"}},
            "secondaryAction": {"label": "Track", "redirect": {"url": "https://shop.example/t"}},
        }
    )

    [feed] = api.get("/v1/subscribers/ann/notifications/feed").json()["data"]
    [listed] = api.get("/v2/subscribers/ann/notifications").json()["data"]

    assert feed["cta"] == {
        "type": "redirect",
        "data": {},
        "action": {
            "result": {},
            "buttons": [
                {"type": "primary", "content": "Open"},
                {"type": "secondary", "content": "Track", "url": "https://shop.example/t"},
            ],
        },
    }
    item = InboxNotificationDto.model_validate(listed)
    assert item.redirect is None
    assert item.primary_action is not None and item.primary_action.redirect is None
    assert item.secondary_action is not None and item.secondary_action.redirect is not None
    assert item.secondary_action.redirect.url == "https://shop.example/t"


def _newer_than_their_ids_say(client: Any) -> tuple[Message, Message, Message]:
    """ann's three in-app messages, newest first, the newest of the lowest id (saved
    first, then dated later, as by two workers at once)."""
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    lower_id_newer, higher_id_older, oldest = _in_app(ann, "a"), _in_app(ann, "b"), _in_app(ann)
    now = timezone.now()
    for message, age in ((lower_id_newer, 1), (higher_id_older, 2), (oldest, 3)):
        Message.objects.filter(pk=message.pk).update(created_at=now - timedelta(minutes=age))
    return lower_id_newer, higher_id_older, oldest


def test_v2_list_pages_by_cursor_in_the_lists_order(tenant) -> None:
    """A message saved a moment later may get the lower id (two workers at once): the
    cursor follows the list's order (newest first), so no page skips or repeats it."""
    client, api = tenant
    lower_id_newer, higher_id_older, oldest = _newer_than_their_ids_say(client)
    url = "/v2/subscribers/ann/notifications?limit=1"

    seen, after = [], ""
    for _ in range(4):
        page = api.get(f"{url}&after={after}").json()
        seen += [item["id"] for item in page["data"]]
        if not page["hasMore"]:
            break
        after = seen[-1]

    assert seen == [str(m.pk) for m in (lower_id_newer, higher_id_older, oldest)]


def test_v2_list_pages_below_a_cursor_read_since_in_the_lists_order(tenant) -> None:
    """An unread inbox pages on from the last notification it showed, which the
    subscriber may have read since: found in the whole feed, its creation time says where
    the page goes on. Looked for among the unread only, it would not be found, and the
    page would go on below its id, skipping the older notifications of higher ids (an
    empty page, the inbox's end)."""
    client, api = tenant
    lower_id_newer, higher_id_older, oldest = _newer_than_their_ids_say(client)
    url = "/v2/subscribers/ann/notifications?read=false&limit=1"
    first = api.get(url).json()
    assert [i["id"] for i in first["data"]] == [str(lower_id_newer.pk)]
    read = api.patch(f"/v2/subscribers/ann/notifications/{lower_id_newer.pk}/read")
    assert read.status_code == 200, read.content

    page = api.get(f"{url}&after={lower_id_newer.pk}").json()

    assert ([i["id"] for i in page["data"]], page["hasMore"]) == ([str(higher_id_older.pk)], True)


def test_v2_list_pages_through_notifications_made_at_the_same_instant(tenant) -> None:
    """Messages of one instant (a chunk of a broadcast) are listed by id below it: the
    page after one of them goes on among the others, not below their instant, which
    skipped them."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    oldest, *tied = (_in_app(ann, f"s{n}") for n in range(4))
    at = timezone.now()
    Message.objects.filter(pk__in=[m.pk for m in tied]).update(created_at=at)
    Message.objects.filter(pk=oldest.pk).update(created_at=at - timedelta(minutes=1))
    url = "/v2/subscribers/ann/notifications?limit=1"

    seen, after = [], ""
    for _ in range(5):
        page = api.get(f"{url}&after={after}").json()
        seen += [item["id"] for item in page["data"]]
        if not page["hasMore"]:
            break
        after = seen[-1]

    assert seen == [str(m.pk) for m in (*reversed(tied), oldest)]


def test_v2_list_goes_on_below_a_notification_deleted_since_its_id_was_given(tenant) -> None:
    """The client pages with the last id it holds: deleted since (in the admin, or with
    its notification), it has no creation time left to page below. The page was empty
    and hasMore false, so the inbox stopped loading with older notifications unseen."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    oldest, older, gone, newest = (_in_app(ann, f"s{n}") for n in range(4))
    bobs = _in_app(SubscriberFactory(client=client), "bob")  # a lower id, not ann's
    Message.objects.filter(pk=bobs.pk).update(created_at=oldest.created_at)
    url = "/v2/subscribers/ann/notifications?limit=1"
    first = api.get(f"{url}&after={newest.pk}").json()
    assert [i["id"] for i in first["data"]] == [str(gone.pk)]
    Message.objects.filter(pk=gone.pk).delete()

    page = api.get(f"{url}&after={gone.pk}").json()

    assert ([i["id"] for i in page["data"]], page["hasMore"]) == ([str(older.pk)], True)
    last = api.get(f"{url}&after={older.pk}").json()
    assert ([i["id"] for i in last["data"]], last["hasMore"]) == ([str(oldest.pk)], False)
    # Only ann's below it, read or not, and the other filters still apply.
    Message.objects.filter(pk=older.pk).update(read_at=timezone.now())
    unread = api.get(f"/v2/subscribers/ann/notifications?read=false&after={gone.pk}").json()
    assert [i["id"] for i in unread["data"]] == [str(oldest.pk)]


def test_v2_list_reads_nothing_of_another_clients_notification_named_as_its_cursor(
    tenant,
) -> None:
    """An `after` that is another client's notification's id is no notification of
    this inbox: the page goes on below the id, as for one deleted since. Paging from
    its creation time, the page told when the other client's notification was made."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    older, newer = _in_app(ann, "a"), _in_app(ann, "b")
    theirs = _in_app(SubscriberFactory(client=ClientFactory()), "theirs")  # the highest id
    Message.objects.filter(pk=theirs.pk).update(created_at=older.created_at - timedelta(hours=1))

    page = api.get(f"/v2/subscribers/ann/notifications?after={theirs.pk}").json()

    assert [i["id"] for i in page["data"]] == [str(newer.pk), str(older.pk)]


def test_v2_list_reads_no_offset_past_an_after_cursor(tenant) -> None:
    """Novu's list skips `offset` only when no `after` is given: the cursor says where
    the page starts. norm skipped both, so a client sending the two (the count loaded
    and the last id) missed that many notifications on each page."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    oldest, older, newer, newest = (_in_app(ann, f"s{n}") for n in range(4))
    url = "/v2/subscribers/ann/notifications?limit=2"

    first = api.get(f"{url}&offset=1").json()
    rest = api.get(f"{url}&offset=2.0&after={newer.pk}").json()

    assert [i["id"] for i in first["data"]] == [str(newer.pk), str(older.pk)]
    assert [i["id"] for i in rest["data"]] == [str(older.pk), str(oldest.pk)]
    assert rest["hasMore"] is False
    assert api.get(f"{url}&offset=-1&after={newer.pk}").status_code == 400


@pytest.mark.parametrize("body", [[], ["1"], "1", 1, True])
@pytest.mark.parametrize("mark", ["read", "seen"])
def test_v2_mark_all_refuses_a_body_that_is_not_an_object(tenant, mark: str, body: Any) -> None:
    """Read as no filter, a list (the ids, not in `notificationIds`) marked every one of
    the subscriber's notifications."""
    client, api = tenant
    message = _in_app(SubscriberFactory(client=client, subscriber_id="ann"))

    response = api.post(f"/v2/subscribers/ann/notifications/{mark}", body, format="json")

    assert response.status_code == 400
    assert response.json()["message"] == "The body must be a JSON object"
    message.refresh_from_db()
    assert (message.seen_at, message.read_at) == (None, None)
    no_body = api.post(f"/v2/subscribers/ann/notifications/{mark}")  # as novu-py may send
    assert no_body.status_code == 204


def test_v2_count_answers_once_per_filter() -> None:
    client, key = client_with_key()
    api = api_for(key)
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    _in_app(ann, "a"), _in_app(ann, "b", seen_at=timezone.now(), read_at=timezone.now())
    url = "/v2/subscribers/ann/notifications/count"

    response = api.get(url, {"filters": json.dumps([{"read": False}, {"seen": True}, {}])})

    # Novu's envelope: real Novu answers {"data": [...]}, which novu-py unwraps; a bare
    # list failed a client that reads the envelope as every other answer has it.
    assert list(response.json()) == ["data"]
    counts = response.json()["data"]
    counts = [GetSubscriberNotificationsCountResponseDto.model_validate(c) for c in counts]
    assert [(c.count, c.filter_) for c in counts] == [
        (1, {"read": False}),
        (1, {"seen": True}),
        (2, {}),
    ]
    counted = novu_py_for(key).subscribers.notifications.count(
        subscriber_id="ann", filters=json.dumps([{"read": False}])
    )
    assert [(c.count, c.filter_) for c in counted.result] == [(1, {"read": False})]
    assert api.get(url, {"filters": "{"}).status_code == 400
    assert api.get(url, {"filters": '[{"read": false}, "read"]'}).status_code == 400  # no filter
    assert api.get(url, {"filters": "[" * 5000}).status_code == 400  # too deep to decode


@pytest.mark.parametrize("value", ["false", 0, 1, [], {"eq": False}])
def test_v2_count_refuses_a_state_filter_that_is_not_a_boolean(tenant, value: Any) -> None:
    """Novu's count takes true or false (@IsBoolean) and refuses the rest. Ignored, a
    filter `{"read": "false"}` (a value passed on as the query string gave it) counted
    every notification, read or not: an unread badge that never went down."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    _in_app(ann, "a"), _in_app(ann, "b", read_at=timezone.now(), seen_at=timezone.now())
    url = "/v2/subscribers/ann/notifications/count"

    for name in ("read", "seen", "archived", "snoozed"):
        refused = api.get(url, {"filters": json.dumps([{name: value}])})
        assert refused.status_code == 400, name
        assert refused.json()["message"] == f"'{name}' must be a boolean"
    counted = api.get(url, {"filters": json.dumps([{"read": None, "seen": False}])})
    assert [c["count"] for c in counted.json()["data"]] == [1]  # null narrows by nothing


@pytest.mark.parametrize(
    "filters", ['[{"read": NaN}]', '[{"seen": true, "x": Infinity}]', '[{"x": -1e400}]']
)
def test_v2_count_refuses_a_filter_it_could_not_answer_back(filters: str) -> None:
    """Each count answers its filter back: one holding NaN or an infinity (which Python's
    JSON reads) could not be written as JSON, a 500. Refused as a body holding one is."""
    client, key = client_with_key()
    _in_app(SubscriberFactory(client=client, subscriber_id="ann"))

    response = api_for(key).get("/v2/subscribers/ann/notifications/count", {"filters": filters})

    assert response.status_code == 400
    message = response.json()["message"]
    assert "filters" in message
    assert "finite" in message  # what is wrong with NaN too, not "1e400 is not"


def test_v2_count_answers_each_of_up_to_30_filters_and_refuses_more() -> None:
    """Novu takes at most 30 filters; norm cut the list at 20 and left the others'
    counts out, so a caller matching counts to its filters came up short."""
    client, key = client_with_key()
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    _in_app(ann)
    novu = novu_py_for(key)
    filters = [{"read": n % 2 == 0} for n in range(30)]

    counted = novu.subscribers.notifications.count(
        subscriber_id="ann", filters=json.dumps(filters)
    ).result
    assert [c.count for c in counted] == [0, 1] * 15
    with pytest.raises(ErrorDto) as refused:
        novu.subscribers.notifications.count(subscriber_id="ann", filters=json.dumps([{}] * 31))
    assert refused.value.data.status_code == 400


def test_v2_list_and_count_narrow_by_novu_pys_other_filters_or_refuse_them(tenant) -> None:
    """A filter norm ignored listed and counted every notification, as if all matched."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    old, new = _in_app(ann, "old"), _in_app(ann, "new")
    old_at = (timezone.now() - timedelta(days=3)).replace(microsecond=0)
    Message.objects.filter(pk=old.pk).update(created_at=old_at)
    day_ago_ms = (timezone.now() - timedelta(days=1)).timestamp() * 1000
    url = "/v2/subscribers/ann/notifications"

    def ids(query: str) -> list[str]:
        response = api.get(f"{url}?{query}")
        assert response.status_code == 200, response.content
        return [i["id"] for i in response.json()["data"]]

    assert ids(f"createdGte={day_ago_ms}") == [str(new.pk)]
    # At or after, as Novu's $gte: one made at that very millisecond is listed.
    assert ids(f"createdGte={int(old_at.timestamp()) * 1000}") == [str(new.pk), str(old.pk)]
    assert ids(f"createdLte={day_ago_ms:.0f}") == [str(old.pk)]
    assert ids("severity=none") == [str(new.pk), str(old.pk)]  # Novu's default, norm's only
    assert ids("severity=high&severity=low") == []
    # An empty value (a query builder's unset field) narrows by nothing, as an absent one.
    assert ids("severity=&tags=&contextKeys=&createdGte=&createdLte=") == [str(new.pk), str(old.pk)]
    # A severity Novu has not (misspelt) found nothing, as if none matched.
    for query in ("severity=hihg", "severity=none&severity=urgent"):
        assert api.get(f"{url}?{query}").status_code == 400, query
    refused = api.get(f"{url}/count", {"filters": json.dumps([{"severity": "critical"}])})
    assert refused.status_code == 400
    # A time out of any calendar (past year 9999, or what time_t holds) too: not a 500.
    bad = ("createdGte=soon", "createdLte=1e300", "createdGte=-1e20", "createdLte=1e17")
    for query in ("data=%7B%22k%22%3A1%7D", "contextKeys=org:acme", *bad):
        assert api.get(f"{url}?{query}").status_code == 400, query

    filters = [{"createdGte": day_ago_ms}, {"severity": ["high"]}, {"seen": False}]
    counts = api.get(f"{url}/count", {"filters": json.dumps(filters)}).json()["data"]
    assert [c["count"] for c in counts] == [1, 0, 2]
    for wanted in ({"tags": ["billing"]}, {"data": {"k": 1}}):
        refused = api.get(f"{url}/count", {"filters": json.dumps([wanted])})
        assert refused.status_code == 400, wanted


def test_v2_created_lte_of_a_notifications_own_millisecond_lists_and_counts_it(tenant) -> None:
    """A JS Date holds a notification's createdAt to the millisecond, the database its
    microseconds: createdLte of its own createdAt (an inbox paging by time) must find it,
    though it was stored a fraction of that millisecond later."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    message = _in_app(ann)
    made = (timezone.now() - timedelta(hours=1)).replace(microsecond=123_456)
    Message.objects.filter(pk=message.pk).update(created_at=made)
    created_ms = api.get("/v2/subscribers/ann/notifications").json()["data"][0]["createdAt"]
    own_ms = int(made.timestamp()) * 1000 + 123
    url = "/v2/subscribers/ann/notifications"

    assert created_ms.endswith(".123Z")
    listed = api.get(f"{url}?createdLte={own_ms}").json()["data"]
    assert [n["id"] for n in listed] == [str(message.pk)]
    assert api.get(f"{url}?createdLte={own_ms - 1}").json()["data"] == []
    filters = [{"createdLte": own_ms}, {"createdLte": own_ms - 1}]
    counts = api.get(f"{url}/count", {"filters": json.dumps(filters)}).json()["data"]
    assert [c["count"] for c in counts] == [1, 0]


def test_v2_leaves_out_a_recipients_empty_names_and_avatar_rather_than_send_null(
    tenant,
) -> None:
    # Novu's schema makes them optional, not nullable: @novu/api refuses a null there.
    client, api = tenant
    message = _in_app(SubscriberFactory(client=client, subscriber_id="ann"))
    url = "/v2/subscribers/ann/notifications"

    listed = api.get(url).json()
    marked = api.patch(f"{url}/{message.pk}/read").json()["data"]

    assert nulls_novu_refuses(GetSubscriberNotificationsResponseDto, listed) == []
    assert nulls_novu_refuses(InboxNotificationDto, marked) == []
    assert marked["to"] == {"id": str(message.subscriber_id), "subscriberId": "ann"}


def test_v2_names_each_notifications_workflow_as_novu_pys_inbox_reads_it() -> None:
    # Novu's inbox answers the workflow a notification came from; novu-py's
    # `n.workflow.identifier` was None, which no caller could group or route by.
    client, key = client_with_key()
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    welcome = _in_app(ann, "a")
    shipped = _in_app(ann, "b")
    Notification.objects.filter(pk=shipped.step.notification_id).update(workflow_id="shipped")
    inbox = novu_py_for(key).subscribers.notifications

    listed = inbox.list(request={"subscriber_id": "ann"}).result.data
    marked = inbox.mark_as_read(subscriber_id="ann", notification_id=str(welcome.pk)).result

    assert [(n.id, n.workflow and n.workflow.identifier) for n in listed] == [
        (str(shipped.pk), "shipped"),
        (str(welcome.pk), "welcome"),
    ]
    assert marked.workflow is not None
    assert (marked.workflow.id, marked.workflow.identifier, marked.workflow.name) == (
        ("welcome",) * 3
    )
    # norm keeps no severity nor criticality: Novu's defaults, as the notification's own.
    assert (marked.workflow.critical, marked.workflow.severity) == (False, "none")


def test_v2_marks_one_read_or_unread_and_all_read_or_seen(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    one, two, three = _in_app(ann, "a"), _in_app(ann, "b"), _in_app(ann, "c")
    bobs = _in_app(SubscriberFactory(client=client, subscriber_id="bob"))
    url = "/v2/subscribers/ann/notifications"

    read = api.patch(f"{url}/{one.pk}/read")
    assert read.status_code == 200
    # Read, and so seen (never seen before): the answer shows both marks as stored.
    marked = InboxNotificationDto.model_validate(read.json()["data"])
    assert (marked.is_read, marked.is_seen) == (True, True)
    assert api.patch(f"{url}/{one.pk}/unread").json()["data"]["isRead"] is False
    assert api.patch(f"{url}/{bobs.pk}/read").status_code == 404

    seen = api.post(f"{url}/seen", {"notificationIds": [str(two.pk)]}, format="json")
    assert seen.status_code == 204
    assert [
        m.seen_at is not None for m in Message.objects.filter(subscriber=ann).order_by("pk")
    ] == [
        True,  # read, then unread: still seen
        True,
        False,
    ]
    assert api.post(f"{url}/read", {}, format="json").status_code == 204
    assert all(m.read_at for m in Message.objects.filter(pk__in=[one.pk, two.pk, three.pk]))
    assert Message.objects.get(pk=bobs.pk).read_at is None


@pytest.mark.parametrize(
    "body",
    [
        {"notificationIds": "5"},
        {"tags": ["billing"]},
        {"data": '{"plan": "pro"}'},
        {"data": {"plan": "pro"}},
        {"data": "{"},
        {"contextKeys": ["a"]},
    ],
)
def test_v2_mark_all_refuses_what_it_cannot_narrow_by_rather_than_mark_everything(
    tenant, body: dict[str, Any]
) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    _in_app(ann)
    response = api.post("/v2/subscribers/ann/notifications/read", body, format="json")
    assert response.status_code == 400
    assert not Message.objects.filter(read_at__isnull=False).exists()


def test_v2_mark_all_takes_null_or_empty_filters_as_none(tenant) -> None:
    """`"tags": []` or `"data": null` narrows by nothing (Novu's optional fields, and
    norm's own list and count): mark-all refused them as filters it cannot apply."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    one = _in_app(ann)
    body = {"tags": [], "data": None, "contextKeys": []}
    response = api.post("/v2/subscribers/ann/notifications/read", body, format="json")
    assert response.status_code == 204, response.content
    one.refresh_from_db()
    assert one.read_at is not None


@pytest.mark.parametrize("data", ["{}", " { } ", {}, "", " "])
def test_v2_an_empty_data_filter_is_none_on_the_list_count_and_mark_all(tenant, data: Any) -> None:
    """Novu takes `data` as a JSON string (its clients stringify the object) and matches
    an empty object with no condition, as README says of an empty filter: `{}` or "{}"
    was a 400 on each of them, though `data=` was none."""
    client, api = tenant
    one = _in_app(SubscriberFactory(client=client, subscriber_id="ann"))
    url = "/v2/subscribers/ann/notifications"
    as_text = data if isinstance(data, str) else json.dumps(data)

    listed = api.get(url, {"data": as_text})
    assert listed.status_code == 200, listed.content
    assert [n["id"] for n in listed.json()["data"]] == [str(one.pk)]
    counted = api.get(f"{url}/count", {"filters": json.dumps([{"data": data}])})
    assert counted.status_code == 200, counted.content
    assert counted.json()["data"][0]["count"] == 1
    response = api.post(f"{url}/read", {"data": data}, format="json")
    assert response.status_code == 204, response.content
    one.refresh_from_db()
    assert one.read_at is not None


def test_v2_marks_by_id_only_the_subscribers_own_notifications(tenant) -> None:
    client, api = tenant
    mine = _in_app(SubscriberFactory(client=client, subscriber_id="ann"))
    bobs = _in_app(SubscriberFactory(client=client, subscriber_id="bob"))
    theirs = _in_app(SubscriberFactory(client=ClientFactory(), subscriber_id="ann"))
    ids = [str(m.pk) for m in (mine, bobs, theirs)]

    for mark in ("read", "seen"):
        url = f"/v2/subscribers/ann/notifications/{mark}"
        assert api.post(url, {"notificationIds": ids}, format="json").status_code == 204

    read = Message.objects.filter(read_at__isnull=False)
    seen = Message.objects.filter(seen_at__isnull=False)
    assert [m.pk for m in read] == [m.pk for m in seen] == [mine.pk]


def test_marking_again_keeps_when_it_was_first_seen_and_read(tenant) -> None:
    client, api = tenant
    first = timezone.now() - timedelta(hours=1)
    message = _in_app(SubscriberFactory(client=client, subscriber_id="ann"), seen_at=first)
    url = "/v2/subscribers/ann/notifications"

    assert api.post(f"{url}/seen", {}, format="json").status_code == 204
    assert api.post(f"{url}/read", {}, format="json").status_code == 204
    read_at = Message.objects.get(pk=message.pk).read_at
    assert api.patch(f"{url}/{message.pk}/read").status_code == 200

    message.refresh_from_db()
    assert message.seen_at == first
    assert message.read_at == read_at


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "url", ["/v1/subscribers/ann/messages/mark-all", "/v2/subscribers/ann/notifications/read"]
)
def test_mark_all_while_the_subscriber_is_deleted_waits_instead_of_deadlocking(
    tenant, url: str
) -> None:
    """The delete deletes the messages in the order of their steps; the mark-all updated
    them in the order of its index, by creation (a delayed step's message is created
    after the messages of later notifications): each held a message the other wanted
    next, and PostgreSQL failed the mark-all (a 503). The mark-all now locks the
    subscriber first, as the delete does, and waits for the delete."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    delayed, prompt = _in_app(ann, "delayed"), _in_app(ann, "prompt")
    later = timezone.now() + timedelta(minutes=5)
    Message.objects.filter(pk=delayed.pk).update(created_at=later)
    holding, release = threading.Event(), threading.Event()

    def hold_the_prompt_one() -> None:
        # Another reader of it, until the delete (which waits for it after deleting the
        # delayed one) and the mark-all (which does not: its lock leaves it be) have
        # both come to wait.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM messaging_message WHERE id = %s FOR KEY SHARE", [prompt.pk]
            )
            holding.set()
            release.wait(60)

    # Each started once the one before waits for its lock: fixed pauses (0.5 s each) on
    # a loaded machine let one start before the other had reached its lock, and the
    # order the deadlock needs did not happen.
    holder = InThread(hold_the_prompt_one)
    try:
        assert holding.wait(10)
        deleting = InThread(lambda: services.subscriber_delete(subscriber=ann))
        lock_waiters(1, deleting)
        marking = InThread(lambda: api.post(url, {"markAs": "read"}, format="json"))
        lock_waiters(2, marking)
    finally:
        release.set()
    holder.join()
    deleting.join()
    marked = marking.join()

    assert marked.status_code in (201, 204), marked.content
    assert not Message.objects.exists()


def _with_actions(subscriber: Any) -> Message:
    """An in-app message with both buttons, as the framework's in_app step outputs them."""
    message = _in_app(subscriber)
    content = message.content | {
        "primaryAction": {"label": "Accept", "redirect": {"url": "/accept"}},
        "secondaryAction": {"label": "Later"},
    }
    Message.objects.filter(pk=message.pk).update(content=content)
    message.refresh_from_db()
    return message


def test_v2_completes_and_reverts_an_action_as_novu_pys_inbox_calls_it() -> None:
    """novu-py's complete_action and revert_action were a 404 (norm has no such endpoint),
    and every action answered `isCompleted: false`. One result per message, as Novu keeps
    it: completing the secondary takes the primary's back."""
    client, key = client_with_key()
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    message = _with_actions(ann)
    inbox = novu_py_for(key).subscribers.notifications
    ids = {"subscriber_id": "ann", "notification_id": str(message.pk)}

    done = inbox.complete_action(request=ids | {"action_type": "primary"}).result
    assert done.primary_action is not None and done.secondary_action is not None
    assert (done.primary_action.is_completed, done.secondary_action.is_completed) == (True, False)
    listed = inbox.list(request={"subscriber_id": "ann"}).result.data[0]
    assert listed.primary_action is not None and listed.primary_action.is_completed

    other = inbox.complete_action(request=ids | {"action_type": "secondary"}).result
    assert other.primary_action is not None and other.secondary_action is not None
    assert (other.primary_action.is_completed, other.secondary_action.is_completed) == (False, True)
    back = inbox.revert_action(request=ids | {"action_type": "secondary"}).result
    assert back.secondary_action is not None and back.secondary_action.is_completed is False
    assert Message.objects.get(pk=message.pk).action == {
        "status": "pending",
        "result": {"type": "secondary"},
    }


def test_v2_refuses_an_action_the_notification_lacks_and_one_of_another_subscriber(
    tenant,
) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    plain = _in_app(ann)  # no buttons
    bobs = _with_actions(SubscriberFactory(client=client, subscriber_id="bob"))
    url = "/v2/subscribers/ann/notifications"

    lacking = api.patch(f"{url}/{plain.pk}/actions/primary/complete")
    foreign = api.patch(f"{url}/{bobs.pk}/actions/primary/complete")
    odd = api.patch(f"{url}/{plain.pk}/actions/tertiary/complete")

    assert (lacking.status_code, lacking.json()["code"]) == (400, "action_not_found")
    assert foreign.status_code == 404
    assert odd.status_code == 400
    assert Message.objects.get(pk=bobs.pk).action == {}


def test_v1_records_an_actions_status_and_payload_as_both_clients_call_it() -> None:
    """novu 1.14's mark_message_action and novu-py's update_as_seen were a 404."""
    client, key = client_with_key()
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    message = _with_actions(ann)

    old = SubscriberApi(NOVU_114_URL, key, session=novu_114_session())
    marked = old.mark_message_action(
        "ann", str(message.pk), "primary", MessageActionStatus.DONE, {"rsvp": "yes"}
    )
    assert marked.cta["action"]["status"] == "done"
    assert marked.cta["action"]["result"] == {"type": "primary", "payload": {"rsvp": "yes"}}

    novu = novu_py_for(key)
    seen = novu.subscribers.messages.update_as_seen(
        request={
            "subscriber_id": "ann",
            "message_id": str(message.pk),
            "type": "secondary",
            "mark_message_action_as_seen_dto": {"status": "pending"},
        }
    ).result
    assert isinstance(seen, MessageResponseDto)
    assert seen.cta.action is not None and seen.cta.action.result is not None
    assert (seen.cta.action.status, seen.cta.action.result.type) == ("pending", "secondary")
    inbox = novu.subscribers.notifications.list(request={"subscriber_id": "ann"}).result.data[0]
    assert inbox.secondary_action is not None and inbox.secondary_action.is_completed is False


def test_v1_refuses_an_action_type_other_than_primary_or_secondary(tenant) -> None:
    """Novu's v1 call records a result without looking for the button, but of its two
    types only: unchecked, another would be stored as the message's action, and answered
    in every listing's cta as a result no button has."""
    client, api = tenant
    message = _with_actions(SubscriberFactory(client=client, subscriber_id="ann"))

    response = api.post(
        f"/v1/subscribers/ann/messages/{message.pk}/actions/tertiary",
        {"status": "done"},
        format="json",
    )

    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")
    assert Message.objects.get(pk=message.pk).action == {}
