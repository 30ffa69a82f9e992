"""The echo worker driving a bridge per its flavour: Novu's probe-then-execute, norm's
controls, and how the flavour is detected. The bridge is faked at the network edge, or
served on loopback (norm's SDK; signatures checked by node as Novu's framework does)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from django.urls import reverse
from django.utils import timezone

from config import pipeline
from messaging.models import Message
from messaging.services import message_send
from notify.models import BridgeSync, BridgeWorkflow, Client
from tests.conftest import Enqueued, json_serving, sdk_serving
from tests.factories import (
    BridgeSyncFactory,
    BridgeWorkflowFactory,
    MessageFactory,
    NotificationFactory,
    StepFactory,
    client_with_key,
)
from workflows import bridge, registry
from workflows.models import Notification, Step
from workflows.sdk import Bridge, workflow
from workflows.services import echo

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]
STEPS = [
    {"stepId": "inbox", "type": "in_app"},
    {"stepId": "wait", "type": "delay"},
    {"stepId": "mail", "type": "email"},
    {"stepId": "text", "type": "sms"},
]
NOVU_HEALTH = {"status": "ok", "sdkVersion": "2.13.2", "frameworkVersion": "2024-06-26"}


def corrupt(step_id: str) -> bridge.BridgeError:
    """Novu's answer to a probe: the first step the code reaches without state."""
    return bridge.BridgeError(
        "ExecutionStateCorruptError",
        f"Workflow with id: `welcome-flow` has a corrupt state. Step with id: `{step_id}` "
        "does not exist. Please provide the missing state.",
        data={"workflowId": "welcome-flow", "stepId": step_id},
        status=400,
    )


@dataclass
class FakeExecute:
    """bridge.execute, answering `answers` in turn, or, given `sdk`, as norm's SDK does."""

    answers: list[dict[str, Any] | Exception] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    sdk: Bridge | None = None

    def __call__(
        self,
        url: str,
        *,
        secrets: Sequence[str],
        workflow_id: str,
        body: dict[str, Any],
        step_id: str | None = None,
        js_integers: bool | None = None,
    ) -> dict[str, Any]:
        self.calls.append(
            {"workflow_id": workflow_id, "step_id": step_id, "body": body, "js": js_integers}
        )
        if self.sdk is not None:
            query = {"action": "execute", "workflowId": workflow_id}
            query |= {"stepId": step_id} if step_id else {}
            status, answer, _ = self.sdk.handle(
                method="POST", query=query, body=json.dumps(body), headers={}
            )
            if status != 200:
                raise bridge.BridgeError(
                    answer["code"], answer["message"], answer.get("data"), status
                )
            return answer
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def execute(monkeypatch: pytest.MonkeyPatch) -> FakeExecute:
    fake = FakeExecute()
    monkeypatch.setattr(bridge, "execute", fake)
    return fake


@dataclass
class FakeDiscover:
    """health-check (Novu's answer) and discover: each discover answers the next steps."""

    answers: list[list[dict[str, Any]]] = field(default_factory=list)
    calls: int = 0

    def __call__(self, url: str, *, secrets: Sequence[str]) -> dict[str, Any]:
        self.calls += 1
        return {"workflows": [{"workflowId": "welcome-flow", "steps": self.answers.pop(0)}]}


@pytest.fixture
def discover(monkeypatch: pytest.MonkeyPatch) -> FakeDiscover:
    fake = FakeDiscover()
    monkeypatch.setattr(bridge, "health_check", lambda url: NOVU_HEALTH)
    monkeypatch.setattr(bridge, "discover", fake)
    return fake


@pytest.fixture
def run(django_capture_on_commit_callbacks: Capture) -> Callable[..., None]:
    def do(notification: Notification, **kwargs: Any) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            echo.echo_run(notification_id=str(notification.pk), **kwargs)

    return do


@pytest.fixture
def novu() -> Notification:
    """A notification of a Novu bridge whose registry knows welcome-flow."""
    notification = NotificationFactory(
        trigger_event__workflow_id="welcome-flow",
        status=Notification.Status.RUNNING,
        trigger_event__payload={"userName": "Zoë"},
    )
    BridgeSyncFactory(client=notification.client, flavour="novu")
    BridgeWorkflowFactory(
        client=notification.client,
        workflow_id="welcome-flow",
        steps=STEPS,
        controls={"mail": {"footer": "Tschüss"}},
    )
    return notification


