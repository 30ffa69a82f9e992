"""Asking a bridge for a notification's next step, in the flavour it speaks (BRIDGE.md).

Both flavours answer the same shape, what norm's SDK returns on execute:
`{"done": bool, "stepId", "type", "outputs", "providers", "options": {"skip"}}`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from config.db import bounded, storable
from config.redact import masked_url
from notify.models import BridgeSync, BridgeWorkflow
from notify.selectors import bridge_workflow_get
from workflows import bridge
from workflows.models import Notification, Step
from workflows.registry import bridge_flavour, bridge_sync
from workflows.sdk.errors import ExecutionStateOrderError
from workflows.selectors import CHANNEL_TYPES, UNSUPPORTED_STEP_TYPES

NextStep = Callable[..., dict[str, Any]]


def _done() -> dict[str, Any]:
    return {"done": True, "outputs": {}, "options": {"skip": False}}


def _registry(notification: Notification, *, cached: bool = True) -> BridgeWorkflow | None:
    """The workflow's registry entry: its steps and their controls, read every step."""
    return bridge_workflow_get(
        client_id=notification.client_id,
        bridge_url=notification.resource,
        workflow_id=notification.workflow_id,
        cached=cached,
    )


def next_step_norm(
    *, notification: Notification, body: dict[str, Any], secrets: Sequence[str]
) -> dict[str, Any]:
    """norm's SDK runs the code up to the first step beyond the state and says which it is.

    norm cannot know that step before the call, so it sends every step's stored controls
    under `stepControls` (norm's extension; the SDK applies the entry of the step it runs).
    """
    registered = _registry(notification)
    sent = (
        {**body, "stepControls": registered.controls}
        if registered and registered.controls
        else body
    )
    # A bridge of Novu's is driven so while its flavour could not be told (its health-check
    # failed at the sync that found its workflows): this call is then Novu's probe, and is
    # read as one, rather than fail the notification for good. Its signature too: the call
    # is not told how the bridge parses numbers (`bridge.call`), so a body JS writes back
    # otherwise (an integer beyond 2**53), refused whole, is sent again as JS writes it.
    try:
        answer = bridge.execute(
            notification.resource, secrets=secrets, workflow_id=notification.workflow_id, body=sent
        )
    except bridge.BridgeError as exc:
        if _skipped_last(notification, body["state"], exc):
            return _done()
        step_id = _missing_step(exc)  # norm's SDK names no missing step in its own mode
        if step_id is None:
            raise
    else:
        if "done" not in answer and "metadata" in answer:  # Novu's: each step has state
            return _done()
        return answer
    return _execute_step(
        notification, body={**body, "state": body["state"][::-1]}, secrets=secrets, step_id=step_id
    )


def next_step_novu(
    *, notification: Notification, body: dict[str, Any], secrets: Sequence[str]
) -> dict[str, Any]:
    """Novu's SDK runs one named step and never says "done", so norm probes first.

    Executed without a stepId, it replays every step it reaches and names the first one
    without state (ExecutionStateCorruptError), or answers 200 when each has state: done.
    Probing each time, rather than walking the discovered order, keeps branches right.
    """
    url, workflow_id = notification.resource, notification.workflow_id
    # Newest first, as Novu's worker sends it; the SDK looks entries up by id only.
    probe = {**body, "state": body["state"][::-1]}
    # A bridge now served by norm's SDK is driven so until the next sync tells its flavour
    # (within NORM_REGISTRY_TTL): the probe is then norm's own mode, which its SDK answers
    # with the step it ran (the stored controls left out) or refuses for the reversed
    # state. Read as Novu's 200, the notification completed with no step sent: norm's
    # SDK is asked again in its own flavour.
    try:
        # Its numbers as JS reads them, or it refuses the signature (canonical_json).
        answer = bridge.execute(
            url, secrets=secrets, workflow_id=workflow_id, body=probe, js_integers=True
        )
    except bridge.BridgeError as exc:
        if exc.code == ExecutionStateOrderError.__name__:
            return next_step_norm(notification=notification, body=body, secrets=secrets)
        if _skipped_last(notification, body["state"], exc):
            return _done()
        step_id = _missing_step(exc)
        if step_id is None:
            raise
    else:
        if "done" in answer:  # Novu's SDK never says it
            return next_step_norm(notification=notification, body=body, secrets=secrets)
        _check_execute_answer(notification, answer)
        return _done()
    return _execute_step(notification, body=probe, secrets=secrets, step_id=step_id)


def _check_execute_answer(notification: Notification, answer: dict[str, Any]) -> None:
    """Refuse a 200 that is no answer of Novu's SDK to execute (every version's has its
    `outputs`): an endpoint answering any JSON, `{}` or `{"status": "maintenance"}`,
    read as done, completed every notification with nothing sent."""
    if not isinstance(answer.get("outputs"), dict):
        raise bridge.BridgeError(
            "BridgeInvalidResponse",
            f"the bridge {masked_url(notification.resource)} answered execute with no "
            "`outputs` object, as no version of Novu's framework does: is its URL the "
            "bridge endpoint?",
        )


