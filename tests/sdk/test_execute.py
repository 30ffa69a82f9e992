from __future__ import annotations

import contextlib
from collections import ChainMap, UserDict
from types import MappingProxyType
from typing import Any

import pydantic
import pytest
from pydantic.alias_generators import to_camel

from workflows.sdk import (
    Context,
    ExecutionEventPayloadInvalidError,
    ExecutionStateControlInvalidError,
    ExecutionStateCorruptError,
    ExecutionStateOrderError,
    ExecutionStateOutputInvalidError,
    ExecutionStateResultInvalidError,
    StepAlreadyExistsError,
    StepExecutionFailedError,
    Workflow,
    workflow,
)
from workflows.sdk.schemas import Schema, SchemaUnusable

from .helpers import READ, UNREAD, drive, entry, execute_body

PAYLOAD_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "delaySeconds": {"type": "integer", "default": 60},
    },
    "required": ["name"],
}


def make_welcome(calls: list[str]) -> Workflow:
    """inbox -> wait -> reminder (skipped once the in-app message was read)."""

    @workflow("welcome", payload_schema=PAYLOAD_SCHEMA)
    def welcome(ctx: Context) -> None:
        def inbox_content() -> dict[str, Any]:
            calls.append("inbox")
            return {"body": f"Hi {ctx.payload['name']}"}

        def wait_for() -> dict[str, Any]:
            calls.append("wait")
            return {"amount": ctx.payload["delaySeconds"], "unit": "seconds"}

        def reminder_content() -> dict[str, Any]:
            calls.append("reminder")
            return {"subject": "You have a message", "body": "..."}

        inbox = ctx.step.in_app("inbox", inbox_content)
        ctx.step.delay("wait", wait_for)
        ctx.step.email("reminder", reminder_content, skip=lambda controls: inbox["read"])

    return welcome


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def welcome(calls: list[str]) -> Workflow:
    return make_welcome(calls)


def test_first_step_is_executed_and_returned(welcome: Workflow, calls: list[str]) -> None:
    response = welcome.execute(execute_body({"name": "Ada"}, []))
    assert set(response) == {
        "outputs",
        "providers",
        "options",
        "metadata",
        "stepId",
        "type",
        "done",
    }
    assert response["stepId"] == "inbox"
    assert response["type"] == "in_app"
    assert response["done"] is False
    assert response["outputs"] == {"body": "Hi Ada"}
    assert response["options"] == {"skip": False}
    assert response["metadata"]["status"] == "success"
    assert response["metadata"]["error"] is False
    assert response["metadata"]["duration"] >= 0
    assert calls == ["inbox"]


def test_replayed_step_does_not_run_its_resolver(welcome: Workflow, calls: list[str]) -> None:
    response = welcome.execute(execute_body({"name": "Ada"}, [entry("inbox", UNREAD)]))
    assert response["stepId"] == "wait"
    assert response["outputs"] == {"amount": 60, "unit": "seconds"}  # payload default applied
    assert calls == ["wait"]


def test_skipped_step_has_no_outputs_and_is_replayed(welcome: Workflow, calls: list[str]) -> None:
    state = [entry("inbox", READ), entry("wait", {"duration": 60_000})]
    response = welcome.execute(execute_body({"name": "Ada"}, state))
    assert response["stepId"] == "reminder"
    assert response["options"] == {"skip": True}
    assert response["outputs"] == {}
    assert response["done"] is False
    assert calls == []

    done = welcome.execute(execute_body({"name": "Ada"}, [*state, entry("reminder")]))
    assert done["done"] is True


def test_a_skipped_custom_step_with_an_output_schema_lets_the_next_step_run() -> None:
    score_schema = {"type": "object", "properties": {"score": {"type": "number"}}}

    @workflow("scored")
    def scored(ctx: Context) -> None:
        score = ctx.step.custom(
            "score",
            lambda: {"score": 7},
            skip=lambda controls: True,
            output_schema={**score_schema, "required": ["score"]},
        )
        ctx.step.email("mail", lambda: {"subject": "Hi", "body": f"{score.get('score', '-')}"})

    first = scored.execute(execute_body({}, []))
    assert (first["stepId"], first["options"]) == ("score", {"skip": True})

    skipped = {"stepId": "score", "outputs": {}, "state": {"status": "skipped"}}
    mail = scored.execute(execute_body({}, [skipped]))
    assert (mail["stepId"], mail["outputs"]["body"]) == ("mail", "-")


