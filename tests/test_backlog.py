"""What the reconciler reads of a queue before it re-sends anything to it
(`pipeline.backlog`), from the brokers norm runs on: Redis, and the embedded default's
filesystem broker (`make run`)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from config import pipeline
from config.celery import app
from tests.test_settings import ROOT

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
    for folder in ("broker", "broker-control"):  # as `make run` makes them
        (tmp_path / folder).mkdir()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "CELERY_BROKER_URL": "filesystem://",
        "NORM_VAR_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", SEND_AND_COUNT], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "0"]
