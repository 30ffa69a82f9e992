from __future__ import annotations

from typing import Any

from workflows.sdk import Workflow

UNREAD = {"seen": False, "read": False, "lastSeenDate": None, "lastReadDate": None}
READ = {
    "seen": True,
    "read": True,
    "lastSeenDate": "2025-01-01T10:00:00.000Z",
    "lastReadDate": "2025-01-01T10:01:00.000Z",
}

# (format, a value ajv-formats takes, one it refuses): the formats Novu's SDK checks.
FORMATS = [
    ("email", "ada@example.com", "not-an-email"),
    ("uri", "https://example.com/a?b=c", "not a uri"),
    ("uri-reference", "/inbox#top", "a b"),
    ("date-time", "2025-01-01T10:00:00.000Z", "2025-01-01"),
    ("date", "2024-02-29", "2025-02-29"),
    ("time", "09:30:00", "9h30"),
    ("uuid", "0b4c8d0e-2f3a-4b5c-9d6e-7f8091a2b3c4", "0b4c8d0e"),
    ("ipv4", "192.0.2.1", "192.0.2"),
    ("ipv6", "2001:db8::1", "2001:db8::g"),
    ("hostname", "mail.example.com", "-mail.example.com"),
]

DEFAULT_RESULTS: dict[str, dict[str, Any]] = {"in_app": UNREAD, "delay": {"duration": 1000}}


def entry(step_id: str, outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"stepId": step_id, "outputs": outputs or {}, "state": {"status": "completed"}}


def execute_body(payload: dict[str, Any], state: list[dict[str, Any]], **extra: Any) -> dict:
    return {"payload": payload, "state": state, "controls": {}, "subscriber": {}} | extra


def drive(
    wf: Workflow, payload: dict[str, Any], results: dict[str, dict[str, Any]] | None = None
) -> list[str]:
    """Run a workflow to the end as norm's server does; the steps it ran ("id" or "id:skipped")."""
    state: list[dict[str, Any]] = []
    ran: list[str] = []
    for _ in range(20):
        response = wf.execute(execute_body(payload, state))
        if response["done"]:
            return ran
        step_id, skipped = response["stepId"], response["options"]["skip"]
        ran.append(f"{step_id}:skipped" if skipped else step_id)
        result = (results or {}).get(step_id, DEFAULT_RESULTS.get(response["type"], {}))
        state.append(entry(step_id, result))
    raise AssertionError("the workflow never finished")
