from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import pytest

from workflows.sdk import Bridge, Context, Workflow, canonical_json, signature_header, workflow

from .helpers import UNREAD, entry, execute_body

SECRET = "sk_test_bridge"


@workflow(
    "welcome",
    name="Welcome",
    description="Say hello",
    tags=["onboarding"],
    payload_schema={"type": "object", "properties": {"name": {"type": "string", "default": "x"}}},
)
def welcome(ctx: Context) -> None:
    inbox = ctx.step.in_app("inbox", lambda: {"body": f"Hi {ctx.payload['name']}"})
    ctx.step.delay("wait", lambda: {"amount": 1, "unit": "minutes"})
    ctx.step.email("reminder", lambda: {"subject": "s", "body": "b"}, skip=lambda: inbox["read"])


@workflow("branchy")
def branchy(ctx: Context) -> None:
    score = ctx.step.custom("score", lambda: {"score": 1})
    if score["score"]:
        ctx.step.sms("never-discovered", lambda: {"body": "b"})
    ctx.step.chat("chat", lambda: {"body": "b"})
    ctx.step.push("push", lambda: {"subject": ctx.payload["needed"], "body": "b"})
    if ctx.payload["needed"]:  # KeyError with the empty discovery payload
        ctx.step.sms("after-error", lambda: {"body": "b"})


@workflow("crash")
def crash(ctx: Context) -> None:
    raise RuntimeError("bug in the workflow body")


