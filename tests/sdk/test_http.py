"""The SDK as a product team serves it: through the Django adapter, over HTTP requests."""

from __future__ import annotations

import functools
import json
import math
import threading
import warnings
from datetime import UTC, date, datetime
from typing import Any

import pytest
from django.test import RequestFactory, override_settings
from django.utils.translation import gettext_lazy

from workflows.sdk import Bridge, Context, Workflow, signature_header, workflow
from workflows.sdk.django import bridge_view
from workflows.sdk.schemas import SchemaUnusable

SECRET = "sk_test_http"


@workflow("hello")
def hello(ctx: Context) -> None:
    ctx.step.in_app("inbox", lambda: {"body": "Hello"})


def post(
    bridge: Bridge, query: str, raw: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    request = RequestFactory().post(
        f"/api/norm?{query}", data=raw.encode(), content_type="application/json", headers=headers
    )
    response = bridge_view(bridge)(request)
    return response.status_code, json.loads(response.content)


def nested(depth: int) -> str:
    return '{"payload":{"deep":' + "[" * depth + "]" * depth + '},"state":[],"controls":{}}'


def test_a_body_nested_too_deep_is_a_400() -> None:
    open_bridge = Bridge(workflows=[hello], strict=False)
    for depth in (800, 100_000):  # one Python decodes, one it cannot
        status, body = post(open_bridge, "action=execute&workflowId=hello", nested(depth))
        assert (status, body["code"]) == (400, "ExecutionEventPayloadInvalidError")


def test_a_signed_body_nested_too_deep_is_a_400_and_a_forged_one_a_401() -> None:
    strict = Bridge(workflows=[hello], secret_key=SECRET)
    raw = nested(800)
    query = "action=execute&workflowId=hello"
    status, body = post(strict, query, raw, {"novu-signature": signature_header(SECRET, raw)})
    assert (status, body["code"]) == (400, "ExecutionEventPayloadInvalidError")
    forged = {"novu-signature": signature_header("sk_forged", raw)}
    status, body = post(strict, query, raw, forged)
    assert (status, body["code"]) == (401, "SignatureMismatchError")


def test_a_state_entry_whose_state_is_not_an_object_is_replayed() -> None:
    read = {"seen": True, "read": True, "lastSeenDate": None, "lastReadDate": None}
    state = [{"stepId": "inbox", "outputs": read, "state": "completed"}]
    raw = json.dumps({"payload": {"a": 1}, "state": state, "controls": {}})
    status, body = post(
        Bridge(workflows=[hello], strict=False), "action=execute&workflowId=hello", raw
    )
    assert (status, body.get("done")) == (200, True)


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        datetime(2025, 1, 1, tzinfo=UTC),
        math.nan,
        math.inf,
        # Not even copied (a 500 BridgeError, which norm retried to no avail).
        (line for line in ["- a", "- b"]),
        threading.Lock(),
    ],
)
def test_outputs_json_cannot_write_are_an_output_error(value: Any) -> None:
    @workflow("computed")
    def computed(ctx: Context) -> None:
        ctx.step.custom("compute", lambda: {"value": value})

    raw = json.dumps({"payload": {"a": 1}, "state": [], "controls": {}})
    status, body = post(
        Bridge(workflows=[computed], strict=False), "action=execute&workflowId=computed", raw
    )
    assert (status, body["code"]) == (400, "ExecutionStateOutputInvalidError")


@pytest.mark.parametrize(
    "override", [None, ["headers"], {"retries": math.nan}, {"lock": threading.Lock()}]
)
def test_a_provider_override_that_returns_no_json_object_is_a_provider_output_error(
    override: Any,
) -> None:
    @workflow("overridden")
    def overridden(ctx: Context) -> None:
        body = {"subject": "s", "body": "b"}
        ctx.step.email("email", lambda: body, providers={"ses": lambda outputs: override})

    raw = json.dumps({"payload": {"a": 1}, "state": [], "controls": {}})
    status, body = post(
        Bridge(workflows=[overridden], strict=False), "action=execute&workflowId=overridden", raw
    )
    assert (status, body["code"]) == (400, "ExecutionProviderOutputInvalidError")


def test_a_payload_schema_with_a_boolean_subschema_validates() -> None:
    schema = {"type": "object", "properties": {"meta": True}}

    @workflow("tagged", payload_schema=schema)
    def tagged(ctx: Context) -> None:
        ctx.step.in_app("inbox", lambda: {"body": str(ctx.payload["meta"]["source"])})

    raw = json.dumps({"payload": {"meta": {"source": "api"}}, "state": [], "controls": {}})
    status, body = post(
        Bridge(workflows=[tagged], strict=False), "action=execute&workflowId=tagged", raw
    )
    assert (status, body.get("outputs")) == (200, {"body": "api"})


