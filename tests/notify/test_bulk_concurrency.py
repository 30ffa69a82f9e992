"""Two bulk triggers naming the same transactionIds in other orders, at once."""

from __future__ import annotations

import pytest

from notify import services
from notify.models import TriggerEvent
from tests.conftest import while_held
from tests.factories import client_with_key

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