def call(
    bridge: Bridge,
    method: str,
    query: dict[str, str],
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    raw = canonical_json(body).encode() if body is not None else None
    return bridge.handle(method=method, query=query, body=raw, headers=headers or {})


def signed(body: dict[str, Any] | None, secret: str = SECRET) -> dict[str, str]:
    return {"Novu-Signature": signature_header(secret, canonical_json(body or {}))}


@pytest.fixture
def bridge() -> Bridge:
    return Bridge(workflows=[welcome, branchy, crash], strict=False)


def test_health_check(bridge: Bridge) -> None:
    status, body, headers = call(bridge, "GET", {"action": "health-check"})
    assert status == 200
    assert body == {
        "status": "ok",
        "sdkVersion": "0.1.0",
        "frameworkVersion": "2024-06-26",
        "sdk": "norm-python",
        "discovered": {"workflows": 3, "steps": 6},
    }
    assert headers["novu-framework-version"] == "2024-06-26"
    assert headers["novu-framework-sdk"] == "0.1.0"
    assert call(bridge, "GET", {})[1] == body


@pytest.mark.parametrize(
    ("method", "query", "body"),
    [
        ("GET", {"action": "discover"}, None),
        ("OPTIONS", {}, None),
        ("POST", {"action": "execute", "workflowId": "nope"}, {}),
    ],
)
def test_every_answer_carries_the_cors_headers_of_novus_sdk(
    bridge: Bridge, method: str, query: dict[str, str], body: dict[str, Any] | None
) -> None:
    """Novu's SDK sends these on every answer, an error's too (the reference's capture):
    a dashboard that calls the bridge from the browser, as Novu's Studio does, can read
    no answer that lacks them."""
    headers = call(bridge, method, query, body)[2]
    assert {k: v for k, v in headers.items() if k.startswith("access-control-")} == {
        "access-control-allow-origin": "*",
        "access-control-allow-private-network": "true",
        "access-control-allow-methods": "GET, POST",
        "access-control-allow-headers": "*",
        "access-control-max-age": "604800",
    }


def test_discover_lists_workflows_and_steps_in_code_order(bridge: Bridge) -> None:
    status, body, _ = call(bridge, "GET", {"action": "discover"})
    assert status == 200
    assert [w["workflowId"] for w in body["workflows"]] == ["welcome", "branchy", "crash"]
    first = body["workflows"][0]
    assert {k: first[k] for k in ("name", "description", "tags", "severity", "preferences")} == {
        "name": "Welcome",
        "description": "Say hello",
        "tags": ["onboarding"],
        "severity": "none",
        "preferences": {},
    }
    assert first["payload"]["schema"]["properties"]["name"]["type"] == "string"
    assert first["controls"]["schema"]["type"] == "object"
    assert [(s["stepId"], s["type"]) for s in first["steps"]] == [
        ("inbox", "in_app"),
        ("wait", "delay"),
        ("reminder", "email"),
    ]
    inbox = first["steps"][0]
    assert set(inbox) == {
        "stepId",
        "type",
        "controls",
        "outputs",
        "results",
        "options",
        "providers",
    }
    assert inbox["results"]["schema"]["required"] == [
        "seen",
        "read",
        "lastSeenDate",
        "lastReadDate",
    ]
    assert inbox["outputs"]["schema"]["properties"]["body"]["minLength"] == 1
    assert first["steps"][2]["outputs"]["schema"]["required"] == ["subject", "body"]
    json.dumps(body)  # serializable as is


def test_discover_names_a_workflow_declared_without_a_name_by_its_id(bridge: Bridge) -> None:
    """A workflow declared without a name is listed with its id as its name, not as
    `"name": null` (norm's registry falls back to the id itself; a reader of discover that
    takes the name for a string does not), and one without a description lists none, as
    Novu's SDK leaves out a description not set."""
    workflows = call(bridge, "GET", {"action": "discover"})[1]["workflows"]
    branchy = next(w for w in workflows if w["workflowId"] == "branchy")
    assert branchy["name"] == "branchy"
    assert "description" not in branchy


def test_discover_survives_payload_dependent_code(bridge: Bridge) -> None:
    workflows = call(bridge, "GET", {"action": "discover"})[1]["workflows"]
    steps = {w["workflowId"]: [s["stepId"] for s in w["steps"]] for w in workflows}
    # The custom result is a placeholder (unknown keys read None), so the branch is not taken.
    assert steps["branchy"] == ["score", "chat", "push"]
    assert steps["crash"] == []


def test_discover_reaches_a_step_behind_the_results_of_the_steps_before_it() -> None:
    """No step runs during discovery: each returns the result the SDK pretends it has,
    an in-app message's fallback (unseen, unread) and a delay of 0 ms. Had it been
    another, or None for a key (which `<` refuses, and discovery stops at the error), the
    step behind `if not inbox["seen"]` or the delay's duration was missing from discover."""

    @workflow("nudge")
    def nudge(ctx: Context) -> None:
        inbox = ctx.step.in_app("inbox", lambda: {"body": "b"})
        wait = ctx.step.delay("wait", lambda: {"amount": 1, "unit": "hours"})
        if not inbox["seen"] and wait["duration"] < 3_600_000:
            ctx.step.email("nudge", lambda: {"subject": "s", "body": "b"})

    body = call(Bridge(workflows=[nudge], strict=False), "GET", {"action": "discover"})[1]
    assert [s["stepId"] for s in body["workflows"][0]["steps"]] == ["inbox", "wait", "nudge"]


def test_execute_through_the_bridge(bridge: Bridge) -> None:
    query = {"action": "execute", "workflowId": "welcome"}
    status, body, _ = call(bridge, "POST", query, execute_body({"name": "Ada"}, []))
    assert (status, body["stepId"], body["outputs"]) == (200, "inbox", {"body": "Hi Ada"})

    query["stepId"] = "wait"
    status, body, _ = call(bridge, "POST", query, execute_body({}, [entry("inbox", UNREAD)]))
    assert (status, body["stepId"]) == (200, "wait")


def test_framework_errors_become_error_bodies(bridge: Bridge) -> None:
    query = {"action": "execute", "workflowId": "welcome"}
    status, body, _ = call(bridge, "POST", query, execute_body({}, [entry("wait")]))
    assert status == 400
    assert body == {
        "message": body["message"],
        "code": "ExecutionStateOrderError",
        "data": {"expected": ["inbox"], "received": ["wait"]},
    }


def test_unknown_workflow(bridge: Bridge) -> None:
    status, body, _ = call(bridge, "POST", {"action": "execute", "workflowId": "nope"}, {})
    assert (status, body["code"]) == (404, "WorkflowNotFoundError")


def test_unexpected_exception_is_a_bridge_error(bridge: Bridge) -> None:
    query = {"action": "execute", "workflowId": "crash"}
    status, body, _ = call(bridge, "POST", query, execute_body({}, []))
    assert (status, body["code"]) == (500, "BridgeError")
    assert "bug in the workflow body" in body["message"]


def test_resolver_exception_is_502(bridge: Bridge) -> None:
    query = {"action": "execute", "workflowId": "branchy"}
    state = [entry("score", {"score": 0}), entry("chat")]
    status, body, _ = call(bridge, "POST", query, execute_body({}, state))
    assert (status, body["code"]) == (502, "StepExecutionFailedError")
    assert body["message"] == "Failed to execute Step with id: `push`: KeyError: 'needed'"


# JSON, but no object: read as the request, an array or a string would be a 500 (`.get` of
# a list), which norm retries, rather than the 400 of a body no retry can change. No body
# at all (b"", or None as `handle` takes it from an adapter) is `{}`, without a payload.
@pytest.mark.parametrize("raw", [b"[1", b"[]", b'"payload"', b"null", b"", None])
def test_body_that_is_not_a_json_object(bridge: Bridge, raw: bytes | None) -> None:
    query = {"action": "execute", "workflowId": "welcome"}
    status, body, _ = bridge.handle(method="POST", query=query, body=raw, headers={})
    assert (status, body["code"]) == (400, "ExecutionEventPayloadInvalidError")


@pytest.mark.parametrize(
    ("method", "action"),
    [("POST", "health-check"), ("POST", "discover"), ("GET", "execute"), ("GET", "nope")],
)
def test_wrong_method_or_unknown_action(bridge: Bridge, method: str, action: str) -> None:
    status, body, _ = call(bridge, method, {"action": action})
    assert (status, body["code"]) == (400, "InvalidActionError")


def test_post_without_action_is_invalid(bridge: Bridge) -> None:
    status, body, _ = call(bridge, "POST", {})
    assert (status, body["code"]) == (400, "InvalidActionError")
    assert "`execute`" in body["message"]


def test_other_methods_are_not_allowed(bridge: Bridge) -> None:
    status, body, _ = call(bridge, "PUT", {"action": "discover"})
    assert (status, body["code"]) == (405, "MethodNotAllowedError")
    assert call(bridge, "OPTIONS", {"action": "discover"})[:2] == (200, {})


def test_strict_bridge_requires_signatures() -> None:
    strict = Bridge(workflows=[welcome], secret_key=SECRET)
    query = {"action": "execute", "workflowId": "welcome"}
    body = execute_body({"name": "Zoë 😀"}, [])

    assert call(strict, "POST", query, body)[1]["code"] == "SignatureNotFoundError"
    assert call(strict, "POST", query, body, signed(body, "sk_forged"))[0] == 401
    status, answer, _ = call(strict, "POST", query, body, signed(body))
    assert (status, answer["outputs"]) == (200, {"body": "Hi Zoë 😀"})
    legacy = {"x-novu-signature": signed(body)["Novu-Signature"]}
    assert call(strict, "POST", query, body, legacy)[0] == 200

    assert call(strict, "GET", {"action": "discover"})[0] == 401
    assert call(strict, "GET", {"action": "discover"}, None, signed(None))[0] == 200
    assert call(strict, "OPTIONS", {"action": "discover"})[0] == 401
    assert call(strict, "GET", {"action": "health-check"})[0] == 200


def test_non_strict_bridge_accepts_unsigned_requests() -> None:
    relaxed = Bridge(workflows=[welcome], secret_key=SECRET, strict=False)
    assert call(relaxed, "GET", {"action": "discover"})[0] == 200
    assert call(Bridge(workflows=[welcome], strict=False), "GET", {"action": "discover"})[0] == 200


@pytest.mark.parametrize("secret_key", [None, "", lambda: None, lambda: ""])
def test_a_bridge_whose_secret_key_is_missing_refuses_everything_but_health_checks(
    secret_key: object,
) -> None:
    """As an unset environment variable would leave it: closed, not open to anyone."""
    keyless = Bridge(workflows=[welcome], secret_key=secret_key)  # type: ignore[arg-type]
    status, body, _ = call(keyless, "GET", {"action": "discover"})
    assert (status, body["code"]) == (401, "SignatureNotFoundError")
    status, body, _ = call(keyless, "GET", {"action": "discover"}, None, signed(None))
    assert (status, body["code"]) == (401, "SigningKeyNotFoundError")
    assert call(keyless, "GET", {"action": "health-check"})[0] == 200


def test_secret_key_is_read_lazily() -> None:
    secrets: list[str | None] = [None]
    lazy = Bridge(workflows=[welcome], secret_key=lambda: secrets[0], strict=None)
    assert call(lazy, "GET", {"action": "discover"})[0] == 200
    secrets[0] = SECRET
    assert call(lazy, "GET", {"action": "discover"})[0] == 401
    assert call(lazy, "GET", {"action": "discover"}, None, signed(None))[0] == 200


@pytest.mark.parametrize("secret_key", ["", lambda: ""])
def test_an_empty_key_is_no_key_for_a_bridge_strict_only_with_one(secret_key: object) -> None:
    """strict=None is strict iff a key is set: an environment variable set empty
    (`NOVU_SECRET_KEY=`) sets none, and the bridge stays open as without one, rather
    than refuse every call for a key it does not have."""
    optional = Bridge(workflows=[welcome], secret_key=secret_key, strict=None)  # type: ignore[arg-type]
    assert call(optional, "GET", {"action": "discover"})[0] == 200


def test_duplicate_workflow_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="welcome"):
        Bridge(workflows=[welcome, welcome])


