"""Every failure ends on the row that failed with a readable reason, shown by the API:
each test drives the real tasks against a bridge (norm's SDK, or a scripted one) on
loopback."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.db import OperationalError, connection, transaction
from novu_py.models import ActivityNotificationResponseDto

from bench.urls import two_step
from config import pipeline
from config.parsers import MAX_DEPTH, TOO_DEEP
from messaging import tasks as messaging_tasks
from notify.models import Client
from subscribers import tasks as subscriber_tasks
from tests.conftest import Enqueued, InThread, json_serving, sdk_serving
from tests.factories import (
    BridgeSyncFactory,
    BridgeWorkflowFactory,
    NotificationFactory,
    StepFactory,
    api_for,
    client_with_key,
)
from workflows import bridge
from workflows import tasks as workflow_tasks
from workflows.models import Notification
from workflows.registry import MAX_NESTING
from workflows.sdk import Bridge, Context, workflow
from workflows.services import echo, operations

pytestmark = pytest.mark.django_db(transaction=True)  # the pipeline enqueues on commit

TASKS = {
    pipeline.WORKFLOW.task: workflow_tasks.workflow_run,
    pipeline.SUBSCRIBER.task: subscriber_tasks.subscriber_process,
    pipeline.ECHO.task: workflow_tasks.echo_run,
    pipeline.MESSAGE.task: messaging_tasks.message_send,
}


def _drain(enqueued: Enqueued) -> None:
    while enqueued.calls:
        task, args, _ = enqueued.calls.pop(0)
        TASKS[task].apply(args=json.loads(json.dumps(args)), throw=True)


def _activity(key: str, transaction_id: str) -> dict[str, Any]:
    response = api_for(key).get("/v1/notifications", {"transactionId": transaction_id})
    assert response.status_code == 200, response.content
    [notification] = response.json()["data"]
    return notification


def test_a_secret_key_the_worker_cannot_decrypt_fails_the_notification_saying_so(
    enqueued: Enqueued, settings: Any
) -> None:
    """A worker whose NORM_ENCRYPTION_KEY is not the one the client's key was stored with
    (set otherwise on it, replaced rather than rotated, or derived from a SECRET_KEY that
    changed): the echo raised InvalidToken into the worker's log, and the notification
    stayed pending with no reason, asked again by the reconciler every grace period."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    stored_with = Fernet.generate_key().decode()
    settings.NORM_ENCRYPTION_KEY = stored_with
    client, key = client_with_key()
    prefix = client.secret_keys.get().prefix
    with sdk_serving(Bridge(workflows=[two_step], secret_key=key)) as url:
        Client.objects.filter(pk=client.pk).update(bridge_url=f"{url}/bridge")
        BridgeWorkflowFactory(
            client=client, bridge_url=f"{url}/bridge", workflow_id=two_step.workflow_id
        )
        BridgeSyncFactory(client=client, bridge_url=f"{url}/bridge", flavour="norm")
        body = {
            "name": two_step.workflow_id,
            "to": "ann",
            "payload": {"n": 1},
            "transactionId": "tx-1",
        }
        response = api_for(key).post(
            "/v1/events/trigger", data=json.dumps(body), content_type="application/json"
        )
        assert response.status_code == 201, response.content

        settings.NORM_ENCRYPTION_KEY = Fernet.generate_key().decode()  # the worker's
        _drain(enqueued)

        shown = _activity(key, "tx-1")
        assert (shown["status"], shown["errorCode"]) == ("failed", "SigningKeyUnreadable")
        assert prefix in shown["error"] and "NORM_ENCRYPTION_KEY" in shown["error"]
        assert Notification.objects.get().completed_at is not None

        # The key put back, a retry runs the notification to its end.
        settings.NORM_ENCRYPTION_KEY = stored_with
        assert operations.notification_retry(notification=Notification.objects.get())
        _drain(enqueued)
        shown = _activity(key, "tx-1")
        assert (shown["status"], shown["errorCode"], shown["error"]) == ("completed", "", "")


