"""Inbox marks sent twice at once, or while their subscriber is deleted, on real
connections (hence `transaction=True`): no 500, no mark lost, and the 404 a mark a
moment after the delete would have."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import transaction

from messaging.models import Message
from subscribers import services
from tests.conftest import InThread, lock_waiters, while_held
from tests.factories import SubscriberFactory
from tests.messaging.test_inbox_api import _in_app, _with_actions

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/v2/subscribers/ann/notifications/{one}/read", None),
        ("/v1/subscribers/ann/messages/mark-as", {"markAs": "read"}),
    ],
    ids=["v2 one", "v1 mark-as"],
)
def test_a_mark_while_the_subscriber_is_deleted_is_a_404(
    tenant: tuple[Any, Any], url: str, body: dict[str, Any] | None
) -> None:
    """The mark waits for the delete, then finds its message gone: v2's read of the
    message it marked failed (a 500), and v1 answered 201 with no message marked."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    one = _in_app(ann, "one")
    url = url.format(one=one.pk)
    if body is not None:
        body = {**body, "messageId": [str(one.pk)]}

    _, response = while_held(
        lambda: services.subscriber_delete(subscriber=ann),
        lambda: api.patch(url) if body is None else api.post(url, body, format="json"),
    )

    assert response.status_code == 404, response.content
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/v2/subscribers/ann/notifications/{one}/actions/primary/complete", None),
        ("/v2/subscribers/ann/notifications/{one}/actions/primary/revert", None),
        ("/v1/subscribers/ann/messages/{one}/actions/primary", {"status": "done"}),
    ],
    ids=["v2 complete", "v2 revert", "v1 action"],
)
def test_an_action_while_the_subscriber_is_deleted_is_a_404(
    tenant: tuple[Any, Any], url: str, body: dict[str, Any] | None
) -> None:
    """The action found the message before the delete committed; its UPDATE waits for
    the delete's lock on the message, then finds it gone: the 404 an action a moment
    after the delete would have, not a 500 and not an action recorded on nothing."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    one = _with_actions(ann)
    url = url.format(one=one.pk)

    _, response = while_held(
        lambda: services.subscriber_delete(subscriber=ann),
        lambda: api.patch(url) if body is None else api.post(url, body, format="json"),
    )

    assert response.status_code == 404, response.content
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/v1/subscribers/ann/messages/mark-all", {"markAs": "read"}),
        ("/v1/subscribers/ann/messages/mark-as", {"messageId": ["{b}", "{a}"], "markAs": "read"}),
        ("/v2/subscribers/ann/notifications/read", {}),
    ],
    ids=["v1 mark-all", "v1 mark-as", "v2 read"],
)
def test_a_mark_while_the_same_mark_is_made_waits_and_keeps_its_time(
    tenant: tuple[Any, Any], url: str, body: dict[str, Any]
) -> None:
    """Each mark waits for the other's lock on the subscriber: no deadlock, and the
    messages keep the time the first read them (the second changes none)."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    a, b = _in_app(ann, "a"), _in_app(ann, "b")
    if "messageId" in body:
        body = {**body, "messageId": [i.format(a=a.pk, b=b.pk) for i in body["messageId"]]}
    read_at: dict[int, Any] = {}

    def read_all() -> Any:
        answer = api.post("/v2/subscribers/ann/notifications/read", {}, format="json")
        read_at.update(Message.objects.values_list("pk", "read_at"))
        return answer

    first, second = while_held(read_all, lambda: api.post(url, body, format="json"))

    assert first.status_code == 204, first.content
    assert second.status_code in (201, 204), second.content
    if url.endswith("mark-all"):
        assert second.json()["data"] == 0
    assert dict(Message.objects.values_list("pk", "read_at")) == read_at
    assert all(read_at.values())


def test_a_mark_does_not_wait_for_a_notification_being_stored_for_the_subscriber(
    tenant: tuple[Any, Any],
) -> None:
    """A transaction storing a notification and its message for the subscriber (a
    trigger's, a worker's) holds the subscriber's key until it commits (the foreign
    keys' checks). The mark's lock on the subscriber leaves the key be (no key update),
    so an inbox's mark does not wait for such a transaction, a broadcast's chunk say."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    one = _in_app(ann, "one")
    stored, release = threading.Event(), threading.Event()

    def store_another() -> None:
        with transaction.atomic():
            _in_app(ann, "another")
            stored.set()
            release.wait(30)

    holder = InThread(store_another)
    try:
        assert stored.wait(10)
        marking = InThread(
            lambda: api.post("/v2/subscribers/ann/notifications/read", {}, format="json")
        )
        lock_waiters(1, marking)  # returns once it waits for a lock, or has ended
        waited = marking.thread.is_alive()
    finally:
        release.set()
    holder.join()

    assert not waited
    assert marking.join().status_code == 204
    one.refresh_from_db()
    assert one.read_at is not None