def test_a_workflow_or_bridge_declared_wrongly_is_a_type_error_where_it_is_declared() -> None:
    """Each was taken before, and failed later, far from the mistake: discovered with the
    id 5 (never matched by the "5" norm sends), with the tags "b", "i", "l", ..., or an
    AttributeError at the bridge for a function without its decorator."""

    def body(ctx: Context) -> None:
        ctx.step.sms("sms", lambda: {"body": "b"})

    with pytest.raises(TypeError, match=r'must be a non-empty string, not 5: .*@workflow\("'):
        Workflow(5, body)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a non-empty string, not <function"):
        workflow(body)  # type: ignore[arg-type]  # the decorator, written without its id
    with pytest.raises(TypeError, match="must be a non-empty string, not ''"):
        Workflow("", body)
    with pytest.raises(TypeError, match="'w': the workflow function must be a function"):
        Workflow("w", "body")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'w': `tags` must be a list of strings"):
        Workflow("w", body, tags="billing")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'w': `tags` must be a list of strings"):
        Workflow("w", body, tags=["billing", 7])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="serves Workflow objects .* not a function"):
        Bridge(workflows=[body])  # type: ignore[list-item]
    assert Workflow("w", body, tags=["billing"]).describe()["tags"] == ["billing"]
    # Any iterable of strings, read once: a generator the check used up was kept empty.
    assert Workflow("w", body, tags=(t for t in ["a", "b"])).describe()["tags"] == ["a", "b"]  # type: ignore[arg-type]


