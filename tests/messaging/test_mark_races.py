"""Inbox marks sent while their subscriber is deleted, on real connections (hence
`transaction=True`): the 404 a mark a moment later would have, not a 500."""

from __future__ import annotations

from typing import Any

import pytest

from messaging.models import Message
from subscribers import services
from tests.conftest import while_held
from tests.factories import SubscriberFactory
from tests.messaging.test_inbox_api import _in_app

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
