"""Baseline tasks, loaded only by the bench's workers (`celery worker -I bench.tasks`).

`bench.fan` enqueues `chains` chains of `bench.hop`, each re-enqueueing itself until
its hops are spent: the same task count and broker round trips as norm's pipeline,
with no work in between. A finished chain counts itself in Redis.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import redis
from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

QUEUE = "bench"
DONE_KEY, LAST_KEY = "bench:done", "bench:last"

_redis: redis.Redis | None = None


def _client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return _redis


@shared_task(name="bench.fan", ignore_result=True)
def fan(chains: int, hops: int) -> None:
    for _ in range(chains):
        hop.apply_async(args=[hops], queue=QUEUE)


@shared_task(name="bench.hop", ignore_result=True)
def hop(remaining: int) -> None:
    if remaining > 1:
        hop.apply_async(args=[remaining - 1], queue=QUEUE)
        return
    pipe = _client().pipeline()
    pipe.incr(DONE_KEY).set(LAST_KEY, repr(time.time()))
    pipe.execute()


@worker_ready.connect
def _announce(sender: Any = None, **kwargs: Any) -> None:
    """Tells the bench this worker consumes (it logs at WARNING, so no "ready" line)."""
    ready = os.environ.get("BENCH_READY_FILE")
    if ready:
        Path(ready).write_text(str(os.getpid()))
