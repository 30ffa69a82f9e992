"""What the reconciler reads of a queue before it re-sends anything to it
(`pipeline.backlog`), from the brokers norm runs on: Redis, and the embedded default's
filesystem broker (`make run`)."""

from __future__ import annotations

import uuid
from pathlib import Path

from config import pipeline
from config.celery import app
from tests.conftest import on_the_embedded_broker

SEND_AND_COUNT = """
import django
django.setup()
from config import pipeline
for i in range(3):
    pipeline.send_now(pipeline.ECHO, f"n{i}")
print(pipeline.backlog("echo"), pipeline.backlog("messages"))
"""


def test_the_backlog_of_a_queue_is_what_the_broker_holds_for_it() -> None:
    queue = f"backlog-{uuid.uuid4().hex}"
    assert pipeline.backlog(queue) == 0  # one the broker never saw
    try:
        for i in range(3):
            pipeline.send_now(pipeline.ECHO, f"n{i}", queue=queue)
        pipeline.send_now(pipeline.ECHO, "elsewhere", queue=f"{queue}-other")

        assert pipeline.backlog(queue) == 3
    finally:
        with app.pool.acquire(block=True) as connection:
            for name in (queue, f"{queue}-other"):
                connection.default_channel.queue_delete(name)
    assert pipeline.backlog(queue) == 0


def test_the_embedded_brokers_backlog_is_counted_from_its_folder(tmp_path: Path) -> None:
    assert on_the_embedded_broker(SEND_AND_COUNT, tmp_path).split() == ["3", "0"]
