"""services.client_bridge_move: a client's bridge moved with the work still headed for
the old one (rundemo on another --addr), and nobody else's work."""

from __future__ import annotations

import pytest

from notify import services
from notify.models import TriggerEvent
from tests.conftest import while_held
from tests.factories import ClientFactory, NotificationFactory, TriggerEventFactory
from workflows.models import Notification

pytestmark = pytest.mark.django_db

OLD = "http://127.0.0.1:8000/bridge"
NEW = "http://127.0.0.1:8001/bridge"
ALLOWED = "http://other-bridge.test/api/novu"


def _resource(row: TriggerEvent | Notification) -> str:
    row.refresh_from_db()
    return row.resource


def test_the_clients_unfinished_work_follows_its_bridge_and_nobody_elses_does() -> None:
    client = ClientFactory(bridge_url=OLD, allowed_bridge_urls=[ALLOWED])
    # Another client of the same bridge (a second client made in make run's database):
    # its work moved too would be sent to a bridge it was never given, or refused there.
    other = ClientFactory(bridge_url=OLD)
    in_flight = NotificationFactory(
        trigger_event__client=client, trigger_event__status=TriggerEvent.Status.PROCESSED
    )
    received = TriggerEventFactory(client=client)
    others = NotificationFactory(
        trigger_event__client=other, trigger_event__status=TriggerEvent.Status.PROCESSED
    )
    others_received = TriggerEventFactory(client=other)
    # What is over keeps the bridge it ran on: the history of where it went.
    done = NotificationFactory(
        trigger_event__client=client,
        trigger_event__status=TriggerEvent.Status.PROCESSED,
        status=Notification.Status.COMPLETED,
    )
    failed = TriggerEventFactory(client=client, status=TriggerEvent.Status.FAILED)
    canceled = TriggerEventFactory(client=client, status=TriggerEvent.Status.CANCELED)
    # Headed for another of its bridges, which did not move.
    elsewhere = NotificationFactory(trigger_event__client=client, trigger_event__resource=ALLOWED)

    moved = services.client_bridge_move(client=client, bridge_url=NEW)

    assert moved.bridge_url == NEW
    client.refresh_from_db()
    assert client.bridge_url == NEW
    for row in (in_flight, in_flight.trigger_event, received):
        assert _resource(row) == NEW
    for row in (others, others.trigger_event, others_received):
        assert _resource(row) == OLD
    other.refresh_from_db()
    assert other.bridge_url == OLD
    for row in (done, failed, canceled):
        assert _resource(row) == OLD
    for row in (elsewhere, elsewhere.trigger_event):
        assert _resource(row) == ALLOWED


@pytest.mark.django_db(transaction=True)
def test_two_moves_at_once_leave_the_work_on_the_bridge_the_client_ends_on() -> None:
    """The second move reads where the bridge is once the first has committed: read
    before, it moved the work still on the first's old URL (none by then), and the work
    stayed on a URL the client no longer had, failed (BridgeNotAllowed)."""
    client = ClientFactory(bridge_url=OLD)
    received = TriggerEventFactory(client=client)
    last = "http://127.0.0.1:8002/bridge"

    while_held(
        lambda: services.client_bridge_move(client=client, bridge_url=NEW),
        lambda: services.client_bridge_move(client=client, bridge_url=last),
    )

    client.refresh_from_db()
    assert (client.bridge_url, _resource(received)) == (last, last)
