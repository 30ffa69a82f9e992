from __future__ import annotations

from celery import Task, shared_task

from config import pipeline
from messaging import services


@shared_task(name="norm.message.send", bind=True, ignore_result=True, **pipeline.DB_RETRY)
def message_send(self: Task, step_id: int) -> None:
    """Stage 5: send one step's message or record its action. Claims the step first,
    under the task's id, which its retries keep."""
    services.message_send(step_id=step_id, claim=self.request.id or "")
