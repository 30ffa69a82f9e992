"""Stage 4, the echo worker: the bridge asked for a notification's next step, its answer
checked and recorded as a step for the message worker (or the notification ended), and a
notification failed for good, with a warning a minute per reason.

Task: workflows.tasks.echo_run. Shares `notification_fail` and `skipped_result` (a skipped
step's entry in the state) with the step bookkeeping; ends a notification created in a race
with its trigger's cancel with operations' notification_cancel."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import F
from django.utils import timezone

from config import pipeline
from config.dates import iso_z
from config.db import bounded, error_text, storable
from config.logs import Quieted, loggable
from config.parsers import unfit
from config.redact import masked_url
from notify.selectors import signing_secrets
from subscribers.models import Subscriber
from subscribers.recipients import INLINE_FIELDS
from workflows import bridge, flavours, selectors
from workflows.delays import UnsupportedDelay, delay_until
from workflows.models import Notification, Step
from workflows.services.common import (
    ACTIVE,
    CLIENT_INACTIVE,
    GIVEN_UP,
    OPEN_STEP,
    actor_body,
    internal_error_text,
)
from workflows.services.operations import notification_cancel

logger = logging.getLogger(__name__)

STEP_ID_LENGTH = Step._meta.get_field("step_id").max_length or 0
# The most an in-app step's outputs may take, as JSON. Every page of a feed, the inbox and
# the activity lists up to 100 in-app messages, each twice (its step's outputs and its
# content), and a bridge may answer 10 MB (NORM_BRIDGE_MAX_RESPONSE_BYTES): a page of
# twelve such messages was 226 MB, built in a web process's memory (1.4 GB, which stayed
# taken, in a process serving every client) and sent whole to the caller, for an inbox
# that shows a line or two of each.
IN_APP_MAX_BYTES = 64 * 1024


def _subscriber_body(subscriber: Subscriber) -> dict[str, Any]:
    """The subscriber as the bridge gets it: its Novu attributes, the unset ones left out."""
    body = {
        "subscriberId": subscriber.subscriber_id,
        **{key: getattr(subscriber, field) for key, field in INLINE_FIELDS.items()},
    }
    return {k: v for k, v in body.items() if v not in ("", None)}


def _actor_stored(notification: Notification) -> dict[str, Any]:
    """The trigger's actor for the bridge, read as stored, as the step's subscriber is.
    As the trigger gave it, it could contradict the store: an actor that `to` lists with
    attributes of its own has those, and its `{{actor.firstName}}` was not its own
    `{{subscriber.firstName}}`; an attribute Novu refuses was never stored. The fan-out
    stores it before reaching anyone, so each recipient's steps see the same actor. As
    the trigger gave it once it is gone."""
    given = actor_body(notification.trigger_event.actor)
    actor_id = given.get("subscriberId")
    if not actor_id:
        return given
    actor: Subscriber | None = notification.subscriber
    if actor_id != notification.subscriber.subscriber_id:
        actor = Subscriber.objects.filter(
            client_id=notification.client_id, subscriber_id=actor_id
        ).first()
    return given if actor is None else _subscriber_body(actor)


def echo_run(*, notification_id: str, final_attempt: bool = True) -> None:
    """Ask the bridge for the notification's next step and record it.

    Safe to run twice: it does nothing while a step is open or once the notification
    is final, and two runs racing on the same state insert the same (notification,
    position) row, which the unique constraint lets through once.
    Raises BridgeUnavailable for the task to retry unless `final_attempt`.
    """
    read: list[Notification] = []  # the notification as this run read it, once it has
    # A bug (in norm, or an answer it did not foresee): recorded, failed at NORM_MAX_CLAIMS.
    with pipeline.bugs_recorded(
        lambda exc: _echo_internal_error(notification_id=notification_id, exc=exc, read=read),
        "the echo of notification",
        notification_id,
        logger,
        passes=(bridge.BridgeUnavailable,),  # the task's own retries
    ):
        _echo(notification_id=notification_id, final_attempt=final_attempt, read=read)


def _echo_internal_error(*, notification_id: str, exc: Exception, read: list[Notification]) -> None:
    reason = internal_error_text(exc)
    active = Notification.objects.filter(pk=notification_id, status__in=ACTIVE)
    # A bug on this run's read counts only while the row has not moved since (see `_echo`):
    # a duplicate echo's, after another run recorded the next step, put its reason on the
    # notification waiting for that step, began its quiet period again, and could fail it
    # under the step at NORM_MAX_CLAIMS.
    counted = active.filter(updated_at=read[0].updated_at) if read else active
    # As a transient bridge failure: the reason shown, the reconciler's grace from now.
    if not counted.update(
        internal_errors=F("internal_errors") + 1, error=reason, updated_at=timezone.now()
    ):
        return
    if active.filter(internal_errors__gte=settings.NORM_MAX_CLAIMS).exists():
        notification_fail(
            notification_id=notification_id,
            code="InternalError",
            message=f"{reason} ({GIVEN_UP})",
        )


def _echo(*, notification_id: str, final_attempt: bool, read: list[Notification]) -> None:
    """`echo_run`, its unexpected errors aside; the notification it reads put in `read`."""
    notification = _notification_to_echo(notification_id)
    if notification is None:
        # Deleted with its subscriber (or client) since its echo was sent: an expected
        # race with nothing to mend, as a step's send whose subscriber went ends quietly.
        logger.info("echo: notification %s is gone", notification_id)
        return
    read.append(notification)
    if notification.status in Notification.FINAL:
        return
    if notification.trigger_event.canceled_at is not None:
        # Created in a race with the cancel of its trigger.
        notification_cancel(notification=notification)
        return
    # A pending notification has no step: it turns running in the transaction that
    # records its first one, and never back. Its first echo (one of every notification's
    # few) skips the query; a run recording that step meanwhile is the race a read would
    # miss too, which the step's unique position settles.
    pending = notification.status == Notification.Status.PENDING
    steps = [] if pending else selectors.notification_steps(notification=notification)
    # Before the client's checks: a duplicate echo that failed the notification while its
    # step was sending left that step to be canceled by a transient failure, and the
    # message worker checks the client itself before it sends.
    if any(step.status in OPEN_STEP for step in steps):
        return  # the message worker owns the notification until its step is done
    if _client_refused(notification):
        return
    state = selectors.bridge_state(notification=notification, steps=steps)
    # An error is the bridge's answer to the state this run read. A duplicate echo (the
    # reconciler's, a redelivery) may have read it before another run recorded the next
    # step: an error for that older state must not fail the notification under the step,
    # whose message would then never go out. So it counts only while the row has not
    # moved since this run read it (recording a step always moves it); if it moved, the
    # next echo asks again with the current state.
    answer = _bridge_answer(notification, state=state, final_attempt=final_attempt)
    if answer is None:
        return
    try:
        undelivered = next((s for s in reversed(steps) if s.status == Step.Status.FAILED), None)
        _record_answer(
            notification=notification, state=state, answer=answer, undelivered=undelivered
        )
    except (OperationalError, InterfaceError):
        raise  # the database is away: the task retries
    except Exception as exc:
        # An answer norm cannot record (a delay too long to represent, say): failing
        # the notification keeps the reconciler from asking the bridge again forever.
        # A broadcast's notifications each get the same answer: one traceback a minute.
        pipeline.bug_logged(logger, exc, "echo: the record of the answer for", notification.pk)
        _refuse_answer(
            notification,
            code="BridgeInvalidResponse",
            message=f"norm could not record the bridge's answer: {error_text(exc)}",
        )


def _notification_to_echo(notification_id: str) -> Notification | None:
    """The notification, with what the echo reads of its subscriber, trigger and client."""
    return (
        Notification.objects.select_related("subscriber", "trigger_event", "client")
        # The event's recipients can run to a thousand entries, those forgotten and the
        # redelivered commands to a broadcast's; the echo needs none of them.
        .defer(
            "trigger_event__to",
            "trigger_event__overrides",
            "trigger_event__forgotten",
            "trigger_event__redelivered",
        )
        .filter(pk=notification_id)
        .first()
    )


def _client_refused(notification: Notification) -> bool:
    """Whether the client no longer has the notification sent, which is then failed: the
    client inactive, or the bridge no longer one of the client's bridge URLs."""
    if not notification.client.is_active:
        notification_fail(
            notification_id=notification.pk, code="ClientInactive", message=CLIENT_INACTIVE
        )
        return True
    if notification.resource not in notification.client.bridge_urls():
        # The client's bridge moved, or the URL left its allowed list, after the trigger:
        # norm calls only URLs the client has now, so the old one is never asked again.
        notification_fail(
            notification_id=notification.pk,
            code="BridgeNotAllowed",
            message=f"the bridge {masked_url(notification.resource)} is no longer one of the client's "
            "bridge URLs",
        )
        return True
    return False


