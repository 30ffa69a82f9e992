"""Two bulk triggers naming the same transactionIds in other orders, at once."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from notify import services
from notify.models import TriggerEvent
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
    """The first holds `a` and, once the second has started, takes `b`. Stored in the
    order given, the second would hold `b` and wait for `a`: a deadlock, and a 500."""
    client, _ = client_with_key()
    holds_a, errors = threading.Event(), []

    def first() -> None:
        try:
            with transaction.atomic():
                services.trigger_event_store(_event(client, "a"))
                holds_a.set()
                time.sleep(0.5)  # the second bulk runs meanwhile, and waits on `a`
                services.trigger_event_store(_event(client, "b"))
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    def second() -> None:
        try:
            services.trigger_events_store([_event(client, "b"), _event(client, "a")])
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    one = threading.Thread(target=first)
    one.start()
    assert holds_a.wait(10)
    two = threading.Thread(target=second)
    two.start()
    one.join(20)
    two.join(20)

    assert errors == []
    assert sorted(TriggerEvent.objects.values_list("transaction_id", flat=True)) == ["a", "b"]
