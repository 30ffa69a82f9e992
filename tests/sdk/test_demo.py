from __future__ import annotations

import pytest

from workflows.demo import demo_bridge, order_update, welcome
from workflows.sdk import ExecutionEventPayloadInvalidError

from .helpers import READ, drive, entry, execute_body


def test_welcome_runs_inbox_wait_reminder() -> None:
    assert drive(welcome, {"name": "Ada"}) == ["inbox", "wait", "reminder"]


def test_welcome_skips_the_reminder_once_the_message_was_read() -> None:
    assert drive(welcome, {"name": "Ada"}, results={"inbox": READ}) == [
        "inbox",
        "wait",
        "reminder:skipped",
    ]


def test_welcome_payload_defaults() -> None:
    first = welcome.execute(execute_body({}, []))
    assert first["outputs"]["body"] == "Hi there, welcome to norm."
    wait = welcome.execute(execute_body({}, [entry("inbox", READ)]))
    assert wait["outputs"] == {"amount": 60, "unit": "seconds"}
    with pytest.raises(ExecutionEventPayloadInvalidError):
        welcome.execute(execute_body({"delaySeconds": -1}, []))


@pytest.mark.parametrize(
    ("status", "steps"),
    [
        ("shipped", ["shipped-email", "shipped-inbox"]),
        ("delayed", ["delayed-inbox"]),
        ("delivered", ["delivered-email"]),
    ],
)
def test_order_update_branches_on_status(status: str, steps: list[str]) -> None:
    assert drive(order_update, {"orderId": "A-1", "status": status}) == steps


def test_order_update_requires_a_known_status() -> None:
    with pytest.raises(ExecutionEventPayloadInvalidError):
        order_update.execute(execute_body({"orderId": "A-1", "status": "lost"}, []))


def test_demo_bridge_uses_only_email_in_app_and_delay() -> None:
    payloads = [{"orderId": "A-1", "status": s} for s in ("shipped", "delayed", "delivered")]
    types = {
        welcome.execute(execute_body({}, []))["type"],
        *(order_update.execute(execute_body(p, []))["type"] for p in payloads),
        *(step.type.name for w in demo_bridge.workflows.values() for step in w.steps),
    }
    assert types <= {"email", "in_app", "delay"}