def test_a_skipped_in_app_step_gives_the_code_the_result_novu_sends_for_it(
    welcome: Workflow, calls: list[str]
) -> None:
    """Novu's server records a skipped in-app step with the fallback result (unseen,
    unread, no dates) and norm's with what it stored: a skipped step's outputs reach the
    code as sent, unchecked. Read as `{}`, `inbox["read"]` in the reminder's skip
    condition was a KeyError, and every execute after a skipped in-app message a 502."""
    skipped = {"stepId": "inbox", "outputs": UNREAD, "state": {"status": "skipped"}}
    state = [skipped, entry("wait", {"duration": 60_000})]
    response = welcome.execute(execute_body({"name": "Ada"}, state))
    assert (response["stepId"], response["options"]) == ("reminder", {"skip": False})
    assert calls == ["reminder"]


def test_unread_message_sends_the_reminder(welcome: Workflow) -> None:
    state = [entry("inbox", UNREAD), entry("wait", {"duration": 60_000})]
    response = welcome.execute(execute_body({"name": "Ada"}, state))
    assert response["options"] == {"skip": False}
    assert response["outputs"] == {"subject": "You have a message", "body": "..."}


def test_done_when_every_reached_step_is_in_state(welcome: Workflow, calls: list[str]) -> None:
    state = [entry("inbox", UNREAD), entry("wait", {"duration": 1}), entry("reminder")]
    response = welcome.execute(execute_body({"name": "Ada"}, state))
    expected = {
        "done": True,
        "stepId": None,
        "type": None,
        "outputs": {},
        "providers": {},
        "options": {"skip": False},
    }
    assert {key: response[key] for key in expected} == expected
    assert calls == []


def test_branching_follows_the_payload() -> None:
    @workflow("vip", payload_schema={"type": "object", "properties": {"vip": {"type": "boolean"}}})
    def vip(ctx: Context) -> None:
        ctx.step.in_app("hello", lambda: {"body": "hello"})
        if ctx.payload.get("vip"):
            ctx.step.email("vip-email", lambda: {"subject": "VIP", "body": "..."})
        else:
            ctx.step.sms("sms", lambda: {"body": "hi"})
            ctx.step.push("push", lambda: {"subject": "hi", "body": "there"})

    assert drive(vip, {"vip": True}) == ["hello", "vip-email"]
    assert drive(vip, {"vip": False}) == ["hello", "sms", "push"]


def test_state_in_another_order_is_an_order_error(welcome: Workflow) -> None:
    state = [entry("wait", {"duration": 1}), entry("inbox", UNREAD)]
    with pytest.raises(ExecutionStateOrderError) as exc:
        welcome.execute(execute_body({"name": "Ada"}, state))
    assert exc.value.status == 400
    assert exc.value.data == {"expected": ["inbox"], "received": ["wait", "inbox"]}


def test_renamed_step_is_an_order_error(welcome: Workflow) -> None:
    state = [entry("inbox", UNREAD), entry("pause", {"duration": 1})]
    with pytest.raises(ExecutionStateOrderError) as exc:
        welcome.execute(execute_body({"name": "Ada"}, state))
    assert exc.value.data == {"expected": ["inbox", "wait"], "received": ["inbox", "pause"]}


def test_state_longer_than_the_code_is_an_order_error(welcome: Workflow) -> None:
    state = [
        entry("inbox", UNREAD),
        entry("wait", {"duration": 1}),
        entry("reminder"),
        entry("removed"),
    ]
    with pytest.raises(ExecutionStateOrderError) as exc:
        welcome.execute(execute_body({"name": "Ada"}, state))
    assert exc.value.data == {
        "expected": ["inbox", "wait", "reminder"],
        "received": ["inbox", "wait", "reminder", "removed"],
    }


def test_with_step_id_missing_prior_state_is_corrupt(welcome: Workflow, calls: list[str]) -> None:
    body = execute_body({"name": "Ada"}, [entry("inbox", UNREAD)])
    with pytest.raises(ExecutionStateCorruptError) as exc:
        welcome.execute(body, step_id="reminder")
    assert exc.value.status == 400
    assert exc.value.data == {"workflowId": "welcome", "stepId": "wait"}
    assert calls == []


def test_with_step_id_state_is_looked_up_by_id(welcome: Workflow, calls: list[str]) -> None:
    # Novu sends the newest first, may add a `trigger` pseudo-step; the first match wins.
    state = [
        entry("wait", {"duration": 1}),
        entry("inbox", READ),
        entry("inbox", UNREAD),
        entry("trigger", {"name": "Ada"}),
    ]
    response = welcome.execute(execute_body({"name": "Ada"}, state), step_id="reminder")
    assert response["stepId"] == "reminder"
    assert response["options"] == {"skip": True}
    assert calls == []


def test_with_step_id_an_earlier_step_can_be_re_executed(welcome: Workflow) -> None:
    state = [entry("wait", {"duration": 1}), entry("inbox", UNREAD)]
    response = welcome.execute(execute_body({"name": "Ada"}, state), step_id="inbox")
    assert (response["stepId"], response["outputs"]) == ("inbox", {"body": "Hi Ada"})


