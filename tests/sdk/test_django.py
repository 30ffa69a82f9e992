from __future__ import annotations

import json
from typing import Any

from django.test import Client as DjangoClient
from django.test import RequestFactory, override_settings

from workflows.demo import bridge_view
from workflows.sdk import Bridge, Context, canonical_json, signature_header, workflow
from workflows.sdk.django import bridge_view as sdk_bridge_view

from .helpers import entry, execute_body

SECRET = "sk_test_demo_bridge"


def test_health_check_is_served_unsigned() -> None:
    with override_settings(NORM_DEMO_BRIDGE_SECRET=SECRET):
        response = bridge_view(RequestFactory().get("/bridge", {"action": "health-check"}))
    assert response.status_code == 200
    assert json.loads(response.content)["discovered"]["workflows"] == 2
    assert response["novu-framework-version"] == "2024-06-26"
    assert response["novu-framework-sdk"] == "0.1.0"
    assert response["novu-framework-server"] == "django"


def test_signed_execute() -> None:
    body = canonical_json(execute_body({"name": "Zoë"}, []))
    request = RequestFactory().post(
        "/bridge?action=execute&workflowId=welcome",
        data=body.encode(),
        content_type="application/json",
        headers={"novu-signature": signature_header(SECRET, body)},
    )
    with override_settings(NORM_DEMO_BRIDGE_SECRET=SECRET):
        response = bridge_view(request)
    assert response.status_code == 200
    answer = json.loads(response.content)
    assert (answer["stepId"], answer["done"]) == ("inbox", False)
    assert answer["outputs"]["body"] == "Hi Zoë, welcome to norm."


def test_unsigned_execute_is_refused_when_a_secret_is_set() -> None:
    request = RequestFactory().post(
        "/bridge?action=execute&workflowId=welcome",
        data=canonical_json(execute_body({}, [])),
        content_type="application/json",
    )
    with override_settings(NORM_DEMO_BRIDGE_SECRET=SECRET):
        response = bridge_view(request)
    assert response.status_code == 401
    assert json.loads(response.content)["code"] == "SignatureNotFoundError"


def test_without_a_secret_the_demo_bridge_is_open() -> None:
    with override_settings(NORM_DEMO_BRIDGE_SECRET=""):
        response = bridge_view(RequestFactory().get("/bridge", {"action": "discover"}))
    assert response.status_code == 200
    workflows = json.loads(response.content)["workflows"]
    assert [w["workflowId"] for w in workflows] == ["welcome", "order-update"]


def test_other_methods_get_a_json_405() -> None:
    response = bridge_view(RequestFactory().put("/bridge?action=discover"))
    assert response.status_code == 405
    assert json.loads(response.content)["code"] == "MethodNotAllowedError"


def test_a_lone_surrogate_in_an_answer_is_written_escaped_not_a_crash() -> None:
    """JSON may carry a lone surrogate ("\\ud800"), which Python reads into a str that UTF-8
    cannot encode: the adapter raised, and Django answered its HTML 500 (which norm
    retried as a bridge that is down). Escaped as JS writes it, as Novu's SDK answers."""

    def fail(word: str) -> dict[str, Any]:
        raise ValueError(f"no such word: {word}")

    @workflow("w")
    def w(ctx: Context) -> None:
        ctx.step.custom("c", lambda: {"x": ctx.payload["word"]})
        ctx.step.custom("d", lambda: fail(ctx.payload["word"]))

    view = sdk_bridge_view(Bridge([w], strict=False))

    def post(state: list[dict[str, Any]]) -> Any:
        return view(
            RequestFactory().post(
                "/bridge?action=execute&workflowId=w",
                data=json.dumps(execute_body({"word": "a\ud800b"}, state)),
                content_type="application/json",
            )
        )

    response = post([])
    assert response.status_code == 200
    assert b'"x":"a\\ud800b"' in response.content
    assert json.loads(response.content)["outputs"] == {"x": "a\ud800b"}
    failed = post([entry("c", {"x": "a"})])  # in an exception's message
    assert failed.status_code == 502
    assert json.loads(failed.content)["message"].endswith("no such word: a\ud800b")


def test_a_signed_call_passes_djangos_csrf_check() -> None:
    """norm's calls carry no CSRF cookie or token: the signature is what authenticates
    them. Called through the middleware (RequestFactory skips it), as a deployed bridge
    is: without the view's csrf_exempt every execute was Django's HTML 403."""
    body = canonical_json(execute_body({"name": "Zoë"}, []))
    browser = DjangoClient(enforce_csrf_checks=True)
    with override_settings(NORM_DEMO_BRIDGE_SECRET=SECRET):
        response = browser.post(
            "/bridge?action=execute&workflowId=welcome",
            data=body.encode(),
            content_type="application/json",
            headers={"novu-signature": signature_header(SECRET, body)},
        )
    assert response.status_code == 200
    assert json.loads(response.content)["stepId"] == "inbox"