def _bridge_answer(
    notification: Notification, *, state: list[dict[str, Any]], final_attempt: bool
) -> dict[str, Any] | None:
    """The bridge's answer to `state`: its next step, or done. An error ends the echo,
    counted only while the row has not moved (see `_echo`): a bridge down is raised for
    the task's retry, and on the last attempt fails the notification, as any other error
    does; None then."""
    body = {
        "payload": notification.trigger_event.payload,
        "subscriber": _subscriber_body(notification.subscriber),
        "state": state,
        "controls": {},
        "actor": _actor_stored(notification),
        "context": {},
    }
    try:
        return flavours.next_step(
            notification=notification,
            body=body,
            secrets=signing_secrets(client_id=notification.client_id, cached=True),
        )
    except bridge.BridgeUnavailable as exc:
        now = timezone.now()
        counted = Notification.objects.filter(
            pk=notification.pk, updated_at=notification.updated_at
        ).update(bridge_attempts=F("bridge_attempts") + 1, error=str(exc), updated_at=now)
        if counted:
            notification.updated_at = now  # this run's own move: a bug after it still counts
        if not final_attempt:
            _bridge_down_log(notification, exc)
            raise
        if counted:
            notification_fail(
                notification_id=notification.pk, code=exc.code, message=exc.message, read_at=now
            )
        return None
    except bridge.BridgeError as exc:
        _refuse_answer(notification, code=exc.code, message=exc.message)
        return None