def test_with_an_unreached_step_id_behaves_like_novu(welcome: Workflow) -> None:
    complete = [entry("inbox", UNREAD), entry("wait", {"duration": 1}), entry("reminder")]
    response = welcome.execute(execute_body({"name": "Ada"}, complete), step_id="nope")
    assert response["outputs"] == {} and response["done"] is True

    with pytest.raises(ExecutionStateCorruptError) as exc:
        welcome.execute(execute_body({"name": "Ada"}, complete[:1]), step_id="nope")
    assert exc.value.data["stepId"] == "wait"


def test_in_app_result_needs_all_four_keys(welcome: Workflow) -> None:
    state = [entry("inbox", {"seen": True, "read": True})]
    with pytest.raises(ExecutionStateResultInvalidError) as exc:
        welcome.execute(execute_body({"name": "Ada"}, state))
    assert exc.value.status == 400
    assert "lastSeenDate" in str(exc.value.data)


def test_delay_result_needs_a_duration(welcome: Workflow) -> None:
    state = [entry("inbox", UNREAD), entry("wait", {})]
    with pytest.raises(ExecutionStateResultInvalidError):
        welcome.execute(execute_body({"name": "Ada"}, state))


def weekly(outputs: Any) -> Workflow:
    @workflow("weekly")
    def weekly(ctx: Context) -> None:
        ctx.step.delay("monday", lambda: outputs)
        ctx.step.email("digest", lambda: {"subject": "Your week", "body": "..."})

    return weekly


@pytest.mark.parametrize(
    "outputs", [{"type": "timed", "cron": "0 9 * * MON"}, {"cron": "0 9 * * MON"}]
)
def test_a_delay_resolver_returns_a_timed_delay_as_its_cron(outputs: dict[str, Any]) -> None:
    """norm's server waits until the cron next fires; the SDK hands the outputs on as
    Novu's does, and discover shows the timed kind in the delay's output schema."""
    wf = weekly(outputs)

    response = wf.execute(execute_body({}, []))
    assert (response["stepId"], response["type"], response["outputs"]) == (
        "monday",
        "delay",
        outputs,
    )
    # Its result, the time it waited, replays as a regular delay's does.
    response = wf.execute(execute_body({}, [entry("monday", {"duration": 3_600_000})]))
    assert response["stepId"] == "digest"
    kinds = wf.describe()["steps"][0]["outputs"]["schema"]["oneOf"]
    timed = next(kind for kind in kinds if "cron" in kind["properties"])
    assert (timed["properties"]["type"], timed["properties"]["cron"], timed["required"]) == (
        {"const": "timed"},
        {"type": "string"},
        ["cron"],
    )


@pytest.mark.parametrize(
    "outputs",
    [{"type": "timed", "cron": 900}, {"type": "timed"}, {"type": "timed", "amount": 1}],
)
def test_a_timed_delay_without_a_cron_string_is_an_output_error(outputs: dict[str, Any]) -> None:
    with pytest.raises(ExecutionStateOutputInvalidError):
        weekly(outputs).execute(execute_body({}, []))


@pytest.mark.parametrize(
    ("outputs", "path", "message"),
    [
        (
            {"amount": 2, "unit": "second"},
            "/unit",
            "'second' is not one of ['seconds', 'minutes', 'hours', 'days', 'weeks', 'months']",
        ),
        ({"amount": "2", "unit": "seconds"}, "/amount", "'2' is not of type 'number'"),
        ({"type": "timed", "cron": 900}, "/cron", "900 is not of type 'string'"),
    ],
)
def test_a_delay_output_error_names_the_field_and_what_it_takes(
    outputs: dict[str, Any], path: str, message: str
) -> None:
    """A delay's outputs are one of regular, timed or dynamic: a unit misspelt failed the
    step with "{...} is not valid under any of the given schemas", naming no field."""
    with pytest.raises(ExecutionStateOutputInvalidError) as exc:
        weekly(outputs).execute(execute_body({}, []))
    assert exc.value.data == [{"path": path, "message": message}]


def test_results_are_validated_and_extra_keys_stripped() -> None:
    seen: list[dict[str, Any]] = []

    @workflow("results")
    def results(ctx: Context) -> None:
        seen.append(ctx.step.email("mail", lambda: {"subject": "s", "body": "b"}))
        seen.append(ctx.step.in_app("inbox", lambda: {"body": "b"}))
        ctx.step.sms("sms", lambda: {"body": "b"})

    state = [entry("mail", {"messageId": "x"}), entry("inbox", UNREAD | {"extra": 1})]
    results.execute(execute_body({}, state))
    assert seen == [{}, UNREAD]


