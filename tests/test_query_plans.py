"""Queries that must stay served by an index as a client's tables grow."""

from __future__ import annotations

from typing import Any

import pytest
from django.apps import apps
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from notify.models import TriggerEvent
from tests.conftest import Enqueued, ago, plan_nodes
from tests.factories import (
    MessageFactory,
    NotificationFactory,
    StepFactory,
    SubscriberFactory,
    TriggerEventFactory,
)
from workflows.models import Notification, Step
from workflows.services import operations, reconciler

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


@pytest.mark.parametrize(
    ("url", "table"),
    [
        ("/v1/notifications", "workflows_notification"),
        ("/v1/messages", "messaging_message"),
    ],
)
def test_a_transactionid_filter_finds_the_trigger_by_the_clients_unique_index(
    tenant: tuple[object, APIClient], url: str, table: str
) -> None:
    """`?transactionId=` looked the trigger up by its transactionId alone, which the
    (client, transaction_id) index cannot serve: every call read every client's
    triggers (200 ms over 1,000,000; 0.3 ms by the index)."""
    client, api = tenant
    notification = NotificationFactory(
        trigger_event__client=client, trigger_event__transaction_id="t-1"
    )
    MessageFactory(step=StepFactory(notification=notification), status="sent")
    NotificationFactory(trigger_event__client=client, trigger_event__transaction_id="t-2")
    with CaptureQueriesContext(connection) as queries:
        response = api.get(url, {"transactionId": "t-1"})
    assert response.status_code == 200, response.content
    assert len(response.json()["data"]) == 1
    (page,) = [q["sql"] for q in queries if q["sql"].startswith(f'SELECT "{table}"."id"')]

    # The join names the client, so PostgreSQL can read the trigger through its unique
    # (client_id, transaction_id) index, as it does over 1,000,000 triggers (the test's
    # few rows may as well be read from the message's side by primary keys).
    assert '"notify_triggerevent"."client_id" = ' in page


@pytest.mark.parametrize("params", [{"status": "failed"}, {"templates": "rare"}])
def test_a_filtered_page_of_notifications_reads_the_clients_index_in_its_order(
    tenant: tuple[object, APIClient], params: dict[str, str]
) -> None:
    """A page of the client's notifications, newest first then by id, is read from the
    client's (client, created_at, id) index in its order. With (client, created_at)
    alone PostgreSQL took that order from the (created_at, id) index of every client's
    notifications: a status the client had none of read all of them (2.7 s over
    2,000,000 of 20 clients; the client's own 100,000, 0.3 s)."""
    client, api = tenant
    NotificationFactory(trigger_event__client=client)
    NotificationFactory(trigger_event__client=client, status="failed", workflow_id="rare")
    with CaptureQueriesContext(connection) as queries:
        response = api.get("/v1/notifications", params)
    assert response.status_code == 200, response.content
    assert len(response.json()["data"]) == 1
    (page,) = [
        q["sql"] for q in queries if q["sql"].startswith('SELECT "workflows_notification"."id"')
    ]

    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")  # the test's few rows sort for nothing
    nodes = plan_nodes(page)
    assert not [n for n in nodes if "Sort" in n["Node Type"]], nodes
    (scan,) = [n for n in nodes if n.get("Relation Name") == "workflows_notification"]
    assert scan.get("Index Name") == "notification_client_created", scan
    assert "client_id =" in scan["Index Cond"], scan


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


def _project_tables() -> list[str]:
    return [
        model._meta.db_table
        for app in ("notify", "subscribers", "workflows", "messaging")
        for model in apps.get_app_config(app).get_models()
    ]


