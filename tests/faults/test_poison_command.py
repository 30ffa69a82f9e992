"""A subscriber command that ends its worker each time it runs (a recipient that runs it
out of memory, say), on a real worker: Celery delivers the command of a worker that died
again at once (reject on worker lost), and it took workers down for good."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_django.live_server_helper import LiveServer

from notify.models import TriggerEvent
from tests.e2e.conftest import StartCelery
from tests.e2e.harness import api_post, recipients
from tests.factories import SubscriberFactory
from tests.faults.test_faults import ORDER, statuses, trigger, wait_final
from workflows.models import Notification

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SHIPPED = {"orderId": "A-1", "status": "shipped"}
GIVEN_UP = (
    "its subscriber command never finished in 3 runs, each lost with its worker (a command "
    "that kills its worker?); given up after NORM_MAX_CLAIMS"
)


@pytest.mark.parametrize("audience", ["listed", "broadcast"])
def test_a_command_that_kills_its_worker_each_time_fails_its_recipients_at_norm_max_claims(
    audience: str, live_server: LiveServer, make_client: Any, start_celery: StartCelery
) -> None:
    """Listed, the poisoned recipient's own command fails its notification and the other
    recipient's is sent; in a broadcast, the chunk's command fails the chunk's."""
    worker = start_celery("worker", include="tests.faults.killer", NORM_MAX_CLAIMS="3")
    client, key = make_client()
    if audience == "listed":
        trigger(live_server, key, recipients("ann", "poison-1"), SHIPPED, name=ORDER)
    else:
        for subscriber_id in ("ann", "poison-2"):
            SubscriberFactory(client=client, subscriber_id=subscriber_id)
        body = {"name": ORDER, "payload": SHIPPED}
        response = api_post(live_server.url, key, "/v1/events/trigger/broadcast", body)
        assert response.status_code == 201, response.text

    wait_final(client, 2, timeout=120)

    failed = {"poison-1"} if audience == "listed" else {"ann", "poison-2"}
    notifications = Notification.objects.filter(client=client).select_related("subscriber")
    assert {n.subscriber.subscriber_id: n.status for n in notifications} == {
        "ann": "failed" if "ann" in failed else "completed",
        "poison-1" if audience == "listed" else "poison-2": "failed",
    }, statuses(client)
    assert {n.error for n in notifications if n.status == "failed"} == {GIVEN_UP}
    event = TriggerEvent.objects.get(client=client)
    # One command, counted each time the broker delivered it again: 3 runs lost, then
    # the fourth delivery gave up, and the worker was not killed again.
    assert list(event.redelivered.values()) == [3]
    assert GIVEN_UP in event.error
    assert worker.tail(10_000).count("exited with 'signal 9 (SIGKILL)'") == 3
