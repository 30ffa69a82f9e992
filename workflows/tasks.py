"""The Celery tasks of stages 2 and 4 (the fan-out, the echo), of a large cancel's rest,
and beat's reconciler: each loads by id and calls one service in workflows.services.
Names and queues are config.pipeline's."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from celery import Task, shared_task
from django.conf import settings

from config import pipeline
from workflows import bridge
from workflows.services import echo, fanout, operations, reconciler


@shared_task(name=pipeline.WORKFLOW.task, bind=True, ignore_result=True, **pipeline.DB_RETRY)
def workflow_run(self: Task, trigger_event_id: int, resumed: str | None = None) -> None:
    """Stage 2: fan a trigger event out to its recipients. Claims the event first,
    under the task's id, which its retries keep: a duplicate finds it claimed (or
    processed) and does nothing, and a rerun (its own retry, or the reconciler's once it
    released the event) sends commands only to recipients without a notification.
    `resumed`: when the run the database cut off claimed the event (ISO 8601)."""
    try:
        fanout.trigger_event_run(
            trigger_event_id=trigger_event_id,
            claim=self.request.id or "",
            resumed=datetime.fromisoformat(resumed) if resumed else None,
        )
    except pipeline.ClaimInterrupted as cut:
        # As message_send's: the retry takes the claim back uncounted (trigger_event_run).
        raise pipeline.db_retry(self, cut.__cause__, **cut.retry_kwargs) from cut


@shared_task(name=pipeline.CANCEL.task, ignore_result=True, **pipeline.DB_RETRY)
def trigger_cancel_finish(trigger_event_id: int) -> None:
    """Beside stage 2: cancel the notifications a trigger's cancel had no time for in its
    request. Each chunk ends only unfinished ones, so a second run ends none."""
    operations.trigger_cancel_finish(trigger_event_id=trigger_event_id)


# The retries for the bridge alone, carried in the retry's message headers: the
# request's `retries` counts the database's too (DB_RETRY), and a failover's five made
# the next bridge hiccup the last attempt, failing the notification with no retry left.
# Not an argument: in a rolling upgrade the retry goes to any echo worker, and the
# release before's echo_run takes the notification's id alone (TypeError, the
# notification left to the reconciler); a header it does not read, it ignores. A
# database retry does not carry it on: the bridge then has more tries, never fewer.
BRIDGE_RETRIES = "norm_bridge_retries"


@shared_task(
    name=pipeline.ECHO.task, bind=True, ignore_result=True, max_retries=None, **pipeline.DB_RETRY
)
def echo_run(self: Task, notification_id: str) -> None:
    """Stage 4: ask the bridge for the next step. Transient bridge errors retry with
    backoff; does nothing while a step is open, so a duplicate run is harmless."""
    bridge_retries = _bridge_retries(self.request)
    try:
        echo.echo_run(
            notification_id=notification_id,
            final_attempt=bridge_retries >= settings.NORM_BRIDGE_MAX_RETRIES,
        )
    except bridge.BridgeUnavailable as exc:
        countdown = pipeline.backoff(settings.NORM_BRIDGE_RETRY_BACKOFF, bridge_retries)
        raise self.retry(
            countdown=countdown, exc=exc, headers={BRIDGE_RETRIES: bridge_retries + 1}
        ) from exc


def _bridge_retries(request: Any) -> int:
    """BRIDGE_RETRIES of the task's message: a worker has its headers as the request's
    own, apply() (in-process) under `headers`. 0 in a message without it."""
    found = getattr(request, BRIDGE_RETRIES, None)
    if found is None:
        found = (request.headers or {}).get(BRIDGE_RETRIES)
    return found if isinstance(found, int) else 0


@shared_task(name=pipeline.RECONCILE.task, ignore_result=True)
def reconcile() -> dict[str, int]:
    """Beat: re-enqueue stalled work from the database. Everything it enqueues is claimed."""
    return reconciler.reconcile()
