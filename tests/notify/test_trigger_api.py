from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlparse

import kombu.exceptions
import pytest
from django.http import HttpResponse
from django.utils import timezone
from novu_py import models
from rest_framework.test import APIClient

from config import pipeline
from config.celery import app as celery_app
from notify import services as notify_services
from notify.models import BridgeSync, BridgeWorkflow, Client, TriggerEvent
from subscribers.models import Subscriber, Topic
from tests.conftest import Enqueued, serve_in_background
from tests.factories import (
    BRIDGE_URL,
    BridgeSyncFactory,
    BridgeWorkflowFactory,
    ClientFactory,
    TriggerEventFactory,
    api_for,
    client_with_key,
    novu_py_for,
)
from tests.sdk.helpers import FORMATS
from tests.sdk.test_schemas import ZOD_CHANNEL
from workflows import bridge
from workflows.demo import demo_bridge
from workflows.models import Notification
from workflows.sdk.schemas import Schema, SchemaInvalid
from workflows.services import reconciler

pytestmark = pytest.mark.django_db

TRIGGER = "/v1/events/trigger"
BROADCAST = "/v1/events/trigger/broadcast"
BULK = "/v1/events/trigger/bulk"
OTHER_BRIDGE = "http://other-bridge.test/bridge"


@dataclass
class FakeDiscover:
    """The bridge's `discover`, answered by the demo bridge without a network hop."""

    calls: list[tuple[str, str | None]] = field(default_factory=list)

    def __call__(self, url: str, *, secrets: Sequence[str]) -> dict[str, Any]:
        self.calls.append((url, secrets[0] if secrets else None))
        return demo_bridge.discover()

    @property
    def urls(self) -> list[str]:
        return [url for url, _ in self.calls]


@pytest.fixture
def discover(monkeypatch: pytest.MonkeyPatch) -> FakeDiscover:
    fake = FakeDiscover()
    monkeypatch.setattr(bridge, "discover", fake)
    return fake


@pytest.fixture
def keyed() -> tuple[Client, str]:
    return client_with_key(allowed_bridge_urls=[OTHER_BRIDGE])


Post = Callable[..., HttpResponse]


@pytest.fixture
def post(keyed: tuple[Client, str], django_capture_on_commit_callbacks: Callable[..., Any]) -> Post:
    """POST as the keyed client; hand-offs registered on commit are run (into `enqueued`)."""

    def do(path: str, body: Any, *, key: str | None = None, raw: bool = False) -> HttpResponse:
        api = api_for(key or keyed[1])
        data = body if raw else json.dumps(body)
        with django_capture_on_commit_callbacks(execute=True):
            return api.post(path, data=data, content_type="application/json")

    return do


def assert_error(response: HttpResponse, status: int, code: str, path: str = TRIGGER) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["statusCode"] == status
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert body["path"] == path
    return body


def assert_nothing_stored(enqueued: Enqueued) -> None:
    assert TriggerEvent.objects.count() == 0
    assert enqueued.calls == []


# --- bad input -------------------------------------------------------------------------


def test_malformed_json_is_400(post: Post, discover: FakeDiscover, enqueued: Enqueued) -> None:
    assert_error(post(TRIGGER, '{"name": "welcome", "to": ', raw=True), 400, "parse_error")
    assert_nothing_stored(enqueued)


def test_a_body_opening_with_a_byte_order_mark_is_taken(
    post: Post, discover: FakeDiscover, enqueued: Enqueued
) -> None:
    """A file saved by a Windows editor opens with a UTF-8 byte order mark, which Novu's
    body parser (body-parser, iconv-lite) drops: `curl --data @trigger.json` was a 400
    "Unexpected UTF-8 BOM" here."""
    body = json.dumps({"name": "welcome", "to": "ann"}).encode()
    response = post(TRIGGER, b"\xef\xbb\xbf" + body, raw=True)
    assert response.status_code == 201, response.content
    assert TriggerEvent.objects.get().to == "ann"


def test_a_compressed_body_is_a_415_that_says_so(keyed: tuple[Client, str]) -> None:
    """A gzip body (Content-Encoding: gzip) was read as JSON text: a 400 "JSON parse error
    - 'utf-8' codec can't decode byte 0x8b", which said nothing of the compression."""
    body = gzip.compress(json.dumps({"name": "welcome", "to": "ann"}).encode())
    response = api_for(keyed[1]).generic(
        "POST", TRIGGER, body, content_type="application/json", HTTP_CONTENT_ENCODING="gzip"
    )
    error = assert_error(response, 415, "unsupported_media_type")
    assert error["message"] == "Content-Encoding gzip is not supported: send the body as it is"
    assert not TriggerEvent.objects.exists()


@pytest.mark.parametrize(
    ("content_type", "named"),
    [("application/x-www-form-urlencoded", "'application/x-www-form-urlencoded'"), ("", "''")],
)
def test_a_body_sent_as_no_json_is_a_415_that_says_what_to_send(
    keyed: tuple[Client, str], content_type: str, named: str
) -> None:
    """`curl -d '{...}'` without `-H 'Content-Type: application/json'` sends a form: DRF's
    "Unsupported media type ... in request." did not say what norm reads."""
    body = json.dumps({"name": "welcome", "to": "ann"})
    response = api_for(keyed[1]).generic("POST", TRIGGER, body, content_type=content_type)
    error = assert_error(response, 415, "unsupported_media_type")
    assert error["message"] == (
        f"The body's Content-Type is {named}: norm reads JSON alone; send the header "
        "Content-Type: application/json"
    )
    assert not TriggerEvent.objects.exists()


@pytest.mark.parametrize("body", [["welcome"], "welcome", 42])
def test_non_object_body_is_400(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, body: Any
) -> None:
    assert_error(post(TRIGGER, body), 400, "invalid_request")
    assert_nothing_stored(enqueued)


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({"name": "welcome", "to": "ann", "payload": "hello"}, "payload"),
        ({"name": "welcome", "to": "ann", "payload": [1]}, "payload"),
        ({"to": "ann"}, "name"),
        ({"name": "welcome"}, "to"),
    ],
)
def test_invalid_fields_are_400_with_errors(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, body: dict, field_name: str
) -> None:
    error = assert_error(post(TRIGGER, body), 400, "invalid_request")
    assert [e["field"] for e in error["errors"]] == [field_name]
    assert error["type"] == "invalid_request"  # Novu's 400 under /v1/events carries its type
    assert_nothing_stored(enqueued)


@pytest.mark.parametrize("to", [[], ""])
def test_empty_to_is_400(post: Post, discover: FakeDiscover, enqueued: Enqueued, to: Any) -> None:
    error = assert_error(post(TRIGGER, {"name": "welcome", "to": to}), 400, "invalid_recipients")
    assert error["errors"][0]["field"] == "to"
    assert_nothing_stored(enqueued)


def test_unknown_topic_in_to_is_404(post: Post, discover: FakeDiscover, enqueued: Enqueued) -> None:
    body = {"name": "welcome", "to": ["ann", {"type": "Topic", "topicKey": "news"}]}
    error = assert_error(post(TRIGGER, body), 404, "topic_not_found")
    assert "news" in error["message"]
    assert_nothing_stored(enqueued)
    assert Subscriber.objects.count() == 0


@pytest.mark.parametrize(
    "topic", [{"type": "Topic", "topicKey": ""}, {"topicKey": "news", "exclude": "ann"}]
)
def test_malformed_topic_in_to_is_400(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, topic: dict[str, Any]
) -> None:
    assert_error(post(TRIGGER, {"name": "welcome", "to": [topic]}), 400, "invalid_recipients")
    assert_nothing_stored(enqueued)


@pytest.mark.parametrize(
    "to", ["team/ann", ["bob", {"subscriberId": "ann?x"}], "ann#1", "..", ["bob", "."]]
)
def test_a_new_subscriber_no_url_could_reach_is_refused_in_to(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, to: Any
) -> None:
    error = assert_error(post(TRIGGER, {"name": "welcome", "to": to}), 400, "invalid_recipients")
    assert "subscriberId" in error["message"] and error["errors"][0]["field"] == "to"
    assert_nothing_stored(enqueued)


def test_an_existing_subscriber_with_such_an_id_is_still_triggered(
    post: Post, keyed: tuple[Client, str], discover: FakeDiscover, enqueued: Enqueued
) -> None:
    Subscriber.objects.create(client=keyed[0], subscriber_id="team/ann")
    accepted = post(TRIGGER, {"name": "welcome", "to": ["team/ann", "bob"]})
    assert accepted.status_code == 201, accepted.content
    assert TriggerEvent.objects.get().to == ["team/ann", "bob"]


def test_an_invalid_locale_or_timezone_in_to_does_not_refuse_the_trigger(
    post: Post, discover: FakeDiscover, enqueued: Enqueued
) -> None:
    """Novu takes the trigger too (its `to` is checked for shape only); the subscriber
    worker leaves the value out (tests/subscribers/test_subscriber_worker.py)."""
    to = [{"subscriberId": "ann", "locale": "fr FR", "timezone": "Mars/Olympus"}, "bob"]
    response = post(TRIGGER, {"name": "welcome", "to": to})
    assert response.status_code == 201, response.content
    assert TriggerEvent.objects.get().to == to


