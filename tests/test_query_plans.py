"""Queries that must stay served by an index as a client's tables grow."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from tests.factories import MessageFactory, NotificationFactory, StepFactory, SubscriberFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("url", "table"),
    [
        ("/v1/notifications", "workflows_notification"),
        ("/v1/messages", "messaging_message"),
    ],
)
def test_a_subscriberid_filter_finds_the_subscriber_by_the_clients_unique_index(
    tenant: tuple[object, APIClient], url: str, table: str
) -> None:
    """`?subscriberId=` looked the subscriber up by its id alone, which the (client,
    subscriber_id) index cannot serve: every call scanned every client's subscribers
    (1.1 s for /v1/messages over 50,000 subscribers and 400,000 messages)."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    notification = NotificationFactory(subscriber=ann, trigger_event__client=client)
    MessageFactory(step=StepFactory(notification=notification), status="sent")
    with CaptureQueriesContext(connection) as queries:
        response = api.get(url, {"subscriberId": "ann"})
    assert response.status_code == 200, response.content
    assert len(response.json()["data"]) == 1
    (page,) = [q["sql"] for q in queries if q["sql"].startswith(f'SELECT "{table}"."id"')]

    # The join names the client, so PostgreSQL can read the subscriber through its
    # unique (client_id, subscriber_id) index (the test table is too small for the planner
    # to show that choice itself).
    assert '"subscribers_subscriber"."client_id" = ' in page


def _plan_without_seqscan(sql: str) -> str:
    """The plan PostgreSQL picks for `sql` when any index will do: the test table is
    too small for it to prefer an index over reading the table."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # this test's transaction only
        cursor.execute(f"EXPLAIN {sql}")
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.parametrize(
    ("url", "params", "table"),
    [
        ("/v1/notifications", {"emails": "ANN@Example.COM"}, "workflows_notification"),
        ("/v1/subscribers", {"email": "ANN@Example.COM"}, "subscribers_subscriber"),
    ],
)
def test_an_email_filter_reads_the_subscriber_by_its_upper_email_index(
    tenant: tuple[object, APIClient], url: str, params: dict[str, str], table: str
) -> None:
    """`email__iexact` is UPPER(email) = UPPER(%s), which no plain index serves: over
    50,000 subscribers and 200,000 notifications, `?emails=` of a subscriber with few
    notifications walked all the client's notifications newest first (174 ms)."""
    client, api = tenant
    ann = SubscriberFactory(client=client, subscriber_id="ann", email="ann@example.com")
    SubscriberFactory(client=client, subscriber_id="bob", email="bob@example.com")
    NotificationFactory(subscriber=ann, trigger_event__client=client)
    with CaptureQueriesContext(connection) as queries:
        response = api.get(url, params)
    assert response.status_code == 200, response.content
    assert len(response.json()["data"]) == 1
    (page,) = [q["sql"] for q in queries if q["sql"].startswith(f'SELECT "{table}"."id"')]

    plan = _plan_without_seqscan(page)
    assert " subscriber_upper_email " in plan, plan
    assert "Index Cond: ((upper((email)::text) = 'ANN@EXAMPLE.COM'::text)" in plan, plan
