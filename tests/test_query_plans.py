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