@workflow("twice")
def twice(ctx: Context) -> None:
    ctx.step.sms("sms", lambda: {"body": "first"})
    # A workflow that swallows the error must not hide the duplicate from discover.
    with contextlib.suppress(Exception):
        ctx.step.sms("sms", lambda: {"body": "second"})


def test_discover_refuses_a_workflow_with_a_duplicate_step_id() -> None:
    """As Novu's SDK does (409 StepAlreadyExistsError): listing only the first of the two
    would let norm sync a workflow whose every execute past that step fails."""
    duplicated = Bridge(workflows=[welcome, twice], strict=False)
    status, body, _ = call(duplicated, "GET", {"action": "discover"})
    assert (status, body["code"]) == (409, "StepAlreadyExistsError")
    assert body["data"] == {"workflowId": "twice", "stepId": "sms"}
    assert "`sms`" in body["message"]
    # Still alive for a health-check, which norm reads to tell the flavours apart.
    assert call(duplicated, "GET", {"action": "health-check"})[0] == 200


def test_a_bug_outside_any_step_is_logged_naming_the_action_and_the_workflow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The application's log said "Bridge request failed" and a traceback: not which
    workflow, nor which of norm's calls, failed."""

    @workflow("crash")
    def crash(ctx: Context) -> None:
        raise RuntimeError("bug outside any step")

    served = Bridge(workflows=[crash], strict=False)
    status, _, _ = served.handle(
        method="POST",
        query={"action": "execute", "workflowId": "crash"},
        body='{"payload": {}, "state": []}',
        headers={},
    )

    assert status == 500
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None
    assert record.getMessage() == "Bridge request failed: action execute, workflow crash"