@pytest.mark.parametrize(
    ("actor", "reason"),
    [
        (["carl"], "`actor` must be a subscriberId or a subscriber object"),
        ({"firstName": "Carl"}, "`actor` must be a subscriberId or a subscriber object"),
        ({"subscriberId": "carl", "firstName": 5}, "`firstName` must be a string"),
        ({"subscriberId": "carl", "data": "vip"}, "`data` must be an object"),
        ({"subscriberId": "team/carl"}, "may not hold /"),
        ("x" * 256, "subscriberId must be 1 to 255 characters"),
    ],
)
@pytest.mark.parametrize("path", [TRIGGER, BROADCAST])
def test_an_actor_the_subscriber_worker_could_not_store_is_400(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, actor: Any, reason: str, path: str
) -> None:
    """Novu checks an actor object against its subscriber DTO (a 400 on /v1/events);
    taken as it came, it failed in the subscriber worker, which creates or updates it."""
    body = {"name": "welcome", "to": "ann", "payload": {}, "actor": actor}
    error = assert_error(post(path, body), 400, "invalid_actor", path)
    assert error["errors"][0]["field"] == "actor" and reason in error["message"]
    assert_nothing_stored(enqueued)


@pytest.mark.parametrize(
    "actor", ["carl", 7, {"subscriberId": "carl", "firstName": "Carl", "locale": "en-GB"}]
)
def test_an_actor_id_or_object_is_taken(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, actor: Any
) -> None:
    response = post(TRIGGER, {"name": "welcome", "to": "ann", "actor": actor})
    assert response.status_code == 201, response.content
    assert TriggerEvent.objects.get().actor == actor


@pytest.mark.parametrize("path", [TRIGGER, BROADCAST])
def test_an_empty_actor_is_none(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, path: str
) -> None:
    """ "" is no actor, as null is (Novu reads it by `if (command.actor)`), not an actor
    refused for its empty subscriberId."""
    response = post(path, {"name": "welcome", "to": "ann", "payload": {}, "actor": ""})
    assert response.status_code == 201, response.content


def test_oversized_body_is_413(post: Post, discover: FakeDiscover, enqueued: Enqueued) -> None:
    body = {"name": "welcome", "to": "ann", "payload": {"blob": "x" * (600 * 1024)}}
    assert_error(post(TRIGGER, body), 413, "payload_too_large")
    assert_nothing_stored(enqueued)
    assert discover.calls == []


def test_a_body_of_exactly_the_limit_is_taken(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, settings: Any
) -> None:
    """NORM_MAX_BODY_BYTES is the most a body may hold: that many bytes are taken, a byte
    more is the 413."""
    body = json.dumps({"name": "welcome", "to": "ann"})
    settings.NORM_MAX_BODY_BYTES = len(body) - 1
    assert_error(post(TRIGGER, body, raw=True), 413, "payload_too_large")
    settings.NORM_MAX_BODY_BYTES = len(body)
    response = post(TRIGGER, body, raw=True)
    assert response.status_code == 201, response.content


@pytest.mark.parametrize("field_name", ["resource", "bridgeUrl"])
def test_resource_not_among_bridge_urls_is_400_and_never_called(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, field_name: str
) -> None:
    evil = "http://169.254.169.254/latest"
    body = {"name": "welcome", "to": "ann", field_name: evil}
    error = assert_error(post(TRIGGER, body), 400, "invalid_resource")
    # The field as the caller named it: "resource" was no field of a bridgeUrl's request.
    assert error["errors"] == [{"field": field_name, "message": "not an allowed bridge URL"}]
    assert error["message"].startswith(
        f"{field_name} {evil} is not one of this client's bridge URLs ({BRIDGE_URL}, {OTHER_BRIDGE})"
    )
    assert evil not in discover.urls
    assert_nothing_stored(enqueued)


def test_a_bridge_url_refused_is_named_with_the_clients_and_how_to_allow_it(
    post: Post, discover: FakeDiscover, enqueued: Enqueued
) -> None:
    """@novu/framework's workflow.trigger() sends NOVU_BRIDGE_ORIGIN + /api/novu as bridgeUrl,
    which the caller's code never names: "bridgeUrl is not one of this client's bridge URLs"
    left them to guess which URL was sent and what to change. A token in either is masked."""
    sent = "http://localhost:4000/api/novu?token=SENT-SECRET"
    body = {"name": "welcome", "to": "ann", "bridgeUrl": sent}
    error = assert_error(post(TRIGGER, body), 400, "invalid_resource")
    message = error["message"]
    assert "bridgeUrl http://localhost:4000/api/novu?token=*** is not one" in message
    assert f"({BRIDGE_URL}, {OTHER_BRIDGE})" in message
    assert "add it to the client's allowed_bridge_urls (admin)" in message
    assert "NOVU_BRIDGE_ORIGIN" in message
    assert "SENT-SECRET" not in message
    assert_nothing_stored(enqueued)


def test_workflow_the_bridge_does_not_define_is_novus_422(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, keyed: tuple[Client, str]
) -> None:
    """Novu answers an unknown workflow 422 `workflow_not_found` (ParseEventRequest's
    UnprocessableEntityException): a caller catching that status, or novu-py's typed
    ValidationErrorDto, missed norm's 404."""
    error = assert_error(post(TRIGGER, {"name": "nope", "to": "ann"}), 422, "workflow_not_found")
    assert "nope" in error["message"]
    assert list(error["errors"]) == ["name"]
    assert discover.urls == [BRIDGE_URL]
    novu = novu_py_for(keyed[1])
    with pytest.raises(models.ValidationErrorDto) as refused:
        novu.trigger(trigger_event_request_dto={"workflow_id": "nope", "to": "ann"})
    assert refused.value.data.status_code == 422
    with pytest.raises(models.ValidationErrorDto):
        novu.trigger_broadcast(trigger_event_to_all_request_dto={"name": "nope", "payload": {}})
    assert_nothing_stored(enqueued)


def test_payload_failing_the_schema_is_400_with_errors(
    post: Post, discover: FakeDiscover, enqueued: Enqueued
) -> None:
    body = {"name": "welcome", "to": "ann", "payload": {"delaySeconds": "soon"}}
    error = assert_error(post(TRIGGER, body), 400, "invalid_payload")
    assert [e["field"] for e in error["errors"]] == ["payload/delaySeconds"]
    assert_nothing_stored(enqueued)


def _welcome(**entry: Any) -> dict[str, Any]:
    return {"workflows": [{"workflowId": "welcome", **entry}]}