def test_payload_is_validated(welcome: Workflow) -> None:
    with pytest.raises(ExecutionEventPayloadInvalidError) as exc:
        welcome.execute(execute_body({"name": 5, "delaySeconds": "soon"}, []))
    assert exc.value.status == 400
    assert {problem["path"] for problem in exc.value.data} == {"/name", "/delaySeconds"}

    with pytest.raises(ExecutionEventPayloadInvalidError) as exc:
        welcome.execute(execute_body({}, []))
    assert "'name' is a required property" in exc.value.data[0]["message"]


def test_payload_is_required(welcome: Workflow) -> None:
    with pytest.raises(ExecutionEventPayloadInvalidError):
        welcome.execute({"state": [], "controls": {}})


def test_state_must_be_a_list_of_entries(welcome: Workflow) -> None:
    with pytest.raises(ExecutionStateCorruptError):
        welcome.execute({"payload": {"name": "Ada"}, "state": [{"outputs": {}}], "controls": {}})


def test_empty_email_subject_is_an_output_error() -> None:
    @workflow("bad-email")
    def bad_email(ctx: Context) -> None:
        ctx.step.email("mail", lambda: {"subject": "", "body": "b"})

    with pytest.raises(ExecutionStateOutputInvalidError) as exc:
        bad_email.execute(execute_body({}, []))
    assert exc.value.status == 400
    assert exc.value.data[0]["path"] == "/subject"


@pytest.mark.parametrize(
    ("step_type", "outputs"),
    [
        ("sms", {}),
        ("push", {"subject": "s"}),
        ("chat", {}),
        ("in_app", {}),
        ("in_app", {"avatar": "https://example.com/a.png"}),
    ],
)
def test_a_channel_step_without_its_content_is_an_output_error(
    step_type: str, outputs: dict[str, Any]
) -> None:
    """A resolver that returns no content for its channel (an SMS without a body, an
    in-app message without a subject or a body) is refused as Novu's SDK refuses it: taken,
    norm would send an empty message."""

    @workflow("contentless")
    def contentless(ctx: Context) -> None:
        getattr(ctx.step, step_type)("step", lambda: outputs)

    with pytest.raises(ExecutionStateOutputInvalidError):
        contentless.execute(execute_body({}, []))


def test_outputs_drop_unknown_keys() -> None:
    @workflow("extra")
    def extra(ctx: Context) -> None:
        ctx.step.sms("sms", lambda: {"body": "b", "unknown": 1})

    assert extra.execute(execute_body({}, []))["outputs"] == {"body": "b"}


def test_resolver_exception_is_a_step_execution_failure() -> None:
    @workflow("boom")
    def boom(ctx: Context) -> None:
        ctx.step.in_app("inbox", lambda: {"body": str(1 / 0)})

    with pytest.raises(StepExecutionFailedError) as exc:
        boom.execute(execute_body({}, []))
    assert exc.value.status == 502
    assert exc.value.message == (
        "Failed to execute Step with id: `inbox`: ZeroDivisionError: division by zero"
    )


def _check(order: dict[str, Any]) -> dict[str, Any]:
    if not order.get("paid"):
        raise ValueError
    return {"body": "paid"}


@pytest.mark.parametrize(
    ("resolver", "reason"),
    [
        (lambda: _check({}), "ValueError"),  # its message was empty
        (lambda: {"body": {}["orderId"]}, "KeyError: 'orderId'"),  # was only "'orderId'"
        (lambda: _check(None), "AttributeError: 'NoneType' object has no attribute 'get'"),
    ],
)
def test_a_resolver_exception_is_told_by_its_type_and_message(resolver: Any, reason: str) -> None:
    @workflow("told")
    def told(ctx: Context) -> None:
        ctx.step.sms("sms", resolver)

    with pytest.raises(StepExecutionFailedError) as exc:
        told.execute(execute_body({}, []))
    assert exc.value.message == f"Failed to execute Step with id: `sms`: {reason}"


def test_user_code_cannot_swallow_framework_errors(calls: list[str]) -> None:
    @workflow("swallow")
    def swallow(ctx: Context) -> None:
        with contextlib.suppress(Exception):  # a user's catch-all around a step call
            ctx.step.in_app("inbox", lambda: {"body": "b"})
        ctx.step.sms("sms", lambda: calls.append("sms") or {"body": "b"})

    with pytest.raises(ExecutionStateResultInvalidError):
        swallow.execute(execute_body({}, [entry("inbox", {})]))
    assert calls == []


def test_a_framework_error_the_code_swallows_and_returns_past_is_still_answered() -> None:
    """The same catch-all around the last step call, after which the function returns:
    answered "done", the notification would complete on a state the SDK refused."""

    @workflow("swallow-last")
    def swallow_last(ctx: Context) -> None:
        with contextlib.suppress(Exception):
            ctx.step.in_app("inbox", lambda: {"body": "b"})

    with pytest.raises(ExecutionStateResultInvalidError):
        swallow_last.execute(execute_body({}, [entry("inbox", {})]))