@contextlib.contextmanager
def answering(status: int, answer: Any) -> Iterator[str]:
    """A bridge on loopback that answers every call with `status` and `answer` (JSON)."""
    with json_serving(lambda *_: (status, answer, {})) as url:
        yield f"{url}/bridge"


def _echoed(url: str, enqueued: Enqueued) -> tuple[Notification, str]:
    """A notification of a client whose bridge is `url`, after one run of its echo task."""
    client, key = client_with_key(bridge_url=url)
    BridgeSyncFactory(client=client, flavour="norm")
    notification = NotificationFactory(trigger_event__client=client)
    workflow_tasks.echo_run.apply(args=[str(notification.pk)], throw=True)
    notification.refresh_from_db()
    return notification, key


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        # NestJS, class-validator: a list of problems.
        (["payload.n must be a number", "payload.to is required"], None),
        ({"field": "n", "problem": "not a number"}, '{"field": "n", "problem": "not a number"}'),
    ],
)
def test_a_bridge_error_whose_message_is_no_text_is_shown_as_the_bridge_wrote_it(
    enqueued: Enqueued, message: Any, shown: str | None
) -> None:
    """It was shown as Python writes a list or a dict: "['payload.n must be ...']"."""
    with answering(400, {"code": "BadRequest", "message": message}) as url:
        notification, key = _echoed(url, enqueued)

    expected = shown or "payload.n must be a number; payload.to is required"
    assert (notification.status, notification.error_code) == ("failed", "BadRequest")
    assert notification.error == expected
    assert _activity(key, notification.trigger_event.transaction_id)["error"] == expected


def test_a_bridge_error_with_a_long_message_is_kept_to_a_readable_length(
    enqueued: Enqueued,
) -> None:
    """A bridge's message (an exception with a payload in it, say) was stored whole, up
    to NORM_BRIDGE_MAX_RESPONSE_BYTES (10 MB), on the notification, and answered in every
    page of the activity API that listed it."""
    with answering(400, {"code": "StepExecutionFailedError", "message": "x" * 100_000}) as url:
        notification, key = _echoed(url, enqueued)

    assert (notification.status, notification.error_code) == (
        "failed",
        "StepExecutionFailedError",
    )
    assert len(notification.error) == 1000 and notification.error.endswith("x…")
    assert _activity(key, notification.trigger_event.transaction_id)["error"] == notification.error


@pytest.mark.parametrize(
    ("status", "answer", "code", "reason"),
    [
        # A JavaScript bridge that cut its message by UTF-16 units, within an emoji.
        (
            400,
            {"code": "StepExecutionFailedError", "message": "Hi Ann \ud83d"},
            None,
            "Hi Ann \ufffd",
        ),
        (400, {"code": "Bad\u0000Request", "message": "a NUL: \u0000"}, "Bad\ufffdRequest", None),
        (503, {"code": "Unavailable", "message": "down \ud800\u0000"}, None, "down \ufffd\ufffd"),
    ],
)
def test_a_bridge_error_with_text_postgresql_cannot_hold_fails_the_notification_with_it(
    enqueued: Enqueued, settings: Any, status: int, answer: dict[str, Any], code: Any, reason: Any
) -> None:
    """A lone surrogate or a NUL in a bridge's error could not be stored as the reason:
    the echo failed as a bug, the notification stayed pending and was asked again by the
    reconciler, to fail at NORM_MAX_CLAIMS as an InternalError ("UnicodeEncodeError:
    'utf-8' codec can't encode character '\\ud83d'"), the bridge's own reason lost."""
    settings.NORM_BRIDGE_MAX_RETRIES = 0
    with answering(status, answer) as url:
        notification, key = _echoed(url, enqueued)

    expected = (code or answer["code"], reason or answer["message"].replace("\u0000", "\ufffd"))
    assert notification.status == "failed"
    assert (notification.error_code, notification.error) == expected
    assert _activity(key, notification.trigger_event.transaction_id)["error"] == expected[1]


NOVU_HEALTH = {"status": "ok", "sdkVersion": "2.13.2", "frameworkVersion": "2024-06-26"}


