from __future__ import annotations

from datetime import datetime

from celery import Task, shared_task
from django.conf import settings

from config import pipeline
from workflows import bridge, services


@shared_task(name="norm.workflow.run", bind=True, ignore_result=True, **pipeline.DB_RETRY)
def workflow_run(self: Task, trigger_event_id: int, resumed: str | None = None) -> None:
    """Stage 2: fan a trigger event out to its recipients. Claims the event first,
    under the task's id, which its retries keep. `resumed`: when the run the database
    cut off claimed the event (ISO 8601)."""
    try:
        services.trigger_event_run(
            trigger_event_id=trigger_event_id,
            claim=self.request.id or "",
            resumed=datetime.fromisoformat(resumed) if resumed else None,
        )
    except pipeline.ClaimInterrupted as cut:
        # As message_send's: the retry takes the claim back uncounted (trigger_event_run).
        raise pipeline.db_retry(self, cut.__cause__, **cut.retry_kwargs) from cut


@shared_task(name="norm.trigger.cancel", ignore_result=True, **pipeline.DB_RETRY)
def trigger_cancel_finish(trigger_event_id: int) -> None:
    """Beside stage 2: cancel the notifications a trigger's cancel had no time for in its
    request. Each chunk ends only unfinished ones, so a second run ends none."""
    services.trigger_cancel_finish(trigger_event_id=trigger_event_id)


@shared_task(
    name="norm.echo.run", bind=True, ignore_result=True, max_retries=None, **pipeline.DB_RETRY
)
def echo_run(self: Task, notification_id: str, bridge_retries: int = 0) -> None:
    """Stage 4: ask the bridge for the next step. Transient bridge errors retry with
    backoff; does nothing while a step is open, so a duplicate run is harmless.

    `bridge_retries` counts the retries for the bridge alone: the request's `retries`
    counts the database's too (DB_RETRY), and a failover's five made the next bridge
    hiccup the last attempt, failing the notification with no retry left."""
    try:
        services.echo_run(
            notification_id=notification_id,
            final_attempt=bridge_retries >= settings.NORM_BRIDGE_MAX_RETRIES,
        )
    except bridge.BridgeUnavailable as exc:
        countdown = pipeline.backoff(settings.NORM_BRIDGE_RETRY_BACKOFF, bridge_retries)
        raise self.retry(
            args=[notification_id],
            kwargs={"bridge_retries": bridge_retries + 1},
            countdown=countdown,
            exc=exc,
        ) from exc


@shared_task(name="norm.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    """Beat: re-enqueue stalled work from the database. Everything it enqueues is claimed."""
    return services.reconcile()
