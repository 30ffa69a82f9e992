from __future__ import annotations

import json

from django.test import RequestFactory, override_settings

from workflows.demo import bridge_view
from workflows.sdk import canonical_json, signature_header

from .helpers import execute_body

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
