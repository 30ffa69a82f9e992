"""The subscriber API on Novu's paths: v2 for novu-py, v1 for novu 1.14 (NOVU_API.md)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import novu_py
import pytest
import requests
from django.db import connection
from django.http import HttpResponse
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from novu.api import SubscriberApi
from novu.dto.subscriber import SubscriberDto
from novu_py.models import BulkCreateSubscriberResponseDto, SubscriberResponseDto
from rest_framework.test import APIClient

from config import paging
from notify.models import Client
from subscribers.models import Subscriber, Topic
from tests.conftest import plan_nodes
from tests.factories import (
    NOVU_114_URL,
    SubscriberFactory,
    api_for,
    client_with_key,
    novu_114_session,
    novu_py_for,
)
from tests.novu_nulls import nulls_novu_refuses

pytestmark = pytest.mark.django_db

FULL = {
    "subscriberId": "ann",
    "email": "ann@example.com",
    "firstName": "Ann",
    "lastName": "Lee",
    "phone": "+15550100",
    "avatar": "https://example.com/ann.png",
    "locale": "fr-FR",
    "timezone": "Europe/Paris",
    "data": {"plan": "pro"},
}


def call(key: str, method: str, path: str, body: Any = None, **extra: Any) -> HttpResponse:
    api = api_for(key)
    data = json.dumps(body) if body is not None else None
    return getattr(api, method)(path, data=data, content_type="application/json", **extra)


def ok(response: HttpResponse, status: int = 200) -> Any:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    return response.json()


def assert_error(response: HttpResponse, status: int, path: str) -> dict[str, Any]:
    """Novu's ErrorDto: what novu-py needs to raise its typed error."""
    assert response.status_code == status, response.content
    body = response.json()
    assert body["statusCode"] == status
    assert body["path"] == path
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["error"], str) and body["error"]
    datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    return body


@pytest.fixture
def keyed() -> tuple[Client, str]:
    return client_with_key()


@pytest.fixture
def key(keyed: tuple[Client, str]) -> str:
    return keyed[1]


@pytest.fixture
def other_key() -> str:
    return client_with_key()[1]


# --- create ------------------------------------------------------------------------------


def test_v2_create_answers_201_with_the_fields_novu_py_requires(
    keyed: tuple[Client, str],
) -> None:
    client, key = keyed
    body = ok(call(key, "post", "/v2/subscribers", FULL), 201)["data"]

    assert {"subscriberId", "_organizationId", "_environmentId", "createdAt", "updatedAt"} <= set(
        body
    )
    assert body["deleted"] is False
    assert {k: body[k] for k in FULL} == FULL
    subscriber = Subscriber.objects.get(client=client, subscriber_id="ann")
    assert (subscriber.email, subscriber.first_name, subscriber.timezone) == (
        "ann@example.com",
        "Ann",
        "Europe/Paris",
    )
    assert subscriber.data == {"plan": "pro"}


def test_v1_create_takes_novu_114s_body_with_nulls_for_unset_fields(key: str) -> None:
    body = {k: None for k in ("email", "firstName", "lastName", "phone", "avatar", "locale")}
    body |= {"subscriberId": "bob", "email": "bob@example.com", "channels": None, "data": None}
    data = ok(call(key, "post", "/v1/subscribers", body), 201)["data"]

    assert (data["subscriberId"], data["email"], data["firstName"]) == (
        "bob",
        "bob@example.com",
        None,
    )
    assert Subscriber.objects.get(subscriber_id="bob").data == {}


def test_create_of_an_existing_subscriber_updates_it(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann", email="old@example.com", first_name="A")
    ok(
        call(key, "post", "/v2/subscribers", {"subscriberId": "ann", "email": "new@example.com"}),
        201,
    )

    subscriber = Subscriber.objects.get(client=client, subscriber_id="ann")
    assert (subscriber.email, subscriber.first_name) == ("new@example.com", "A")


def test_fail_if_exists_answers_409_and_changes_nothing(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann", email="old@example.com")
    path = "/v2/subscribers?failIfExists=true"
    response = call(key, "post", path, {"subscriberId": "ann", "email": "new@example.com"})

    body = assert_error(response, 409, path)
    assert Subscriber.objects.get(client=client, subscriber_id="ann").email == "old@example.com"
    # novu-py reads the 409's body as the subscriber that exists (SubscriberResponseDto).
    existing = SubscriberResponseDto.model_validate(body)
    assert (existing.subscriber_id, existing.email) == ("ann", "old@example.com")
    ok(call(key, "post", path, {"subscriberId": "bob"}), 201)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),
        ({"subscriberId": ""}, 422),
        ({"subscriberId": "ann", "data": "x"}, 422),
        (["ann"], 400),
    ],
)
def test_invalid_create_is_422_or_400_when_not_an_object(key: str, body: Any, status: int) -> None:
    assert_error(call(key, "post", "/v2/subscribers", body), status, "/v2/subscribers")
    assert not Subscriber.objects.exists()


def test_bulk_create_reports_created_updated_and_failed(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="bob")
    items = [
        {"subscriberId": "ann", "email": "ann@example.com"},
        {"subscriberId": "bob"},
        {"email": "x@example.com"},
    ]
    data = ok(call(key, "post", "/v1/subscribers/bulk", {"subscribers": items}), 201)["data"]

    assert data["created"] == [{"subscriberId": "ann"}]
    assert data["updated"] == [{"subscriberId": "bob"}]
    # No subscriberId to name is left out, as Novu does: its schema takes no null there,
    # and @novu/api refused the whole answer for one.
    assert data["failed"] == [{"message": "subscriberId: This field is required."}]
    assert nulls_novu_refuses(BulkCreateSubscriberResponseDto, data) == []
    assert sorted(
        Subscriber.objects.filter(client=client).values_list("subscriber_id", flat=True)
    ) == [
        "ann",
        "bob",
    ]