def _skipped_last(
    notification: Notification, state: list[dict[str, Any]], exc: bridge.BridgeError
) -> bool:
    """Whether Novu's SDK refused, replaying it, the result of the step norm recorded
    last, skipped, and the last its discover declares: a custom step whose output schema
    requires a key, for which a skip leaves `{}`. Novu's worker replays a step only to
    run one after it, so it completes such a workflow; the probe that asks whether
    anything comes after refused it, and failed every such notification, its messages
    all sent. Skipped before another step, it fails as with Novu's worker."""
    if exc.code != "ExecutionStateResultInvalidError" or not state:
        return False
    last = state[-1]  # the state in run order
    if last["state"]["status"] != Step.Status.SKIPPED or f"`{last['stepId']}`" not in exc.message:
        return False
    registered = _registry(notification)
    steps = registered.steps if registered else []
    return bool(steps) and isinstance(steps[-1], dict) and steps[-1].get("stepId") == last["stepId"]


def _missing_step(exc: bridge.BridgeError) -> str | None:
    """The step Novu's SDK names as the first without state, if that is its refusal."""
    data = exc.data if isinstance(exc.data, dict) else {}
    step_id = data.get("stepId") if exc.code == "ExecutionStateCorruptError" else None
    return step_id if isinstance(step_id, str) and step_id else None


def _execute_step(
    notification: Notification, *, body: dict[str, Any], secrets: Sequence[str], step_id: str
) -> dict[str, Any]:
    """Novu's SDK runs `step_id`, with its stored controls."""
    step_type, controls = _discovered_step(notification, step_id)
    try:
        answer = bridge.execute(
            notification.resource,
            secrets=secrets,
            workflow_id=notification.workflow_id,
            body={**body, "controls": controls},
            step_id=step_id,
            js_integers=True,
        )
    except bridge.BridgeError as exc:
        if (first := _missing_step(exc)) is None:
            raise
        raise _path_changed(f"reached step '{first}' before step '{step_id}'") from exc
    _check_execute_answer(notification, answer)
    if step_type in NEVER_EMPTY and _not_reached(answer):
        raise _path_changed(f"did not reach step '{step_id}'")
    return {**answer, "stepId": step_id, "type": step_type, "done": False}


# The step types whose outputs Novu's SDK never answers empty: each one's output schema
# requires a field (a delay its amount or cron, an in-app message its subject or body).
NEVER_EMPTY = CHANNEL_TYPES | UNSUPPORTED_STEP_TYPES | {"delay"}


def _not_reached(answer: dict[str, Any]) -> bool:
    """Whether an execute answer is Novu's SDK's for a step its code did not reach (it
    replayed each step it did reach, and the code returned): no outputs, no skip."""
    options = answer.get("options")
    skipped = isinstance(options, dict) and options.get("skip") is True
    return not answer["outputs"] and not skipped


def _path_changed(what: str) -> bridge.BridgeUnavailable:
    """The probe and the execute are two runs of the bridge's code, on the same state: one
    that takes another path in between (a deployment, a branch on the time or on data
    outside the state) does not run the step the probe named. Transient: the retry
    probes again and finds the step that now comes next, or that none does. Recorded,
    the step ran on outputs it never had (an email without content, a delay of no
    amount), and a step now first failed the notification as ExecutionStateCorruptError."""
    message = (
        f"on execute, the bridge's code {what}, which its probe had named as the next "
        "step: it took another path between the two calls (a deployment, or a branch on "
        "the time or on data outside the state)"
    )
    # The reason each try stores: it quotes step ids of any length and text the bridge wrote.
    return bridge.BridgeUnavailable(
        "StepNotReached", bounded(storable(message), bridge.MAX_MESSAGE)
    )


def _discovered_step(notification: Notification, step_id: str) -> tuple[str, dict[str, Any]]:
    """The step's type from the registry, and its stored controls; discovers once more
    for a step the registry does not know (the code may have changed since)."""
    for attempt in range(2):
        registered = _registry(notification, cached=attempt == 0)  # fresh after the sync
        steps, controls = (registered.steps, registered.controls) if registered else ([], {})
        found = next((s for s in steps if isinstance(s, dict) and s.get("stepId") == step_id), None)
        if found is not None:
            return str(found.get("type")), dict(controls.get(step_id) or {})
        if attempt == 0:
            bridge_sync(client=notification.client, bridge_url=notification.resource)
    raise bridge.BridgeError(
        "StepNotDiscovered",
        f"the bridge {masked_url(notification.resource)} names step '{step_id}' of workflow "
        f"'{notification.workflow_id}', which its discover does not declare, so norm cannot "
        "tell its type",
        data={"workflowId": notification.workflow_id, "stepId": step_id},
    )


# Each choice is its value, a str: mypy without Django's stubs reads (value, label).
NEXT_STEP: dict[str, NextStep] = {
    BridgeSync.Flavour.NORM: next_step_norm,  # type: ignore[dict-item]
    BridgeSync.Flavour.NOVU: next_step_novu,  # type: ignore[dict-item]
}


def next_step(
    *, notification: Notification, body: dict[str, Any], secrets: Sequence[str]
) -> dict[str, Any]:
    """Ask the notification's bridge for its next step, in the flavour the bridge speaks."""
    flavour = bridge_flavour(
        client_id=notification.client_id, bridge_url=notification.resource, cached=True
    )
    return NEXT_STEP[flavour](notification=notification, body=body, secrets=secrets)
