"""norm's Python SDK driven the way Novu's worker drives a bridge: one named step at a time,
state newest first; and its errors, which must match @novu/framework 2.13.2 (reference §8:
status, code, message, the `{message, code, data?}` body)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from jsonschema import validators

from workflows.sdk import Bridge, Context, canonical_json, signature_header, workflow

from .helpers import UNREAD

SECRET = "sk_test_novu_driven"
EXECUTE = {"action": "execute", "workflowId": "every-type"}


@workflow(
    "every-type",
    payload_schema={
        "type": "object",
        "properties": {"name": {"type": "string", "default": "Zoë"}, "n": {"type": "number"}},
        "additionalProperties": False,
    },
)
def every_type(ctx: Context) -> None:
    name = ctx.payload["name"]
    inbox = ctx.step.in_app("inbox", lambda: {"subject": f"Hi {name} 👋", "body": "…"})
    ctx.step.delay("wait", lambda: {"type": "regular", "amount": 5, "unit": "seconds"})
    score = ctx.step.custom(
        "score",
        lambda: {"score": 7},
        output_schema={
            "type": "object",
            "properties": {"score": {"type": "number"}},
            "required": ["score"],
        },
    )
    ctx.step.email(
        "mail",
        lambda controls: {"subject": controls["subject"], "body": f"score={score['score']}"},
        control_schema={
            "type": "object",
            "properties": {"subject": {"type": "string", "default": "Grüße"}},
            "additionalProperties": False,
        },
        providers={"sendgrid": lambda outputs: {"ipPoolName": "pool"}},
    )
    ctx.step.sms("text", lambda: {"body": "sms"}, skip=lambda: inbox["read"])
    ctx.step.push("push", lambda: {"subject": "p", "body": "push"})
    ctx.step.chat("chat", lambda: {"body": "chat"})


@workflow("faulty")
def faulty(ctx: Context) -> None:
    ctx.step.email("empty-subject", lambda: {"subject": "", "body": "b"})
    ctx.step.sms("throws", lambda: 1 / 0)
    ctx.step.sms("twice", lambda: {"body": "1"})
    ctx.step.sms("twice", lambda: {"body": "2"})


@workflow("crash")
def crash(ctx: Context) -> None:
    raise RuntimeError("bug outside any step")


ORDER = [
    ("inbox", "in_app"),
    ("wait", "delay"),
    ("score", "custom"),
    ("mail", "email"),
    ("text", "sms"),
    ("push", "push"),
    ("chat", "chat"),
]
# What Novu's worker sends back as each step's state (reference §6).
RESULTS: dict[str, dict[str, Any]] = {"inbox": UNREAD, "wait": {"duration": 5012}, "score": {}}


@pytest.fixture
def bridge() -> Bridge:
    return Bridge(workflows=[every_type, faulty, crash], secret_key=SECRET)


def call(
    bridge: Bridge,
    method: str,
    query: dict[str, str],
    body: dict[str, Any] | None = None,
    header: str | None = "sign",
) -> tuple[int, dict[str, Any], dict[str, str]]:
    text = canonical_json(body) if body is not None else "{}"
    headers = {"content-type": "application/json"}
    if header == "sign":
        headers["novu-signature"] = signature_header(SECRET, text)
    elif header is not None:
        headers["novu-signature"] = header
    raw = text.encode() if body is not None else None
    return bridge.handle(method=method, query=query, body=raw, headers=headers)


def execute(
    bridge: Bridge, step_id: str | None, state: list[dict[str, Any]], **body: Any
) -> tuple[int, dict[str, Any], dict[str, str]]:
    query = {**EXECUTE, **({"stepId": step_id} if step_id else {})}
    payload = {"payload": {"name": "Zoë", "extra": "stripped"}, "controls": {}, "state": state}
    return call(bridge, "POST", query, payload | {"subscriber": {"subscriberId": "z"}} | body)


def test_health_check_and_discover_speak_novus_protocol() -> None:
    # Without `faulty`: its duplicate step id makes discover refuse (409), as Novu's does.
    bridge = Bridge(workflows=[every_type, crash], secret_key=SECRET)
    status, health, headers = call(bridge, "GET", {"action": "health-check"}, header=None)
    assert status == 200
    assert (health["status"], health["frameworkVersion"]) == ("ok", "2024-06-26")
    assert health["sdk"] == "norm-python"  # how norm tells its own SDK from Novu's
    assert headers["novu-framework-version"] == "2024-06-26"

    status, found, _ = call(bridge, "GET", {"action": "discover"})
    assert status == 200
    described = found["workflows"][0]
    assert [(s["stepId"], s["type"]) for s in described["steps"]] == ORDER
    schemas = [described["payload"]["schema"], described["controls"]["schema"]]
    for step in described["steps"]:
        schemas += [step[part]["schema"] for part in ("controls", "outputs", "results")]
    for schema in schemas:
        validators.validator_for(schema).check_schema(schema)  # each one a JSON Schema
    mail = described["steps"][3]
    assert mail["controls"]["schema"]["properties"]["subject"]["default"] == "Grüße"
    assert mail["results"]["schema"]["properties"] == {}
    assert described["steps"][0]["results"]["schema"]["required"] == [
        "seen",
        "read",
        "lastSeenDate",
        "lastReadDate",
    ]


def test_every_step_type_runs_by_step_id_with_the_state_newest_first(bridge: Bridge) -> None:
    state: list[dict[str, Any]] = []
    answers: dict[str, dict[str, Any]] = {}
    for step_id, _ in ORDER:
        status, answer, _ = execute(bridge, step_id, state)
        assert status == 200, answer
        assert {"outputs", "providers", "options", "metadata"} <= set(answer)
        answers[step_id] = answer
        result = RESULTS.get(step_id, {})
        if step_id == "score":
            result = answer["outputs"]  # a custom step's result is its outputs
        ran = "skipped" if answer["options"]["skip"] else "completed"
        state.insert(0, {"stepId": step_id, "outputs": result, "state": {"status": ran}})

    assert answers["inbox"]["outputs"] == {"subject": "Hi Zoë 👋", "body": "…"}
    assert answers["wait"]["outputs"] == {"type": "regular", "amount": 5, "unit": "seconds"}
    assert answers["score"]["outputs"] == {"score": 7}
    assert answers["mail"]["outputs"] == {"subject": "Grüße", "body": "score=7"}
    assert answers["mail"]["providers"] == {"sendgrid": {"ipPoolName": "pool"}}
    assert answers["text"]["options"] == {"skip": False}
    assert answers["push"]["outputs"] == {"subject": "p", "body": "push"}
    assert answers["chat"]["outputs"] == {"body": "chat"}
    # A target the code never reaches, every reached step in the state: 200, empty outputs.
    status, done, _ = execute(bridge, "no-such-step", state)
    assert (status, done["outputs"], done["options"]) == (200, {}, {"skip": False})


def test_a_step_missing_from_the_state_is_named_as_novus_sdk_names_it(bridge: Bridge) -> None:
    # Without a stepId norm's SDK picks the next step itself (norm's mode); with one, a
    # gap in the state is reported as Novu reports it: what norm's Novu driver probes for.
    state = [{"stepId": "wait", "outputs": {"duration": 1}, "state": {"status": "completed"}}]
    status, answer, _ = execute(bridge, "chat", state)
    assert (status, answer["code"], answer["data"]) == (
        400,
        "ExecutionStateCorruptError",
        {"workflowId": "every-type", "stepId": "inbox"},
    )


def test_replay_by_step_id_ignores_state_order_and_extra_entries(bridge: Bridge) -> None:
    state = [
        {"stepId": "trigger", "outputs": {"name": "Zoë"}, "state": {"status": "completed"}},
        {"stepId": "inbox", "outputs": {**UNREAD, "read": True}, "state": {"status": "completed"}},
        {"stepId": "score", "outputs": {"score": 1}, "state": {"status": "completed"}},
        {"stepId": "wait", "outputs": {"duration": 1}, "state": {"status": "completed"}},
        {"stepId": "mail", "outputs": {}, "state": {"status": "completed"}},
    ]
    status, answer, _ = execute(bridge, "text", state)
    assert (status, answer["outputs"], answer["options"]) == (200, {}, {"skip": True})
    # Controls for the target step: validated, defaults applied.
    status, answer, _ = execute(bridge, "mail", state, controls={"subject": "Servus"})
    assert (status, answer["outputs"]["subject"]) == (200, "Servus")


W = "Workflow with id: `every-type`"
INVALID_STATE = f"{W} has an invalid state. Step with id:"
SIG = "in the `novu-signature` header"
ERRORS: list[tuple[str, dict[str, Any], int, str, str]] = [
    (
        "unknown action",
        {"method": "GET", "query": {"action": "nope"}},
        400,
        "InvalidActionError",
        "Invalid query string: `action`=`nope`. Please use one of `discover`, `health-check`",
    ),
    (
        "GET action by POST",
        {"method": "POST", "query": {"action": "discover"}, "body": {}},
        400,
        "InvalidActionError",
        "Invalid query string: `action`=`discover`. Please use one of `execute`",
    ),
    (
        "method",
        {"method": "PUT", "query": {"action": "discover"}},
        405,
        "MethodNotAllowedError",
        "Method not allowed. Please use one of `POST`, `GET`, `OPTIONS`",
    ),
    (
        "unknown workflow",
        {"query": {"action": "execute", "workflowId": "nope"}, "body": {"payload": {}}},
        404,
        "WorkflowNotFoundError",
        "Workflow with id: `nope` does not exist. Please provide a valid id.",
    ),
    (
        "payload missing",
        {"body": {"state": [], "controls": {}}},
        400,
        "ExecutionEventPayloadInvalidError",
        f"{W} has invalid `payload`. Please provide the correct event payload.",
    ),
    (
        "payload invalid",
        {"body": {"payload": {"n": "x"}, "state": [], "controls": {}}},
        400,
        "ExecutionEventPayloadInvalidError",
        f"{W} has invalid `payload`. Please provide the correct event payload.",
    ),
    (
        "state missing a prior step",
        {"step": "mail", "body": {"payload": {}, "state": [], "controls": {}}},
        400,
        "ExecutionStateCorruptError",
        f"{W} has a corrupt state. Step with id: `inbox` does not exist. "
        "Please provide the missing state.",
    ),
    (
        "an in_app's outputs sent back as its result",
        {
            "step": "wait",
            "body": {
                "payload": {},
                "state": [{"stepId": "inbox", "outputs": {"body": "Hi"}}],
                "controls": {},
            },
        },
        400,
        "ExecutionStateResultInvalidError",
        f"{INVALID_STATE} `inbox` has invalid result. Please provide the correct step result.",
    ),
    (
        # Novu checks the target's controls only, so its message names the step instead.
        "controls not an object",
        {"step": "inbox", "body": {"payload": {}, "state": [], "controls": []}},
        400,
        "ExecutionStateControlInvalidError",
        f"{W} has invalid `controls`: must be an object",
    ),
    (
        "controls against the step's schema",
        {
            "query": {**EXECUTE, "workflowId": "every-type", "stepId": "mail"},
            "body": {
                "payload": {},
                "state": [
                    {"stepId": "inbox", "outputs": UNREAD},
                    {"stepId": "wait", "outputs": {"duration": 1}},
                    {"stepId": "score", "outputs": {"score": 1}},
                ],
                "controls": {"subject": 5},
            },
        },
        400,
        "ExecutionStateControlInvalidError",
        f"{INVALID_STATE} `mail` has invalid `controls`. Please provide the correct step controls.",
    ),
    (
        "outputs against the step's schema",
        {"workflow": "faulty", "step": "empty-subject", "body": {"payload": {}, "state": []}},
        400,
        "ExecutionStateOutputInvalidError",
        "Workflow with id: `faulty` has an invalid state. Step with id: `empty-subject` has "
        "invalid output. Please provide the correct step output.",
    ),
    (
        "a resolver that throws",
        {
            "workflow": "faulty",
            "step": "throws",
            "body": {"payload": {}, "state": [{"stepId": "empty-subject", "outputs": {}}]},
        },
        502,
        "StepExecutionFailedError",
        "Failed to execute Step with id: `throws`: ZeroDivisionError: division by zero",
    ),
    (
        "a duplicate step id",
        {
            "workflow": "faulty",
            "step": "nope",
            "body": {
                "payload": {},
                "state": [{"stepId": s, "outputs": {}} for s in ("empty-subject", "throws")]
                + [{"stepId": "twice", "outputs": {}}],
            },
        },
        409,
        "StepAlreadyExistsError",
        "Workflow with id: `faulty` has a duplicate step id: `twice`",
    ),
    (
        "an exception outside any step",
        {"workflow": "crash", "body": {"payload": {}, "state": []}},
        500,
        "BridgeError",
        "Unknown BridgeError: RuntimeError: bug outside any step",
    ),
    (
        "no signature",
        {"header": None},
        401,
        "SignatureNotFoundError",
        f"Signature not found. Please provide a signature {SIG}",
    ),
    (
        "signature without t",
        {"header": "v1=abc"},
        401,
        "SignatureInvalidError",
        f"Signature is invalid. Please provide a valid signature {SIG}",
    ),
    (
        "signature in seconds",
        {"header": f"t={int(time.time())},v1=abc"},
        401,
        "SignatureExpiredError",
        f"Signature expired. Please provide a signature with a timestamp no older than 5 "
        f"minutes {SIG}",
    ),
    (
        "signature by another key",
        # Signed when the test runs, not at collection: it must not expire meanwhile.
        {"header": lambda: signature_header("sk_other", canonical_json({"payload": {}}))},
        401,
        "SignatureMismatchError",
        "Signature does not match the expected signature. Please ensure the signature "
        "provided in the `novu-signature` header is correct and try again.",
    ),
]


@pytest.mark.parametrize(
    ("request_", "status", "code", "message"),
    [case[1:] for case in ERRORS],
    ids=[case[0] for case in ERRORS],
)
def test_errors_match_novus_status_code_and_body(
    bridge: Bridge, request_: dict[str, Any], status: int, code: str, message: str
) -> None:
    workflow_id = request_.get("workflow", "every-type")
    query = request_.get("query") or {
        "action": "execute",
        "workflowId": workflow_id,
        **({"stepId": request_["step"]} if "step" in request_ else {}),
    }
    body = request_.get("body", {"payload": {}} if "header" in request_ else None)
    header = request_.get("header", "sign")
    answered, answer, headers = call(
        bridge,
        request_.get("method", "POST"),
        query,
        body,
        header() if callable(header) else header,
    )
    assert (answered, answer["code"], answer["message"]) == (status, code, message)
    assert set(answer) <= {"message", "code", "data"}
    assert headers["novu-framework-version"] == "2024-06-26"


def test_problem_details_and_corrupt_state_data_are_novus_shapes(bridge: Bridge) -> None:
    status, answer, _ = execute(bridge, "mail", [], payload={"n": "x"})
    assert answer["data"] == [{"path": "/n", "message": "'x' is not of type 'number'"}]
    status, answer, _ = execute(bridge, "mail", [])
    assert answer["data"] == {"workflowId": "every-type", "stepId": "inbox"}
    status, answer, _ = execute(bridge, None, [], payload=None)
    assert answer["data"] == {"message": "Event `payload` is required"}


def test_a_strict_bridge_without_a_key_answers_signing_key_not_found() -> None:
    keyless = Bridge(workflows=[every_type], strict=True)
    status, answer, _ = call(keyless, "GET", {"action": "discover"})
    assert (status, answer["code"]) == (401, "SigningKeyNotFoundError")
    assert answer["message"] == (
        "Signature key not found. Please provide a valid key in the Client constructor "
        "`config.secretKey`"
    )
