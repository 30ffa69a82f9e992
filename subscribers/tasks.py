from __future__ import annotations

from typing import Any

from celery import shared_task

from subscribers import services


@shared_task(name="norm.subscriber.process", ignore_result=True)
def subscriber_process(trigger_event_id: int, recipient: dict[str, Any]) -> None:
    """Stage 3: upsert the subscriber and create its notification. A rerun finds both
    rows (unique per client/subscriberId and per event/subscriber) and adds nothing."""
    services.subscriber_process(trigger_event_id=trigger_event_id, recipient=recipient)