# What Novu's IsEmail refuses, and no email step could send to.
INVALID_EMAILS = ["ann", "ann@", "@example.com", "Ann <ann@example.com>", "a@b.co, c@d.co", "a@b"]
# Novu's IsEmail takes these (a control character in a quoted local part), but no email
# can carry one: Python's email package writes a vertical tab in a header as a line break.
INVALID_EMAILS += ['"ann\x0bbob"@example.com', '"ann\x1c"@example.com', '"ann\\\x0b"@example.com']
# Django's pattern takes any character from U+00A1 to U+FFFF in a domain, but the send
# writes it as IDNA, which refuses some (a mis-decoded ü read as U+FFFD) and a label
# longer than 63 characters once written so: each email failed, for good.
INVALID_EMAILS += ["ann@m\ufffdnchen.de", "ann@" + "\u00fc" * 60 + ".de"]


@pytest.mark.parametrize("email", INVALID_EMAILS)
def test_an_invalid_email_is_refused_with_a_422_by_novu_pys_create_and_patch(
    keyed: tuple[Client, str], email: str
) -> None:
    """Taken as it came, such an address failed later, at each email step that reached
    the subscriber, where Novu refuses it at once."""
    client, key = keyed
    novu = novu_py_for(key)
    with pytest.raises(novu_py.models.ValidationErrorDto) as refused:
        novu.subscribers.create(
            create_subscriber_request_dto={"subscriber_id": "ann", "email": email}
        )
    assert "email" in refused.value.data.message
    assert not Subscriber.objects.exists()

    novu.subscribers.create(
        create_subscriber_request_dto={"subscriber_id": "ann", "email": "a@b.co"}
    )
    with pytest.raises(novu_py.models.ValidationErrorDto):
        novu.subscribers.patch(subscriber_id="ann", patch_subscriber_request_dto={"email": email})
    assert Subscriber.objects.get(client=client, subscriber_id="ann").email == "a@b.co"


def test_a_422_lists_every_message_of_a_field(key: str) -> None:
    """Novu's ValidationErrorDto holds a list of messages per field: an email both too
    long and malformed answered only the last one."""
    with pytest.raises(novu_py.models.ValidationErrorDto) as refused:
        novu_py_for(key).subscribers.create(
            create_subscriber_request_dto={"subscriber_id": "ann", "email": "a" * 300}
        )
    messages = refused.value.data.errors["email"].messages
    assert len(messages) == 2, messages
    assert any("254" in m for m in messages)
    assert any("valid email" in m for m in messages)


def test_an_invalid_email_is_refused_on_v1_and_fails_only_its_entry_in_the_bulk(
    keyed: tuple[Client, str],
) -> None:
    client, key = keyed
    body = {"subscriberId": "bob", "email": "bob@", "firstName": None}  # as novu 1.14 sends
    assert_error(call(key, "post", "/v1/subscribers", body), 422, "/v1/subscribers")
    SubscriberFactory(client=client, subscriber_id="bob", email="bob@example.com")
    assert_error(call(key, "put", "/v1/subscribers/bob", body), 422, "/v1/subscribers/bob")

    result = (
        novu_py_for(key)
        .subscribers.create_bulk(
            bulk_subscriber_create_dto={
                "subscribers": [
                    {"subscriber_id": "ann", "email": "ann@example.com"},
                    {"subscriber_id": "bob", "email": "Bob <bob@example.com>"},
                ]
            }
        )
        .result
    )
    assert [c.subscriber_id for c in result.created] == ["ann"]
    assert [(f.subscriber_id, "email" in f.message) for f in result.failed] == [("bob", True)]
    assert Subscriber.objects.get(client=client, subscriber_id="bob").email == "bob@example.com"


def test_a_subscriber_and_a_topic_created_with_spaces_are_found_by_the_ids_given(
    key: str,
) -> None:
    """A subscriberId and a topic key are stored trimmed (" ann ", a cell of a file, is
    "ann"), as a trigger's recipients and its transactionId are read, but each URL took
    them as given: the caller's own id was a 404 to read, update, delete or open an
    inbox with."""
    ok(call(key, "post", "/v2/subscribers", {"subscriberId": " ann "}), 201)
    ok(call(key, "post", "/v2/topics", {"key": " news ", "name": "News"}), 201)

    assert ok(call(key, "get", "/v2/subscribers/%20ann%20"))["data"]["subscriberId"] == "ann"
    ok(call(key, "patch", "/v1/subscribers/%20ann%20", {"firstName": "Ann"}))
    ok(call(key, "get", "/v1/subscribers/%20ann%20/notifications/feed"))
    ok(call(key, "get", "/v2/subscribers/%20ann%20/notifications/count"))
    ok(call(key, "post", "/v2/topics/%20news%20/subscriptions", {"subscriberIds": ["ann"]}), 201)
    assert ok(call(key, "get", "/v2/topics/%20news%20"))["data"]["key"] == "news"
    ok(call(key, "get", "/v1/topics/%20news%20/subscribers/%20ann%20"))
    ok(call(key, "delete", "/v2/subscribers/%20ann%20"))
    assert not Subscriber.objects.exists()


