"""The Celery tasks of stage 3, the subscriber worker: each loads by id and calls one
service in subscribers.services. Names and queues are config.pipeline's."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from config import pipeline
from subscribers import services


@shared_task(name=pipeline.SUBSCRIBER.task, bind=True, ignore_result=True, **pipeline.DB_RETRY)
def subscriber_process(self: Task, trigger_event_id: int, recipient: dict[str, Any]) -> None:
    """Stage 3: upsert the subscriber and create its notification. A rerun finds both
    rows (unique per client/subscriberId and per event/subscriber) and adds nothing;
    one delivered again after its worker died is counted (command_given_up)."""
    services.subscriber_process(
        trigger_event_id=trigger_event_id,
        recipient=recipient,
        redelivered=pipeline.redelivered(self),
        retried=bool(self.request.retries),
    )


@shared_task(
    name=pipeline.SUBSCRIBER_BATCH.task, bind=True, ignore_result=True, **pipeline.DB_RETRY
)
def subscribers_process(self: Task, trigger_event_id: int, subscriber_ids: list[str]) -> None:
    """Stage 3 for a chunk of a broadcast's or topic's audience: their notifications in one
    transaction. A rerun adds nothing (unique per event/subscriber); counted as above."""
    services.subscribers_process(
        trigger_event_id=trigger_event_id,
        subscriber_ids=subscriber_ids,
        redelivered=pipeline.redelivered(self),
    )


@shared_task(name="norm.subscriber.actor", ignore_result=True, **pipeline.DB_RETRY)
def actor_process(trigger_event_id: int) -> None:
    """A trigger's actor, as fan-outs before norm's upgrade sent it: the fan-out now
    upserts the actor itself, first. Kept for such commands still in the broker. A rerun
    updates the row to the same values."""
    services.actor_process(trigger_event_id=trigger_event_id)
