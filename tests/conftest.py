from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from config import pipeline


@dataclass
class Enqueued:
    """What the pipeline handed to the broker, captured instead of sent."""

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)

    def of(self, stage: pipeline.Stage) -> list[tuple[Any, ...]]:
        return [args for task, args, _ in self.calls if task == stage.task]

    def options_of(self, stage: pipeline.Stage) -> list[dict[str, Any]]:
        return [opts for task, _, opts in self.calls if task == stage.task]

    def clear(self) -> None:
        self.calls.clear()


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> Enqueued:
    """Capture every hand-off between stages (after commit, as in production)."""
    captured = Enqueued()

    def fake_send_now(
        stage: pipeline.Stage, *args: Any, countdown: float | None = None, queue: str | None = None
    ) -> None:
        captured.calls.append(
            (stage.task, args, {"countdown": countdown, "queue": queue or stage.queue})
        )

    monkeypatch.setattr(pipeline, "send_now", fake_send_now)
    return captured