# A bridge down fails the echo of each of its notifications, each retried: one line a
# minute per bridge, not one per notification of a broadcast per retry.
_bridge_down = Quieted()


def _bridge_down_log(notification: Notification, exc: bridge.BridgeUnavailable) -> None:
    """Say that the bridge is down (a warning without traceback: retried, and the bridge's
    to mend), naming the notification, its client and the bridge."""
    held = _bridge_down.due((notification.client_id, notification.resource))
    if held is not None:
        logger.warning(
            "echo of notification %s (client %s, workflow %s): the bridge %s is unavailable, "
            "retried up to NORM_BRIDGE_MAX_RETRIES times: %s (%d more such echoes since the "
            "last such line)",
            notification.pk,
            notification.client_id,
            # The bridge's words: its workflow's id, its error's code and message.
            loggable(notification.workflow_id),
            masked_url(notification.resource),
            loggable(exc),
            held,
        )


def _record_answer(
    *,
    notification: Notification,
    state: list[dict[str, Any]],
    answer: dict[str, Any],
    undelivered: Step | None = None,
) -> None:
    """Record the step the bridge named, or end the notification if it said done: failed,
    if the workflow went on past an `undelivered` step, completed otherwise."""
    if answer.get("done") is True:
        _notification_end(notification, undelivered=undelivered)
        return
    # A str, a str and an object once _answer_fault passes them, which mypy does not follow.
    step_id: Any
    step_type: Any
    outputs: Any
    step_id, step_type = answer.get("stepId"), answer.get("type")
    outputs, providers = answer.get("outputs"), answer.get("providers") or {}
    options = answer.get("options")
    skipped = isinstance(options, dict) and options.get("skip") is True
    fault = _answer_fault(step_id, step_type, outputs, providers, skipped=skipped, state=state)
    if fault is not None:
        code, message = fault
        _refuse_answer(notification, code=code, message=message)
        return
    now = timezone.now()
    due_at = now
    if step_type == "delay" and not skipped:
        try:
            # On the subscriber's clock, as Novu reads a timed delay's cron.
            due_at = delay_until(outputs, now=now, zone=notification.subscriber.timezone)
        except UnsupportedDelay as exc:
            _refuse_answer(
                notification,
                code="UnsupportedDelay",
                message=f"step '{step_id}': {exc}",
            )
            return
    _step_record(
        notification,
        step_id=step_id,
        step_type=step_type,
        position=len(state),
        outputs=outputs,
        providers=providers,
        skipped=skipped,
        now=now,
        due_at=due_at,
    )


