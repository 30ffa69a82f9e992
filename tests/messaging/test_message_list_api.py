"""GET /v1/messages: novu-py's messages.retrieve and novu 1.14's MessageApi.list."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import requests
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from novu.api import MessageApi
from novu.dto.message import PaginatedMessageDto
from novu_py.models import ErrorDto, MessagesResponseDto
from rest_framework.test import APIClient

from messaging.models import Message
from tests.conftest import plan_nodes
from tests.factories import (
    NOVU_114_URL,
    ClientFactory,
    MessageFactory,
    StepFactory,
    SubscriberFactory,
    client_with_key,
    novu_114_session,
    novu_py_for,
)
from tests.novu_nulls import nulls_novu_refuses

pytestmark = pytest.mark.django_db

URL = "/v1/messages"


def _message(subscriber: Any, channel: str = "in_app", **kwargs: Any) -> Message:
    step = StepFactory(
        type=channel,
        notification__subscriber=subscriber,
        notification__client=subscriber.client,
        notification__trigger_event__client=subscriber.client,
    )
    return MessageFactory(step=step, content=step.outputs, **kwargs)


def _ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [m["_id"] for m in response.json()["data"]]


def test_lists_the_clients_messages_newest_first_as_both_sdks_read_them(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    older = _message(ann, "email", recipient="ann@example.test", sent_at=timezone.now())
    Message.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(hours=1))
    failed = _message(ann, status=Message.Status.FAILED, error="provider down")
    _message(ann, status=Message.Status.SENDING)  # no outcome yet
    theirs = SubscriberFactory(client=ClientFactory(), subscriber_id="ann")
    _message(theirs)

    response = api.get(URL, {"page": "0.0", "limit": "10.0"})  # as novu-py sends them

    assert _ids(response) == [str(failed.pk), str(older.pk)]
    page = MessagesResponseDto.model_validate(response.json())
    assert (page.page, page.page_size, page.total_count, page.has_more) == (0, 10, 2, False)
    first, second = page.data
    assert (first.status, first.error_text, first.channel) == ("error", "provider down", "in_app")
    assert (second.status, second.channel, second.subject) == ("sent", "email", "Hi")
    assert response.json()["data"][1]["cta"] == {}  # a click and buttons are an inbox's
    assert second.transaction_id == older.step.notification.trigger_event.transaction_id
    old = PaginatedMessageDto.from_camel_case(response.json())
    assert [m._id for m in old.data] == [str(failed.pk), str(older.pk)]
    # Neither was seen or read: no null for the dates, which @novu/api would refuse.
    assert nulls_novu_refuses(MessagesResponseDto, response.json()) == []
    assert "lastSeenDate" not in response.json()["data"][0]


def test_filters_by_channel_subscriber_and_transactions(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    bob = SubscriberFactory(client=client, subscriber_id="bob")
    ann_inbox, ann_mail = _message(ann), _message(ann, "email")
    bob_inbox = _message(bob)
    tx = [m.step.notification.trigger_event.transaction_id for m in (ann_mail, bob_inbox)]

    assert set(_ids(api.get(URL, {"channel": "in_app"}))) == {str(ann_inbox.pk), str(bob_inbox.pk)}
    assert set(_ids(api.get(URL, {"subscriberId": "ann"}))) == {str(ann_inbox.pk), str(ann_mail.pk)}
    both = api.get(URL, {"transactionId": tx})  # repeated, as novu-py sends a list
    assert set(_ids(both)) == {str(ann_mail.pk), str(bob_inbox.pk)}
    one = api.get(URL, {"transactionId": tx[0], "channel": "in_app"})
    assert _ids(one) == []


def test_a_subscriber_that_does_not_exist_is_novus_404_to_both_sdks() -> None:
    """Novu's GetMessages looks the subscriberId up with GetSubscriber, which refuses
    one it does not find with a 404: norm answered an empty page, which a caller could
    not tell from a subscriber who was sent nothing."""
    client, key = client_with_key()
    _message(SubscriberFactory(client=ClientFactory(), subscriber_id="theirs"))
    novu = novu_py_for(key)
    messages = MessageApi(NOVU_114_URL, key, session=novu_114_session())

    for subscriber_id in ("nobody", "theirs"):
        with pytest.raises(ErrorDto) as refused:
            novu.messages.retrieve(request={"subscriber_id": subscriber_id})
        assert refused.value.data.status_code == 404
        assert "subscriber_not_found" in refused.value.body
        with pytest.raises(requests.HTTPError) as old:
            messages.list(subscriber_id=subscriber_id)
        assert old.value.response.status_code == 404
    SubscriberFactory(client=client, subscriber_id="nobody")
    assert novu.messages.retrieve(request={"subscriber_id": "nobody"}).result.data == []


def test_another_clients_messages_never_appear(tenant) -> None:
    client, api = tenant
    mine = _message(SubscriberFactory(client=client, subscriber_id="ann"))
    other = ClientFactory()
    theirs = _message(SubscriberFactory(client=other, subscriber_id="ann"))
    their_tx = theirs.step.notification.trigger_event.transaction_id

    assert _ids(api.get(URL)) == [str(mine.pk)]
    assert _ids(api.get(URL, {"subscriberId": "ann"})) == [str(mine.pk)]
    assert _ids(api.get(URL, {"transactionId": their_tx})) == []


def test_pages_through_the_messages(tenant) -> None:
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    made = [_message(ann) for _ in range(3)]
    newest_first = [str(m.pk) for m in reversed(made)]

    first = api.get(URL, {"limit": 2})
    second = api.get(URL, {"limit": 2, "page": 1})

    assert _ids(first) == newest_first[:2] and first.json()["hasMore"] is True
    assert _ids(second) == newest_first[2:] and second.json()["hasMore"] is False
    assert second.json()["totalCount"] == 3


@pytest.mark.parametrize(
    "query", [{"channel": "fax"}, {"contextKeys": "tenant:acme"}, {"limit": "many"}]
)
def test_a_filter_norm_cannot_apply_is_400(tenant, query: dict[str, str]) -> None:
    _, api = tenant
    response = api.get(URL, query)
    assert response.status_code == 400, response.content
    assert response.json()["statusCode"] == 400


def test_an_empty_context_keys_is_no_filter_and_a_non_empty_one_a_400() -> None:
    """novu-py sends `contextKeys=` for `context_keys=[""]` (as a form or a query builder
    does for an unset field): norm refused it, though it narrows nothing. Novu reads an
    empty contextKeys as "the messages with no context", which are all of norm's."""
    client, key = client_with_key()
    mine = _message(SubscriberFactory(client=client, subscriber_id="ann"))
    novu = novu_py_for(key)

    for asked in ({}, {"context_keys": []}, {"context_keys": [""]}):
        listed = novu.messages.retrieve(request=asked).result
        assert [m.id for m in listed.data] == [str(mine.pk)], asked
    with pytest.raises(ErrorDto) as refused:
        novu.messages.retrieve(request={"context_keys": ["tenant:acme", ""]})
    assert refused.value.data.status_code == 400
    assert "contextKeys" in refused.value.data.message