@pytest.mark.parametrize(
    ("flavour", "answer", "code", "reason"),
    [
        (
            "norm",
            {"stepId": "a\u0000b", "type": "digest", "outputs": {}},
            "UnsupportedStepType",
            "step 'a\ufffdb' is a digest step, which norm does not run yet",
        ),
        (
            "novu",
            {"code": "ExecutionStateCorruptError", "data": {"stepId": "v\ud800ip"}},
            "StepNotDiscovered",
            "names step 'v\ufffdip' of workflow 'welcome', which its discover does not declare",
        ),
        (
            "novu",
            {"code": "ExecutionStateCorruptError", "data": {"stepId": "v\u0000ip"}},
            "StepNotDiscovered",
            "names step 'v\ufffdip' of workflow 'welcome', which its discover does not declare",
        ),
    ],
)
def test_a_step_id_postgresql_cannot_hold_fails_the_notification_with_its_reason(
    enqueued: Enqueued, flavour: str, answer: dict[str, Any], code: str, reason: str
) -> None:
    """A reason norm writes quotes the stepId the bridge named, which may hold a NUL or a
    lone surrogate: the failure's UPDATE raised. Refusing a step of Novu's SDK that its
    discover lacks, the echo failed as a bug, the notification left pending with
    "DataError: PostgreSQL text fields cannot contain NUL (0x00) bytes" for a reason,
    asked again by the reconciler until NORM_MAX_CLAIMS failed it as an InternalError;
    refusing a step of a type norm does not run, that DataError was its reason."""

    def respond(method: str, path: str, *_: Any) -> tuple[int, Any, dict[str, str]]:
        if method == "POST":
            return (200 if flavour == "norm" else 400), answer, {}
        if "action=discover" in path:
            return 200, {"workflows": [{"workflowId": "welcome", "steps": []}]}, {}
        return 200, NOVU_HEALTH, {}

    with json_serving(respond) as url:
        client, key = client_with_key(bridge_url=f"{url}/bridge")
        BridgeSyncFactory(client=client, flavour=flavour)
        notification = NotificationFactory(trigger_event__client=client)
        workflow_tasks.echo_run.apply(args=[str(notification.pk)], throw=True)

    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("failed", code)
    assert reason in notification.error
    assert notification.internal_errors == 0
    assert _activity(key, notification.trigger_event.transaction_id)["error"] == notification.error


