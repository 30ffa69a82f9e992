from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from notify.models import Client, TriggerEvent
from subscribers.models import Subscriber
from subscribers.recipients import INLINE_FIELDS
from workflows.services import notification_create


def subscriber_upsert(*, client: Client | int, recipient: dict[str, Any]) -> Subscriber:
    """Find or create a subscriber; attributes given inline in a trigger update it."""
    client_id = client if isinstance(client, int) else client.pk
    values = {INLINE_FIELDS[k]: v for k, v in recipient.items() if k in INLINE_FIELDS}
    subscriber_id = str(recipient["subscriberId"])
    try:
        with transaction.atomic():
            subscriber, created = Subscriber.objects.get_or_create(
                client_id=client_id, subscriber_id=subscriber_id, defaults=values
            )
    except IntegrityError:  # created concurrently by another recipient's command
        subscriber, created = (
            Subscriber.objects.get(client_id=client_id, subscriber_id=subscriber_id),
            False,
        )
    changed = {k: v for k, v in values.items() if getattr(subscriber, k) != v}
    if not created and changed:
        for key, value in changed.items():
            setattr(subscriber, key, value)
        subscriber.save(update_fields=[*changed, "updated_at"])
    return subscriber


def subscriber_process(*, trigger_event_id: int, recipient: dict[str, Any]) -> None:
    """Stage 3: the subscriber, then its notification (unique per event and subscriber)."""
    event = TriggerEvent.objects.filter(pk=trigger_event_id).first()
    if event is None:
        return
    subscriber = subscriber_upsert(client=event.client_id, recipient=recipient)
    notification_create(trigger_event=event, subscriber=subscriber)
