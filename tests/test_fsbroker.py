"""The embedded default's filesystem broker (`make run`) as its web server and worker use
it: one process publishes while another takes the messages."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kombu import Connection

from tests.test_settings import ROOT, settings_from

MESSAGES = 100
BODY = "x" * 200_000  # a large payload widens the time its write takes

PUBLISH = """
import json, sys
from kombu import Connection
transport, options, count, body = json.loads(sys.stdin.read())
with Connection("filesystem://", transport=transport, transport_options=options) as conn:
    out = conn.SimpleQueue("echo")
    for i in range(count):
        out.put({"i": i, "body": body})
"""


def _embedded_broker(var: Path) -> tuple[str, dict[str, Any]]:
    found = settings_from(
        {"CELERY_BROKER_URL": "filesystem://", "NORM_VAR_DIR": str(var)},
        "CELERY_BROKER_TRANSPORT",
        "CELERY_BROKER_TRANSPORT_OPTIONS",
    )
    options = {**found["CELERY_BROKER_TRANSPORT_OPTIONS"], "polling_interval": 0}
    for folder in ("data_folder_in", "control_folder"):
        Path(options[folder]).mkdir(parents=True, exist_ok=True)
    return found["CELERY_BROKER_TRANSPORT"], options


def test_a_worker_never_takes_a_message_still_being_written(tmp_path: Path) -> None:
    """kombu's channel wrote a message under its final name, and a worker polling the
    folder took some still empty: JSONDecodeError killed the worker (and `make run`)
    and lost the message, under a burst of 200 triggers."""
    transport, options = _embedded_broker(tmp_path)
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        taken = conn.SimpleQueue("echo")
        publisher = subprocess.Popen(
            [sys.executable, "-c", PUBLISH], cwd=ROOT, stdin=subprocess.PIPE, text=True
        )
        assert publisher.stdin is not None
        publisher.stdin.write(json.dumps([transport, options, MESSAGES, BODY]))
        publisher.stdin.close()
        received: list[int] = []
        deadline = time.monotonic() + 30
        try:
            while len(received) < MESSAGES and time.monotonic() < deadline:
                try:
                    message = taken.get(timeout=0.5)
                except queue.Empty:
                    continue
                assert message.payload["body"] == BODY
                received.append(message.payload["i"])
                message.ack()
        finally:
            publisher.kill()
            publisher.wait()

    assert sorted(received) == list(range(MESSAGES))
    assert [p.name for p in Path(options["data_folder_in"]).iterdir()] == []  # no leftovers