@pytest.mark.parametrize("named", ["vip\u0000", "v\ud800ip", "v" * 1_000_000])
def test_a_step_named_between_probe_and_execute_is_a_reason_norm_can_store_and_show(
    enqueued: Enqueued, settings: Any, named: str
) -> None:
    """Novu's SDK, asked to execute the step its probe named, may name another one without
    state (its code changed in between): the notification's reason, StepNotReached, quotes
    it. A NUL or a lone surrogate in it failed the UPDATE that counts the try, and the echo
    failed as a bug until NORM_MAX_CLAIMS made it an InternalError; a long one was stored
    whole (a megabyte on the notification, in every page of the activity API)."""
    settings.NORM_BRIDGE_MAX_RETRIES = 1
    corrupt = {"code": "ExecutionStateCorruptError", "message": "Step has no state"}

    def respond(method: str, path: str, *_: Any) -> tuple[int, Any, dict[str, str]]:
        if method == "POST":
            step_id = "inbox" if "stepId=" not in path else named
            return 400, corrupt | {"data": {"stepId": step_id}}, {}
        if "action=discover" in path:
            steps = [{"stepId": "inbox", "type": "in_app"}]
            return 200, {"workflows": [{"workflowId": "welcome", "steps": steps}]}, {}
        return 200, NOVU_HEALTH, {}

    with json_serving(respond) as url:
        client, key = client_with_key(bridge_url=f"{url}/bridge")
        BridgeSyncFactory(client=client, flavour="novu")
        BridgeWorkflowFactory(client=client, steps=[{"stepId": "inbox", "type": "in_app"}])
        notification = NotificationFactory(trigger_event__client=client)
        with pytest.raises(bridge.BridgeUnavailable, match="StepNotReached"):
            echo.echo_run(notification_id=str(notification.pk), final_attempt=False)
        notification.refresh_from_db()
        assert (notification.status, notification.bridge_attempts) == ("pending", 1)
        assert notification.error.startswith("StepNotReached: on execute, the bridge's code")
        assert len(notification.error) <= 1000 + len("StepNotReached: ")

        echo.echo_run(notification_id=str(notification.pk), final_attempt=True)

    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("failed", "StepNotReached")
    assert notification.error.startswith("on execute, the bridge's code reached step 'v")
    assert "\ufffd" in notification.error or notification.error.endswith("…")
    assert len(notification.error) <= 1000 and notification.internal_errors == 0
    assert _activity(key, notification.trigger_event.transaction_id)["error"] == notification.error


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ({"stepId": "s" * 100_000, "type": "digest"}, "UnsupportedStepType"),
        ({"stepId": None, "type": "t" * 100_000}, "BridgeInvalidResponse"),
        (
            {"stepId": "wait", "type": "delay", "outputs": {"amount": 1, "unit": "u" * 100_000}},
            "UnsupportedDelay",
        ),
    ],
)
def test_an_answer_refused_for_a_long_value_is_kept_to_a_readable_length(
    enqueued: Enqueued, answer: dict[str, Any], code: str
) -> None:
    """A refused answer's reason quotes what the bridge answered (its stepId, its type, a
    delay's unit): each went whole into it, up to NORM_BRIDGE_MAX_RESPONSE_BYTES, where a
    bridge's own error message is kept to 1,000 characters."""
    with answering(200, {"done": False, "outputs": {}, "options": {"skip": False}} | answer) as url:
        notification, key = _echoed(url, enqueued)

    assert (notification.status, notification.error_code) == ("failed", code)
    assert len(notification.error) == 1000 and notification.error.endswith("…")
    assert _activity(key, notification.trigger_event.transaction_id)["error"] == notification.error


def test_a_bridge_that_cannot_be_reached_fails_saying_why_and_where(
    enqueued: Enqueued, settings: Any
) -> None:
    """The reason was requests' text, urllib3's repr of norm's own pool and connection
    classes with the URL's query (a deployment's bypass token, say): "_Pool(host=
    '127.0.0.1', port=9): Max retries exceeded with url: /bridge?x-vercel-protection-
    bypass=... (Caused by NewConnectionError("_WatchedConnection(host=...): Failed to
    establish a new connection: [Errno 111] Connection refused"))"."""
    settings.NORM_BRIDGE_MAX_RETRIES = 0
    url = "http://127.0.0.1:9/api/novu?x-vercel-protection-bypass=s3cret"  # nothing listens

    notification, key = _echoed(url, enqueued)

    reason = "the bridge is unreachable: Connection refused (http://127.0.0.1:9)"
    assert (notification.status, notification.error_code) == ("failed", "BridgeUnreachable")
    assert notification.error == reason
    assert _activity(key, notification.trigger_event.transaction_id)["error"] == reason


def test_a_bridge_that_cannot_be_reached_is_a_failed_job_to_novu_py(
    enqueued: Enqueued, settings: Any
) -> None:
    """novu-py reads a notification's jobs, not norm's error: failed before any step, it
    read as a notification with nothing wrong."""
    settings.NORM_BRIDGE_MAX_RETRIES = 0
    notification, key = _echoed("http://127.0.0.1:9/bridge", enqueued)  # nothing listens

    item = _activity(key, notification.trigger_event.transaction_id)
    jobs = ActivityNotificationResponseDto.model_validate(item).jobs

    assert jobs is not None
    [job] = jobs
    assert (job.type, job.status, job.step.id) == ("trigger", "failed", notification.workflow_id)
    [failure] = job.execution_details
    assert (failure.status, failure.detail) == ("Failed", notification.error)
    assert "unreachable" in failure.detail


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            {"stepId": "s" * 201, "type": "email", "outputs": {"subject": "Hi", "body": "Hi"}},
            "the bridge answered a stepId of 201 characters; norm takes at most 200",
        ),
    ],
)
def test_an_answer_norm_cannot_store_fails_the_notification_with_a_reason_to_read(
    enqueued: Enqueued, answer: dict[str, Any], reason: str
) -> None:
    """The reason was the database error's repr: "DataError('value too long for type
    character varying(200)')", or for a NUL in the outputs (which PostgreSQL cannot store
    in JSON) the failed statement quoted with the outputs in it: "DataError('unsupported
    Unicode escape sequence\\nLINE 1: ...'email', 0, E'{\\"subjec...\\n ^\\nDETAIL: ...')"."""
    with answering(200, {"done": False, **answer}) as url:
        notification, key = _echoed(url, enqueued)

    assert (notification.status, notification.error_code) == ("failed", "BridgeInvalidResponse")
    assert notification.error == reason
    assert not notification.steps.exists()