def test_a_probe_refused_for_another_reason_fails_even_when_its_data_names_a_step(
    novu: Notification, execute: FakeExecute, run: Callable[..., None]
) -> None:
    """Only ExecutionStateCorruptError names the next step: a step that throws says which
    one in its data too, and must fail the notification, not be executed as the next."""
    failed = bridge.BridgeError(
        "StepExecutionFailedError",
        "Failed to execute workflow: `welcome-flow`, step: `mail`",
        data={"workflowId": "welcome-flow", "stepId": "mail"},
        status=502,
    )
    execute.answers = [failed]

    run(novu)

    assert len(execute.calls) == 1  # the probe only
    novu.refresh_from_db()
    assert (novu.status, novu.error_code) == ("failed", "StepExecutionFailedError")
    assert not novu.steps.exists()


def test_the_probe_names_the_next_step_which_is_then_executed_by_id(
    novu: Notification, execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    inbox = StepFactory(
        notification=novu, step_id="inbox", type="in_app", position=0, status="completed"
    )
    MessageFactory(step=inbox)
    StepFactory(
        notification=novu,
        step_id="wait",
        type="delay",
        position=1,
        status=Step.Status.COMPLETED,
        result={"duration": 2004},
    )
    outputs = {"subject": "Grüße", "body": "Hallo"}
    providers = {"sendgrid": {"ipPoolName": "vip"}}
    execute.answers = [
        corrupt("mail"),
        {"outputs": outputs, "providers": providers, "options": {"skip": False}},
    ]

    run(novu)

    probe, target = execute.calls
    assert (probe["step_id"], target["step_id"]) == (None, "mail")
    assert probe["js"] and target["js"]  # its numbers written as JS reads them
    unread = {"seen": False, "read": False, "lastSeenDate": None, "lastReadDate": None}
    newest_first = [
        {"stepId": "wait", "outputs": {"duration": 2004}, "state": {"status": "completed"}},
        {"stepId": "inbox", "outputs": unread, "state": {"status": "completed"}},
    ]
    assert probe["body"]["state"] == target["body"]["state"] == newest_first
    assert probe["body"]["controls"] == {}
    assert target["body"]["controls"] == {"footer": "Tschüss"}
    assert target["body"]["payload"] == {"userName": "Zoë"}
    assert "stepControls" not in target["body"]  # norm's extension, not Novu's
    step = novu.steps.get(step_id="mail")
    assert (step.type, step.position, step.status) == ("email", 2, Step.Status.SCHEDULED)
    assert (step.outputs, step.providers) == (outputs, providers)
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]