def _notification_end(notification: Notification, *, undelivered: Step | None) -> None:
    """End a notification the bridge said done: failed if the workflow went on past an
    `undelivered` step, completed otherwise."""
    # Only if no step was recorded since this run read the notification: recording
    # one always moves its updated_at (to the step's due time). A duplicate echo that
    # read the state before another run recorded a step can be answered done where
    # that run was answered the step (the code branches on an in-app message read
    # in between), and must not complete the notification under the step, which
    # then was never sent. Compared on the row itself, not by looking for the step:
    # an UPDATE that waited for the recording to commit re-checks the row's own
    # columns, but would still not see the step (PostgreSQL's READ COMMITTED).
    ended = {"status": Notification.Status.COMPLETED, "error": "", "error_code": ""}
    if undelivered is not None:  # gone on from (step_undelivered): the last of them
        ended = {
            "status": Notification.Status.FAILED,
            "error": undelivered.notification_error(),
            "error_code": "SendFailed",
        }
    Notification.objects.filter(
        pk=notification.pk, status__in=ACTIVE, updated_at=notification.updated_at
    ).update(completed_at=timezone.now(), **ended)


def _answer_fault(
    step_id: Any,
    step_type: Any,
    outputs: Any,
    providers: Any,
    *,
    skipped: bool,
    state: list[dict[str, Any]],
) -> tuple[str, str] | None:
    """What keeps norm from recording the step the bridge answered, as the code and the
    message its notification fails with; None if nothing does."""
    known = selectors.STEP_TYPES | selectors.UNSUPPORTED_STEP_TYPES
    # The type is checked to be a string first: a list or an object is no key of a set.
    named = isinstance(step_id, str) and bool(step_id) and isinstance(step_type, str)
    if not named or step_type not in known:
        return (
            "BridgeInvalidResponse",
            f"the bridge answered no valid next step (stepId={step_id!r}, type={step_type!r})",
        )
    # Skipped, a step of a type norm does not run asks nothing of norm: it is recorded
    # skipped and the workflow goes on, as in Novu (a digest only some triggers need).
    if step_type in selectors.UNSUPPORTED_STEP_TYPES and not skipped:
        return (
            "UnsupportedStepType",
            f"step '{step_id}' is a {step_type} step, which norm does not run yet",
        )
    if len(step_id) > STEP_ID_LENGTH:
        return (
            "BridgeInvalidResponse",
            f"the bridge answered a stepId of {len(step_id)} characters; norm takes "
            f"at most {STEP_ID_LENGTH}",
        )
    if shape := _shape_fault(step_id, outputs, providers):
        return ("BridgeInvalidResponse", shape)
    if any(entry["stepId"] == step_id for entry in state):
        return (
            "BridgeInvalidResponse",
            f"the bridge returned step '{step_id}' again, which already ran",
        )
    if step_type == "in_app":
        # As its message will hold them: its provider overrides go with its outputs
        # (messaging's _message_stored), and a feed's page reads every message whole.
        held = {**outputs, "providers": providers} if providers else outputs
        size = len(json.dumps(held, ensure_ascii=False).encode())
        if size > IN_APP_MAX_BYTES:
            return (
                "BridgeResponseTooLarge",
                f"the bridge answered in-app step '{step_id}' with outputs "
                f"{'and providers ' if providers else ''}of {size} bytes; "
                f"an in-app message holds at most {IN_APP_MAX_BYTES} (a page of a feed "
                "lists up to 100)",
            )
    # Every later call carries the state back, each step's result (a custom step's, its
    # whole outputs): bounded by what norm reads of one answer, or a bridge of large
    # outputs built calls of gigabytes, each in an echo worker's memory, before the last
    # step NORM_MAX_STEPS allows.
    carried = len(json.dumps(state).encode()) + len(json.dumps(outputs).encode())
    if carried > settings.NORM_BRIDGE_MAX_RESPONSE_BYTES:
        return (
            "BridgeResponseTooLarge",
            f"the bridge answered step '{step_id}' with outputs that bring the state every "
            f"later call carries back to {carried} bytes, over NORM_BRIDGE_MAX_RESPONSE_BYTES "
            f"({settings.NORM_BRIDGE_MAX_RESPONSE_BYTES})",
        )
    if len(state) >= settings.NORM_MAX_STEPS:
        # Checked on the answer, not before the call: the bridge may say done after the last.
        return (
            "TooManySteps",
            f"the bridge answered step '{step_id}' after {len(state)} steps, and a "
            f"notification runs at most NORM_MAX_STEPS ({settings.NORM_MAX_STEPS}): a "
            "workflow that never ends (a loop over new step ids?)",
        )
    return None