def _nested(levels: int) -> dict[str, Any]:
    """An object of `levels` objects, each inside the one before."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("nested_in", "levels"),
    [("outputs", 900), ("providers", 900), ("outputs", MAX_DEPTH + 1)],
)
def test_an_answer_nested_deeper_than_norm_reads_back_fails_the_notification(
    enqueued: Enqueued, nested_in: str, levels: int
) -> None:
    """Outputs of 900 levels (well within what the bridge client parses) were recorded,
    and the custom step's result carried on: but Django reads a step's JSON back in a
    request's stack, where 900 levels pass Python's recursion limit, and every page of
    the client's activity API that listed the notification was a 500. Refused as the
    API refuses a trigger's payload, past MAX_DEPTH levels."""
    answer = {"done": False, "stepId": "c", "type": "custom", "outputs": {}, "providers": {}}
    with answering(200, answer | {nested_in: _nested(levels)}) as url:
        notification, key = _echoed(url, enqueued)

    assert (notification.status, notification.error_code) == ("failed", "BridgeInvalidResponse")
    assert notification.error == (
        f"the bridge answered step 'c' with {nested_in} norm cannot keep: {TOO_DEEP}"
    )
    assert not notification.steps.exists()
    assert _activity(key, notification.trigger_event.transaction_id)["error"] == notification.error


UNSTORABLE_TEXT = "strings must not contain NUL (\\u0000) or a lone surrogate"
NON_FINITE = "numbers must be finite and within a double's range (not NaN, 1e400)"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            {"type": "in_app", "outputs": {"body": "token 4711\u0000"}},
            f"the bridge answered step 's' with outputs norm cannot keep: {UNSTORABLE_TEXT}",
        ),
        (
            {"type": "custom", "outputs": {"a\u0000": 1}},
            f"the bridge answered step 's' with outputs norm cannot keep: {UNSTORABLE_TEXT}",
        ),
        (
            {"type": "in_app", "outputs": {"body": "half an emoji \ud83d"}},
            f"the bridge answered step 's' with outputs norm cannot keep: {UNSTORABLE_TEXT}",
        ),
        (
            {"type": "email", "providers": {"sendgrid": {"ip_pool": "a\udc00"}}},
            f"the bridge answered step 's' with providers norm cannot keep: {UNSTORABLE_TEXT}",
        ),
        (
            {"type": "custom", "outputs": {"score": float("nan")}},
            f"the bridge answered step 's' with outputs norm cannot keep: {NON_FINITE}",
        ),
        (
            {"type": "delay", "outputs": {"amount": float("inf"), "unit": "seconds"}},
            f"the bridge answered step 's' with outputs norm cannot keep: {NON_FINITE}",
        ),
        (
            {"type": "delay", "outputs": {"amount": -float("inf")}, "options": {"skip": True}},
            f"the bridge answered step 's' with outputs norm cannot keep: {NON_FINITE}",
        ),
        (
            {"type": "email", "providers": {"ses": {"weight": float("inf")}}},
            f"the bridge answered step 's' with providers norm cannot keep: {NON_FINITE}",
        ),
        (
            {"stepId": "s\u0000", "type": "custom"},
            f"the bridge answered stepId 's\ufffd': {UNSTORABLE_TEXT}",
        ),
        (
            {"stepId": "s\ud800", "type": "digest", "options": {"skip": True}},
            f"the bridge answered stepId 's\ufffd': {UNSTORABLE_TEXT}",
        ),
    ],
    ids=[
        "NUL in outputs",
        "NUL in a key",
        "lone surrogate in in-app outputs",
        "lone surrogate in providers",
        "NaN in outputs",
        "infinite delay",
        "skipped delay of -Infinity",
        "Infinity in providers",
        "NUL in stepId",
        "lone surrogate in a skipped digest's stepId",
    ],
)
def test_an_answer_postgresql_cannot_hold_is_refused_as_the_bridge_s_fault(
    enqueued: Enqueued, caplog: pytest.LogCaptureFixture, answer: dict[str, Any], reason: str
) -> None:
    """A NUL or a lone surrogate in a string or a key, or a NaN or an infinity (which
    Python's JSON reads from a bridge that writes them): PostgreSQL refused the step's
    INSERT, and the echo logged an ERROR with its traceback, as for a bug in norm, before
    failing the notification with the database's words ("invalid input syntax for type
    json (Token "NaN" is invalid.)")."""
    step = {"done": False, "stepId": "s", "outputs": {}, "providers": {}}
    with answering(200, step | answer) as url, caplog.at_level(logging.WARNING):
        notification, key = _echoed(url, enqueued)

    assert (notification.status, notification.error_code) == ("failed", "BridgeInvalidResponse")
    assert notification.error == reason
    assert (notification.internal_errors, notification.steps.exists()) == (0, False)
    assert [(r.levelname, r.exc_info) for r in caplog.records] == [("WARNING", None)]
    assert reason in caplog.records[0].getMessage()
    assert _activity(key, notification.trigger_event.transaction_id)["error"] == reason