def test_a_framework_error_the_code_raises_as_its_own_is_answered_as_the_framework_error() -> None:
    """Re-raised as the user's exception, it would be a 500, which norm retries to no avail,
    rather than the 400 that names the step whose state is wrong."""

    @workflow("wrapping")
    def wrapping(ctx: Context) -> None:
        try:
            ctx.step.in_app("inbox", lambda: {"body": "b"})
        except Exception as exc:
            raise RuntimeError("could not notify") from exc

    with pytest.raises(ExecutionStateResultInvalidError):
        wrapping.execute(execute_body({}, [entry("inbox", {})]))


def test_a_bare_except_around_a_step_call_does_not_run_the_steps_after_it(
    calls: list[str],
) -> None:
    """A bare `except:` also catches the SDK's unwinding once the step ran (a
    BaseException): the code goes on to the next step call, which must unwind again, not
    run nor fail, and the step that ran is the answer."""

    @workflow("bare")
    def bare(ctx: Context) -> None:
        with contextlib.suppress(BaseException):  # as a bare `except: pass` does
            ctx.step.sms("first", lambda: calls.append("first") or {"body": "1"})
        ctx.step.sms("second", lambda: calls.append("second") or {"body": "2"})

    answer = bare.execute(execute_body({}, []))
    assert (answer["stepId"], answer["outputs"], answer["done"]) == ("first", {"body": "1"}, False)
    assert calls == ["first"]


def test_an_except_exception_around_a_step_call_runs_no_code_after_the_step(
    calls: list[str],
) -> None:
    """The SDK stops the workflow function once its step ran by raising what no `except
    Exception` catches: caught there, the code after the step call (here a write of
    the author's own) ran on every execute of the step, before the step was sent."""

    @workflow("guarded")
    def guarded(ctx: Context) -> None:
        try:
            ctx.step.sms("first", lambda: calls.append("first") or {"body": "1"})
        except Exception:
            calls.append("handler")
        calls.append("after first")
        ctx.step.sms("second", lambda: calls.append("second") or {"body": "2"})

    answer = guarded.execute(execute_body({}, []))
    assert (answer["stepId"], answer["done"]) == ("first", False)
    assert calls == ["first"]


@pytest.mark.parametrize("held", [1, "2025-01-01T10:00:00Z", ["unsubscribed"]])
def test_a_skip_condition_that_returns_a_truthy_value_skips_the_step(held: object) -> None:
    """Novu's SDK skips when the condition's value is truthy (`if (await shouldSkip(...))`),
    so a condition returning the payload's `unsubscribedAt` skips, not only one returning
    True."""

    @workflow("truthy")
    def truthy(ctx: Context) -> None:
        ctx.step.sms("sms", lambda: {"body": "b"}, skip=lambda: held)

    assert truthy.execute(execute_body({}, []))["options"] == {"skip": True}


def test_a_skip_given_as_a_bool_skips_the_step_without_running_its_resolver(
    calls: list[str],
) -> None:
    """`skip=True` (a `Skip` may be a bool: `skip=not settings.SMS_ENABLED`) skips as a
    condition returning True does; read only when callable, the SMS went out anyway.
    `skip=False` runs the step."""

    @workflow("flagged")
    def flagged(ctx: Context) -> None:
        ctx.step.sms("off", lambda: calls.append("off") or {"body": "b"}, skip=True)
        ctx.step.sms("on", lambda: calls.append("on") or {"body": "b"}, skip=False)

    answer = flagged.execute(execute_body({}, []))
    assert (answer["stepId"], answer["outputs"], answer["options"]) == ("off", {}, {"skip": True})
    assert calls == []
    assert drive(flagged, {}) == ["off:skipped", "on"]
    assert calls == ["on"]


def test_duplicate_step_ids_are_rejected() -> None:
    @workflow("twice")
    def twice(ctx: Context) -> None:
        ctx.step.sms("sms", lambda: {"body": "b"})
        ctx.step.sms("sms", lambda: {"body": "b"})

    with pytest.raises(StepAlreadyExistsError):
        twice.execute(execute_body({}, [entry("sms")]))


def test_controls_get_defaults_and_reach_resolver_and_skip() -> None:
    schema = {
        "type": "object",
        "properties": {
            "greeting": {"type": "string", "default": "Hello"},
            "mute": {"type": "boolean"},
        },
        "additionalProperties": False,
    }

    @workflow("controlled")
    def controlled(ctx: Context) -> None:
        ctx.step.in_app(
            "inbox",
            lambda controls: {"body": controls["greeting"]},
            skip=lambda controls: controls.get("mute", False),
            control_schema=schema,
        )

    response = controlled.execute(execute_body({}, [], controls={"stray": 1}))
    assert response["outputs"] == {"body": "Hello"}
    muted = controlled.execute(execute_body({}, [], controls={"mute": True}))
    assert muted["options"] == {"skip": True}
    with pytest.raises(ExecutionStateControlInvalidError):
        controlled.execute(execute_body({}, [], controls={"greeting": 5}))


