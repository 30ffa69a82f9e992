"""The Celery task of stage 5, the message worker: it loads a step by id and calls
message_send in messaging.services. Its name and queue are config.pipeline's."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from celery import Task, shared_task

from config import pipeline
from messaging import services


@shared_task(name=pipeline.MESSAGE.task, bind=True, ignore_result=True, **pipeline.DB_RETRY)
def message_send(
    self: Task, step_id: int, sent: dict[str, Any] | None = None, resumed: str | None = None
) -> None:
    """Stage 5: send one step's message or record its action. Claims the step first,
    under the task's id, which its retries keep. `sent`: what the provider answered a
    run whose record of it the database refused, for the retry to record, not send.
    `resumed`: when the run the database cut off claimed the step (ISO 8601)."""
    try:
        services.message_send(
            step_id=step_id,
            claim=self.request.id or "",
            sent=sent,
            resumed=datetime.fromisoformat(resumed) if resumed else None,
        )
    except (pipeline.ClaimInterrupted, services.SentUnrecorded) as cut:
        # Retried as DB_RETRY retries the database's error, carrying what the run learned
        # before it: only the task's message outlives the run (the database being away).
        # A retry that resumes a claim takes it back uncounted; redelivered (its worker
        # died), it carries a time its own claim has moved on from, and counts (step_claim).
        raise pipeline.db_retry(self, cut.__cause__, **cut.retry_kwargs) from cut