def test_a_200_to_the_probe_means_every_step_ran(
    novu: Notification, execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    execute.answers = [{"outputs": {}, "providers": {}, "options": {"skip": False}}]
    run(novu)
    novu.refresh_from_db()
    assert novu.status == Notification.Status.COMPLETED
    assert len(execute.calls) == 1 and not novu.steps.exists()


@pytest.mark.parametrize("probed", [True, False])
@pytest.mark.parametrize("answer", [{}, {"status": "maintenance"}, {"outputs": "sent"}])
def test_a_200_that_is_no_execute_answer_fails_the_notification_rather_than_complete_it(
    novu: Notification,
    execute: FakeExecute,
    enqueued: Enqueued,
    run: Callable[..., None],
    answer: dict[str, Any],
    probed: bool,
) -> None:
    """Every version of Novu's framework answers execute with its `outputs`. Any other
    JSON (an endpoint in front of the bridge answering for it, a maintenance page) was
    read, as the probe's answer, as every step having run: the notification completed
    with nothing sent; as the step's, as that step with no outputs."""
    execute.answers = [answer] if probed else [corrupt("mail"), answer]
    run(novu)
    novu.refresh_from_db()
    assert (novu.status, novu.error_code) == ("failed", "BridgeInvalidResponse")
    assert "answered execute with no `outputs` object" in novu.error
    assert not novu.steps.exists() and enqueued.of(pipeline.MESSAGE) == []


def test_a_skipped_step_is_recorded_and_the_echo_runs_again(
    novu: Notification, execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    execute.answers = [corrupt("text"), {"outputs": {}, "options": {"skip": True}}]
    run(novu)
    step = novu.steps.get()
    assert (step.step_id, step.type, step.status, step.result) == ("text", "sms", "skipped", {})
    assert enqueued.of(pipeline.ECHO) == [(str(novu.pk),)]


# What Novu's SDK answers an execute whose step its code did not reach: it replays each
# step the code reaches, and the code returns with every one in the state.
NOT_REACHED = {
    "outputs": {},
    "providers": {},
    "options": {"skip": False},
    "metadata": {"status": "success", "error": False, "duration": 0.6},
}


@pytest.mark.parametrize("step_id", ["mail", "wait", "inbox"])
def test_a_step_the_code_no_longer_reaches_on_execute_is_asked_for_again(
    novu: Notification,
    execute: FakeExecute,
    enqueued: Enqueued,
    run: Callable[..., None],
    step_id: str,
) -> None:
    """The probe and the execute are two runs of the bridge's code: one that takes
    another path in between (a deployment, a branch on the time or on data outside the
    state) answers the execute of the step the probe named with no outputs and no skip.
    Recorded so, the step was an email or in-app message without content, failed for
    good, or a delay of no amount failing the notification (UnsupportedDelay). No email,
    in-app or delay has empty outputs in Novu's SDK: the next step is asked for again."""
    execute.answers = [corrupt(step_id), NOT_REACHED]

    with pytest.raises(bridge.BridgeUnavailable) as raised:
        run(novu, final_attempt=False)

    assert raised.value.code == "StepNotReached"
    assert f"did not reach step '{step_id}'" in raised.value.message
    novu.refresh_from_db()
    assert (novu.status, novu.bridge_attempts) == ("running", 1)
    assert not novu.steps.exists() and enqueued.of(pipeline.MESSAGE) == []

    execute.answers = [NOT_REACHED]  # asked again: the code now ends without the step
    run(novu)
    novu.refresh_from_db()
    assert (novu.status, novu.error) == ("completed", "")


def test_a_step_the_code_now_reaches_first_on_execute_is_asked_for_again(
    novu: Notification,
    execute: FakeExecute,
    discover: FakeDiscover,
    enqueued: Enqueued,
    run: Callable[..., None],
) -> None:
    """A deployment between the probe and the execute put a step before the one the
    probe named: Novu's SDK refuses the execute for that step's missing state. That is
    the step to run next, not the notification's end (ExecutionStateCorruptError failed
    it for good)."""
    execute.answers = [corrupt("mail"), corrupt("vip")]

    with pytest.raises(bridge.BridgeUnavailable) as raised:
        run(novu, final_attempt=False)

    assert raised.value.code == "StepNotReached"
    assert "reached step 'vip' before step 'mail'" in raised.value.message
    novu.refresh_from_db()
    assert (novu.status, novu.bridge_attempts) == ("running", 1)
    assert not novu.steps.exists()

    discover.answers.append([{"stepId": "vip", "type": "in_app"}, *STEPS])
    execute.answers = [corrupt("vip"), {"outputs": {"body": "VIP ✨"}}]
    run(novu)
    assert novu.steps.get().step_id == "vip"
    assert [c["step_id"] for c in execute.calls] == [None, "mail", None, "vip"]


def result_invalid(step_id: str) -> bridge.BridgeError:
    """Novu's refusal of a state entry's result, as its SDK words it: here the `{}` norm
    records for a skipped custom step whose output schema requires a key."""
    return bridge.BridgeError(
        "ExecutionStateResultInvalidError",
        f"Workflow with id: `welcome-flow` has an invalid state. Step with id: `{step_id}` "
        "has invalid result. Please provide the correct step result. "
        "(/: must have required property 'points')",
        data=[{"path": "", "message": "must have required property 'points'"}],
        status=400,
    )


@pytest.mark.parametrize("flavour", ["novu", "norm"])
@pytest.mark.parametrize(("last", "status"), [(True, "completed"), (False, "failed")])
def test_a_custom_step_skipped_as_the_last_completes_as_with_novus_worker(
    novu: Notification,
    execute: FakeExecute,
    run: Callable[..., None],
    flavour: str,
    last: bool,
    status: str,
) -> None:
    """A custom step whose output schema requires a key, skipped: its result is `{}`,
    which Novu's SDK refuses whenever it replays the step. Novu's worker replays it only
    to run a step after it, and completes a workflow whose last step it is; norm asked
    once more whether anything came after, and failed every such notification, its
    messages all sent, as ExecutionStateResultInvalidError. Skipped before other steps,
    it fails, as with Novu's worker (the next step's execute refuses it)."""
    custom = {"stepId": "score", "type": "custom"}
    BridgeWorkflow.objects.filter(client_id=novu.client_id).update(
        steps=[*STEPS, custom] if last else [custom, *STEPS]
    )
    BridgeSync.objects.filter(client_id=novu.client_id).update(flavour=flavour)
    # A step ran before it: the one recorded last is what norm judges, not the first.
    StepFactory(
        notification=novu,
        step_id="text",
        type="sms",
        position=0,
        status=Step.Status.COMPLETED,
        result={},
    )
    StepFactory(
        notification=novu,
        step_id="score",
        type="custom",
        position=1,
        status=Step.Status.SKIPPED,
        result={},
    )
    execute.answers = [result_invalid("score")]

    run(novu, final_attempt=False)

    novu.refresh_from_db()
    assert novu.status == status
    if last:
        assert (novu.error_code, novu.error) == ("", "")
    else:
        assert novu.error_code == "ExecutionStateResultInvalidError"
    assert len(execute.calls) == 1 and novu.steps.count() == 2


def test_a_step_the_registry_does_not_know_is_discovered_once_more(
    novu: Notification,
    execute: FakeExecute,
    discover: FakeDiscover,
    enqueued: Enqueued,
    run: Callable[..., None],
) -> None:
    discover.answers.append([*STEPS, {"stepId": "vip", "type": "in_app"}])
    execute.answers = [corrupt("vip"), {"outputs": {"body": "VIP ✨"}}]

    run(novu)

    assert novu.steps.get().type == "in_app"
    assert discover.calls == 1
    registry = BridgeWorkflow.objects.get(workflow_id="welcome-flow")
    assert [s["stepId"] for s in registry.steps][-1] == "vip"
    assert registry.controls == {"mail": {"footer": "Tschüss"}}  # a sync keeps the controls


def test_a_step_unknown_even_after_discover_fails_the_notification(
    novu: Notification,
    execute: FakeExecute,
    discover: FakeDiscover,
    enqueued: Enqueued,
    run: Callable[..., None],
) -> None:
    discover.answers.append(STEPS)
    execute.answers = [corrupt("vip")]
    run(novu)
    novu.refresh_from_db()
    assert novu.status == Notification.Status.FAILED
    assert novu.error_code == "StepNotDiscovered"
    assert "'vip'" in novu.error
    assert discover.calls == 1
    assert len(execute.calls) == 1 and not novu.steps.exists()


def test_a_step_unknown_names_the_bridge_without_its_password(
    novu: Notification,
    execute: FakeExecute,
    discover: FakeDiscover,
    run: Callable[..., None],
) -> None:
    """The error is shown in the admin and the activity feed, where a bridge URL's
    basic-auth password is masked everywhere else."""
    secret = "https://ops-user:s3cret-pass@bridge.test/api/novu"
    Client.objects.filter(pk=novu.client_id).update(bridge_url=secret)
    BridgeSync.objects.filter(client_id=novu.client_id).update(bridge_url=secret)
    BridgeWorkflow.objects.filter(client_id=novu.client_id).update(bridge_url=secret)
    Notification.objects.filter(pk=novu.pk).update(resource=secret)
    discover.answers.append(STEPS)
    execute.answers = [corrupt("vip")]

    run(novu)

    novu.refresh_from_db()
    assert novu.error_code == "StepNotDiscovered"
    assert "s3cret-pass" not in novu.error
    assert "the bridge https://ops-user:***@bridge.test/api/novu names step 'vip'" in novu.error


class FakeSession:
    """requests' session at the socket: answers every request with one status and body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.body = status, body
        self.requests: list[dict[str, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.requests.append({"method": method, "params": kwargs["params"]})
        response = requests.Response()
        response.status_code = self.status
        response.raw = io.BytesIO(json.dumps(self.body).encode())  # the client streams it
        return response


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "SignatureMismatchError"),
        (401, "SignatureExpiredError"),
        (502, "StepExecutionFailedError"),
        (404, "StepNotFoundError"),
    ],
)
def test_a_framework_error_fails_the_notification_without_a_retry(
    novu: Notification,
    monkeypatch: pytest.MonkeyPatch,
    enqueued: Enqueued,
    run: Callable[..., None],
    status: int,
    code: str,
) -> None:
    session = FakeSession(status, {"message": f"{code} happened", "code": code})
    monkeypatch.setattr(bridge, "_session", session)

    run(novu, final_attempt=False)  # raising here would mean a retry

    novu.refresh_from_db()
    hint = bridge.KEY_HINTS.get(code, "")  # what to change on the bridge, for its key
    assert (novu.status, novu.error_code, novu.error) == ("failed", code, f"{code} happened{hint}")
    assert novu.bridge_attempts == 0
    assert [r["params"] for r in session.requests] == [
        {"action": "execute", "workflowId": "welcome-flow"}
    ]


@pytest.mark.parametrize(
    ("code", "data", "reason"),
    [
        (
            "ExecutionEventPayloadInvalidError",
            [{"path": "/points", "message": "must be number"}, {"path": "/n", "message": "x"}],
            " (/points: must be number; /n: x)",
        ),
        (
            "ExecutionStateResultInvalidError",
            [{"path": "", "message": "must have required property 'code'"}],
            " (/: must have required property 'code')",
        ),
        ("StepExecutionFailedError", {"stack": "Error: boom\n    at app.js:1"}, ""),
    ],
)
def test_a_framework_errors_field_by_field_reasons_are_kept_on_the_notification(
    novu: Notification,
    monkeypatch: pytest.MonkeyPatch,
    run: Callable[..., None],
    code: str,
    data: Any,
    reason: str,
) -> None:
    message = f"Workflow with id: `welcome-flow` fails ({code})."
    session = FakeSession(400, {"message": message, "code": code, "data": data})
    monkeypatch.setattr(bridge, "_session", session)

    run(novu, final_attempt=False)

    novu.refresh_from_db()
    assert (novu.status, novu.error_code, novu.error) == ("failed", code, message + reason)


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_a_5xx_429_or_408_from_the_probe_is_retried(
    novu: Notification, monkeypatch: pytest.MonkeyPatch, run: Callable[..., None], status: int
) -> None:
    monkeypatch.setattr(
        bridge, "_session", FakeSession(status, {"message": "x", "code": "BridgeError"})
    )
    with pytest.raises(bridge.BridgeUnavailable):
        run(novu, final_attempt=False)
    novu.refresh_from_db()
    assert (novu.status, novu.bridge_attempts) == ("running", 1)


# --- flavour detection -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("health", "flavour"),
    [(NOVU_HEALTH, "novu"), (Bridge(workflows=[]).health_check(), "norm")],
)
def test_a_sync_records_the_flavour_and_each_steps_control_schema(
    monkeypatch: pytest.MonkeyPatch, health: dict[str, Any], flavour: str
) -> None:
    schema = {"type": "object", "properties": {"footer": {"type": "string"}}}
    monkeypatch.setattr(bridge, "health_check", lambda url: health)
    monkeypatch.setattr(
        bridge,
        "discover",
        lambda url, secrets: {
            "workflows": [
                {
                    "workflowId": "w",
                    "steps": [{"stepId": "mail", "type": "email", "controls": {"schema": schema}}],
                }
            ]
        },
    )
    client = BridgeSyncFactory(flavour="").client

    [entry] = registry.bridge_sync(client=client, bridge_url=client.bridge_url)

    assert BridgeSync.objects.get().flavour == flavour
    assert entry.steps == [{"stepId": "mail", "type": "email", "controlSchema": schema}]


def test_a_failed_health_check_keeps_the_known_flavour(monkeypatch: pytest.MonkeyPatch) -> None:
    def down(url: str) -> dict[str, Any]:
        raise bridge.BridgeUnavailable("BridgeTimeout", "slow")

    monkeypatch.setattr(bridge, "health_check", down)
    monkeypatch.setattr(bridge, "discover", lambda url, secrets: {"workflows": []})
    client = BridgeSyncFactory(flavour="novu").client
    registry.bridge_sync(client=client, bridge_url=client.bridge_url)
    assert BridgeSync.objects.get().flavour == "novu"


def test_the_echo_detects_the_flavour_of_a_bridge_it_has_not_synced(
    execute: FakeExecute,
    discover: FakeDiscover,
    enqueued: Enqueued,
    run: Callable[..., None],
) -> None:
    notification = NotificationFactory(trigger_event__workflow_id="welcome-flow")
    discover.answers.append(STEPS)
    execute.answers = [corrupt("inbox"), {"outputs": {"body": "Hi"}}]

    run(notification)

    assert BridgeSync.objects.get().flavour == "novu"
    assert [c["step_id"] for c in execute.calls] == [None, "inbox"]
    assert notification.steps.get().step_id == "inbox"


def test_a_bridge_whose_flavour_cannot_be_told_is_driven_as_norm(
    monkeypatch: pytest.MonkeyPatch, execute: FakeExecute, run: Callable[..., None]
) -> None:
    def down(url: str, **kwargs: Any) -> dict[str, Any]:
        raise bridge.BridgeUnavailable("BridgeUnreachable", "refused")

    monkeypatch.setattr(bridge, "health_check", down)
    monkeypatch.setattr(bridge, "discover", down)
    notification = NotificationFactory()
    execute.answers = [{"done": True}]

    run(notification)

    assert execute.calls[0]["step_id"] is None and len(execute.calls) == 1
    notification.refresh_from_db()
    assert notification.status == Notification.Status.COMPLETED
    assert BridgeSync.objects.get().flavour == ""


@pytest.fixture
def untold(novu: Notification) -> Notification:
    """The Novu bridge's notification, its flavour not told: the sync that found its
    workflows met its health-check failing, a moment ago."""
    BridgeSync.objects.update(flavour="")
    return novu


def test_a_novu_bridge_driven_as_norm_while_its_flavour_is_not_told_runs_the_step_it_names(
    untold: Notification, execute: FakeExecute, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    """norm's own mode is Novu's probe: Novu's SDK names the next step, which is run by
    id, where the notification failed for good with ExecutionStateCorruptError."""
    outputs = {"body": "Hallo Zoë"}
    execute.answers = [corrupt("inbox"), {"outputs": outputs, "options": {"skip": False}}]

    run(untold)

    probe, target = execute.calls
    assert (probe["step_id"], target["step_id"]) == (None, "inbox")
    assert target["js"] and "stepControls" not in target["body"]
    untold.refresh_from_db()
    assert untold.status == Notification.Status.RUNNING, untold.error
    step = untold.steps.get()
    assert (step.step_id, step.type, step.outputs) == ("inbox", "in_app", outputs)
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]


def test_a_novu_bridge_driven_as_norm_completes_when_every_step_has_state(
    untold: Notification, execute: FakeExecute, run: Callable[..., None]
) -> None:
    """Novu's 200 to the probe (no `done`, which norm's SDK always sends) is "done", where
    it failed the notification as a BridgeInvalidResponse."""
    StepFactory(notification=untold, step_id="text", type="sms", status=Step.Status.COMPLETED)
    metadata = {"status": "success", "error": False, "duration": 0.5}
    execute.answers = [
        {"outputs": {}, "providers": {}, "options": {"skip": False}, "metadata": metadata}
    ]

    run(untold)

    untold.refresh_from_db()
    assert untold.status == Notification.Status.COMPLETED, untold.error
    assert len(execute.calls) == 1


# What Novu's framework checks (validateHmac): the HMAC of "<t>.<body as JS writes it back>".
JS_VERIFY = """
const crypto = require("crypto");
const [secret, header] = process.argv.slice(1);
let body = "";
process.stdin.on("data", (chunk) => (body += chunk)).on("end", () => {
  const parts = Object.fromEntries(header.split(",").map((pair) => pair.split("=")));
  const signed = `${parts.t}.${JSON.stringify(JSON.parse(body))}`;
  const v1 = crypto.createHmac("sha256", secret).update(signed).digest("hex");
  process.stdout.write(v1 === parts.v1 ? "ok" : "mismatch");
});
"""


def js_verifies(secret: str, header: str, body: bytes) -> bool:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: no JS can check the signature")
    checked = subprocess.run(
        [node, "-e", JS_VERIFY, "--", secret, header],
        input=body,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return checked.stdout == b"ok"


@contextlib.contextmanager
def js_bridge(secret: str) -> Iterator[tuple[str, list[str | None]]]:
    """A bridge that checks signatures as Novu's framework does, in node, on 127.0.0.1,
    and answers its probe (no stepId) by naming `inbox`: its URL, and the stepId of each
    execute whose signature it accepted."""
    accepted: list[str | None] = []

    def respond(
        method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        query = dict(parse_qsl(urlsplit(path).query))
        header = {k.lower(): v for k, v in headers.items()}.get("novu-signature", "")
        if not js_verifies(secret, header, body):
            return 401, {"message": "Signature mismatch", "code": "SignatureMismatchError"}, {}
        accepted.append(query.get("stepId"))
        if "stepId" not in query:
            error = corrupt("inbox")
            return 400, {"message": error.message, "code": error.code, "data": error.data}, {}
        payload = json.loads(body)["payload"]  # as JS reads it: the order's id rounded
        return 200, {"outputs": {"body": f"n° {payload['order']}"}, "options": {}}, {}

    with json_serving(respond) as url:
        yield f"{url}/api/novu", accepted


BIG = 12345678901234567890  # beyond 2**53: JS reads it as 12345678901234567000


def test_a_novu_bridge_driven_as_norm_accepts_the_signature_of_a_payload_integer_beyond_2_53(
    enqueued: Enqueued, run: Callable[..., None]
) -> None:
    """A Novu bridge checks the body as JS writes it back, which norm's own mode did not
    write for: a payload integer beyond 2**53 failed the notification for good with
    SignatureMismatchError, where Novu's flavour signs the same payload so it is accepted."""
    client, key = client_with_key()
    with js_bridge(key) as (url, accepted):
        Client.objects.filter(pk=client.pk).update(bridge_url=url)
        client.refresh_from_db()
        notification = NotificationFactory(
            trigger_event__client=client,
            trigger_event__workflow_id="welcome-flow",
            status=Notification.Status.RUNNING,
            trigger_event__payload={"userName": "Zoë", "order": BIG},
        )
        BridgeSyncFactory(client=client, flavour="")  # its health-check failed: not told
        BridgeWorkflowFactory(client=client, workflow_id="welcome-flow", steps=STEPS)

        run(notification)

    notification.refresh_from_db()
    assert notification.status == Notification.Status.RUNNING, notification.error
    assert accepted == [None, "inbox"]  # the probe, then the step it named
    step = notification.steps.get()
    assert (step.step_id, step.outputs) == ("inbox", {"body": "n° 12345678901234567000"})
    assert enqueued.of(pipeline.MESSAGE) == [(step.pk,)]


def test_a_bridge_not_told_that_parses_with_js_is_signed_so_with_each_live_key() -> None:
    """Mid-rotation (the bridge still on the older key), each key is tried in both
    writings before the next: the whole one, refused, then JS's."""
    body = {"payload": {"order": BIG}, "state": [], "controls": {}}
    with js_bridge("sk_old") as (url, accepted):
        answer = bridge.execute(
            url,
            secrets=("sk_new", "sk_old"),
            workflow_id="welcome-flow",
            body=body,
            step_id="inbox",
        )
    assert answer["outputs"] == {"body": "n° 12345678901234567000"}
    assert accepted == ["inbox"]


@workflow("numbered")
def numbered(ctx: Any) -> None:
    ctx.step.in_app("inbox", lambda: {"body": f"n° {ctx.payload['order']}"})


@pytest.mark.parametrize("flavour", ["", "norm"])
def test_norms_sdk_driven_as_norm_reads_a_payload_integer_beyond_2_53_whole(
    enqueued: Enqueued, run: Callable[..., None], flavour: str
) -> None:
    """Whatever lets a Novu bridge check such a payload's signature, norm's SDK (which
    parses with Python) is not handed that integer rounded as JS would read it."""
    client, key = client_with_key()
    with sdk_serving(Bridge(workflows=[numbered], secret_key=key)) as base:
        Client.objects.filter(pk=client.pk).update(bridge_url=f"{base}/bridge")
        client.refresh_from_db()
        notification = NotificationFactory(
            trigger_event__client=client,
            trigger_event__workflow_id="numbered",
            status=Notification.Status.RUNNING,
            trigger_event__payload={"order": BIG},
        )
        BridgeSyncFactory(client=client, flavour=flavour)
        BridgeWorkflowFactory(client=client, workflow_id="numbered")

        run(notification)

    step = notification.steps.get()
    assert (step.step_id, step.outputs) == ("inbox", {"body": f"n° {BIG}"})


def test_a_flavour_not_told_yet_is_detected_again_after_the_discover_interval(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """The first sync met the bridge down: once it is back, the echo learns it speaks
    Novu's flavour, rather than drive it as norm's for good."""
    settings.NORM_DISCOVER_MIN_INTERVAL = 60
    health_checks: list[str] = []

    def health(url: str) -> dict[str, Any]:
        health_checks.append(url)
        return NOVU_HEALTH

    monkeypatch.setattr(bridge, "health_check", health)
    monkeypatch.setattr(bridge, "discover", lambda url, secrets: {"workflows": []})
    sync = BridgeSyncFactory(flavour="", error="BridgeUnreachable: refused")
    client_id, url = sync.client_id, sync.bridge_url

    # Within the interval the bridge is not asked again.
    assert registry.bridge_flavour(client_id=client_id, bridge_url=url) == "norm"
    assert health_checks == []

    BridgeSync.objects.update(synced_at=timezone.now() - timedelta(seconds=61))
    assert registry.bridge_flavour(client_id=client_id, bridge_url=url) == "novu"
    assert health_checks == [url]
    assert BridgeSync.objects.get().flavour == "novu"


# --- controls with norm's SDK, and provider overrides on the message ---------------------


@workflow(
    "controlled",
    payload_schema={"type": "object", "properties": {"name": {"type": "string"}}},
)
def controlled(ctx: Any) -> None:
    ctx.step.in_app("note", lambda: {"body": f"Hi {ctx.payload['name']}"})
    ctx.step.email(
        "mail",
        lambda controls: {"subject": controls["subject"], "body": controls["footer"]},
        control_schema={
            "type": "object",
            "properties": {
                "subject": {"type": "string", "default": "Default subject"},
                "footer": {"type": "string", "default": "Default footer"},
            },
        },
    )


def test_norm_sends_each_steps_controls_and_its_sdk_applies_those_of_the_step_it_runs(
    monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued, run: Callable[..., None]
) -> None:
    sdk = Bridge(workflows=[controlled], strict=False)
    bodies: list[dict[str, Any]] = []

    def execute_on_the_sdk(
        url: str, *, secrets: Sequence[str], workflow_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        bodies.append(body)
        query = {"action": "execute", "workflowId": workflow_id}
        status, answer, _ = sdk.handle(
            method="POST", query=query, body=json.dumps(body), headers={}
        )
        assert status == 200, answer
        return answer

    monkeypatch.setattr(bridge, "execute", execute_on_the_sdk)
    notification = NotificationFactory(
        trigger_event__workflow_id="controlled", status=Notification.Status.RUNNING
    )
    BridgeSyncFactory(client=notification.client, flavour="norm")
    BridgeWorkflowFactory(
        client=notification.client, workflow_id="controlled", controls={"mail": {"footer": "Ciao"}}
    )
    StepFactory(notification=notification, step_id="note", type="in_app", position=0)
    Step.objects.update(status=Step.Status.COMPLETED)

    run(notification)

    assert bodies[0]["stepControls"] == {"mail": {"footer": "Ciao"}}
    assert bodies[0]["controls"] == {}
    mail = notification.steps.get(step_id="mail")
    assert mail.outputs == {"subject": "Default subject", "body": "Ciao"}


def test_provider_overrides_are_kept_on_the_message(enqueued: Enqueued) -> None:
    step = StepFactory(
        type="in_app",
        outputs={"body": "Hi"},
        providers={"inbox": {"badge": 3}},
        due_at=timezone.now(),
    )
    message_send(step_id=step.pk)
    message = Message.objects.get(step=step)
    assert message.content == {"body": "Hi", "providers": {"inbox": {"badge": 3}}}
    assert message.status == Message.Status.SENT


def test_step_controls_are_edited_in_the_admin_against_each_steps_schema(admin_client: Any) -> None:
    schema = {"type": "object", "properties": {"footer": {"type": "string"}}}
    registry = BridgeWorkflowFactory(
        steps=[{"stepId": "mail", "type": "email", "controlSchema": schema}]
    )
    url = reverse("admin:notify_bridgeworkflow_change", args=[registry.pk])
    assert "controlSchema" in admin_client.get(url).content.decode()

    for bad in ({"nope": {}}, {"mail": {"footer": 5}}, {"mail": "x"}):
        response = admin_client.post(url, {"controls": json.dumps(bad)})
        assert response.status_code == 200 and response.context["adminform"].form.errors, bad
    response = admin_client.post(url, {"controls": json.dumps({"mail": {"footer": "Ciao"}})})
    assert response.status_code == 302
    registry.refresh_from_db()
    assert registry.controls == {"mail": {"footer": "Ciao"}}


@workflow("relaunched")
def relaunched(ctx: Any) -> None:
    ctx.step.custom("first", lambda: {"n": 1})
    ctx.step.custom("second", lambda: {"n": 2})
    ctx.step.email(
        "mail",
        lambda controls: {"subject": "Hi", "body": controls["footer"]},
        control_schema={
            "type": "object",
            "properties": {"footer": {"type": "string", "default": "Default footer"}},
        },
    )


@pytest.mark.parametrize("done", [[], ["first"], ["first", "second"]])
def test_a_bridge_now_served_by_norms_sdk_is_driven_in_its_flavour_before_the_next_sync(
    execute: FakeExecute,
    enqueued: Enqueued,
    run: Callable[..., None],
    done: list[str],
) -> None:
    """The registry still says Novu's: norm's SDK answers the probe with the step it ran
    (read as Novu's 200, the notification completed with nothing sent) or, for two steps
    done, refuses the probe's reversed state (ExecutionStateOrderError, failed). It is
    asked again in norm's flavour, with the step's stored controls."""
    execute.sdk = Bridge(workflows=[relaunched], strict=False)
    notification = NotificationFactory(
        trigger_event__workflow_id="relaunched", status=Notification.Status.RUNNING
    )
    BridgeSyncFactory(client=notification.client, flavour="novu")
    BridgeWorkflowFactory(
        client=notification.client,
        workflow_id="relaunched",
        steps=[{"stepId": s, "type": "custom"} for s in ("first", "second")]
        + [{"stepId": "mail", "type": "email"}],
        controls={"mail": {"footer": "Ciao"}},
    )
    for position, step_id in enumerate(done):
        StepFactory(
            notification=notification,
            step_id=step_id,
            type="custom",
            position=position,
            status=Step.Status.COMPLETED,
            result={"n": position + 1},
        )

    run(notification)

    notification.refresh_from_db()
    assert notification.status == Notification.Status.RUNNING, notification.error
    steps = [call["step_id"] for call in execute.calls]
    assert steps == [None, None]  # the probe, then norm's own call
    step = notification.steps.get(position=len(done))
    expected = ["first", "second", "mail"][len(done)]
    assert (step.step_id, step.status) == (expected, Step.Status.SCHEDULED)
    if expected == "mail":
        assert step.outputs == {"subject": "Hi", "body": "Ciao"}