def _shape_fault(step_id: str, outputs: Any, providers: Any) -> str:
    """Why the step's id, outputs and providers cannot be recorded as the bridge answered
    them ("" if they can)."""
    if problem := unfit(step_id):
        return f"the bridge answered stepId '{step_id}': {problem}"
    if not isinstance(outputs, dict) or not isinstance(providers, dict):
        # Taken as {} (or stored as given), the step ran on nothing: a custom step's
        # result, which later steps read, was {}; a channel's message failed for a
        # missing subject, far from the bridge's mistake.
        return (
            f"the bridge answered step '{step_id}' with outputs and providers that "
            f"are not both objects (outputs: {type(outputs).__name__}, providers: "
            f"{type(providers).__name__})"
        )
    for name, value in (("outputs", outputs), ("providers", providers)):
        # Django reads a step's JSON back recursively, in a request's stack too: 900
        # levels were recorded, and made every page of the activity API that listed the
        # notification a 500. A NUL, a lone surrogate or a NaN (which Python's JSON reads)
        # PostgreSQL's jsonb refuses: the step's INSERT failed, logged as a bug of norm's.
        if problem := unfit(value):
            return f"the bridge answered step '{step_id}' with {name} norm cannot keep: {problem}"
    return ""


def _step_record(
    notification: Notification,
    *,
    step_id: str,
    step_type: str,
    position: int,
    outputs: dict[str, Any],
    providers: dict[str, Any],
    skipped: bool,
    now: datetime,
    due_at: datetime,
) -> None:
    """Record the step the bridge answered, due at `due_at`, and enqueue what runs next:
    the step's send, or the echo past a skipped step."""
    countdown = (due_at - now).total_seconds()
    on_broker = countdown <= settings.NORM_BROKER_MAX_COUNTDOWN
    try:
        with transaction.atomic():
            # A notification is pending until its first step is recorded. One waiting
            # for a delay is quiet until the step is due, not idle: its updated_at is
            # the due time, so the reconciler's search for idle ones passes it by. It has
            # moved on: an earlier attempt's reason (a bridge down, a bug) is no longer its,
            # and NORM_MAX_CLAIMS bounds the runs a bug ends at one point of the workflow,
            # not all those of its life (three passing bugs failed a long one).
            still_active = Notification.objects.filter(
                pk=notification.pk, status__in=ACTIVE
            ).update(
                status=Notification.Status.RUNNING, updated_at=due_at, error="", internal_errors=0
            )
            if not still_active:
                return  # canceled or failed while the bridge was answering
            step = Step.objects.create(
                notification=notification,
                step_id=step_id,
                type=step_type,
                position=position,
                outputs=outputs,
                providers=providers,
                status=Step.Status.SKIPPED if skipped else Step.Status.SCHEDULED,
                result=skipped_result(step_type, notification) if skipped else {},
                due_at=due_at,
                enqueued_at=now if on_broker and not skipped else None,
                completed_at=now if skipped else None,
            )
            workflow = notification.workflow_id
            if skipped:
                pipeline.enqueue_on_commit(pipeline.ECHO, str(notification.pk), workflow=workflow)
            elif on_broker:
                pipeline.enqueue_on_commit(
                    pipeline.MESSAGE, step.pk, workflow=workflow, countdown=countdown
                )
            # A longer delay waits in the database; the reconciler enqueues it when due.
    except IntegrityError:
        logger.info(
            "echo: step %s of %s was recorded by a concurrent run",
            loggable(step_id),
            notification.pk,
        )