async def _async_workflow(ctx: Context) -> None:
    ctx.step.in_app("inbox", lambda: {"body": "Hello"})


def _generator_workflow(ctx: Context) -> Any:
    yield ctx.step.in_app("inbox", lambda: {"body": "Hello"})


async def _async_generator_workflow(ctx: Context) -> Any:
    yield ctx.step.in_app("inbox", lambda: {"body": "Hello"})


@pytest.mark.parametrize("fn", [_async_workflow, _generator_workflow])
def test_a_workflow_function_that_would_never_run_is_refused_when_declared(fn: Any) -> None:
    # Served, it discovered no step and answered every execute "done": nothing was sent.
    with pytest.raises(TypeError, match="plain `def`"):
        workflow("never-runs")(fn)


def test_a_body_larger_than_django_reads_is_a_json_413() -> None:
    raw = json.dumps({"payload": {"text": "x" * 2000}, "state": [], "controls": {}})
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        status, body = post(
            Bridge(workflows=[hello], strict=False), "action=execute&workflowId=hello", raw
        )
    assert (status, body["code"]) == (413, "RequestBodyTooLargeError")
    assert "1000 bytes" in body["message"]


BROKEN_SCHEMAS = [
    ("control", {"type": "object", "properties": {"n": {"type": "nope"}}}, "/properties/n/type"),
    ("control", {"type": "object", "properties": {"n": {"pattern": "(["}}}, "/properties/n"),
    ("output", {"type": "object", "properties": {"n": {"$ref": "#/$defs/gone"}}}, "/$defs/gone"),
]


@pytest.mark.parametrize(("kind", "schema", "where"), BROKEN_SCHEMAS)
def test_a_step_whose_schema_cannot_be_applied_is_a_step_execution_failure(
    kind: str, schema: dict[str, Any], where: str
) -> None:
    """It was a 500 BridgeError, which norm retries for minutes to no avail: it says now
    what is wrong, with the 502 of a step's own code failing, which no server retries."""

    @workflow("broken")
    def broken(ctx: Context) -> None:
        ctx.step.in_app("inbox", lambda: {"body": "Hello"})
        ctx.step.custom("score", lambda: {"n": 1}, **{f"{kind}_schema": schema})

    read = {"seen": True, "read": True, "lastSeenDate": None, "lastReadDate": None}
    state = [{"stepId": "inbox", "outputs": read, "state": {"status": "completed"}}]
    raw = json.dumps({"payload": {"a": 1}, "state": state, "controls": {}})
    served = Bridge(workflows=[broken], strict=False)
    for query in (
        "action=execute&workflowId=broken",
        "action=execute&workflowId=broken&stepId=score",
    ):
        status, body = post(served, query, raw)
        assert (status, body["code"]) == (502, "StepExecutionFailedError")
        assert body["data"] == {"workflowId": "broken", "stepId": "score"}
        assert body["message"].startswith(
            f"Failed to execute Step with id: `score`: its {kind} schema"
        )
        assert where in body["message"]


def test_a_payload_schema_with_a_ref_to_nowhere_is_a_workflow_execution_failure() -> None:
    """It was a 500 BridgeError, which norm retried to no avail (Novu's SDK answers one
    too): the workflow's own code is at fault, as for a step's broken schema, and the
    answer is Novu's WorkflowExecutionFailedError, a 502 norm does not retry."""
    schema = {"type": "object", "properties": {"who": {"$ref": "#/$defs/person"}}}

    @workflow("dangling", payload_schema=schema)
    def dangling(ctx: Context) -> None:
        ctx.step.in_app("inbox", lambda: {"body": "Hello"})

    raw = json.dumps({"payload": {"who": "Ada"}, "state": [], "controls": {}})
    status, body = post(
        Bridge(workflows=[dangling], strict=False), "action=execute&workflowId=dangling", raw
    )

    assert (status, body["code"]) == (502, "WorkflowExecutionFailedError")
    assert body["data"] == {"workflowId": "dangling"}
    assert body["message"].startswith("Failed to execute Workflow with id: `dangling`: ")
    assert "payload schema" in body["message"] and "#/$defs/person" in body["message"]


async def _never() -> bool:
    return False


async def _content() -> dict[str, Any]:
    return {"subject": "s", "body": "b"}


async def _override(outputs: dict[str, Any]) -> dict[str, Any]:
    return {"headers": {"X-Subject": outputs["subject"]}}


async def _never_streamed() -> Any:
    yield False


def _content_generated() -> Any:
    yield {"subject": "s", "body": "b"}