def test_controls_no_schema_declares_reach_no_code_as_with_novu() -> None:
    """Novu's SDK (2.13.2, run against the same requests) drops every control a step does
    not declare, and gives the workflow function `controls: {}`, the workflow's defaults
    not applied: a workflow written for norm must not read values there that it will
    not get from Novu's."""
    seen: dict[str, Any] = {}

    @workflow(
        "undeclared",
        control_schema={"type": "object", "properties": {"tone": {"default": "warm"}}},
    )
    def undeclared(ctx: Context) -> None:
        seen["workflow"] = ctx.controls

        def content(controls: dict[str, Any]) -> dict[str, Any]:
            seen["resolver"] = controls
            return {"body": "b"}

        def quiet(controls: dict[str, Any]) -> bool:
            seen["skip"] = controls
            return False

        ctx.step.in_app("inbox", content, skip=quiet)

    body = execute_body({}, [], controls={"stray": 1}, stepControls={"inbox": {"stray": 2}})
    assert undeclared.execute(body)["outputs"] == {"body": "b"}
    assert seen == {"workflow": {}, "resolver": {}, "skip": {}}
    assert undeclared.execute(execute_body({}, [], controls={"stray": 1}))["outputs"]
    assert seen["resolver"] == {}
    described = undeclared.describe()
    assert described["steps"][0]["controls"] == {
        "schema": {
            "type": "object",
            "properties": {},
            "required": [],
            "additionalProperties": False,
        }
    }


def test_a_resolver_binding_a_loop_variable_by_default_keeps_its_value() -> None:
    """`lambda name=name: ...` is how Python binds a loop variable (ruff's B023 asks for
    it): the SDK passed the controls in its place, so each email went out as "Hi {}" and
    a skip condition written so never skipped. Only a parameter without a default gets
    the controls."""

    @workflow("per-name")
    def per_name(ctx: Context) -> None:
        for n, name in enumerate(ctx.payload.get("names", [])):
            ctx.step.email(
                f"mail-{n}",
                lambda name=name: {"subject": f"Hi {name}", "body": "b"},
                skip=lambda name=name: name == "Bob",
            )

    payload = {"names": ["Ada", "Bob"]}
    first = per_name.execute(execute_body(payload, []))
    assert (first["stepId"], first["outputs"]["subject"]) == ("mail-0", "Hi Ada")
    assert drive(per_name, payload) == ["mail-0", "mail-1:skipped"]

    @workflow("controlled")
    def controlled(ctx: Context) -> None:
        def content(controls: dict[str, Any], suffix: str = "!") -> dict[str, Any]:
            return {"subject": controls["greeting"] + suffix, "body": "b"}

        greeting = {"type": "object", "properties": {"greeting": {"type": "string"}}}
        ctx.step.email("mail", content, control_schema=greeting)

    answer = controlled.execute(execute_body({}, [], controls={"greeting": "Hello"}))
    assert answer["outputs"]["subject"] == "Hello!"


class OrderPayload(pydantic.BaseModel):
    order_id: str
    quantity: int = 1


def test_pydantic_model_as_payload_schema() -> None:
    @workflow("pydantic", payload_schema=OrderPayload)
    def order(ctx: Context) -> None:
        ctx.step.sms(
            "sms", lambda: {"body": f"{ctx.payload['quantity']} x {ctx.payload['order_id']}"}
        )

    response = order.execute(execute_body({"order_id": "A1"}, []))
    assert response["outputs"] == {"body": "1 x A1"}
    with pytest.raises(ExecutionEventPayloadInvalidError) as exc:
        order.execute(execute_body({"quantity": "many"}, []))
    assert {problem["path"] for problem in exc.value.data} == {"/order_id", "/quantity"}
    assert order.describe()["payload"]["schema"]["required"] == ["order_id"]


