from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from messaging import tasks
from tests.conftest import Enqueued
from workflows.models import Step


@pytest.fixture
def send(
    django_capture_on_commit_callbacks: Callable[..., Any], enqueued: Enqueued
) -> Callable[[Step], Step]:
    """Run the message worker on a step; return the step as stored afterwards. Its
    hand-offs (a retry's, the echo's) are captured in `enqueued`, never published."""

    def do(step: Step) -> Step:
        with django_capture_on_commit_callbacks(execute=True):
            tasks.message_send(step.pk)
        step.refresh_from_db()
        return step

    return do
