"""The same API write sent twice at once, on real connections (hence `transaction=True`):
neither answers a 500, nothing is duplicated, and nothing one of them wrote is lost."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from subscribers.models import Subscriber, Topic
from tests.conftest import while_held
from tests.factories import api_for, client_with_key

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def keyed() -> Iterator[tuple[Any, str]]:
    yield client_with_key()


def _twice(key: str, method: str, first: tuple[str, Any], second: tuple[str, Any]) -> Any:
    """Two requests: the second while the first's transaction is still open."""
    return while_held(
        lambda: getattr(api_for(key), method)(first[0], first[1], format="json"),
        lambda: getattr(api_for(key), method)(second[0], second[1], format="json"),
    )


@pytest.mark.parametrize(
    ("path", "body", "stored"),
    [
        (
            "/v2/subscribers?failIfExists=true",
            {"subscriberId": "ann", "email": "two@example.com"},
            lambda: Subscriber.objects.get().email,
        ),
        (
            "/v1/subscribers?failIfExists=true",
            {"subscriberId": "ann", "email": "two@example.com"},
            lambda: Subscriber.objects.get().email,
        ),
        (
            "/v2/topics?failIfExists=true",
            {"key": "ann", "name": "Two"},
            lambda: Topic.objects.get().name,
        ),
    ],
    ids=["v2 subscriber", "v1 subscriber", "v2 topic"],
)
def test_two_creates_failing_if_it_exists_at_once_make_one_and_refuse_the_other(
    keyed: tuple[Any, str], path: str, body: dict[str, Any], stored: Callable[[], str]
) -> None:
    """Both looked for it before either had created it: the second answered 201 (200)
    too, and overwrote what the first had created."""
    client, key = keyed
    first_body = {k: v for k, v in body.items() if k in ("subscriberId", "key")}

    first, second = _twice(key, "post", (path, first_body), (path, body))

    assert first.status_code == 201, first.content
    assert second.status_code == 409, second.content
    assert second.json()["_id"] == first.json()["data"]["_id"]
    assert stored() == ""