class CamelModel(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(alias_generator=to_camel)


class CartPayload(CamelModel):
    cart_id: str
    first_name: str = "there"


class CartTotal(CamelModel):
    item_count: int


def test_a_pydantic_model_with_aliases_gives_values_by_the_names_its_schema_lists() -> None:
    """A model with aliases (`alias_generator=to_camel`, for a camelCase API) lists them in
    discover, `cartId`, and takes them, but its values were given by field name: the
    workflow read `ctx.payload["cart_id"]` where discovery gave `firstName`, and a custom
    step answered `{"item_count": 3}`, which its replay then refused ("/itemCount: Field
    required"): every notification failed at the step after it."""
    seen: list[dict[str, Any]] = []

    @workflow("cart", payload_schema=CartPayload)
    def cart(ctx: Context) -> None:
        seen.append(ctx.payload)
        total = ctx.step.custom("total", lambda: {"itemCount": 3}, output_schema=CartTotal)
        ctx.step.sms(
            "sms", lambda: {"body": f"{total['itemCount']} items in {ctx.payload['cartId']}"}
        )

    assert set(cart.describe()["payload"]["schema"]["properties"]) == {"cartId", "firstName"}
    first = cart.execute(execute_body({"cartId": "c1"}, []))
    assert first["outputs"] == {"itemCount": 3}
    # Discovery's payload, then the execute's: by the same names.
    assert seen == [{"firstName": "there"}, {"cartId": "c1", "firstName": "there"}]
    second = cart.execute(execute_body({"cartId": "c1"}, [entry("total", first["outputs"])]))
    assert second["outputs"] == {"body": "3 items in c1"}


class StrictPayload(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    order_id: str


class StrictScore(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    score: int


def test_a_pydantic_model_forbidding_extra_keys_drops_them_as_its_schema_says() -> None:
    """`extra="forbid"` lists `additionalProperties: false`, under which Novu's SDK drops a
    key the schema does not declare, and norm's trigger API takes a payload with one for
    that reason; the model refused it ("Extra inputs are not permitted"), so every
    notification of such a trigger failed at the bridge, and a custom step whose resolver
    gave one more key failed too. Such keys are dropped, as for a JSON Schema."""
    seen: list[dict[str, Any]] = []

    @workflow("strict", payload_schema=StrictPayload)
    def strict(ctx: Context) -> None:
        seen.append(ctx.payload)
        ctx.step.custom("score", lambda: {"score": 1, "debug": "x"}, output_schema=StrictScore)

    payload = {"order_id": "A1", "source": "checkout"}
    assert Schema.of(strict.describe()["payload"]["schema"]).errors(payload) == []
    answer = strict.execute(execute_body(payload, []))
    assert answer["outputs"] == {"score": 1}
    assert seen[-1] == {"order_id": "A1"}


def test_a_pydantic_model_instance_given_for_its_class_is_no_schema() -> None:
    """`OrderPayload(order_id="A1")` for `OrderPayload` was read as the dict of its
    fields, {"order_id": "A1", "quantity": 1}: a schema that checks nothing."""
    instance = OrderPayload(order_id="A1")
    with pytest.raises(SchemaUnusable, match="a schema is a OrderPayload instance, not a JSON"):
        Workflow("w", lambda ctx: None, payload_schema=instance)  # type: ignore[arg-type]

    @workflow("instance")
    def instance_controls(ctx: Context) -> None:
        ctx.step.sms("sms", lambda: {"body": "b"}, control_schema=instance)  # type: ignore[arg-type]

    with pytest.raises(StepExecutionFailedError) as exc:
        instance_controls.execute(execute_body({}, [], controls={"quantity": "many"}))
    assert exc.value.message == (
        "Failed to execute Step with id: `sms`: its control schema is a OrderPayload "
        "instance, not a JSON Schema (a dict) or a pydantic model class"
    )


def test_custom_step_output_schema_and_result() -> None:
    seen: list[dict[str, Any]] = []
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}

    @workflow("custom")
    def custom(ctx: Context) -> None:
        seen.append(ctx.step.custom("score", lambda: {"score": 3}, output_schema=schema))
        ctx.step.sms("sms", lambda: {"body": "b"})

    assert custom.execute(execute_body({}, []))["outputs"] == {"score": 3}
    custom.execute(execute_body({}, [entry("score", {"score": 7})]))
    assert seen == [{"score": 7}]
    with pytest.raises(ExecutionStateResultInvalidError):
        custom.execute(execute_body({}, [entry("score", {})]))


def _email() -> dict[str, Any]:
    return {"subject": "s", "body": "b"}


@pytest.mark.parametrize(
    ("declare", "problem"),
    [
        (
            lambda ctx: ctx.step.email(5, _email),
            "its id must be a non-empty string, not 5",
        ),
        (
            lambda ctx: ctx.step.email("", _email),
            "its id must be a non-empty string, not ''",
        ),
        (
            lambda ctx: ctx.step.email("mail", _email()),
            "its resolver must be a function returning the step's outputs, not a dict",
        ),
        (
            lambda ctx: ctx.step.email("mail", _email, skip="no"),
            "`skip` must be a bool or a function, not a str",
        ),
        (
            lambda ctx: ctx.step.email("mail", _email, providers=["sendgrid"]),
            "`providers` must map provider ids to functions, not be a list",
        ),
        (
            lambda ctx: ctx.step.email("mail", _email, providers={"sendgrid": {"ip": "x"}}),
            "`providers` must map provider ids to functions: 'sendgrid' maps to a dict",
        ),
    ],
)
def test_a_step_declared_with_arguments_of_the_wrong_kind_fails_saying_which(
    declare: Any, problem: str
) -> None:
    # Each ran before, or failed far from the call: the id 5 was answered as step 5 (which
    # norm never matches with the "5" it sends back), "no" skipped the step, a dict as the
    # resolver was "'dict' object is not callable", a list of providers a retried 500.
    @workflow("misdeclared")
    def misdeclared(ctx: Context) -> None:
        declare(ctx)

    with pytest.raises(StepExecutionFailedError) as exc:
        misdeclared.execute(execute_body({}, []))
    assert exc.value.status == 502  # the author's code: neither norm nor Novu retries it
    assert exc.value.message.endswith(f": {problem}")


@pytest.mark.parametrize(
    "make",
    [
        lambda outputs: MappingProxyType(outputs),
        lambda outputs: ChainMap(outputs),
        lambda outputs: UserDict(outputs),
    ],
)
def test_a_resolver_or_provider_override_may_return_any_mapping_as_its_type_says(
    make: Any,
) -> None:
    """`Resolver` returns a Mapping: a read-only or layered one was refused as "{...} is not
    of type 'object'" (JSON Schema's object is a dict), or could not be copied."""

    @workflow("mappings")
    def mappings(ctx: Context) -> None:
        ctx.step.email(
            "mail",
            lambda: make({"subject": "s", "body": "b"}),
            providers={"sendgrid": lambda outputs: make({"ipPoolName": "vip"})},
        )

    answer = mappings.execute(execute_body({}, []))
    assert answer["outputs"] == {"subject": "s", "body": "b"}
    assert answer["providers"] == {"sendgrid": {"ipPoolName": "vip"}}
    assert type(answer["outputs"]) is dict


def test_a_provider_override_taking_two_arguments_gets_the_steps_controls_too() -> None:
    """Novu's SDK calls an override with `{outputs, controls}`, the controls its resolver
    got; norm's passed the outputs only, so an override could not read a control. Both
    now go to one that takes two arguments, the outputs alone to one written for one."""
    schema = {"type": "object", "properties": {"pool": {"type": "string", "default": "main"}}}

    @workflow("overrides")
    def overrides(ctx: Context) -> None:
        def with_controls(outputs: dict[str, Any], controls: dict[str, Any]) -> dict[str, Any]:
            return {"ipPoolName": controls["pool"], "subject": outputs["subject"]}

        tag = "bound"
        ctx.step.email(
            "mail",
            lambda controls: {"subject": "s", "body": "b"},
            control_schema=schema,
            providers={
                "sendgrid": with_controls,
                "ses": lambda outputs: {"subject": outputs["subject"]},
                "mailgun": lambda outputs, tag=tag: {"tag": tag},
                "postmark": lambda *given: {"given": list(given)},
            },
        )

    answer = overrides.execute(execute_body({}, [], controls={"pool": "vip"}))
    assert answer["providers"] == {
        "sendgrid": {"ipPoolName": "vip", "subject": "s"},
        "ses": {"subject": "s"},
        "mailgun": {"tag": "bound"},
        "postmark": {"given": [{"subject": "s", "body": "b"}, {"pool": "vip"}]},
    }
    defaults = overrides.execute(execute_body({}, []))
    assert defaults["providers"]["sendgrid"]["ipPoolName"] == "main"


def test_a_provider_override_taking_no_argument_is_called_with_none() -> None:
    """A resolver or skip condition may take no argument, or keep a default
    (`lambda pool=pool: ...`, a loop's variable bound as ruff's B023 asks); a provider
    override was always passed the outputs: one taking none failed every message
    ("<lambda>() takes 0 positional arguments but 1 was given", a 502), and the outputs
    overwrote a bound default. Each is called with as many arguments as it wants."""

    @workflow("plain-overrides")
    def plain_overrides(ctx: Context) -> None:
        overrides = {"sendgrid": lambda: {"ipPoolName": "transactional"}}
        for provider_id, pool in (("ses", "ses-pool"), ("mailgun", "mg-pool")):
            overrides[provider_id] = lambda pool=pool: {"pool": pool}
        ctx.step.email("mail", lambda: {"subject": "s", "body": "b"}, providers=overrides)

    answer = plain_overrides.execute(execute_body({}, []))
    assert answer["providers"] == {
        "sendgrid": {"ipPoolName": "transactional"},
        "ses": {"pool": "ses-pool"},
        "mailgun": {"pool": "mg-pool"},
    }
