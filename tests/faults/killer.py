"""A fault for a test's worker to import (`celery worker -I tests.faults.killer`): a
subscriber command reaching a recipient whose subscriberId starts with "poison" ends its
worker process in the middle of its work, each time it runs, as the OOM killer would
(SIGKILL: no handler runs, nothing is acknowledged)."""

from __future__ import annotations

import os
import signal
from typing import Any

from celery.signals import worker_process_init

POISON = "poison"


def _die_for_poison(subscriber_ids: list[str]) -> None:
    if any(str(subscriber_id).startswith(POISON) for subscriber_id in subscriber_ids):
        os.kill(os.getpid(), signal.SIGKILL)


@worker_process_init.connect
def _poisoned(**_: Any) -> None:
    """In each pool process, once Django is set up: the commands' work, past the count of
    their runs (subscribers.services.command_given_up), dies for a poisoned recipient."""
    from subscribers import services

    one, chunk = services._subscriber_process, services._subscribers_process

    def subscriber_process(
        *, trigger_event_id: int, recipient: dict[str, Any], again: bool = False
    ) -> None:
        _die_for_poison([recipient.get("subscriberId", "")])
        one(trigger_event_id=trigger_event_id, recipient=recipient, again=again)

    def subscribers_process(*, trigger_event_id: int, subscriber_ids: list[str]) -> None:
        _die_for_poison(subscriber_ids)
        chunk(trigger_event_id=trigger_event_id, subscriber_ids=subscriber_ids)

    services._subscriber_process = subscriber_process
    services._subscribers_process = subscribers_process
