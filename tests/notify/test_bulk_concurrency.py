"""Triggers naming the same transactionIds at once: two bulks in other orders, and a
trigger sent again by a second app server while the first's is being stored."""

from __future__ import annotations

import pytest

from config import pipeline
from notify import services
from notify.models import TriggerEvent
from tests.conftest import Enqueued, while_held
from tests.factories import BridgeWorkflowFactory, api_for, client_with_key

pytestmark = pytest.mark.django_db(transaction=True)


def _event(client: object, transaction_id: str) -> TriggerEvent:
    return TriggerEvent(
        client=client,
        workflow_id="welcome",
        transaction_id=transaction_id,
        mode=TriggerEvent.Mode.MULTICAST,
        to="ann",
        resource=client.bridge_url,
    )


def test_bulks_of_the_same_ids_in_other_orders_do_not_deadlock(enqueued) -> None:
    """The first holds `a` while the second bulk starts, then takes `b`. Stored in the
    order given, the second would hold `b` and wait for `a`: a deadlock, and a 500."""
    client, _ = client_with_key()

    while_held(
        lambda: services.trigger_event_store(_event(client, "a")),
        lambda: services.trigger_events_store([_event(client, "b"), _event(client, "a")]),
        and_then=lambda: services.trigger_event_store(_event(client, "b")),
    )

    assert sorted(TriggerEvent.objects.values_list("transaction_id", flat=True)) == ["a", "b"]


def test_a_trigger_sent_again_while_the_first_is_being_stored_is_one_event(
    enqueued: Enqueued,
) -> None:
    """The repeat's INSERT waits for the first's uncommitted row, then meets it: both are
    answered 201 with the one event, whose fan-out is enqueued once. Looked up first, the
    repeat found no row yet, and its INSERT was refused by the unique constraint: a 500."""
    client, key = client_with_key()
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    body = {"name": "welcome", "to": "ann", "transactionId": "tx-1"}

    first, second = while_held(
        lambda: services.trigger_event_store(_event(client, "tx-1")),
        lambda: api_for(key).post("/v1/events/trigger", body, format="json"),
    )

    assert second.status_code == 201, second.content
    assert second.json()["data"]["transactionId"] == "tx-1"
    assert list(TriggerEvent.objects.values_list("pk", flat=True)) == [first.pk]
    assert enqueued.of(pipeline.WORKFLOW) == [(first.pk,)]