# In-app outputs of exactly IN_APP_MAX_BYTES as UTF-8 JSON: `{"body": "…"}` is 12 bytes more.
AT_THE_IN_APP_BOUND = {"body": "x" * (echo.IN_APP_MAX_BYTES - 12)}


@pytest.mark.parametrize(
    "answer",
    [
        {"stepId": "s" * 200, "type": "email", "outputs": {"subject": "Hi", "body": "Hi"}},
        {"stepId": "inbox", "type": "in_app", "outputs": AT_THE_IN_APP_BOUND},
        {"stepId": "c", "type": "custom", "outputs": _nested(MAX_DEPTH)},
    ],
    ids=["stepId of 200 characters", "in-app outputs of IN_APP_MAX_BYTES", "MAX_DEPTH levels"],
)
def test_an_answer_at_a_bound_is_recorded_not_refused(
    enqueued: Enqueued, answer: dict[str, Any]
) -> None:
    """The bounds are inclusive: the column holds a stepId of 200 characters, and an
    in-app message outputs of IN_APP_MAX_BYTES. Refused, the notification failed with a
    reason that named the bound its answer was within."""
    assert len(json.dumps(AT_THE_IN_APP_BOUND).encode()) == echo.IN_APP_MAX_BYTES
    with answering(200, {"done": False, "providers": {}, **answer}) as url:
        notification, _ = _echoed(url, enqueued)

    assert notification.status == Notification.Status.RUNNING, notification.error
    [step] = notification.steps.all()
    assert (step.step_id, step.status) == (answer["stepId"], "scheduled")


def test_a_database_error_recording_the_answer_is_retried_not_a_failure(
    enqueued: Enqueued,
) -> None:
    """The database away (here a lock wait past lock_timeout, as another run records the
    same step) while the echo records the bridge's answer is for the task's retry: taken
    as an answer norm cannot record, the notification failed for good as the bridge's
    fault (BridgeInvalidResponse), its step never sent."""
    answer = {"done": False, "stepId": "hello", "type": "email", "providers": {}}
    inserted, release = threading.Event(), threading.Event()
    with answering(200, answer | {"outputs": {"subject": "Hi", "body": "Hi"}}) as url:
        client, _ = client_with_key(bridge_url=url)
        BridgeSyncFactory(client=client, flavour="norm")
        notification = NotificationFactory(trigger_event__client=client)

        def recording() -> None:
            """Another run's transaction, recording the same step, uncommitted."""
            with transaction.atomic():
                StepFactory(notification=notification, step_id="hello", position=0)
                inserted.set()
                release.wait(20)
                raise RuntimeError("rolled back: the step is the echo's to record")

        other = InThread(recording)
        assert inserted.wait(20)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
        try:
            with pytest.raises(OperationalError, match="lock timeout"):
                echo.echo_run(notification_id=str(notification.pk))
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
            release.set()
            with pytest.raises(RuntimeError, match="rolled back"):
                other.join()

    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("pending", "")
    assert not notification.steps.exists()