def test_the_lists_filter_by_ids_given_with_spaces_as_they_are_stored(key: str) -> None:
    """The subscriber lists' subscriberId, email and phone, the topic lists' key and a
    topic's subscriptions' subscriberId compared the value as given with one stored
    trimmed, so " ann" found nobody, where each URL and the notification and message
    lists' filters trim it."""
    body = {"subscriberId": "ann", "email": "ann@example.com", "phone": "+15550100"}
    ok(call(key, "post", "/v2/subscribers", body), 201)
    ok(call(key, "post", "/v2/subscribers", {"subscriberId": "bob"}), 201)
    ok(call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": ["ann", "bob"]}), 201)
    ok(call(key, "post", "/v2/topics", {"key": "sport"}), 201)

    for version in ("v1", "v2"):
        for query in (
            "subscriberId=%20ann%20",
            "email=ann%40example.com%20",
            "phone=%2B15550100%0A",
        ):
            listed = ok(call(key, "get", f"/{version}/subscribers?{query}"))["data"]
            assert [s["subscriberId"] for s in listed] == ["ann"], (version, query)
        topics = ok(call(key, "get", f"/{version}/topics?key=%20news%20"))["data"]
        assert [t["key"] for t in topics] == ["news"], version
    path = "/v2/topics/news/subscriptions?subscriberId=%20bob%20"
    subscriptions = ok(call(key, "get", path))["data"]
    assert [s["subscriber"]["subscriberId"] for s in subscriptions] == ["bob"]
    # White space alone is no filter, as an empty value.
    assert len(ok(call(key, "get", "/v2/topics?key=%20"))["data"]) == 2


@pytest.mark.parametrize(
    "email", ["ann@example.com", "ann+news@mail.example.co.uk", "josé@exämple.com", "ann@localhost"]
)
def test_a_valid_email_is_kept_one_beyond_ascii_too(keyed: tuple[Client, str], email: str) -> None:
    """norm sends a local part beyond ASCII with SMTPUTF8, as Novu's IsEmail takes it."""
    client, key = keyed
    novu = novu_py_for(key)
    created = novu.subscribers.create(
        create_subscriber_request_dto={"subscriber_id": "ann", "email": email}
    ).result
    assert created.email == email
    # "" (novu-py's patch) clears it.
    patched = novu.subscribers.patch(
        subscriber_id="ann", patch_subscriber_request_dto={"email": ""}
    )
    assert (patched.result.email, Subscriber.objects.get(client=client).email) == (None, "")


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("subscriber_id", ["team/ann", "ann?x", "ann#1", "team%2Fann", ".", ".."])
def test_create_refuses_a_subscriber_id_no_url_could_reach(
    key: str, version: str, subscriber_id: str
) -> None:
    path = f"/{version}/subscribers"
    body = assert_error(call(key, "post", path, {"subscriberId": subscriber_id}), 400, path)
    assert "subscriberId" in body["message"]
    assert not Subscriber.objects.exists()


@pytest.mark.parametrize(
    "subscriber_id", ["ann.lee", "ann+news@example.com", "user:42", "ann lee", "...", ".ann"]
)
def test_a_subscriber_id_with_other_characters_is_created_and_reached(
    key: str, subscriber_id: str
) -> None:
    ok(call(key, "post", "/v2/subscribers", {"subscriberId": subscriber_id}), 201)
    escaped = subscriber_id.replace(" ", "%20")
    got = ok(call(key, "get", f"/v2/subscribers/{escaped}"))["data"]
    assert got["subscriberId"] == subscriber_id


def test_a_subscriber_made_with_such_an_id_stays_upsertable(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="team/ann")
    body = {"subscriberId": "team/ann", "email": "ann@example.com"}
    ok(call(key, "post", "/v1/subscribers", body), 201)
    assert Subscriber.objects.get(subscriber_id="team/ann").email == "ann@example.com"


def test_another_clients_subscriber_with_such_an_id_lets_none_be_made(
    key: str,
) -> None:
    """What stays upsertable is a client's own subscriber made before norm refused such
    ids: another client's of that id makes none reachable here."""
    SubscriberFactory(client=client_with_key()[0], subscriber_id="team/ann")
    path = "/v2/subscribers"
    assert_error(call(key, "post", path, {"subscriberId": "team/ann"}), 400, path)
    assert Subscriber.objects.filter(subscriber_id="team/ann").count() == 1


def test_bulk_create_fails_only_the_subscriber_id_no_url_could_reach(
    keyed: tuple[Client, str],
) -> None:
    client, key = keyed
    items = [{"subscriberId": "team/ann"}, {"subscriberId": "bob"}]
    data = ok(call(key, "post", "/v1/subscribers/bulk", {"subscribers": items}), 201)["data"]

    assert data["created"] == [{"subscriberId": "bob"}]
    assert [f["subscriberId"] for f in data["failed"]] == ["team/ann"]
    assert "subscriberId" in data["failed"][0]["message"]
    assert list(Subscriber.objects.values_list("subscriber_id", flat=True)) == ["bob"]


@pytest.mark.parametrize("subscribers", ["ann", [{"subscriberId": f"u{i}"} for i in range(501)]])
def test_bulk_create_needs_a_list_of_at_most_500(key: str, subscribers: Any) -> None:
    assert_error(
        call(key, "post", "/v1/subscribers/bulk", {"subscribers": subscribers}),
        400,
        "/v1/subscribers/bulk",
    )
    assert not Subscriber.objects.exists()


# What Novu's IsLocale (validator.js's isLocale) and IsTimeZone (Intl) refuse.
INVALID_LOCALES = ["e", "en-", "en US", "fr_FR.UTF-8", "toolonglocale", "123"]
INVALID_TIME_ZONES = ["Mars/Olympus", "Europe/Pariss", "GMT+2", "CET/Paris"]


@pytest.mark.parametrize(
    ("field", "value"),
    [*(("locale", v) for v in INVALID_LOCALES), *(("timezone", v) for v in INVALID_TIME_ZONES)],
)
def test_an_invalid_locale_or_timezone_is_refused_with_novus_422(
    keyed: tuple[Client, str], field: str, value: str
) -> None:
    """Stored as they came, where Novu refuses them: a bridge reading the subscriber's
    timezone or locale then failed on it, one notification at a time."""
    client, key = keyed
    novu = novu_py_for(key)
    with pytest.raises(novu_py.models.ValidationErrorDto) as refused:
        novu.subscribers.create(
            create_subscriber_request_dto={"subscriber_id": "ann", field: value}
        )
    message = {
        "locale": "locale must be locale",
        "timezone": "timezone must be a valid IANA time-zone",
    }
    assert refused.value.data.errors[field].messages == [message[field]]
    assert not Subscriber.objects.exists()

    SubscriberFactory(client=client, subscriber_id="ann", locale="fr-FR", timezone="Europe/Paris")
    with pytest.raises(novu_py.models.ValidationErrorDto):
        novu.subscribers.patch(subscriber_id="ann", patch_subscriber_request_dto={field: value})
    body = {"subscriberId": "ann", field: value, "firstName": None}  # as novu 1.14 sends
    refused_v1 = assert_error(call(key, "post", "/v1/subscribers", body), 422, "/v1/subscribers")
    # Said once, as Novu's class-validator says it: not "locale: locale must be locale".
    assert refused_v1["message"] == message[field]
    assert_error(call(key, "put", "/v1/subscribers/ann", body), 422, "/v1/subscribers/ann")
    result = novu.subscribers.create_bulk(
        bulk_subscriber_create_dto={
            "subscribers": [{"subscriber_id": "bob"}, {"subscriber_id": "ann", field: value}]
        }
    ).result
    assert [c.subscriber_id for c in result.created] == ["bob"]
    assert [(f.subscriber_id, message[field] in f.message) for f in result.failed] == [
        ("ann", True)
    ]
    ann = Subscriber.objects.get(client=client, subscriber_id="ann")
    assert (ann.locale, ann.timezone) == ("fr-FR", "Europe/Paris")


@pytest.mark.parametrize(
    ("locale", "timezone", "stored"),
    [
        ("en", "UTC", "UTC"),
        ("en_US", "America/Argentina/Buenos_Aires", "America/Argentina/Buenos_Aires"),
        ("zh-Hant-TW", "Asia/Taipei", "Asia/Taipei"),
        ("es-419", "Etc/GMT+5", "Etc/GMT+5"),
        ("english", "US/Eastern", "US/Eastern"),  # both pass Novu's checks too
        ("fr-FR", "europe/paris", "Europe/Paris"),  # Intl matches a zone in any case
    ],
)
def test_a_valid_locale_and_timezone_are_kept_and_empty_clears_them(
    keyed: tuple[Client, str], locale: str, timezone: str, stored: str
) -> None:
    client, key = keyed
    novu = novu_py_for(key)
    created = novu.subscribers.create(
        create_subscriber_request_dto={
            "subscriber_id": "ann",
            "locale": locale,
            "timezone": timezone,
        }
    ).result
    assert (created.locale, created.timezone) == (locale, stored)
    ok(call(key, "put", "/v1/subscribers/ann", {"locale": locale, "timezone": timezone}))

    patched = novu.subscribers.patch(
        subscriber_id="ann", patch_subscriber_request_dto={"locale": "", "timezone": ""}
    ).result
    assert (patched.locale, patched.timezone) == (None, None)
    ann = Subscriber.objects.get(client=client)
    assert (ann.locale, ann.timezone) == ("", "")


@pytest.mark.parametrize(
    ("field", "value"),
    [("firstName", 5), ("lastName", 1.5), ("phone", 15550100), ("avatar", True), ("locale", 7)],
)
def test_a_number_for_a_string_field_is_refused_as_novus_is_string_refuses_it(
    keyed: tuple[Client, str], field: str, value: Any
) -> None:
    """Stored as the text "5" before, where Novu answers 422 "firstName must be a string"."""
    client, key = keyed
    for method, path, body in [
        ("post", "/v2/subscribers", {"subscriberId": "ann", field: value}),
        ("post", "/v1/subscribers", {"subscriberId": "ann", field: value}),
    ]:
        refused = assert_error(call(key, method, path, body), 422, path)
        assert refused["errors"] == {field: {"messages": [f"{field} must be a string"]}}
    assert not Subscriber.objects.exists()

    SubscriberFactory(client=client, subscriber_id="ann", first_name="Ann", phone="+1555")
    for method, version in [("patch", "v2"), ("put", "v1")]:
        path = f"/{version}/subscribers/ann"
        assert_error(call(key, method, path, {field: value}), 422, path)
    bulk = {"subscribers": [{"subscriberId": "bob", field: value}]}
    failed = ok(call(key, "post", "/v1/subscribers/bulk", bulk), 201)["data"]["failed"]
    assert failed == [{"subscriberId": "bob", "message": f"{field} must be a string"}]
    ann = Subscriber.objects.get(client=client)
    assert (ann.first_name, ann.phone) == ("Ann", "+1555")


def test_a_number_for_the_subscriber_id_is_refused(key: str) -> None:
    refused = assert_error(
        call(key, "post", "/v2/subscribers", {"subscriberId": 7}), 422, "/v2/subscribers"
    )
    assert refused["errors"] == {"subscriberId": {"messages": ["subscriberId must be a string"]}}
    assert not Subscriber.objects.exists()


# --- get, update, delete ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_get_returns_the_subscriber(keyed: tuple[Client, str], version: str) -> None:
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann", email="ann@example.com")
    data = ok(call(key, "get", f"/{version}/subscribers/ann"))["data"]
    assert (data["subscriberId"], data["email"]) == ("ann", "ann@example.com")


@pytest.mark.parametrize("method", ["get", "patch", "put", "delete"])
def test_unknown_subscriber_is_404_error_dto(key: str, method: str) -> None:
    path = "/v2/subscribers/nobody"
    body = assert_error(
        call(key, method, path, {} if method in ("patch", "put") else None), 404, path
    )
    assert body["error"] == "Not Found"


def test_v2_patch_leaves_absent_fields_and_clears_null_ones(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    call(key, "post", "/v2/subscribers", FULL)
    data = ok(
        call(
            key,
            "patch",
            "/v2/subscribers/ann",
            {"firstName": None, "data": None, "email": "a@b.co"},
        )
    )["data"]

    assert (data["firstName"], data["data"], data["email"], data["lastName"]) == (
        None,
        None,
        "a@b.co",
        "Lee",
    )
    subscriber = Subscriber.objects.get(client=client, subscriber_id="ann")
    assert (subscriber.first_name, subscriber.data, subscriber.email) == ("", {}, "a@b.co")
    assert (subscriber.last_name, subscriber.phone, subscriber.locale) == (
        "Lee",
        "+15550100",
        "fr-FR",
    )


def test_v1_put_treats_null_as_not_provided(keyed: tuple[Client, str]) -> None:
    """novu 1.14 sends all nine keys, null for each one the caller did not set."""
    client, key = keyed
    call(key, "post", "/v2/subscribers", FULL)
    body = {k: None for k in FULL} | {
        "subscriberId": "ann",
        "email": "new@example.com",
        "channels": None,
    }
    data = ok(call(key, "put", "/v1/subscribers/ann", body))["data"]

    assert (data["email"], data["firstName"], data["data"]) == (
        "new@example.com",
        "Ann",
        {"plan": "pro"},
    )
    subscriber = Subscriber.objects.get(client=client, subscriber_id="ann")
    assert (subscriber.email, subscriber.first_name, subscriber.phone) == (
        "new@example.com",
        "Ann",
        "+15550100",
    )


def test_novu_114s_put_of_a_subscriber_that_does_not_exist_is_novus_400(
    keyed: tuple[Client, str],
) -> None:
    """Novu's v1 update refuses a subscriber it does not find with an ApiException, a
    400 (UpdateSubscriber, in every version), where its get and delete answer 404."""
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann")
    subscribers = SubscriberApi(NOVU_114_URL, key, session=novu_114_session())

    with pytest.raises(requests.HTTPError) as refused:
        subscribers.put(SubscriberDto(subscriber_id="nobody", first_name="Bo"))
    assert refused.value.response.status_code == 400
    assert refused.value.response.json()["code"] == "subscriber_not_found"
    assert subscribers.put(SubscriberDto(subscriber_id="ann", first_name="Al")).first_name == "Al"
    with pytest.raises(requests.HTTPError) as unknown:
        subscribers.get("nobody")
    assert unknown.value.response.status_code == 404
    assert not Subscriber.objects.filter(subscriber_id="nobody").exists()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_delete_answers_200_with_a_body_then_404(keyed: tuple[Client, str], version: str) -> None:
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann")
    path = f"/{version}/subscribers/ann"
    assert ok(call(key, "delete", path)) == {"data": {"acknowledged": True, "status": "deleted"}}

    assert not Subscriber.objects.filter(client=client).exists()
    assert_error(call(key, "get", path), 404, path)
    assert_error(call(key, "delete", path), 404, path)


def test_novu_114_reaches_the_subscriber_named_bulk_by_its_v1_path(
    keyed: tuple[Client, str],
) -> None:
    """/v1/subscribers/bulk is also /v1/subscribers/{subscriberId} for "bulk", a routable
    id: Novu routes by method, POST to the bulk create and the others to the
    subscriber. Its GET, PUT and DELETE were a 405, which novu 1.14 raises."""
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="bulk", first_name="Bo")
    path = "/v1/subscribers/bulk"
    assert ok(call(key, "get", path))["data"]["firstName"] == "Bo"

    body = {"subscriberId": "bulk", "firstName": "Bea", "email": None}  # as novu 1.14 puts
    assert ok(call(key, "put", path, body))["data"]["firstName"] == "Bea"
    assert ok(call(key, "patch", path, {"lastName": "Ray"}))["data"]["lastName"] == "Ray"
    assert Subscriber.objects.get(client=client, subscriber_id="bulk").first_name == "Bea"

    assert ok(call(key, "delete", path))["data"]["acknowledged"] is True
    assert not Subscriber.objects.filter(client=client).exists()
    assert_error(call(key, "get", path), 404, path)
    # POST there is still the bulk create.
    created = ok(call(key, "post", path, {"subscribers": [{"subscriberId": "ann"}]}), 201)
    assert created["data"]["created"] == [{"subscriberId": "ann"}]


# --- lists ---------------------------------------------------------------------------------


def _walk(key: str, base: str, direction: str, cursor: str | None = None) -> list[dict[str, Any]]:
    """Follow `next` (or `previous`) until it runs out; every page's body."""
    param = "after" if direction == "next" else "before"
    pages: list[dict[str, Any]] = []
    while True:
        body = ok(call(key, "get", base if cursor is None else f"{base}&{param}={cursor}"))
        assert set(body) >= {"data", "next", "previous", "totalCount", "totalCountCapped"}
        assert body["totalCount"] == 25
        pages.append(body)
        cursor = body[direction]
        if cursor is None:
            return pages
        assert len(pages) < 10, "the cursor never ends"


def _ids(pages: list[dict[str, Any]]) -> list[list[str]]:
    return [[s["subscriberId"] for s in page["data"]] for page in pages]


@pytest.mark.parametrize("order", ["ASC", "DESC"])
def test_v2_list_cursor_walks_every_item_once_both_ways(
    keyed: tuple[Client, str], other_key: str, order: str
) -> None:
    client, key = keyed
    names = [f"user-{i:02}" for i in range(25)]
    for name in names:
        SubscriberFactory(client=client, subscriber_id=name)
    call(other_key, "post", "/v2/subscribers", {"subscriberId": "stranger"})
    expected = names if order == "ASC" else names[::-1]
    base = f"/v2/subscribers?limit=10.0&orderDirection={order}"

    forward = _walk(key, base, "next")
    assert _ids(forward) == [expected[:10], expected[10:20], expected[20:]]
    assert forward[0]["previous"] is None

    backward = _walk(key, base, "previous", cursor=forward[-1]["previous"])
    assert _ids(backward) == [expected[10:20], expected[:10]]
    assert backward[-1]["next"] is not None


@pytest.mark.parametrize("order", ["ASC", "DESC"])
def test_novu_pys_include_cursor_starts_the_page_at_the_cursors_item(
    keyed: tuple[Client, str], order: str
) -> None:
    """`includeCursor=true`: Novu's page holds the cursor's item too (after it, or before
    it going back); norm ignored it and began one item later."""
    client, key = keyed
    names = [f"user-{i:02}" for i in range(6)]
    for name in names:
        SubscriberFactory(client=client, subscriber_id=name)
    expected = names if order == "ASC" else names[::-1]
    novu = novu_py_for(key)

    def page(**cursor: Any) -> list[str]:
        request = {"limit": 2, "order_direction": order, "include_cursor": True, **cursor}
        return [s.subscriber_id for s in novu.subscribers.search(request=request).result.data]

    first = novu.subscribers.search(request={"limit": 2, "order_direction": order}).result
    assert page(after=first.next) == expected[1:3]
    assert page(before=first.next) == expected[:2]
    assert [s.subscriber_id for s in first.data] == expected[:2]


@pytest.mark.parametrize("order", ["ASC", "DESC"])
def test_novu_pys_order_by_updated_at_walks_the_subscribers_by_their_last_change(
    keyed: tuple[Client, str], order: str
) -> None:
    """`orderBy=updatedAt` (how a caller finds what changed since): norm ignored it and
    listed by creation, so a subscriber changed last came where it was created."""
    client, key = keyed
    for name in ("ann", "bob", "cid", "dan", "eve"):
        SubscriberFactory(client=client, subscriber_id=name)
    novu = novu_py_for(key)
    for name in ("bob", "ann"):
        novu.subscribers.patch(subscriber_id=name, patch_subscriber_request_dto={"email": ""})
    expected = ["cid", "dan", "eve", "bob", "ann"]
    expected = expected if order == "ASC" else expected[::-1]

    def page(**cursor: Any) -> Any:
        request = {"limit": 2, "order_by": "updatedAt", "order_direction": order, **cursor}
        return novu.subscribers.search(request=request).result

    pages = [page()]
    while pages[-1].next:
        pages.append(page(after=pages[-1].next))
    assert [[s.subscriber_id for s in p.data] for p in pages] == [
        expected[:2],
        expected[2:4],
        expected[4:],
    ]
    back = page(before=pages[-1].previous)
    assert [s.subscriber_id for s in back.data] == expected[2:4]
    assert [s.subscriber_id for s in page(after=pages[0].next, include_cursor=True).data] == (
        expected[1:3]
    )


_PAGE_QUERY = 'SELECT "subscribers_subscriber"."id"'


@pytest.mark.parametrize("order", ["ASC", "DESC"])
def test_pages_by_updated_at_are_read_from_the_cursor_by_an_index_ties_kept(
    keyed: tuple[Client, str], order: str
) -> None:
    """`orderBy=updatedAt` had no index: each page sorted all the client's subscribers
    (45 ms a page at 200,000). The (client, updated_at, id) index hands a page over from
    its cursor on (0.03 ms), subscribers changed at the same instant in id order, none
    lost or repeated where a page boundary falls among them."""
    client, key = keyed
    made = [SubscriberFactory(client=client, subscriber_id=f"user-{i}") for i in range(7)]
    at = timezone.now()
    Subscriber.objects.filter(pk__in=[s.pk for s in made[1:5]]).update(updated_at=at)
    Subscriber.objects.filter(pk=made[0].pk).update(updated_at=at + timedelta(seconds=1))
    expected = [made[i].subscriber_id for i in (5, 6, 1, 2, 3, 4, 0)]
    expected = expected if order == "ASC" else expected[::-1]
    base = f"/v2/subscribers?limit=2&orderBy=updatedAt&orderDirection={order}"

    pages = [ok(call(key, "get", base))]
    with CaptureQueriesContext(connection) as queries:
        pages.append(ok(call(key, "get", f"{base}&after={pages[-1]['next']}")))
    (after_sql,) = [q["sql"] for q in queries if q["sql"].startswith(_PAGE_QUERY)]
    while pages[-1]["next"]:
        pages.append(ok(call(key, "get", f"{base}&after={pages[-1]['next']}")))
    back = ok(call(key, "get", f"{base}&before={pages[-1]['previous']}"))

    assert [[s["subscriberId"] for s in p["data"]] for p in pages] == [
        expected[:2],
        expected[2:4],
        expected[4:6],
        expected[6:],
    ]
    assert [s["subscriberId"] for s in back["data"]] == expected[4:6]
    with connection.cursor() as cursor:
        # The test's few rows sort for nothing: after some other tests in the same
        # process, the planner sorted another index's scan instead (as test_query_plans).
        cursor.execute("SET LOCAL enable_sort = off")
    plan = plan_nodes(after_sql)
    scans = [n for n in plan if n.get("Index Name") == "subscriber_client_updated"]
    # The cursor bounds the scan (an index condition on updated_at), rather than the
    # scan reading, and filtering out, every row before it.
    assert scans and "updated_at" in scans[0]["Index Cond"], plan


@pytest.mark.parametrize("order", ["ASC", "DESC"])
def test_pages_by_updated_at_sorted_rather_than_read_from_the_index_keep_ties_in_id_order(
    keyed: tuple[Client, str], order: str
) -> None:
    """A plan that sorts the rows (a filter's own index, a planner's choice) rather than
    reading the (client, updated_at, id) index: the order must name the id as well, or
    subscribers changed at the same instant come in the order the table stores them,
    which the cursor's tie-break (by id) does not follow, and a page repeats one and
    skips another."""
    client, key = keyed
    made = [SubscriberFactory(client=client, subscriber_id=f"user-{i}") for i in range(6)]
    at = timezone.now()
    # One at a time, out of order: the table stores each row's new version after the one
    # before, the ties in neither id order.
    for i in (2, 0, 4, 1, 5, 3):
        Subscriber.objects.filter(pk=made[i].pk).update(updated_at=at)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_indexscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
    base = f"/v2/subscribers?limit=2&orderBy=updatedAt&orderDirection={order}"

    pages = [ok(call(key, "get", base))]
    while pages[-1]["next"]:
        pages.append(ok(call(key, "get", f"{base}&after={pages[-1]['next']}")))

    expected = [s.subscriber_id for s in made]
    expected = expected if order == "ASC" else expected[::-1]
    assert [s["subscriberId"] for p in pages for s in p["data"]] == expected


@pytest.mark.parametrize("order", ["ASC", "DESC"])
def test_a_walk_by_updated_at_goes_on_from_its_cursors_place_though_it_was_deleted_or_changed(
    keyed: tuple[Client, str], order: str
) -> None:
    """The cursor's subscriber was looked up for its place: deleted between pages, the
    next page was a 400; changed, it had moved to the newest end, and the walk began
    again (newest first) or ended there (oldest first). A page's cursor carries its
    place, as any keyset list's does; a bare id still stands where its subscriber is."""
    client, key = keyed
    names = [f"user-{i}" for i in range(6)]
    for name in names:
        SubscriberFactory(client=client, subscriber_id=name)
    expected = names if order == "ASC" else names[::-1]
    novu = novu_py_for(key)

    def page(**cursor: Any) -> Any:
        request = {"limit": 2, "order_by": "updatedAt", "order_direction": order, **cursor}
        return novu.subscribers.search(request=request).result

    def ids(listed: Any) -> list[str]:
        return [s.subscriber_id for s in listed.data]

    first = page()
    deleted = first.data[1].id
    novu.subscribers.delete(subscriber_id=expected[1])
    second = page(after=first.next)
    assert ids(second) == expected[2:4]
    novu.subscribers.patch(
        subscriber_id=expected[3], patch_subscriber_request_dto={"firstName": "Changed"}
    )
    third = page(after=second.next)
    assert ids(third) == expected[4:6]
    if order == "ASC":
        # Changed last, it comes again at the end of a walk oldest first, as changed.
        assert ids(page(after=third.next)) == [expected[3]]
    else:
        assert third.next is None
    assert ids(page(before=third.previous)) == [expected[0], expected[2]]
    # A bare id: where its subscriber is now; one deleted has no place to go on from.
    at_now = Subscriber.objects.get(client=client, subscriber_id=expected[2]).pk
    assert ids(page(after=str(at_now))) == expected[4:6]
    with pytest.raises(novu_py.models.ErrorDto) as refused:
        page(after=deleted)
    assert refused.value.data.status_code == 400


@pytest.mark.parametrize(
    ("order_by", "cursor"),
    [("_id", "1" * 5000), ("updatedAt", "1" * 5000), ("updatedAt", "1_" + "1" * 5000)],
)
def test_a_cursor_of_more_digits_than_python_reads_is_a_400(
    keyed: tuple[Client, str], order_by: str, cursor: str
) -> None:
    """Python's int() refuses a string of more than 4,300 digits (ValueError): read whole,
    such a cursor was a 500 where every other bad cursor is a 400."""
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann")
    path = f"/v2/subscribers?orderBy={order_by}&after={cursor}"
    response = call(key, "get", path)
    assert_error(response, 400, path)
    assert "invalid cursor" in response.json()["message"]


def test_an_order_by_norm_cannot_sort_by_is_a_400(key: str) -> None:
    with pytest.raises(novu_py.models.ErrorDto) as refused:
        novu_py_for(key).subscribers.search(request={"order_by": "email"})
    assert refused.value.data.status_code == 400
    assert "orderBy" in refused.value.data.message


def test_v2_list_is_newest_first_without_an_order_direction(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    names = [f"user-{i:02}" for i in range(25)]
    for name in names:
        SubscriberFactory(client=client, subscriber_id=name)
    base = "/v2/subscribers?limit=10.0"

    forward = _walk(key, base, "next")
    newest_first = names[::-1]
    assert _ids(forward) == [newest_first[:10], newest_first[10:20], newest_first[20:]]
    backward = _walk(key, base, "previous", cursor=forward[-1]["previous"])
    assert _ids(backward) == [newest_first[10:20], newest_first[:10]]


@pytest.mark.parametrize("path", ["/v2/subscribers", "/v2/topics", "/v2/topics/news/subscriptions"])
def test_v2_lists_count_at_most_the_cap_and_say_so(
    keyed: tuple[Client, str], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    client, key = keyed
    names = [f"user-{i}" for i in range(5)]
    for name in names:
        SubscriberFactory(client=client, subscriber_id=name)
        Topic.objects.create(client=client, key=f"topic-{name}")
    call(key, "post", "/v2/topics/news/subscriptions", {"subscriberIds": names})
    total = 6 if path == "/v2/topics" else 5

    page = ok(call(key, "get", f"{path}?limit=2.0"))
    assert (page["totalCount"], page["totalCountCapped"]) == (total, False)

    monkeypatch.setattr(paging, "TOTAL_COUNT_CAP", 3, raising=False)
    with CaptureQueriesContext(connection) as queries:
        page = ok(call(key, "get", f"{path}?limit=2.0"))
    assert (page["totalCount"], page["totalCountCapped"]) == (3, True)
    assert len(page["data"]) == 2 and page["next"] is not None
    # The count reads no more than the cap (and one row to know it is over).
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert len(counts) == 1 and "LIMIT 4" in counts[0]
    # As many as the cap, and not one more: every row is counted, none left out.
    monkeypatch.setattr(paging, "TOTAL_COUNT_CAP", total, raising=False)
    page = ok(call(key, "get", f"{path}?limit=2.0"))
    assert (page["totalCount"], page["totalCountCapped"]) == (total, False)


def test_v2_list_filters_by_email(keyed: tuple[Client, str]) -> None:
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann", email="ann@example.com")
    SubscriberFactory(client=client, subscriber_id="bob", email="bob@example.com")
    body = ok(call(key, "get", "/v2/subscribers?limit=10.0&email=ann%40example.com"))
    assert [s["subscriberId"] for s in body["data"]] == ["ann"]


def test_v2_and_v1_lists_filter_by_subscriber_id_phone_and_first_or_last_name(
    keyed: tuple[Client, str],
) -> None:
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann", phone="+15550100", first_name="Ann")
    SubscriberFactory(client=client, subscriber_id="bob", phone="+15550111", last_name="Annan")
    SubscriberFactory(client=client, subscriber_id="cid", phone="+15550100", first_name="Cid")

    def found(query: str) -> list[str]:
        v2 = ok(call(key, "get", f"/v2/subscribers?limit=10&orderDirection=ASC&{query}"))
        v1 = ok(call(key, "get", f"/v1/subscribers?limit=10&{query}"))
        assert [s["subscriberId"] for s in v1["data"]] == [s["subscriberId"] for s in v2["data"]]
        return [s["subscriberId"] for s in v2["data"]]

    assert found("subscriberId=bob") == ["bob"]
    assert found("phone=%2B15550100") == ["ann", "cid"]
    assert found("name=ann") == ["ann", "bob"]  # Ann's first name, Annan's last
    assert found("name=ci") == ["cid"]
    assert found("subscriberId=ann&phone=%2B15550111") == []


def test_novu_pys_search_by_name_finds_the_full_name(keyed: tuple[Client, str]) -> None:
    """Novu matches `name` against "firstName lastName": a search for the full name
    found nobody when norm looked for it in each name on its own."""
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann", first_name="Ann", last_name="Lee")
    SubscriberFactory(client=client, subscriber_id="bob", first_name="Ann", last_name="Bell")
    SubscriberFactory(client=client, subscriber_id="cid", last_name="Lee")
    novu = novu_py_for(key)

    def found(name: str) -> list[str]:
        listed = novu.subscribers.search(request={"name": name, "order_direction": "ASC"})
        return [s.subscriber_id for s in listed.result.data]

    assert found("Ann Lee") == ["ann"]
    assert found("ann lee") == ["ann"]
    assert found("n Le") == ["ann"]
    assert found("Lee") == ["ann", "cid"]  # a last name alone, with no first name


def test_v2_list_filters_by_email_and_name_in_any_case_beyond_ascii(
    keyed: tuple[Client, str],
) -> None:
    """SQLite's LIKE folds ASCII letters only: under `make run` "ÅSA@…" found no
    "åsa@…" and "MÜLLER" no "Müller", where PostgreSQL found them."""
    client, key = keyed
    SubscriberFactory(
        client=client, subscriber_id="asa", email="åsa@exämple.com", last_name="Müller"
    )
    SubscriberFactory(client=client, subscriber_id="bob", email="bob@example.com", last_name="Mull")

    def found(query: str) -> list[str]:
        body = ok(call(key, "get", f"/v2/subscribers?limit=10.0&{query}"))
        return [s["subscriberId"] for s in body["data"]]

    assert found("email=%C3%85SA%40EX%C3%84MPLE.COM") == ["asa"]  # ÅSA@EXÄMPLE.COM
    assert found("name=M%C3%9CLLER") == ["asa"]  # MÜLLER
    assert found("name=m%C3%BCl") == ["asa"]  # mül


def test_v2_list_rejects_a_limit_that_is_not_a_number(key: str) -> None:
    assert_error(call(key, "get", "/v2/subscribers?limit=ten"), 400, "/v2/subscribers?limit=ten")


def test_v1_list_pages_by_page_and_limit(keyed: tuple[Client, str], other_key: str) -> None:
    client, key = keyed
    names = [f"user-{i:02}" for i in range(25)]
    for name in names:
        SubscriberFactory(client=client, subscriber_id=name)
    call(other_key, "post", "/v2/subscribers", {"subscriberId": "stranger"})

    seen = []
    for page in range(3):
        body = ok(call(key, "get", f"/v1/subscribers?page={page}&limit=10"))
        assert (body["page"], body["pageSize"], body["totalCount"]) == (page, 10, 25)
        assert body["hasMore"] is (page < 2)
        seen += [s["subscriberId"] for s in body["data"]]
    assert seen == names


# --- isolation and routing ------------------------------------------------------------------


def test_another_clients_key_never_sees_or_changes_the_subscriber(
    keyed: tuple[Client, str], other_key: str
) -> None:
    client, key = keyed
    call(key, "post", "/v2/subscribers", FULL)
    path = "/v2/subscribers/ann"

    assert_error(call(other_key, "get", path), 404, path)
    assert_error(call(other_key, "patch", path, {"email": "evil@example.com"}), 404, path)
    assert_error(
        call(other_key, "put", "/v1/subscribers/ann", {"email": "e@x.y"}),
        400,  # as Novu's v1 update answers a subscriber it does not find
        "/v1/subscribers/ann",
    )
    assert_error(call(other_key, "delete", path), 404, path)
    assert ok(call(other_key, "get", "/v2/subscribers"))["data"] == []
    # The same subscriberId is a different subscriber under another client.
    ok(call(other_key, "post", "/v2/subscribers?failIfExists=true", {"subscriberId": "ann"}), 201)

    mine = Subscriber.objects.get(client=client, subscriber_id="ann")
    assert mine.email == "ann@example.com"
    assert Subscriber.objects.filter(subscriber_id="ann").count() == 2


def test_no_key_or_a_wrong_key_is_401(key: str) -> None:
    assert_error(APIClient().get("/v2/subscribers"), 401, "/v2/subscribers")
    assert_error(call("nk_wrong", "get", "/v2/subscribers"), 401, "/v2/subscribers")
    bearer = APIClient()
    bearer.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")  # a valid key, not Novu's scheme
    assert_error(bearer.get("/v2/subscribers"), 401, "/v2/subscribers")


def test_a_double_slash_path_from_novu_114_is_served(key: str) -> None:
    """novu 1.14 keeps the base URL's trailing slash: `http://host/` + `/v1/...`."""
    response = call(
        key, "post", "/v1/subscribers", {"subscriberId": "ann"}, PATH_INFO="//v1/subscribers"
    )
    ok(response, 201)
    assert Subscriber.objects.filter(subscriber_id="ann").exists()


@pytest.mark.parametrize("path", ["/v2/subscribers/", "/v1/subscribers/"])
def test_a_trailing_slash_is_never_redirected(key: str, path: str) -> None:
    """A redirect would turn the client's POST into a GET."""
    response = call(key, "post", path, {"subscriberId": "ann"})
    assert response.status_code == 404
    assert not response.has_header("Location")
    assert not Subscriber.objects.exists()


def test_both_clients_set_a_subscribers_online_flag_as_novu_keeps_it(
    keyed: tuple[Client, str],
) -> None:
    """novu 1.14's online_status and novu-py's update_online_flag were a 404 (norm has no
    such endpoint). As Novu's UpdateSubscriberOnlineFlag: going offline says when."""
    client, key = keyed
    SubscriberFactory(client=client, subscriber_id="ann")
    old = SubscriberApi(NOVU_114_URL, key, session=novu_114_session())
    novu = novu_py_for(key)

    online = old.online_status("ann", True)
    assert (online.is_online, online.last_online_at) == (True, None)
    before = timezone.now()
    offline = novu.subscribers.properties.update_online_flag(
        subscriber_id="ann", update_subscriber_online_flag_request_dto={"is_online": False}
    ).result
    assert isinstance(offline, SubscriberResponseDto)
    assert offline.is_online is False and offline.last_online_at is not None
    assert datetime.fromisoformat(offline.last_online_at) >= before - timedelta(milliseconds=1)
    stored = Subscriber.objects.get(client=client, subscriber_id="ann")
    assert (stored.is_online, stored.last_online_at is not None) == (False, True)
    assert novu.subscribers.retrieve(subscriber_id="ann").result.is_online is False

    with pytest.raises(requests.HTTPError) as unknown:
        old.online_status("nobody", True)
    assert unknown.value.response.status_code == 404
    refused = call(key, "patch", "/v1/subscribers/ann/online-status", {"isOnline": "maybe"})
    assert refused.status_code == 422  # as Novu's validation answers it