@pytest.mark.parametrize("table", _project_tables())
def test_no_foreign_key_has_an_index_of_its_own_where_a_composite_starts_with_it(
    table: str,
) -> None:
    """Django indexes every foreign key on its own. Where a composite index starts with
    that column (a unique constraint, the client's newest-first index), the composite
    serves the same lookups and the foreign key's checks, and the index of its own only
    costs every insert: two of the seven indexes a notification wrote (5 MB of the 80 MB
    of WAL a fan-out to 100,000 wrote), two of a message's six, one of a step's five,
    one of a stored trigger's five."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    foreign_keys = {c["columns"][0] for c in constraints.values() if c["foreign_key"]}
    # Indexes and the indexes of unique constraints (a functional index has no columns).
    indexes = {
        name: tuple(c["columns"])
        for name, c in constraints.items()
        if (c["index"] or c["unique"])
        and not c["primary_key"]
        and c["columns"]
        and None not in c["columns"]
    }
    redundant = [
        name
        for name, columns in indexes.items()
        if columns[0] in foreign_keys
        and len(columns) == 1
        and not constraints[name]["unique"]
        and any(o != name and other[:1] == columns for o, other in indexes.items())
    ]
    assert redundant == []


def test_a_triggers_cancel_reads_a_range_of_its_index_a_chunk_and_steps_by_notification(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each chunk of a trigger's cancel is the next range of the unique (trigger_event,
    subscriber) index, not a sort of all the trigger's notifications nor a walk of the
    table; and its steps are read by notification, not by the (status, due_at) index.
    PostgreSQL read `status = 'scheduled'` (or 'canceled') by that index once its
    statistics called the status rare (a broadcast's steps recorded since the last
    ANALYZE), and each chunk then read every scheduled step, or every one the chunks
    before it had canceled: 90 ms a chunk of 2,000 over 200,000."""
    monkeypatch.setattr(operations, "CANCEL_CHUNK", 2)
    first = StepFactory()
    event = first.notification.trigger_event
    for _ in range(2):
        StepFactory(notification__trigger_event=event)
    with CaptureQueriesContext(connection) as queries:
        assert operations.notifications_cancel(trigger_event_id=event.pk) == 3
    reads = [
        q["sql"]
        for q in queries
        if '"workflows_notification"' in q["sql"] or '"workflows_step"' in q["sql"]
    ]
    chunks = [sql for sql in reads if sql.startswith('SELECT "workflows_notification"."id"')]
    assert len(chunks) == 2, reads

    for sql in chunks:
        (scan,) = [n for n in plan_nodes(sql) if n.get("Relation Name") == "workflows_notification"]
        assert scan["Index Name"] == "uniq_notification_per_subscriber", scan
        assert "subscriber_id >" in scan["Index Cond"], scan
        assert scan["Node Type"] == "Index Scan", scan  # in the index's order: no sort
    status_indexes = {Notification._meta.indexes[1].name, Step._meta.indexes[0].name}
    for sql in reads:
        used = {n.get("Index Name") for n in plan_nodes(sql)}
        assert not used & status_indexes, (sql, used)
        assert "Seq Scan" not in {n["Node Type"] for n in plan_nodes(sql)}, sql


def test_the_reconcilers_check_for_lost_cancels_reads_only_the_cancels_under_way(
    enqueued: Enqueued,
) -> None:
    """Every few seconds the reconciler looks for a cancel whose task was lost: it reads
    the partial index of triggers with a cancel task due, not the notifications of any
    (a broadcast's 200,000, all canceled), nor every trigger ever canceled."""
    lost = TriggerEventFactory(canceled_at=ago(3600), cancel_task_at=ago(3600))
    done = TriggerEventFactory(canceled_at=ago(3600))
    for event in (lost, done):
        NotificationFactory(trigger_event=event, status=Notification.Status.CANCELED)
    with CaptureQueriesContext(connection) as queries:
        reconciler.reconcile()
    assert TriggerEvent.objects.get(pk=lost.pk).cancel_task_at > ago(60)
    (sql,) = [
        q["sql"]
        for q in queries
        if q["sql"].startswith('SELECT "notify_triggerevent"."id"') and "cancel_task_at" in q["sql"]
    ]
    nodes = plan_nodes(sql)
    assert {n.get("Relation Name") for n in nodes} - {None} == {"notify_triggerevent"}, nodes
    assert "trigger_cancel_under_way" in {n.get("Index Name") for n in nodes}, nodes


def test_the_reconcilers_batch_of_due_steps_is_the_first_rows_of_the_status_index(
    enqueued: Enqueued,
) -> None:
    """The due steps the reconciler sends are the first rows of the (status, due_at)
    index: no sort of every due step to keep a batch (0.9 s a tick while 100,000 steps
    came due at once)."""
    StepFactory(due_at=ago(5))
    with CaptureQueriesContext(connection) as queries:
        reconciler.reconcile()
    (sql,) = [
        q["sql"]
        for q in queries
        if q["sql"].startswith('SELECT "workflows_step"."id"')
        and 'enqueued_at" IS NULL' in q["sql"]
    ]

    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")  # the test's few rows sort for nothing
    nodes = plan_nodes(sql)
    assert not [n for n in nodes if "Sort" in n["Node Type"]], nodes
    assert Step._meta.indexes[0].name in {n.get("Index Name") for n in nodes}, nodes


@pytest.mark.parametrize("direction", ["DESC", "ASC"])
def test_a_topics_subscriptions_page_reads_its_index_from_the_cursor_on(
    tenant: tuple[object, APIClient], direction: str
) -> None:
    """A topic's subscriptions are paged by (subscribed_at, subscriber), which only the
    (topic, created_at, subscriber) index serves: with the unique (topic, subscriber)
    alone each page sorted every member of the topic (35 to 60 ms a page at 50,000)."""
    client, api = tenant
    for sid in ("ann", "bob", "cid"):
        SubscriberFactory(client=client, subscriber_id=sid)
    url = "/v2/topics/news/subscriptions"
    assert api.post(url, {"subscriberIds": ["ann", "bob", "cid"]}, format="json").status_code == 201
    params = {"orderDirection": direction, "limit": 1}
    first = api.get(url, params).json()
    with CaptureQueriesContext(connection) as queries:
        response = api.get(url, {**params, "after": first["next"]})
    assert response.status_code == 200, response.content
    assert len(response.json()["data"]) == 1
    (page,) = [q["sql"] for q in queries if q["sql"].startswith('SELECT "subscribers_subscriber"')]

    with connection.cursor() as cursor:
        # Unless no plan can do without: the test's few rows sort for nothing.
        cursor.execute("SET LOCAL enable_sort = off")  # this test's transaction only
    nodes = plan_nodes(page)
    assert "Sort" not in {n["Node Type"] for n in nodes}, nodes
    (scan,) = [n for n in nodes if n.get("Index Name") == "topic_subscription_created"]
    # The scan starts at the cursor, not at the topic's first member.
    assert "created_at" in scan["Index Cond"], scan


