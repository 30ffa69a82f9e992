"""The times the API writes, as Novu's API writes them (a JS Date's toISOString): UTC,
to the millisecond, always with its three digits and a `Z`."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.factories import (
    MessageFactory,
    NotificationFactory,
    StepFactory,
    SubscriberFactory,
    TriggerEventFactory,
    api_for,
    client_with_key,
)
from workflows.models import Notification, Step

pytestmark = pytest.mark.django_db

NOVU_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
A_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d")
ON_THE_SECOND = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)  # a timed delay's due time
IN_A_MICROSECOND = datetime(2026, 3, 5, 9, 0, 0, 123456, tzinfo=UTC)


def times(value: Any) -> list[str]:
    """Every string in a JSON value that holds a time."""
    if isinstance(value, dict):
        return [t for v in value.values() for t in times(v)]
    if isinstance(value, list):
        return [t for v in value for t in times(v)]
    return [value] if isinstance(value, str) and A_TIME.match(value) else []


def test_every_time_the_api_writes_is_novus_to_the_millisecond() -> None:
    """A time on the second (a timed delay's due time, a row's times set so) was written
    without its fraction, "2026-03-05T09:00:00Z", beside "…09:00:00.123456Z": a client
    that parses Novu's format (`yyyy-MM-dd'T'HH:mm:ss.SSSX`, strptime's `.%fZ`) failed on
    one or the other."""
    client, key = client_with_key()
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    notification = NotificationFactory(
        trigger_event=TriggerEventFactory(client=client),
        subscriber=ann,
        status=Notification.Status.RUNNING,
    )
    inbox = StepFactory(
        notification=notification,
        step_id="inbox",
        type="in_app",
        position=0,
        status=Step.Status.COMPLETED,
    )
    MessageFactory(step=inbox, sent_at=ON_THE_SECOND, seen_at=IN_A_MICROSECOND)
    StepFactory(notification=notification, step_id="wait", type="delay", position=1)
    Step.objects.filter(step_id="wait").update(due_at=ON_THE_SECOND, created_at=ON_THE_SECOND)
    Notification.objects.filter(pk=notification.pk).update(created_at=ON_THE_SECOND)
    type(ann).objects.filter(pk=ann.pk).update(created_at=ON_THE_SECOND)
    api = api_for(key)

    written = [
        *times(api.get(f"/v1/notifications/{notification.pk}").json()),
        *times(api.get("/v2/subscribers/ann").json()),
        *times(api.get("/v1/subscribers/ann/notifications/feed").json()),
        *times(api.get("/v2/subscribers/nobody").json()),  # an error's timestamp
    ]
    assert "2026-03-05T09:00:00.000Z" in written
    assert "2026-03-05T09:00:00.123Z" in written
    assert [t for t in written if not NOVU_TIME.fullmatch(t)] == []


@pytest.mark.parametrize(
    ("before", "listed"),
    [
        ("2026-03-05T09:00:00.123Z", True),  # its createdAt, as the API wrote it
        ("2026-03-05T10:00:00.123+01:00", True),
        ("2026-03-05T09:00:00.123456Z", True),  # to the microsecond: itself
        ("2026-03-05T09:00:00.123455Z", False),
        ("2026-03-05T09:00:00.122Z", False),
        ("9999-12-31T23:59:59.999Z", True),
        ("9999-12-31T23:59:59.999999Z", True),
    ],
)
def test_a_notification_is_listed_before_its_own_created_at_as_the_api_wrote_it(
    before: str, listed: bool
) -> None:
    """ "Created at or before": a notification's createdAt, given back as `before` (the
    newest one seen, to page on), left that notification out, its time stored with the
    microseconds the API does not write."""
    client, key = client_with_key()
    made = NotificationFactory(trigger_event=TriggerEventFactory(client=client))
    Notification.objects.filter(pk=made.pk).update(created_at=IN_A_MICROSECOND)

    response = api_for(key).get("/v1/notifications", {"before": before})

    assert response.status_code == 200, response.content
    assert [n["_id"] for n in response.json()["data"]] == ([str(made.pk)] if listed else [])


@pytest.mark.parametrize(
    ("after", "listed"),
    [
        ("2026-03-05T09:00:00.123456Z", True),  # to the microsecond: itself
        ("2026-03-05T09:00:00.123Z", True),
        ("2026-03-05T09:00:00.123457Z", False),
    ],
)
def test_a_notification_is_listed_after_its_own_created_at(after: str, listed: bool) -> None:
    """ "Created at or after", as the filter's help says and Novu's $gte: the instant
    itself is in."""
    client, key = client_with_key()
    made = NotificationFactory(trigger_event=TriggerEventFactory(client=client))
    Notification.objects.filter(pk=made.pk).update(created_at=IN_A_MICROSECOND)

    response = api_for(key).get("/v1/notifications", {"after": after})

    assert response.status_code == 200, response.content
    assert [n["_id"] for n in response.json()["data"]] == ([str(made.pk)] if listed else [])


@pytest.mark.parametrize(
    ("created_lte", "listed"),
    [
        ("1772701200123", True),  # its createdAt, as the API wrote it and Date.parse reads it
        ("1772701200123.456", True),  # to the microsecond: itself
        ("1772701200123.455", False),
        ("1772701200122", False),
    ],
)
def test_an_inbox_notification_is_listed_to_its_own_created_at_in_milliseconds(
    created_lte: str, listed: bool
) -> None:
    """Novu's Inbox sends `createdLte` as a JS time, milliseconds: a notification's own
    createdAt given back so left it out, its time stored with microseconds."""
    client, key = client_with_key()
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    message = MessageFactory(
        step__notification__subscriber=ann, step__notification__trigger_event__client=client
    )
    type(message).objects.filter(pk=message.pk).update(created_at=IN_A_MICROSECOND)

    response = api_for(key).get("/v2/subscribers/ann/notifications", {"createdLte": created_lte})

    assert response.status_code == 200, response.content
    assert [n["id"] for n in response.json()["data"]] == ([str(message.pk)] if listed else [])