@pytest.mark.parametrize(
    ("declared", "what"),
    [
        ({"resolver": lambda: {"subject": "s", "body": "b"}, "skip": _never}, "skip condition"),
        ({"resolver": _content}, "resolver"),
        (
            {"resolver": lambda: {"subject": "s", "body": "b"}, "providers": {"ses": _override}},
            "provider override `ses`",
        ),
        (
            {"resolver": lambda: {"subject": "s", "body": "b"}, "skip": _never_streamed},
            "skip condition",
        ),
        ({"resolver": _content_generated}, "resolver"),
    ],
)
def test_an_async_resolver_skip_or_provider_is_a_step_execution_failure(
    declared: dict[str, Any], what: str
) -> None:
    """An async skip condition returned a coroutine, which is truthy: every email was
    skipped, silently. An async resolver or provider override was a 500 BridgeError
    ("cannot pickle 'coroutine' object"), retried to no avail. The SDK awaits nothing:
    each is now the 502 of a step's own code failing, saying why. So is one that yields
    (an `async def` skip condition with a `yield` skipped every email too, and a generator
    resolver's outputs were "invalid: cannot pickle 'generator' object")."""

    @workflow("async-parts")
    def async_parts(ctx: Context) -> None:
        ctx.step.email("email", **declared)

    raw = json.dumps({"payload": {"a": 1}, "state": [], "controls": {}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited" either
        status, body = post(
            Bridge(workflows=[async_parts], strict=False),
            "action=execute&workflowId=async-parts",
            raw,
        )
    assert (status, body["code"]) == (502, "StepExecutionFailedError")
    assert body["message"].startswith(f"Failed to execute Step with id: `email`: its {what} ")
    assert any(
        f"returned {kind} (is it async" in body["message"]
        for kind in ("a coroutine", "an async_generator", "a generator")
    )
    assert "must be plain functions" in body["message"]


def test_a_value_json_cannot_write_is_refused_where_it_is_declared_not_at_discover() -> None:
    """A schema's `default` of a date, a lazy translation as a workflow's name: taken, each
    made discover (which lists both) raise as the adapter wrote it, Django's HTML 500 for
    every workflow of the bridge, which norm could not sync (retried as a bridge down)."""

    def body(ctx: Context) -> None:
        ctx.step.sms("sms", lambda: {"body": "b"})

    dated = {"type": "object", "properties": {"day": {"default": date(2025, 1, 1)}}}
    with pytest.raises(SchemaUnusable, match="'w': a schema is not JSON: .* date is not JSON"):
        Workflow("w", body, payload_schema=dated)
    with pytest.raises(TypeError, match="'w': its name, description, .* must be JSON"):
        Workflow("w", body, name=gettext_lazy("Welcome"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'w': its name, description, .* must be JSON"):
        Workflow("w", body, preferences={"since": date(2025, 1, 1)})

    @workflow("stamped")
    def stamped(ctx: Context) -> None:
        ctx.step.custom("stamp", lambda: {}, output_schema=dated)

    bridge = Bridge(workflows=[hello, stamped], secret_key=SECRET)
    request = RequestFactory().get(
        "/api/norm?action=discover", headers={"novu-signature": signature_header(SECRET, "{}")}
    )
    response = bridge_view(bridge)(request)
    assert response.status_code == 200
    assert [w["workflowId"] for w in json.loads(response.content)["workflows"]] == [
        "hello",
        "stamped",
    ]
    # The step declared so fails, alone, with what is wrong with it.
    raw = json.dumps({"payload": {"a": 1}, "state": [], "controls": {}})
    headers = {"novu-signature": signature_header(SECRET, raw)}
    status, answer = post(bridge, "action=execute&workflowId=stamped", raw, headers)
    assert (status, answer["code"]) == (502, "StepExecutionFailedError")
    assert "its output schema is not JSON" in answer["message"]


def _plainly_wrapped(fn: Any) -> Any:
    """A decorator of the application's own (logging, tracing), as such wrappers go."""

    @functools.wraps(fn)
    def wrapper(ctx: Context) -> Any:
        return fn(ctx)

    return wrapper


@pytest.mark.parametrize("fn", [_async_workflow, _generator_workflow, _async_generator_workflow])
def test_a_workflow_function_that_never_runs_behind_a_decorator_fails_its_execute(
    fn: Any,
) -> None:
    """Behind a plain decorator an async or generator function passes for a `def`, which
    `@workflow` takes: served, its body never ran, discover listed no step and every
    execute answered "done" (200), so norm completed each notification with nothing
    sent. Each execute is now the 502 of the workflow's own code failing, saying why."""
    served = workflow("never-runs")(_plainly_wrapped(fn))
    raw = json.dumps({"payload": {"a": 1}, "state": [], "controls": {}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited" either
        status, body = post(
            Bridge(workflows=[served], strict=False), "action=execute&workflowId=never-runs", raw
        )
    assert (status, body["code"]) == (502, "WorkflowExecutionFailedError")
    assert body["data"] == {"workflowId": "never-runs"}
    assert body["message"].startswith("Failed to execute Workflow with id: `never-runs`: ")
    assert "must be a plain `def`" in body["message"]