def test_a_topics_member_named_by_subscriberid_is_found_by_the_clients_unique_index(
    tenant: tuple[object, APIClient],
) -> None:
    """A topic's members were read by the topic alone: a member looked up by its
    subscriberId (the v1 membership check, a subscription's default identifier) scanned
    every client's subscribers for it (70 ms over 200,000; 0.04 ms by the index)."""
    client, api = tenant
    for sid in ("ann", "bob"):
        SubscriberFactory(client=client, subscriber_id=sid)
    url = "/v2/topics/news/subscriptions"
    assert api.post(url, {"subscriberIds": ["ann", "bob"]}, format="json").status_code == 201
    with CaptureQueriesContext(connection) as queries:
        response = api.get("/v1/topics/news/subscribers/ann")
    assert response.status_code == 200, response.content
    (lookup,) = [
        q["sql"]
        for q in queries
        if q["sql"].startswith('SELECT "subscribers_subscriber"')
        and "\"subscriber_id\" = 'ann'" in q["sql"]
    ]

    (scan,) = [n for n in plan_nodes(lookup) if n.get("Relation Name") == "subscribers_subscriber"]
    # Of the client's rows: over 200,000 PostgreSQL reads (client, subscriber_id) by
    # its unique index (the test's few rows may read another of the client's).
    assert "client_id =" in scan.get("Index Cond", ""), scan


def test_the_admins_notification_list_reads_its_page_from_an_index_newest_first(
    admin_client: Any,
) -> None:
    """Newest first over every client, which no index of the client's gives: without the
    (created_at, id) index, every page sorted every notification of every client."""
    NotificationFactory()
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(reverse("admin:workflows_notification_changelist"))
    assert response.status_code == 200
    (page,) = [
        q["sql"]
        for q in queries
        if q["sql"].startswith('SELECT "workflows_notification"."id"') and "ORDER BY" in q["sql"]
    ]

    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")  # the test's few rows sort for nothing
    nodes = plan_nodes(page)
    assert not [n for n in nodes if "Sort" in n["Node Type"]], nodes
    assert "notification_created" in {n.get("Index Name") for n in nodes}, nodes


def test_the_admins_notifications_by_error_code_are_read_from_the_failed_ones(
    admin_client: Any,
) -> None:
    """Only a failed notification has an error code (a retry or a completion clears it),
    and no index has the code: filtered by it alone, the list's count and its page each
    read every notification there is (46 ms over 200,000; a parallel scan). Read from
    the (status, updated_at) index, they read the failed ones."""
    NotificationFactory(status=Notification.Status.FAILED, error_code="BridgeTimeout")
    NotificationFactory()
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(
            reverse("admin:workflows_notification_changelist"), {"error_code": "BridgeTimeout"}
        )
    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == 1
    (count,) = [q["sql"] for q in queries if q["sql"].startswith('SELECT COUNT(*) AS "__count"')]

    conditions = [n.get("Index Cond", "") for n in plan_nodes(count)]
    assert [c for c in conditions if "status" in c], plan_nodes(count)


@pytest.mark.parametrize("count", [1, 150])
def test_a_subscribes_identifiers_are_looked_for_in_the_identifiers_index(
    tenant: tuple[object, APIClient], count: int
) -> None:
    """A subscribe looks for the identifiers it gives among the topic's subscriptions. Of
    more than 100, `identifier IN (...)` is no proof for PostgreSQL that none is "" (it
    proves so of a list of 100 at most), which the partial index's rows are: the lookup
    read every subscription of the topic (50,000) by its (topic, subscriber) index."""
    client, api = tenant
    for i in range(count):
        SubscriberFactory(client=client, subscriber_id=f"s{i}")
    body = {
        "subscriptions": [{"identifier": f"id-{i}", "subscriberId": f"s{i}"} for i in range(count)]
    }
    with CaptureQueriesContext(connection) as queries:
        response = api.post("/v2/topics/news/subscriptions", body, format="json")
    assert response.status_code == 201, response.content
    (lookup,) = [q["sql"] for q in queries if '"identifier" IN (' in q["sql"]]

    plan = _plan_without_seqscan(lookup)
    assert " topic_subscription_identifier " in plan, plan
