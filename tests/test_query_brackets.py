"""A list in the query as JavaScript callers send it: `name[]=a` (axios, @novu/js),
`name[0]=a` (qs), read by Novu's API (Express's qs) as `name=a`."""

from __future__ import annotations

import pytest
from django.utils import timezone

from messaging.models import Message
from tests.factories import SubscriberFactory
from tests.messaging.test_inbox_api import _in_app
from tests.messaging.test_message_list_api import _message

pytestmark = pytest.mark.django_db


def _ids(response: object) -> list[str]:
    assert response.status_code == 200, response.content  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    return [str(m.get("id") or m.get("_id")) for m in body["data"]]


def test_a_list_in_brackets_narrows_as_the_bare_name_does(tenant) -> None:
    """Unread, `severity[]=high` listed every notification (all are severity none) and
    `transactionId[]=` every message of the client, as if each matched."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    inbox = _in_app(ann)
    mail = _message(ann, "email", sent_at=timezone.now(), status=Message.Status.SENT)
    txn = mail.step.notification.trigger_event.transaction_id
    url = "/v2/subscribers/ann/notifications"

    assert _ids(api.get(f"{url}?severity[]=high")) == []
    assert _ids(api.get(f"{url}?severity[0]=high&severity[1]=low")) == []
    assert _ids(api.get(f"{url}?severity[]=none")) == [str(inbox.pk)]
    assert _ids(api.get(f"/v1/messages?transactionId[]={txn}")) == [str(mail.pk)]
    assert _ids(api.get("/v1/notifications?channels[]=email")) == [str(mail.step.notification_id)]


@pytest.mark.parametrize(
    "query",
    [
        "/v2/subscribers/ann/notifications?tags[]=billing",
        "/v2/subscribers/ann/notifications?tags[and][0][or][]=billing",
        "/v2/subscribers/ann/notifications?contextKeys[]=org:acme",
        "/v1/messages?contextKeys[]=org:acme",
        "/v1/notifications?contextKeys[0]=org:acme",
    ],
)
def test_a_filter_norm_cannot_apply_is_refused_in_brackets_too(tenant, query: str) -> None:
    """Unread, the filter was not refused: every row answered as if it matched."""
    client, api = tenant
    _in_app(SubscriberFactory(client=client, subscriber_id="ann"))

    assert api.get(query).status_code == 400


@pytest.mark.parametrize(
    "query",
    [
        "/v2/subscribers/ann/notifications?contextKeys=",
        "/v1/messages?contextKeys=%20",
        "/v1/notifications?contextKeys=",
        "/v2/topics/news/subscriptions?contextKeys=",
    ],
)
def test_a_filter_norm_cannot_apply_given_empty_is_no_filter(tenant, query: str) -> None:
    """`contextKeys=` (novu-py given `[""]`, a form's unset field) narrows nothing: it is
    not refused as the filter norm cannot apply."""
    client, api = tenant
    _in_app(SubscriberFactory(client=client, subscriber_id="ann"))
    assert api.post("/v2/topics", {"key": "news"}, format="json").status_code == 201

    assert api.get(query).status_code == 200, query