def test_a_key_the_payload_schema_does_not_declare_is_left_to_the_bridge(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """Novu's SDK strips undeclared keys, and discovers a workflow without a payload
    schema as `additionalProperties: false`: refusing them would refuse every payload."""
    strict = {"type": "object", "properties": {"n": {"type": "integer"}}}
    strict["additionalProperties"] = False
    monkeypatch.setattr(
        bridge, "discover", lambda url, *, secrets: _welcome(payload={"schema": strict})
    )
    accepted = post(TRIGGER, {"name": "welcome", "to": "ann", "payload": {"n": 1, "utm": "x"}})
    refused = post(TRIGGER, {"name": "welcome", "to": "bob", "payload": {"n": "one", "utm": "x"}})

    assert accepted.status_code == 201, accepted.content
    assert TriggerEvent.objects.get().payload == {"n": 1, "utm": "x"}
    error = assert_error(refused, 400, "invalid_payload")
    assert [e["field"] for e in error["errors"]] == ["payload/n"]


def test_an_undeclared_key_is_left_to_the_bridge_behind_a_ref_too(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """A schema whose object sits behind a `$ref` (zod-to-json-schema's `$defs`): the
    defaults pass does not strip the key there, jsonschema reports it, and it is still
    no reason to refuse the trigger."""
    strict = {"type": "object", "properties": {"n": {"type": "integer"}}}
    strict["additionalProperties"] = False
    schema = {"$ref": "#/$defs/payload", "$defs": {"payload": strict}}
    monkeypatch.setattr(
        bridge, "discover", lambda url, *, secrets: _welcome(payload={"schema": schema})
    )
    accepted = post(TRIGGER, {"name": "welcome", "to": "ann", "payload": {"n": 1, "utm": "x"}})
    refused = post(TRIGGER, {"name": "welcome", "to": "bob", "payload": {"n": "one"}})

    assert accepted.status_code == 201, accepted.content
    error = assert_error(refused, 400, "invalid_payload")
    assert [e["field"] for e in error["errors"]] == ["payload/n"]


def test_an_undeclared_key_where_the_defaults_pass_does_not_reach_is_left_to_the_bridge(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """zod-to-json-schema's `z.tuple([...]).rest(z.object({...}))`: the rest's items sit
    under `additionalItems`, where the defaults pass strips no key; jsonschema reports
    the key there, and it is still no reason to refuse the trigger."""

    def strict(key: str) -> dict[str, Any]:
        properties = {key: {"type": "integer"}}
        return {"type": "object", "properties": properties, "additionalProperties": False}

    lines = {"type": "array", "items": [strict("a")], "additionalItems": strict("b")}
    schema = {"type": "object", "properties": {"lines": lines}}
    monkeypatch.setattr(
        bridge, "discover", lambda url, *, secrets: _welcome(payload={"schema": schema})
    )
    payload = {"lines": [{"a": 1}, {"b": 2, "utm": "x"}]}
    accepted = post(TRIGGER, {"name": "welcome", "to": "ann", "payload": payload})
    refused = post(
        TRIGGER, {"name": "welcome", "to": "bob", "payload": {"lines": [{"a": 1}, {"b": "two"}]}}
    )

    assert accepted.status_code == 201, accepted.content
    error = assert_error(refused, 400, "invalid_payload")
    assert [e["field"] for e in error["errors"]] == ["payload/lines/1/b"]


def test_a_required_key_with_a_default_may_be_left_out_as_the_bridge_fills_it(
    post: Post, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Novu's SDK (ajv, useDefaults) and norm's fill defaults before checking `required`:
    the trigger API refused with a 400 a payload both bridges accept."""
    line = {"type": "object", "properties": {"qty": {"type": "integer", "default": 1}}}
    schema = {
        "type": "object",
        "properties": {
            "locale": {"type": "string", "default": "en"},
            "lines": {"type": "array", "items": line | {"required": ["qty"]}},
        },
        "required": ["locale"],
    }
    monkeypatch.setattr(
        bridge, "discover", lambda url, *, secrets: _welcome(payload={"schema": schema})
    )
    payload = {"lines": [{}]}
    accepted = post(TRIGGER, {"name": "welcome", "to": "ann", "payload": payload})
    refused = post(TRIGGER, {"name": "welcome", "to": "bob", "payload": {"locale": 5}})

    assert accepted.status_code == 201, accepted.content
    assert TriggerEvent.objects.get().payload == payload  # stored as sent: the bridge fills it
    assert Schema.of(schema).validate(payload) == {"locale": "en", "lines": [{"qty": 1}]}
    error = assert_error(refused, 400, "invalid_payload")
    assert [e["field"] for e in error["errors"]] == ["payload/locale"]


@pytest.mark.parametrize(("name", "good", "bad"), FORMATS)
def test_a_payload_failing_a_format_is_refused_here_as_the_bridge_would_refuse_it(
    post: Post, monkeypatch: pytest.MonkeyPatch, name: str, good: str, bad: str
) -> None:
    """The trigger was accepted (201) and every notification then failed at the bridge
    with ExecutionEventPayloadInvalidError: both check formats with one checker now."""
    schema = {"type": "object", "properties": {"v": {"type": "string", "format": name}}}
    monkeypatch.setattr(
        bridge, "discover", lambda url, *, secrets: _welcome(payload={"schema": schema})
    )
    accepted = post(TRIGGER, {"name": "welcome", "to": "ann", "payload": {"v": good}})
    refused = post(TRIGGER, {"name": "welcome", "to": "bob", "payload": {"v": bad}})

    assert accepted.status_code == 201, accepted.content
    error = assert_error(refused, 400, "invalid_payload")
    assert [e["field"] for e in error["errors"]] == ["payload/v"]
    with pytest.raises(SchemaInvalid):
        Schema.of(schema).validate({"v": bad})  # what the SDK answers on execute


@pytest.mark.parametrize(
    ("name", "value", "status"),
    [
        ("date-time", "2025-01-01T10:00:00.123456", 201),  # datetime.isoformat(), naive
        ("date-time", "2025-01-01 10:00:00+0100", 201),
        ("email", "ann smith@example.com", 400),
        ("email", "ann@localhost", 400),
    ],
)
def test_a_payload_is_judged_by_its_formats_as_a_novu_bridge_judges_it(
    post: Post, monkeypatch: pytest.MonkeyPatch, name: str, value: str, status: int
) -> None:
    """Each verdict is ajv-formats', which Novu's SDK checks payloads with: jsonschema's
    checkers refused these date-times (a trigger the bridge would run) and took these
    emails (each notification then failed at the bridge)."""
    schema = {"type": "object", "properties": {"v": {"type": "string", "format": name}}}
    monkeypatch.setattr(
        bridge, "discover", lambda url, *, secrets: _welcome(payload={"schema": schema})
    )
    response = post(TRIGGER, {"name": "welcome", "to": "ann", "payload": {"v": value}})
    assert response.status_code == status, response.content


# The payload of zod-receipt-flow (tests/e2e/novu_bridge/app.js) as @novu/framework
# 2.13.2 discovers it: zod-to-json-schema's translation of `z.object({sku:
# z.string().regex(/^[a-z]+-\d+$/i), total: z.number().multipleOf(0.01), link:
# z.string().url(), qty: z.number().int().default(1)})`, and the zod object as JSON.
ZOD_PAYLOAD = {
    "schema": {
        "type": "object",
        "properties": {
            "sku": {"type": "string", "pattern": "^[a-z]+-\\d+$"},
            "total": {"type": "number", "multipleOf": 0.01},
            "link": {"type": "string", "format": "uri"},
            "qty": {"type": "integer", "default": 1},
        },
        "required": ["sku", "total", "link"],
        "additionalProperties": False,
        "$schema": "http://json-schema.org/draft-07/schema#",
    },
    "unknownSchema": {
        "_def": {
            "unknownKeys": "strip",
            "catchall": {
                "_def": {"typeName": "ZodNever"},
                "~standard": {"version": 1, "vendor": "zod"},
            },
            "typeName": "ZodObject",
        },
        "~standard": {"version": 1, "vendor": "zod"},
        "_cached": None,
    },
}
# What zod (and so the bridge) takes, and its translation refuses: the regex's `i` flag is
# lost, `.url()` is a WHATWG URL to zod (an accent in the path), and 19.99 / 0.01 is no
# whole number in floating point.
ZOD_ACCEPTS = {"sku": "ABC-12", "total": 19.99, "link": "https://shop.example/crème-brûlée"}


def test_a_zod_payload_schema_refuses_no_pattern_format_or_multiple_that_zod_takes(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """Novu's SDK checks a zod payload with zod: a trigger refused here for what its JSON
    Schema translation got otherwise was a 400 for a payload the workflow runs."""
    monkeypatch.setattr(bridge, "discover", lambda url, *, secrets: _welcome(payload=ZOD_PAYLOAD))
    accepted = post(TRIGGER, {"name": "welcome", "to": "ann", "payload": ZOD_ACCEPTS})
    # What the translation says as zod does is still refused here: a key it requires, a
    # value of another type.
    wrong = {"sku": "ABC-12", "total": "19.99"}
    refused = post(TRIGGER, {"name": "welcome", "to": "bob", "payload": wrong})

    assert accepted.status_code == 201, accepted.content
    assert BridgeWorkflow.objects.get().payload_schema_translated
    error = assert_error(refused, 400, "invalid_payload")
    assert [e["field"] for e in error["errors"]] == ["payload/", "payload/total"]


# zod-to-json-schema's translation of `z.object({name: z.string().min(2), code:
# z.string().length(3)})`, with the zod object as JSON beside it.
ZOD_LENGTHS = {
    "schema": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 2},
            "code": {"type": "string", "minLength": 3, "maxLength": 3},
        },
        "required": ["name", "code"],
        "additionalProperties": False,
        "$schema": "http://json-schema.org/draft-07/schema#",
    },
    "unknownSchema": ZOD_PAYLOAD["unknownSchema"],
}


def test_a_zod_payload_schema_counts_a_strings_least_length_as_zod_does(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """zod counts a string's length in UTF-16 code units: it takes "😀" for `.min(2)` and
    "😀a" for `.length(3)`, and the bridge runs them; norm counted code points and refused
    the trigger. A string too short in zod's count is still refused here."""
    monkeypatch.setattr(bridge, "discover", lambda url, *, secrets: _welcome(payload=ZOD_LENGTHS))
    taken = {"name": "😀", "code": "😀a"}
    accepted = post(TRIGGER, {"name": "welcome", "to": "ann", "payload": taken})
    short = {"name": "a", "code": "ab"}
    refused = post(TRIGGER, {"name": "welcome", "to": "bob", "payload": short})

    assert accepted.status_code == 201, accepted.content
    error = assert_error(refused, 400, "invalid_payload")
    assert [e["field"] for e in error["errors"]] == ["payload/code", "payload/name"]


# zod-to-json-schema's translation of `z.object({channel: ...})`, as @novu/framework 2.13.2
# discovers it, its channel the discriminated union ZOD_CHANNEL.
ZOD_UNION = {
    "schema": {
        "type": "object",
        "properties": {
            "channel": ZOD_CHANNEL,
        },
        "required": ["channel"],
        "additionalProperties": False,
        "$schema": "http://json-schema.org/draft-07/schema#",
    },
    "unknownSchema": ZOD_PAYLOAD["unknownSchema"],
}


def test_a_union_member_with_a_key_its_branch_does_not_declare_is_taken_as_zod_takes_it(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """zod strips an object's unknown keys in each option of a union, and the bridge ran
    the workflow; each branch of the translation is `additionalProperties: false`, which
    failed every branch here, and the trigger was refused. One that fits no branch still is."""
    monkeypatch.setattr(bridge, "discover", lambda url, *, secrets: _welcome(payload=ZOD_UNION))
    member = {"kind": "sms", "phone": "+15550000", "locale": "de"}
    accepted = post(TRIGGER, {"name": "welcome", "to": "ann", "payload": {"channel": member}})
    stray = {"kind": "sms", "to": "ann@example.com"}
    refused = post(TRIGGER, {"name": "welcome", "to": "bob", "payload": {"channel": stray}})

    assert accepted.status_code == 201, accepted.content
    error = assert_error(refused, 400, "invalid_payload")
    assert [e["field"] for e in error["errors"]] == ["payload/channel"]


def test_a_zod_payload_schema_refuses_no_string_too_long_that_zod_may_trim_first(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """`z.string().trim().length(3)` is translated as ZOD_LENGTHS' `code`, the trim lost:
    zod trims " abc " before it counts, and the bridge ran the workflow, where norm
    refused the trigger. Too long once trimmed, or written as JSON Schema, it still is."""
    monkeypatch.setattr(bridge, "discover", lambda url, *, secrets: _welcome(payload=ZOD_LENGTHS))
    padded = {"name": "Ann", "code": "\u3000abc\n"}
    accepted = post(TRIGGER, {"name": "welcome", "to": "ann", "payload": padded})
    refused = post(
        TRIGGER, {"name": "welcome", "to": "bob", "payload": {"name": "Bo", "code": " abcd"}}
    )

    assert accepted.status_code == 201, accepted.content
    error = assert_error(refused, 400, "invalid_payload")
    assert [e["field"] for e in error["errors"]] == ["payload/code"]


# zod-to-json-schema's translation of `z.object({link: z.string().url().or(z.literal("")),
# sku: z.union([z.string().regex(/^[a-z]+-\d+$/i), z.number()])})`.
ZOD_ALTERNATIVES = {
    "schema": {
        "type": "object",
        "properties": {
            "link": {
                "anyOf": [{"type": "string", "format": "uri"}, {"type": "string", "const": ""}]
            },
            "sku": {"anyOf": [{"type": "string", "pattern": "^[a-z]+-\\d+$"}, {"type": "number"}]},
        },
        "required": ["link", "sku"],
        "additionalProperties": False,
        "$schema": "http://json-schema.org/draft-07/schema#",
    },
    "unknownSchema": ZOD_PAYLOAD["unknownSchema"],
}


def test_a_zod_union_refuses_no_pattern_or_format_that_zod_takes_in_one_of_its_branches(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """A `pattern` or a `format` the translation gets otherwise than zod is left to the
    bridge, but one in a branch of a union failed the union here: the accented link and
    the upper-case sku that ZOD_ACCEPTS has, taken alone, were refused as `.or(...)`.
    What fits no branch in zod's terms either is still refused."""
    declared = ZOD_ALTERNATIVES
    monkeypatch.setattr(bridge, "discover", lambda url, *, secrets: _welcome(payload=declared))
    taken = {"link": ZOD_ACCEPTS["link"], "sku": ZOD_ACCEPTS["sku"]}
    accepted = post(TRIGGER, {"name": "welcome", "to": "ann", "payload": taken})
    wrong = {"link": 5, "sku": True}
    refused = post(TRIGGER, {"name": "welcome", "to": "bob", "payload": wrong})

    assert accepted.status_code == 201, accepted.content
    error = assert_error(refused, 400, "invalid_payload")
    assert [e["field"] for e in error["errors"]] == ["payload/link", "payload/sku"]


def test_a_json_schema_union_is_checked_whole_as_ajv_checks_it(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    schema = ZOD_ALTERNATIVES["schema"]
    declared = {"schema": schema, "unknownSchema": schema}
    monkeypatch.setattr(bridge, "discover", lambda url, *, secrets: _welcome(payload=declared))
    taken_by_zod = {"link": ZOD_ACCEPTS["link"], "sku": ZOD_ACCEPTS["sku"]}
    refused = post(TRIGGER, {"name": "welcome", "to": "ann", "payload": taken_by_zod})

    error = assert_error(refused, 400, "invalid_payload")
    assert [e["field"] for e in error["errors"]] == ["payload/link", "payload/sku"]


def test_a_json_schema_counts_a_strings_least_length_in_code_points_as_ajv_does(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """Written as JSON Schema, Novu's SDK checks it with ajv, which counts code points."""
    schema = ZOD_LENGTHS["schema"]
    declared = {"schema": schema, "unknownSchema": schema}
    monkeypatch.setattr(bridge, "discover", lambda url, *, secrets: _welcome(payload=declared))
    taken_by_zod = {"name": "😀", "code": "😀a"}
    refused = post(TRIGGER, {"name": "welcome", "to": "ann", "payload": taken_by_zod})
    padded = post(
        TRIGGER, {"name": "welcome", "to": "bob", "payload": {"name": "Bo", "code": " abc"}}
    )

    error = assert_error(refused, 400, "invalid_payload")
    assert [e["field"] for e in error["errors"]] == ["payload/code", "payload/name"]
    error = assert_error(padded, 400, "invalid_payload")  # ajv trims nothing
    assert [e["field"] for e in error["errors"]] == ["payload/code"]


def test_the_same_schema_in_json_schema_is_checked_whole_as_ajv_checks_it(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """Written as JSON Schema, the SDK checks it with ajv, which refuses all three too:
    discover gives it back as is beside the original."""
    schema = ZOD_PAYLOAD["schema"]
    declared = {"schema": schema, "unknownSchema": schema}
    monkeypatch.setattr(bridge, "discover", lambda url, *, secrets: _welcome(payload=declared))
    error = assert_error(
        post(TRIGGER, {"name": "welcome", "to": "ann", "payload": ZOD_ACCEPTS}),
        400,
        "invalid_payload",
    )
    assert [e["field"] for e in error["errors"]] == [
        "payload/link",
        "payload/sku",
        "payload/total",
    ]
    assert not BridgeWorkflow.objects.get().payload_schema_translated


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        ({"workflows": None}, 502, "bridge_unavailable"),  # no discover answer at all
        ({"workflows": [{"workflowId": {"a": 1}}]}, 422, "workflow_not_found"),
        (_welcome(payload="x"), 201, None),
        (_welcome(payload={"schema": "x"}), 201, None),
        (_welcome(steps=[{"stepId": "s", "type": "email", "controls": "x"}]), 201, None),
        (_welcome(steps={"stepId": "s"}), 201, None),
        (_welcome(payload={"schema": {"type": "nope"}}), 502, "bridge_invalid_schema"),
        (
            _welcome(payload={"schema": {"patternProperties": {"(": {}}}}),
            502,
            "bridge_invalid_schema",
        ),
    ],
)
def test_a_malformed_discover_answer_is_read_as_far_as_it_makes_sense(
    post: Post,
    monkeypatch: pytest.MonkeyPatch,
    answer: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    """The bridge's mistakes: what is not of the expected shape reads as absent, a
    schema jsonschema cannot apply is a 502 naming it; never a 500."""
    monkeypatch.setattr(bridge, "discover", lambda url, *, secrets: answer)
    response = post(TRIGGER, {"name": "welcome", "to": "ann", "payload": {"a": 1}})
    assert response.status_code == status, response.content
    if code:
        assert response.json()["code"] == code


def test_bridge_unreachable_on_discover_is_502(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    def down(url: str, *, secrets: Sequence[str]) -> dict[str, Any]:
        raise bridge.BridgeUnavailable("BridgeUnreachable", "connection refused")

    monkeypatch.setattr(bridge, "discover", down)
    assert_error(post(TRIGGER, {"name": "welcome", "to": "ann"}), 502, "bridge_unavailable")
    assert_nothing_stored(enqueued)


# --- access ----------------------------------------------------------------------------


def test_missing_header_is_401(discover: FakeDiscover, enqueued: Enqueued) -> None:
    """A 401 names the scheme to authenticate with (RFC 9110), as DRF's own would."""
    response = APIClient().post(TRIGGER, {"name": "welcome", "to": "ann"}, format="json")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "ApiKey"
    assert_nothing_stored(enqueued)


def test_unknown_key_is_401(post: Post, discover: FakeDiscover, enqueued: Enqueued) -> None:
    response = post(TRIGGER, {"name": "welcome", "to": "ann"}, key="nk_not-a-key")
    assert_error(response, 401, "authentication_failed")
    assert response["WWW-Authenticate"] == "ApiKey"
    assert_nothing_stored(enqueued)


@pytest.mark.parametrize("scheme", ["apikey", "APIKEY", "ApiKey"])
def test_the_auth_scheme_is_read_case_insensitively(
    keyed: tuple[Client, str], discover: FakeDiscover, enqueued: Enqueued, scheme: str
) -> None:
    """As HTTP's auth schemes are (RFC 9110): a hand-written `apikey` header works."""
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"{scheme} {keyed[1]}")
    response = api.post(TRIGGER, {"name": "welcome", "to": "ann"}, format="json")
    assert response.status_code == 201, response.content


def test_revoked_key_is_401_at_once(
    post: Post, keyed: tuple[Client, str], discover: FakeDiscover, enqueued: Enqueued
) -> None:
    assert post(TRIGGER, {"name": "welcome", "to": "ann"}).status_code == 201
    notify_services.secret_key_revoke(secret_key=keyed[0].secret_keys.get())
    enqueued.clear()
    response = post(TRIGGER, {"name": "welcome", "to": "bob"})
    assert_error(response, 401, "authentication_failed")
    assert TriggerEvent.objects.count() == 1
    assert enqueued.calls == []


def test_inactive_client_is_403(
    post: Post, keyed: tuple[Client, str], discover: FakeDiscover, enqueued: Enqueued
) -> None:
    Client.objects.filter(pk=keyed[0].pk).update(is_active=False)
    assert_error(post(TRIGGER, {"name": "welcome", "to": "ann"}), 403, "client_inactive")
    assert_nothing_stored(enqueued)


def test_workflow_outside_allowlist_is_403(
    post: Post, keyed: tuple[Client, str], discover: FakeDiscover, enqueued: Enqueued
) -> None:
    Client.objects.filter(pk=keyed[0].pk).update(workflow_allowlist=["order-update"])
    assert_error(post(TRIGGER, {"name": "welcome", "to": "ann"}), 403, "workflow_forbidden")
    assert_nothing_stored(enqueued)
    assert discover.calls == []


# --- success ---------------------------------------------------------------------------


def test_trigger_stores_the_event_and_enqueues_one_run_on_the_routed_queue(
    post: Post,
    keyed: tuple[Client, str],
    discover: FakeDiscover,
    enqueued: Enqueued,
    settings: Any,
) -> None:
    settings.NORM_WORKFLOW_QUEUES = {"welcome": "critical"}
    body = {
        "name": "welcome",
        "to": ["ann", {"subscriberId": "bob", "email": "bob@example.com"}],
        "payload": {"name": "Ann", "delaySeconds": 5},
        "actor": "boss",
    }
    response = post(TRIGGER, body)

    assert response.status_code == 201, response.content
    data = response.json()["data"]
    assert data["acknowledged"] is True and data["status"] == "processed"
    event = TriggerEvent.objects.get()
    assert data["transactionId"] == event.transaction_id
    assert (event.client, event.workflow_id, event.mode) == (keyed[0], "welcome", "multicast")
    assert (event.to, event.payload, event.actor) == (body["to"], body["payload"], "boss")
    assert event.resource == BRIDGE_URL and event.status == TriggerEvent.Status.RECEIVED
    assert enqueued.calls == [
        (pipeline.WORKFLOW.task, (event.pk,), {"countdown": None, "queue": "critical"})
    ]
    # The request does no per-recipient work: that is the workers' job.
    assert Subscriber.objects.count() == 0 and Notification.objects.count() == 0
    # The registry was filled from the bridge, signed with the client's key.
    assert discover.calls == [(BRIDGE_URL, keyed[1])]


def test_a_broker_failing_after_the_commit_still_accepts_and_the_reconciler_resends(
    post: Post, discover: FakeDiscover, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr(celery_app, "send_task", broker_down)
    response = post(TRIGGER, {"name": "welcome", "to": "ann", "transactionId": "tx-1"})

    # Stored, so accepted: a 500 would have a client without a transactionId resend it.
    assert response.status_code == 201, response.content
    event = TriggerEvent.objects.get()
    assert event.status == TriggerEvent.Status.RECEIVED

    sent: list[tuple[str, list[Any]]] = []
    monkeypatch.setattr(celery_app, "send_task", lambda name, args, **_: sent.append((name, args)))
    monkeypatch.setattr(pipeline, "backlog", lambda queue: 0)  # nothing reached the broker
    past_grace = timezone.now() - timedelta(seconds=settings.NORM_RECONCILE_GRACE + 1)
    TriggerEvent.objects.update(created_at=past_grace)
    reconciler.reconcile()
    assert sent == [(pipeline.WORKFLOW.task, [event.pk])]


def test_unrouted_workflow_goes_to_the_default_queue(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, settings: Any
) -> None:
    settings.NORM_WORKFLOW_QUEUES = {"welcome": "critical"}
    body = {"name": "order-update", "to": "ann", "payload": {"orderId": "1", "status": "shipped"}}
    assert post(TRIGGER, body).status_code == 201
    assert enqueued.options_of(pipeline.WORKFLOW) == [{"countdown": None, "queue": "workflows"}]


def test_same_transaction_id_twice_is_one_event_and_one_enqueue(
    post: Post, discover: FakeDiscover, enqueued: Enqueued
) -> None:
    body = {"name": "welcome", "to": "ann", "transactionId": "tx-1"}
    first, second = post(TRIGGER, body), post(TRIGGER, body)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert first.json()["data"]["transactionId"] == "tx-1"
    assert TriggerEvent.objects.count() == 1
    assert len(enqueued.of(pipeline.WORKFLOW)) == 1


# A retry after a lost answer meets the checks as they are now; what changed since must
# not refuse a trigger already taken. Each change here refuses a new trigger.
_CHANGES_SINCE = {
    "topic deleted": lambda client: Topic.objects.filter(client=client).delete(),
    "workflow forbidden": lambda client: Client.objects.filter(pk=client.pk).update(
        workflow_allowlist=["other"]
    ),
}


@pytest.mark.parametrize("change", list(_CHANGES_SINCE))
@pytest.mark.parametrize("path", [TRIGGER, BULK])
def test_a_repeat_the_checks_now_refuse_is_answered_as_the_trigger_taken(
    post: Post,
    discover: FakeDiscover,
    enqueued: Enqueued,
    keyed: tuple[Client, str],
    change: str,
    path: str,
) -> None:
    Topic.objects.create(client=keyed[0], key="news")
    event = {
        "name": "welcome",
        "to": [{"type": "Topic", "topicKey": "news"}],
        "transactionId": "tx-1",
    }
    body = {"events": [event]} if path == BULK else event
    first = post(path, body)
    assert first.status_code == 201, first.content
    _CHANGES_SINCE[change](keyed[0])
    fresh = dict(event, transactionId="tx-2")
    refused = post(path, {"events": [fresh]} if path == BULK else fresh)

    repeat = post(path, body)

    assert repeat.status_code == 201, repeat.content
    assert repeat.json() == first.json()
    # The same change refuses a trigger not taken before.
    if path == BULK:
        assert refused.json()["data"][0]["status"] == "error"
    else:
        assert refused.status_code in (403, 404), refused.content
    assert list(TriggerEvent.objects.values_list("transaction_id", flat=True)) == ["tx-1"]
    assert len(enqueued.of(pipeline.WORKFLOW)) == 1


def test_a_repeat_the_checks_now_refuse_finds_a_transaction_id_given_with_spaces(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, keyed: tuple[Client, str]
) -> None:
    """Its event was stored under the id trimmed, as a repeat the checks pass finds it."""
    Topic.objects.create(client=keyed[0], key="news")
    body = {"name": "welcome", "to": {"topicKey": "news"}, "transactionId": " tx-1 "}
    first = post(TRIGGER, body)
    assert first.status_code == 201, first.content
    Topic.objects.filter(client=keyed[0]).delete()

    repeat = post(TRIGGER, body)

    assert repeat.status_code == 201, repeat.content
    assert repeat.json() == first.json()
    assert len(enqueued.of(pipeline.WORKFLOW)) == 1


@pytest.mark.parametrize("path", [TRIGGER, BULK])
def test_a_trigger_the_checks_refuse_is_no_repeat_of_another_clients_transaction_id(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, path: str
) -> None:
    """The stored trigger a refused one may repeat is the caller's own: another client's of
    the same transactionId answered it 201, as if taken, and nothing was run."""
    _, other_key = client_with_key()
    taken = post(TRIGGER, {"name": "welcome", "to": "ann", "transactionId": "tx-1"}, key=other_key)
    assert taken.status_code == 201, taken.content
    event = {"name": "welcome", "to": {"topicKey": "news"}, "transactionId": "tx-1"}

    refused = post(path, {"events": [event]} if path == BULK else event)

    if path == BULK:
        assert refused.status_code == 201, refused.content
        assert refused.json()["data"][0]["status"] == "error"
    else:
        assert_error(refused, 404, "topic_not_found")
    assert TriggerEvent.objects.count() == 1
    assert len(enqueued.of(pipeline.WORKFLOW)) == 1


def test_a_transaction_id_given_with_spaces_cancels_and_reads_its_trigger(
    keyed: tuple[Client, str], discover: FakeDiscover, enqueued: Enqueued
) -> None:
    """The trigger stored the id trimmed, and the cancel looked the id up as given:
    novu-py's cancel with the id the trigger was sent answered false, canceling nothing."""
    novu = novu_py_for(keyed[1])
    trigger = {"workflow_id": "welcome", "to": "ann", "transaction_id": " tx-1 "}
    assert novu.trigger(trigger_event_request_dto=trigger).result.transaction_id == "tx-1"

    read = api_for(keyed[1]).get(f"{TRIGGER}/%20tx-1%20")
    assert read.status_code == 200, read.content
    assert read.json()["data"]["transactionId"] == "tx-1"
    assert novu.cancel(transaction_id=" tx-1 ").result is True
    assert TriggerEvent.objects.get().canceled_at is not None


def test_a_name_longer_than_a_workflow_id_is_400_naming_the_field_and_asks_no_bridge(
    post: Post, discover: FakeDiscover, enqueued: Enqueued
) -> None:
    """No bridge's workflow has such an id (norm keeps 200 characters of one): the body is
    refused as it is, rather than sent to the bridge's discover to be a 422."""
    error = assert_error(post(TRIGGER, {"name": "w" * 201, "to": "ann"}), 400, "invalid_request")

    assert [e["field"] for e in error["errors"]] == ["name"]
    assert discover.calls == []
    assert_nothing_stored(enqueued)


def test_a_transaction_id_longer_than_norm_keeps_is_400_naming_the_field(
    post: Post, discover: FakeDiscover, enqueued: Enqueued
) -> None:
    """norm keeps 255 characters, and says so of a longer one rather than fail the
    INSERT (a 500) or cut the id (a repeat would no longer find its event)."""
    ok = post(TRIGGER, {"name": "welcome", "to": "ann", "transactionId": "t" * 255})
    assert ok.status_code == 201, ok.content
    body = {"name": "welcome", "to": "ann", "transactionId": "t" * 256}
    error = assert_error(post(TRIGGER, body), 400, "invalid_request")
    assert [e["field"] for e in error["errors"]] == ["transactionId"]
    assert TriggerEvent.objects.get().transaction_id == "t" * 255


def test_a_repeat_finds_the_callers_event_when_another_client_used_the_transaction_id(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, keyed: tuple[Client, str]
) -> None:
    other, other_key = client_with_key()
    body = {"name": "welcome", "to": "ann", "transactionId": "tx-1"}
    assert post(TRIGGER, body, key=other_key).status_code == 201
    first, repeat = post(TRIGGER, body), post(TRIGGER, body)

    assert first.status_code == repeat.status_code == 201, repeat.content
    assert first.json() == repeat.json()
    # One event each: the repeat is the caller's, neither a new one nor the other's.
    assert TriggerEvent.objects.filter(client=keyed[0], transaction_id="tx-1").count() == 1
    assert TriggerEvent.objects.filter(client=other, transaction_id="tx-1").count() == 1
    assert len(enqueued.of(pipeline.WORKFLOW)) == 2


def test_storing_a_repeat_returns_the_callers_first_event_not_another_clients() -> None:
    """The service's answer to a repeat is the event a caller may be shown: another
    client's of the same transactionId (stored first, so found first without the
    client in the lookup) would be that client's trigger."""
    other, _ = client_with_key()
    mine, _ = client_with_key()
    TriggerEventFactory(client=other, transaction_id="tx-1")
    first = TriggerEventFactory(client=mine, transaction_id="tx-1")
    repeat = TriggerEvent(
        client=mine,
        workflow_id="welcome",
        transaction_id="tx-1",
        mode=TriggerEvent.Mode.MULTICAST,
        to="ann",
        resource=mine.bridge_url,
    )

    stored = notify_services.trigger_event_store(repeat)

    assert (stored.pk, stored.client_id) == (first.pk, mine.pk)


def test_bridge_url_is_a_synonym_of_resource(
    post: Post, discover: FakeDiscover, enqueued: Enqueued
) -> None:
    response = post(TRIGGER, {"name": "welcome", "to": "ann", "bridgeUrl": OTHER_BRIDGE})
    assert response.status_code == 201, response.content
    assert TriggerEvent.objects.get().resource == OTHER_BRIDGE
    assert discover.urls == [OTHER_BRIDGE]


@pytest.mark.parametrize(
    "url",
    [
        "http://bridge:4000/api/novu",  # a docker-compose service
        "http://web:8000/bridge",
        "http://my_app:3000/api/novu",  # a compose service named with an underscore
        "http://localhost:4000/api/novu",
        "http://10.0.0.7:4000/api/novu",
        "http://[::1]:4000/api/novu",
    ],
)
def test_a_bridge_on_a_self_hosted_host_name_is_accepted(
    discover: FakeDiscover, enqueued: Enqueued, url: str
) -> None:
    """A bare host name has no top-level domain, which Django's URLField wants."""
    _, key = client_with_key(bridge_url=BRIDGE_URL, allowed_bridge_urls=[url])
    for field_name in ("bridgeUrl", "resource"):
        body = {"name": "welcome", "to": "ann", field_name: url}
        response = api_for(key).post(TRIGGER, body, format="json")
        assert response.status_code == 201, response.content
    assert list(TriggerEvent.objects.values_list("resource", flat=True)) == [url, url]
    assert discover.urls == [url]


@pytest.mark.parametrize(
    "url", ["ftp://bridge:4000/api/novu", "file:///etc/passwd", "bridge:4000/api", "http://"]
)
def test_a_bridge_url_that_is_no_http_url_is_400(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, url: str
) -> None:
    error = assert_error(
        post(TRIGGER, {"name": "welcome", "to": "ann", "bridgeUrl": url}), 400, "invalid_request"
    )
    assert [e["field"] for e in error["errors"]] == ["bridgeUrl"]
    assert discover.calls == []
    assert_nothing_stored(enqueued)


_NULLS = {
    "payload": None,
    "overrides": None,
    "transactionId": None,
    "actor": None,
    "tenant": None,
    "context": None,
}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (TRIGGER, {"name": "welcome", "to": "ann", **_NULLS, "bridgeUrl": None, "resource": None}),
        (BROADCAST, {"name": "welcome", **_NULLS}),
        ("/v1/events/trigger/bulk", {"events": [{"name": "welcome", "to": "ann", **_NULLS}]}),
    ],
)
def test_optional_fields_sent_as_null_are_absent(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, path: str, body: dict[str, Any]
) -> None:
    """As in Novu (@IsOptional takes null): JavaScript callers send null for "none"."""
    response = post(path, body)

    assert response.status_code == 201, response.content
    data = response.json()["data"]
    ack = data[0] if isinstance(data, list) else data
    assert ack["status"] == "processed"
    event = TriggerEvent.objects.get()
    assert ack["transactionId"] == event.transaction_id and event.transaction_id  # generated
    assert (event.payload, event.overrides, event.actor) == ({}, {}, None)
    assert event.resource == BRIDGE_URL
    assert len(enqueued.of(pipeline.WORKFLOW)) == 1


_GIVEN = {
    "payload": {"n": 1},
    "overrides": {"email": {"from": "desk@example.com"}},
    "actor": "bob",
}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (TRIGGER, {"name": "welcome", "to": "ann", **_GIVEN}),
        (BROADCAST, {"name": "welcome", **_GIVEN}),
        (BULK, {"events": [{"name": "welcome", "to": "ann", **_GIVEN}]}),
    ],
)
def test_the_optional_fields_given_are_stored_as_given(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, path: str, body: dict[str, Any]
) -> None:
    """The trigger's overrides are kept with it (the admin shows them), as its payload
    and actor are: none was dropped on the way from the body to its event."""
    response = post(path, body)

    assert response.status_code == 201, response.content
    event = TriggerEvent.objects.get()
    assert (event.payload, event.overrides, event.actor) == tuple(_GIVEN.values())


@pytest.mark.parametrize("tenant", ["acme", {"identifier": "acme", "name": "Acme"}])
def test_a_tenant_is_refused_not_dropped(
    keyed: tuple[Client, str], discover: FakeDiscover, tenant: Any
) -> None:
    """norm keeps no tenants: novu-py's `tenant` (which in Novu picks the tenant's
    integrations and data) was answered 201 and the trigger run as if it named none."""
    novu = novu_py_for(keyed[1])
    trigger = {"workflow_id": "welcome", "to": "ann", "tenant": tenant}
    with pytest.raises(models.PayloadValidationExceptionDto) as refused:
        novu.trigger(trigger_event_request_dto=trigger)
    assert refused.value.data.status_code == 400
    assert [e.field for e in refused.value.data.errors] == ["tenant"]
    broadcast = {"name": "welcome", "payload": {}, "tenant": tenant}
    with pytest.raises(models.PayloadValidationExceptionDto) as refused:
        novu.trigger_broadcast(trigger_event_to_all_request_dto=broadcast)
    assert [e.field for e in refused.value.data.errors] == ["tenant"]
    bulk = {"events": [trigger, {"workflow_id": "welcome", "to": "bob"}]}
    acks = novu.trigger_bulk(bulk_trigger_event_dto=bulk).result
    assert [a.status for a in acks] == ["error", "processed"]
    assert acks[0].error and "tenant" in acks[0].error[0]
    assert list(TriggerEvent.objects.values_list("to", flat=True)) == ["bob"]
    # None, as null is: novu-py sends the "" it is given, @novu/api's examples {}.
    for nothing in ("", {}):
        none = {"workflow_id": "welcome", "to": "cid", "tenant": nothing}
        assert novu.trigger(trigger_event_request_dto=none).result.status == "processed"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (TRIGGER, {"name": "welcome", "to": "ann", "transactionId": ""}),
        (BROADCAST, {"name": "welcome", "payload": {}, "transactionId": ""}),
        (
            "/v1/events/trigger/bulk",
            {"events": [{"name": "welcome", "to": "ann", "transactionId": ""}]},
        ),
    ],
)
def test_an_empty_transaction_id_is_absent_and_each_trigger_gets_its_own(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, path: str, body: dict[str, Any]
) -> None:
    """As in Novu (`transactionId || uuidv4()`): novu-py sends the "" it was given."""
    first, second = post(path, body), post(path, body)

    acks = []
    for response in (first, second):
        assert response.status_code == 201, response.content
        data = response.json()["data"]
        acks.append(data[0] if isinstance(data, list) else data)
    assert [a["status"] for a in acks] == ["processed", "processed"]
    assert all(a["transactionId"] for a in acks) and acks[0] != acks[1]
    assert sorted(TriggerEvent.objects.values_list("transaction_id", flat=True)) == sorted(
        a["transactionId"] for a in acks
    )
    assert len(enqueued.of(pipeline.WORKFLOW)) == 2


def test_registry_refresh_is_rate_limited(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, settings: Any
) -> None:
    settings.NORM_DISCOVER_MIN_INTERVAL = 60
    for _ in range(2):
        assert_error(post(TRIGGER, {"name": "nope", "to": "ann"}), 422, "workflow_not_found")
    assert discover.urls == [BRIDGE_URL]
    # A known workflow is served from the registry without another discover.
    assert post(TRIGGER, {"name": "welcome", "to": "ann"}).status_code == 201
    assert discover.urls == [BRIDGE_URL]


def test_a_refusal_from_the_last_discover_says_so(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, settings: Any
) -> None:
    """A developer adds a workflow, restarts the app and triggers it within the interval:
    the refusal said the bridge did not define it, as if the new code had not been deployed."""
    settings.NORM_DISCOVER_MIN_INTERVAL = 60.0  # as settings.py reads it from the environment
    first = assert_error(post(TRIGGER, {"name": "nope", "to": "ann"}), 422, "workflow_not_found")
    again = assert_error(post(TRIGGER, {"name": "nope", "to": "ann"}), 422, "workflow_not_found")

    assert first["message"] == f"Workflow 'nope' is not defined by the bridge {BRIDGE_URL}"
    assert re.fullmatch(
        rf"Workflow 'nope' is not defined by the bridge {re.escape(BRIDGE_URL)} \(as of norm's "
        r"last discover, \d+ s ago; it asks a bridge again at most every 60 s, "
        r"NORM_DISCOVER_MIN_INTERVAL\)",
        again["message"],
    )
    assert discover.urls == [BRIDGE_URL]


def test_registry_refreshes_again_after_the_interval(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, settings: Any
) -> None:
    settings.NORM_DISCOVER_MIN_INTERVAL = 0
    for _ in range(2):
        assert_error(post(TRIGGER, {"name": "nope", "to": "ann"}), 422, "workflow_not_found")
    assert discover.urls == [BRIDGE_URL, BRIDGE_URL]


def test_a_workflow_a_concurrent_trigger_discovered_meanwhile_is_found_not_refused(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty triggers at once for a workflow not yet in the registry: one read no entry,
    then, before it read the last sync, another request's discover committed both. Seeing
    a sync that recent, it did not discover again, and answered workflow_not_found
    for a workflow the registry now held (tests/faults, one answer in twenty)."""
    settings.NORM_DISCOVER_MIN_INTERVAL = 60
    client = ClientFactory()
    real_get = notify_services.selectors.bridge_workflow_get

    def then_another_request_syncs(**kwargs: Any) -> BridgeWorkflow | None:
        found = real_get(**kwargs)
        if found is None and not BridgeWorkflow.objects.exists():
            BridgeSyncFactory(client=client)
            BridgeWorkflowFactory(client=client, workflow_id="welcome")
        return found

    monkeypatch.setattr(
        notify_services.selectors, "bridge_workflow_get", then_another_request_syncs
    )

    found = notify_services._bridge_workflow(
        client=client, bridge_url=client.bridge_url, workflow_id="welcome"
    )

    assert found == BridgeWorkflow.objects.get()


def test_broadcast_stores_a_broadcast_event(
    post: Post, discover: FakeDiscover, enqueued: Enqueued
) -> None:
    response = post(BROADCAST, {"name": "welcome", "payload": {"name": "all"}})
    assert response.status_code == 201, response.content
    event = TriggerEvent.objects.get()
    assert response.json()["data"]["transactionId"] == event.transaction_id
    assert (event.mode, event.to, event.payload) == ("broadcast", None, {"name": "all"})
    assert enqueued.of(pipeline.WORKFLOW) == [(event.pk,)]
    assert Subscriber.objects.count() == 0


def test_broadcast_rejects_bad_payload(
    post: Post, discover: FakeDiscover, enqueued: Enqueued
) -> None:
    body = {"name": "welcome", "payload": {"delaySeconds": -1}}
    assert_error(post(BROADCAST, body), 400, "invalid_payload", path=BROADCAST)
    assert_nothing_stored(enqueued)


# --- against a real bridge over HTTP ---------------------------------------------------


@pytest.fixture
def live_bridge() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The demo bridge on a loopback HTTP server; yields its URL and the requests it saw."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            query = dict(parse_qsl(urlparse(self.path).query))
            seen.append({"method": self.command, "query": query})
            status, answer, headers = demo_bridge.handle(
                method=self.command, query=query, body=body, headers=dict(self.headers)
            )
            raw = json.dumps(answer).encode()
            self.send_response(status)
            for name, value in {**headers, "content-type": "application/json"}.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    serve_in_background(server)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/bridge", seen
    finally:
        server.shutdown()
        server.server_close()


def test_trigger_discovers_a_real_bridge_with_a_signed_request(
    live_bridge: tuple[str, list[dict[str, Any]]],
    enqueued: Enqueued,
    settings: Any,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    url, seen = live_bridge
    client, key = client_with_key(bridge_url=url)
    # Strict mode: the bridge answers only requests signed with this key.
    settings.NORM_DEMO_BRIDGE_SECRET = key
    api = api_for(key)
    with django_capture_on_commit_callbacks(execute=True):
        ok = api.post(TRIGGER, {"name": "welcome", "to": "ann"}, format="json")
        bad = api.post(
            TRIGGER,
            {"name": "welcome", "to": "ann", "payload": {"delaySeconds": "x"}},
            format="json",
        )
    assert ok.status_code == 201, ok.content
    assert_error(bad, 400, "invalid_payload")
    assert seen == [
        {"method": "GET", "query": {"action": "health-check"}},  # the flavour (norm's SDK)
        {"method": "GET", "query": {"action": "discover"}},
    ]
    assert TriggerEvent.objects.get().client == client
    assert len(enqueued.of(pipeline.WORKFLOW)) == 1


def test_a_bridge_url_shared_with_another_client_is_discovered_for_this_one(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, keyed: tuple[Client, str], settings: Any
) -> None:
    """Two clients may name one bridge URL: each has its own registry, discovered with
    its own key, and another client's recent discover does not stand in for it."""
    settings.NORM_DISCOVER_MIN_INTERVAL = 60
    other = ClientFactory()
    BridgeWorkflowFactory(client=other, workflow_id="billing")
    BridgeSyncFactory(client=other)

    assert_error(post(TRIGGER, {"name": "billing", "to": "ann"}), 422, "workflow_not_found")
    assert post(TRIGGER, {"name": "welcome", "to": "ann"}).status_code == 201
    assert discover.calls == [(BRIDGE_URL, keyed[1])]
    # This client's discover left the other's registry of that URL as it was.
    assert BridgeWorkflow.objects.filter(client=other, workflow_id="billing").exists()


def test_a_registry_entry_older_than_the_ttl_is_discovered_again(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, keyed: tuple[Client, str], settings: Any
) -> None:
    settings.NORM_REGISTRY_TTL = 60
    old = timezone.now() - timedelta(seconds=61)
    BridgeWorkflowFactory(client=keyed[0], workflow_id="welcome", discovered_at=old)

    assert post(TRIGGER, {"name": "welcome", "to": "ann"}).status_code == 201
    assert discover.urls == [BRIDGE_URL]
    assert BridgeWorkflow.objects.get(client=keyed[0], workflow_id="welcome").discovered_at > old


def test_a_stale_entry_is_refreshed_by_one_trigger_while_those_meanwhile_serve_it(
    post: Post,
    enqueued: Enqueued,
    keyed: tuple[Client, str],
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    """A trigger that comes while another's discover hangs serves the stale entry: each
    asked the bridge too, and while it hung every trigger of the client waited on it."""
    settings.NORM_REGISTRY_TTL, settings.NORM_DISCOVER_MIN_INTERVAL = 60, 10
    old = timezone.now() - timedelta(seconds=61)
    BridgeWorkflowFactory(client=keyed[0], workflow_id="welcome", discovered_at=old)
    BridgeSyncFactory(client=keyed[0], synced_at=old)
    urls: list[str] = []
    meanwhile: list[HttpResponse] = []

    def discover_hanging(url: str, *, secrets: Sequence[str]) -> dict[str, Any]:
        urls.append(url)
        if len(urls) == 1:  # another trigger comes while this discover is under way
            meanwhile.append(post(TRIGGER, {"name": "welcome", "to": "bob"}))
        return demo_bridge.discover()

    monkeypatch.setattr(bridge, "discover", discover_hanging)

    assert post(TRIGGER, {"name": "welcome", "to": "ann"}).status_code == 201
    assert meanwhile[0].status_code == 201, meanwhile[0].content
    assert urls == [BRIDGE_URL]


def test_a_registry_entry_within_the_ttl_is_served_without_asking_the_bridge(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, keyed: tuple[Client, str], settings: Any
) -> None:
    """No sync on record (the interval would allow one): the entry's own age decides."""
    settings.NORM_REGISTRY_TTL, settings.NORM_DISCOVER_MIN_INTERVAL = 60, 0
    recent = timezone.now() - timedelta(seconds=50)
    BridgeWorkflowFactory(client=keyed[0], workflow_id="welcome", discovered_at=recent)

    assert post(TRIGGER, {"name": "welcome", "to": "ann"}).status_code == 201
    assert discover.calls == []


def test_a_payload_refused_by_a_schema_the_bridge_changed_since_is_checked_again(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, keyed: tuple[Client, str], settings: Any
) -> None:
    """A developer drops a required key from a workflow's payload schema and restarts the
    app: triggers without that key were refused on the old schema, nothing saying it was
    norm's copy, until the entry was NORM_REGISTRY_TTL (300 s) old. A refusal now asks the
    bridge again, once NORM_DISCOVER_MIN_INTERVAL allows it."""
    settings.NORM_REGISTRY_TTL, settings.NORM_DISCOVER_MIN_INTERVAL = 300, 10
    discovered = timezone.now() - timedelta(seconds=30)  # within the TTL, past the interval
    BridgeSyncFactory(client=keyed[0], synced_at=discovered, flavour="norm")
    BridgeWorkflowFactory(
        client=keyed[0],
        workflow_id="welcome",
        discovered_at=discovered,
        payload_schema={"type": "object", "required": ["orderId"]},
    )

    # The demo's welcome, as the bridge declares it now, requires no key.
    assert post(TRIGGER, {"name": "welcome", "to": "ann"}).status_code == 201
    assert discover.urls == [BRIDGE_URL]
    assert BridgeWorkflow.objects.get(client=keyed[0], workflow_id="welcome").payload_schema[
        "properties"
    ]["delaySeconds"]
    # Refused by the schema just discovered: no discover again within the interval.
    refused = post(TRIGGER, {"name": "welcome", "to": "bob", "payload": {"delaySeconds": "x"}})
    assert_error(refused, 400, "invalid_payload")
    assert discover.urls == [BRIDGE_URL]
    assert TriggerEvent.objects.count() == 1


def _bridge_down(url: str, *, secrets: Sequence[str]) -> dict[str, Any]:
    raise bridge.BridgeUnavailable("BridgeUnreachable", "connection refused")


def test_a_stale_registry_entry_is_used_while_the_bridge_is_down(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued, keyed: tuple[Client, str]
) -> None:
    """A trigger is never refused because the bridge is briefly down: the workflow and
    its payload schema are still known from the last discover."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    old = timezone.now() - timedelta(days=1)
    BridgeWorkflowFactory(
        client=keyed[0], workflow_id="welcome", discovered_at=old, payload_schema=schema
    )
    monkeypatch.setattr(bridge, "discover", _bridge_down)

    assert post(TRIGGER, {"name": "welcome", "to": "ann", "payload": {"n": 1}}).status_code == 201
    refused = post(TRIGGER, {"name": "welcome", "to": "bob", "payload": {"n": "one"}})
    assert_error(refused, 400, "invalid_payload")
    assert TriggerEvent.objects.count() == 1
    assert BridgeSync.objects.get(client=keyed[0]).error  # the failed sync is on record


def test_an_unknown_workflow_is_a_502_until_the_next_discover_after_a_failed_one(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued, settings: Any
) -> None:
    """Within NORM_DISCOVER_MIN_INTERVAL of a failed discover the bridge is not asked
    again, and norm still cannot know the workflow: not a refusal that says it is undefined."""
    settings.NORM_DISCOVER_MIN_INTERVAL = 60
    monkeypatch.setattr(bridge, "discover", _bridge_down)
    for _ in range(2):
        body = assert_error(
            post(TRIGGER, {"name": "welcome", "to": "ann"}), 502, "bridge_unavailable"
        )
        assert "connection refused" in body["message"]
    # The second is the first's answer, and says so: a bridge fixed meanwhile (its key,
    # its host) seemed still broken.
    assert "s ago; it asks a bridge again at most every 60 s" in body["message"]
    assert_nothing_stored(enqueued)


def test_a_workflow_the_bridge_does_not_define_is_a_422_once_the_bridge_is_back(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, keyed: tuple[Client, str], settings: Any
) -> None:
    settings.NORM_DISCOVER_MIN_INTERVAL = 60
    BridgeSyncFactory(
        client=keyed[0],
        synced_at=timezone.now() - timedelta(seconds=61),
        error="BridgeUnreachable: connection refused",
    )

    assert_error(post(TRIGGER, {"name": "nope", "to": "ann"}), 422, "workflow_not_found")
    assert discover.urls == [BRIDGE_URL]
    assert BridgeSync.objects.get(client=keyed[0]).error == ""


def test_a_workflow_the_bridge_no_longer_defines_is_a_422_once_discovered_again(
    post: Post, discover: FakeDiscover, enqueued: Enqueued, keyed: tuple[Client, str], settings: Any
) -> None:
    """Its stale entry is dropped by the discover, not served as if still defined."""
    settings.NORM_REGISTRY_TTL = 60
    old = timezone.now() - timedelta(seconds=61)
    BridgeWorkflowFactory(client=keyed[0], workflow_id="retired", discovered_at=old)

    assert_error(post(TRIGGER, {"name": "retired", "to": "ann"}), 422, "workflow_not_found")
    assert not BridgeWorkflow.objects.filter(client=keyed[0], workflow_id="retired").exists()
    assert_nothing_stored(enqueued)


def test_a_workflow_id_of_the_longest_length_norm_keeps_is_triggered(
    post: Post, monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """200 characters, the trigger's `name` limit too; a longer id is left out of the
    registry rather than fail the whole discover."""
    longest, longer = "w" * 200, "x" * 201
    answer = {"workflows": [{"workflowId": longest}, {"workflowId": longer}]}
    monkeypatch.setattr(bridge, "discover", lambda url, *, secrets: answer)

    assert post(TRIGGER, {"name": longest, "to": "ann"}).status_code == 201
    assert list(BridgeWorkflow.objects.values_list("workflow_id", flat=True)) == [longest]


@pytest.mark.parametrize("stored", ["welcome-email", {"welcome": True}, [["welcome"]]])
def test_an_allowlist_stored_as_no_list_of_ids_refuses_every_workflow(
    post: Post, keyed: tuple[Client, str], discover: FakeDiscover, enqueued: Enqueued, stored: Any
) -> None:
    """The admin stores only a list of ids; one written otherwise (a shell, SQL) was read
    as it was: "welcome" is `in` the string "welcome-email", and `in` an object's keys.
    It fails closed, naming the fault."""
    Client.objects.filter(pk=keyed[0].pk).update(workflow_allowlist=stored)
    error = assert_error(post(TRIGGER, {"name": "welcome", "to": "ann"}), 403, "workflow_forbidden")
    assert "allowlist is not a list of workflow ids" in error["message"]
    assert_nothing_stored(enqueued)
    assert discover.calls == []


@pytest.mark.parametrize("stored", [{OTHER_BRIDGE: True}, OTHER_BRIDGE, [[OTHER_BRIDGE]]])
def test_allowed_bridge_urls_stored_as_no_list_of_urls_allow_only_the_bridge_url(
    post: Post, keyed: tuple[Client, str], discover: FakeDiscover, enqueued: Enqueued, stored: Any
) -> None:
    """As for the allowlist: an object's keys were allowed bridges, and norm called them."""
    Client.objects.filter(pk=keyed[0].pk).update(allowed_bridge_urls=stored)
    body = {"name": "welcome", "to": "ann", "resource": OTHER_BRIDGE}
    error = assert_error(post(TRIGGER, body), 400, "invalid_resource")
    assert "allowed_bridge_urls is not a list of URLs" in error["message"]
    assert_nothing_stored(enqueued)
    assert discover.calls == []
    # Its own bridge still serves its triggers.
    assert post(TRIGGER, {"name": "welcome", "to": "ann"}).status_code == 201