LONG_ID = {"workflowId": "w" * 201, "steps": []}
# PostgreSQL's JSON holds no NUL character: a zod regex such as /^[^\0]*$/ has one.
NUL_SCHEMA = {
    "workflowId": "welcome",
    "payload": {"schema": {"type": "object", "properties": {"s": {"pattern": "^[^\u0000]*$"}}}},
    "steps": [],
}


# Nor can its text hold a lone surrogate: a JavaScript name cut within an emoji.
SURROGATE_NAME = {"workflowId": "welcome", "name": "Welcome \ud83d", "steps": []}


@contextlib.contextmanager
def discovering(workflows: list[dict[str, Any]]) -> Iterator[str]:
    """A norm bridge on loopback whose discover declares `workflows`, and whose every
    workflow is done at once."""

    def respond(method: str, path: str, *_: Any) -> tuple[int, Any, dict[str, str]]:
        if method == "POST":
            return 200, {"done": True, "outputs": {}, "options": {"skip": False}}, {}
        if "action=discover" in path:
            return 200, {"workflows": workflows}, {}
        return 200, {"status": "ok", "sdk": "norm-python"}, {}

    with json_serving(respond) as url:
        yield f"{url}/bridge"


@pytest.mark.parametrize(
    "declared", [LONG_ID, NUL_SCHEMA, SURROGATE_NAME], ids=["long-id", "nul", "surrogate"]
)
def test_a_discover_norm_cannot_store_leaves_the_echo_to_run_the_notification(
    enqueued: Enqueued, declared: dict[str, Any]
) -> None:
    """The echo's first call to a bridge syncs it (its flavour), and the sync's DataError
    escaped the task: the notification stayed pending with no reason, asked again by the
    reconciler every grace period, each time with a traceback in the worker's log."""
    with discovering([declared, {"workflowId": "welcome", "steps": []}]) as url:
        client, _ = client_with_key(bridge_url=url)
        notification = NotificationFactory(trigger_event__client=client)
        workflow_tasks.echo_run.apply(args=[str(notification.pk)], throw=True)

    notification.refresh_from_db()
    assert notification.status == Notification.Status.COMPLETED


def test_a_trigger_whose_discover_norm_cannot_store_says_why() -> None:
    """The trigger's discover raised DataError, answered as the request's fault: 400 "A
    value in the request cannot be stored or searched", for every workflow of the bridge
    when one declared an id longer than norm keeps; now such a workflow is left out, and
    a discover with a value PostgreSQL cannot store is the bridge's 502, saying which."""
    with discovering([LONG_ID, {"workflowId": "welcome", "steps": []}]) as url:
        _, key = client_with_key(bridge_url=url)
        body = {"name": "welcome", "to": "ann", "payload": {}}
        response = api_for(key).post(
            "/v1/events/trigger", data=json.dumps(body), content_type="application/json"
        )
    assert response.status_code == 201, response.content

    with discovering([NUL_SCHEMA]) as url:
        _, key = client_with_key(bridge_url=url)
        response = api_for(key).post(
            "/v1/events/trigger", data=json.dumps(body), content_type="application/json"
        )
    assert response.status_code == 502, response.content
    assert response.json()["message"] == (
        f"Could not discover the workflows of {url}: BridgeInvalidResponse: norm cannot store "
        "the workflows the bridge declared: unsupported Unicode escape sequence "
        "(\\u0000 cannot be converted to text.)"
    )


