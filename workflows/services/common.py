"""What several of the pipeline's service modules share (no stage of its own, no task):
the statuses of an open step and of an active notification, the reasons a row ends with
(a deactivated client, a bug given up at NORM_MAX_CLAIMS), the reconciler's window on a
fan-out (FANOUT_RECHECK, which a subscriber's delete and a trigger's cancel read too), a
bug's reason for its row, a trigger's actor as the fan-out stores it, and the messages of
steps that will not be sent again given up (the step bookkeeping's and a cancel's)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import QuerySet

from config.db import bounded, error_text
from config.errors import ApiError
from messaging.models import Message
from subscribers.recipients import parse_actor
from workflows.models import Notification, Step

# How long the reconciler checks that a trigger's fan-out reached everyone, from its
# `recheck_from`: the fan-out's end (so a trigger that waited long in a backed-up
# workflows queue is checked too). A window, so that each tick counts the notifications
# of an hour's events, not of every event ever processed. The check runs only while the
# subscribers queue is empty (_room), and a backlog of it may outlast the window: the
# event's commands lost meanwhile (a flush, a restart), it was past its hour when the
# queue emptied, never checked again. So while the queue holds commands, each tick moves
# `recheck_from` on to now for the short events half-way through their window (each is
# written once per half hour of backlog): one leaves the window only after half an hour
# of ticks that found the queue empty, each of which checked it. A fan-out that reached
# everyone is not kept (it can no longer come up short), nor one run again MAX_REFANS
# times: the window still ends for both.
FANOUT_RECHECK = timedelta(hours=1)
OPEN_STEP = (Step.Status.SCHEDULED, Step.Status.PROCESSING)
ACTIVE = (Notification.Status.PENDING, Notification.Status.RUNNING)
# A client deactivated with work in flight: the API already refuses it, and the pipeline
# stops too (nothing more is fanned out, asked of its bridge or sent). Failed, not
# canceled, so its notifications can be retried once it is active again.
CLIENT_INACTIVE = "the client is deactivated: norm runs none of its notifications"
# How a row a bug failed NORM_MAX_CLAIMS times ends its reason.
GIVEN_UP = (
    "an internal error in norm; given up after NORM_MAX_CLAIMS runs ended on one, the "
    "traceback is in the worker's log"
)


def actor_body(actor: Any) -> dict[str, Any]:
    """A trigger's actor read as the fan-out stores it: a number is a subscriberId too,
    which this read as no actor at all. {} for none, or one stored before norm checked it."""
    try:
        return parse_actor(actor) or {}
    except ApiError:
        return {}


def internal_error_text(exc: Exception) -> str:
    """A bug's reason for its row: one line, its type and message, bounded (the admin and
    every page of the API that lists the row show it). The traceback is for the log."""
    return bounded(error_text(exc), 500)


def messages_give_up(step_ids: list[int] | QuerySet[Any], error: str) -> None:
    """The messages of steps that will not be sent again: failed, unless delivered after
    all. Left `sending` (a send that killed its worker until NORM_MAX_CLAIMS, one that
    failed for now under a cancel, one lost with its task), they read as still on their
    way, for good. `step_ids`: ids, or a query of them."""
    Message.objects.filter(step_id__in=step_ids, status=Message.Status.SENDING).update(
        status=Message.Status.FAILED, error=error
    )