def test_an_empty_filter_is_no_filter_whichever_it_is() -> None:
    """An empty `subscriberId=` was ignored, but an empty `transactionId=` (what novu-py
    sends for `transaction_id=[""]`, as a form does for an unset field) was a 400, and
    so was `subscriberId=%20`: each now narrows nothing, as an absent filter; beside a
    value, an empty one adds nothing to it."""
    client, key = client_with_key()
    mine = _message(SubscriberFactory(client=client, subscriber_id="ann"))
    tx = mine.step.notification.trigger_event.transaction_id
    novu, api = novu_py_for(key), APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"ApiKey {key}")

    for asked in ({"transaction_id": [""]}, {"subscriber_id": ""}, {"transaction_id": ["", tx]}):
        listed = novu.messages.retrieve(request=asked).result
        assert [m.id for m in listed.data] == [str(mine.pk)], asked
    query = "transactionId=&transactionId=%20&subscriberId=%20&channel="
    assert _ids(api.get(f"{URL}?{query}")) == [str(mine.pk)]
    assert _ids(api.get(f"{URL}?transactionId=&transactionId=other")) == []


def test_needs_an_api_key() -> None:
    assert APIClient().get(URL).status_code == 401


def test_a_page_of_messages_is_read_from_the_clients_index_not_sorted_from_all(tenant) -> None:
    """Every page sorted all the client's messages by creation time (360,000 of them:
    465 ms and a 50 MB sort on disk, for 10 rows); the (client, created_at) index hands
    them over newest first (4 ms)."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    for _ in range(3):
        _message(ann)
    with CaptureQueriesContext(connection) as queries:
        assert len(_ids(api.get(URL, {"limit": 2}))) == 2
    (page,) = [q["sql"] for q in queries if q["sql"].startswith('SELECT "messaging_message"."id"')]
    assert Message._meta.indexes[1].name in {n.get("Index Name") for n in plan_nodes(page)}


def test_a_messages_provider_is_novus_id_for_it_as_its_job_has() -> None:
    """A message's providerId was norm's own name (django-email, inbox), where its job,
    the same send, said Novu's (nodemailer, novu): a novu-py user matching the two, or
    reading Novu's ids, found none of them."""
    client, key = client_with_key()
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    email = _message(ann, "email", provider="django-email", recipient="ann@example.test")
    _message(ann, "in_app", provider="inbox")
    novu = novu_py_for(key)

    listed = novu.messages.retrieve(request={}).result.data
    job = novu.notifications.retrieve(notification_id=str(email.step.notification_id)).result

    assert {m.channel: m.provider_id for m in listed} == {"email": "nodemailer", "in_app": "novu"}
    assert job.jobs is not None and job.jobs[0].provider_id == "nodemailer"


def test_an_emails_address_is_its_email_as_novus() -> None:
    """Novu's message has the address an email went to as `email`; norm's had none, and
    a novu-py user could not tell where one went."""
    client, key = client_with_key()
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    _message(ann, "email", provider="django-email", recipient="ann@example.test")
    _message(ann, "in_app", provider="inbox")
    _message(ann, "sms", recipient="+15550100")  # an address, but no email's

    listed = novu_py_for(key).messages.retrieve(request={}).result.data

    emails = {m.channel: m.email for m in listed}
    assert emails == {"email": "ann@example.test", "in_app": None, "sms": None}