def test_a_trigger_whose_discover_nests_deeper_than_norm_keeps_is_a_502_saying_why() -> None:
    """A schema nested as deep as the bridge client parses (some 880 levels under a
    request's stack) could not be stored: psycopg writes JSON recursively, one level
    deeper for each frame below it, and its RecursionError made the trigger a 500; a
    little less deep was stored, and the admin's page of the workflow a 500 for good.
    Refused as a failed sync, past registry.MAX_NESTING levels, at any depth the parser
    takes."""
    body = {"name": "welcome", "to": "ann", "payload": {}}
    # Where the store's recursion fails depends on the stack the sync runs in: each depth
    # up to where the parser gives up.
    for levels in [MAX_NESTING + 1, *range(800, 1000, 5)]:
        declared = {"workflowId": "welcome", "steps": [], "payload": {"schema": {}}}
        declared["payload"]["schema"] = _nested(levels - 2)  # in its workflow's entry
        with discovering([declared]) as url:
            _, key = client_with_key(bridge_url=url)
            response = api_for(key).post(
                "/v1/events/trigger", data=json.dumps(body), content_type="application/json"
            )
        assert response.status_code == 502, (levels, response.content)
        if levels == MAX_NESTING + 1:
            assert response.json()["message"] == (
                f"Could not discover the workflows of {url}: BridgeInvalidResponse: the "
                f"bridge {url} declared workflow 'welcome' nested deeper than norm keeps: "
                f"{MAX_NESTING} levels"
            )
    declared["payload"]["schema"] = _nested(MAX_NESTING - 2)  # at the bound: kept
    with discovering([declared]) as url:
        _, key = client_with_key(bridge_url=url)
        response = api_for(key).post(
            "/v1/events/trigger", data=json.dumps(body), content_type="application/json"
        )
    assert response.status_code == 201, response.content


def test_a_trigger_whose_discover_holds_a_lone_surrogate_is_a_502_saying_why() -> None:
    """A DataError (a NUL) was the bridge's 502, but a lone surrogate in a workflow's name
    fails before PostgreSQL sees it (UnicodeEncodeError): every trigger of the client
    was a 500."""
    with discovering([SURROGATE_NAME]) as url:
        _, key = client_with_key(bridge_url=url)
        body = {"name": "welcome", "to": "ann", "payload": {}}
        response = api_for(key).post(
            "/v1/events/trigger", data=json.dumps(body), content_type="application/json"
        )
    assert response.status_code == 502, response.content
    assert response.json()["message"].startswith(
        f"Could not discover the workflows of {url}: BridgeInvalidResponse: norm cannot store "
        "the workflows the bridge declared: UnicodeEncodeError: "
    )


@workflow("typo")
def typo(ctx: Context) -> None:
    ctx.step.email("mail", lambda: {"subject": 5, "bodyy": "Hello"})


def test_an_output_the_bridge_refuses_fails_saying_what_is_wrong_with_it(
    enqueued: Enqueued,
) -> None:
    """The SDK (norm's, as Novu's) says which fields of the payload, controls or outputs
    are wrong in its error's data, [{path, message}], and only that something is in its
    message: the notification read "Step with id: `mail` has invalid output. Please
    provide the correct step output.", leaving the developer to guess which."""
    client, key = client_with_key()
    with sdk_serving(Bridge(workflows=[typo], secret_key=key)) as url:
        client.bridge_url = f"{url}/bridge"
        client.save()
        BridgeSyncFactory(client=client, bridge_url=client.bridge_url, flavour="norm")
        notification = NotificationFactory(
            trigger_event__client=client, trigger_event__workflow_id="typo"
        )
        workflow_tasks.echo_run.apply(args=[str(notification.pk)], throw=True)

    notification.refresh_from_db()
    assert notification.error_code == "ExecutionStateOutputInvalidError"
    assert notification.error == (
        "Workflow with id: `typo` has an invalid state. Step with id: `mail` has invalid "
        "output. Please provide the correct step output. (/subject: 5 is not of type "
        "'string'; /: 'body' is a required property)"
    )
    shown = _activity(key, notification.trigger_event.transaction_id)
    assert (shown["status"], shown["error"]) == ("failed", notification.error)