def skipped_result(step_type: str, notification: Notification) -> dict[str, Any]:
    """A skipped step's entry in the state: what Novu's worker sends for it, which Novu's
    framework holds to the type's result schema when it replays the step (a `{}` for a
    digest or a throttle is refused: `events`, `throttled` are required)."""
    if step_type == "in_app":
        return selectors.in_app_result(None)
    if step_type == "delay":
        return {"duration": 0}
    if step_type == "digest":
        # Novu's: the digest's events are the run's own and those merged into it; a
        # skipped one merged none. Its code then renders the one event, not none.
        own = {
            "id": str(notification.pk),
            "time": iso_z(notification.created_at),
            "payload": notification.trigger_event.payload,
        }
        return {"events": [own], "eventCount": 1}
    if step_type == "throttle":
        return {"throttled": False}  # Novu's for a throttle that did not run
    return {}  # channels and tool (`{}`), custom and http_request (no output stored)


def _refuse_answer(notification: Notification, *, code: str, message: str) -> None:
    """Fail the notification for the bridge's answer (or refusal) to the state this run
    read: only while the row has not moved since (see `_echo`). The reason is bounded, and
    kept to what PostgreSQL holds, as a bridge's own error message is: it may quote what
    the answer held (a stepId, a type, a delay's unit), any length and text it wrote."""
    notification_fail(
        notification_id=notification.pk,
        code=code,
        message=bounded(storable(message), bridge.MAX_MESSAGE),
        read_at=notification.updated_at,
    )


def notification_fail(
    *, notification_id: uuid.UUID | str, code: str, message: str, read_at: datetime | None = None
) -> None:
    """Fail the notification unless it has ended. `read_at`: the `updated_at` a run read
    before asking the bridge, for a failure that is the bridge's answer to that state:
    only if the row has not moved since (see `_echo`)."""
    rows = Notification.objects.filter(pk=notification_id)
    if read_at is not None:
        rows = rows.filter(updated_at=read_at)
    failed = rows.exclude(status__in=Notification.FINAL).update(
        status=Notification.Status.FAILED,
        error=message,
        error_code=code[:100],  # the column's length; bridges choose their codes
        completed_at=timezone.now(),
    )
    if failed:
        _failure_log(notification_id, code=code, message=message)


# A failure most often fails every notification of a client alike (a bridge refusing
# norm's signature, a key norm cannot decrypt): one line a minute per reason's code.
_failures = Quieted()


def _failure_log(notification_id: uuid.UUID | str, *, code: str, message: str) -> None:
    """Say that a notification failed for good, naming it, its client and workflow: the
    admin alone showed it. A warning: what failed it is no bug of norm's (a bug's
    traceback is logged where it is caught)."""
    held = _failures.due(code)
    if held is None:
        return
    client_id, workflow_id = (
        Notification.objects.filter(pk=notification_id)
        .values_list("client_id", "workflow_id")
        .first()
    ) or (None, None)
    logger.warning(
        "notification %s (client %s, workflow %s) failed: %s: %s (%d more failed with %s "
        "since the last such line)",
        notification_id,
        client_id,
        # Most often the bridge's words (its workflow's id, its error's code and message).
        loggable(workflow_id),
        loggable(code),
        loggable(message),
        held,
        loggable(code),
    )
