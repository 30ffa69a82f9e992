"""The reconciler's tick beside the writes that lock the same rows, on real connections
(hence `transaction=True`): neither waits for the other in a cycle (a deadlock, which
PostgreSQL ends by failing one of them), and two ticks at once do no harm."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, transaction

from notify.models import TriggerEvent
from subscribers.models import Subscriber
from tests.conftest import Enqueued, ago
from tests.factories import NotificationFactory, SubscriberFactory, api_for, client_with_key
from workflows import services
from workflows.models import Notification

pytestmark = pytest.mark.django_db(transaction=True)

GRACE = 60
STALE = 600


@pytest.fixture(autouse=True)
def _timing(settings: Any) -> None:
    settings.NORM_RECONCILE_GRACE = GRACE
    settings.NORM_STALE_CLAIM_SECONDS = STALE


class InThread:
    """`work` on a thread and a connection of its own; `join` returns what it returned,
    or raises what it raised."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: Exception | None = None

        def run() -> None:
            try:
                self.result = work()
            except Exception as exc:
                self.error = exc
            finally:
                connection.close()

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self) -> Any:
        self.thread.join(20)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result


def lock_waiters(count: int, *, within: float = 3) -> None:
    """Return once `count` other connections wait for a row lock, or after `within`
    seconds: a fixed run may not wait at all."""
    deadline = time.monotonic() + within
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0] >= count:
                return
            time.sleep(0.02)


def held(event: TriggerEvent, release: threading.Event) -> InThread:
    """Another worker's transaction holding `event` (a subscriber command counting its
    run lost, say) until `release`."""
    locked = threading.Event()

    def hold() -> None:
        with transaction.atomic():
            TriggerEvent.objects.select_for_update(no_key=True).filter(pk=event.pk).exists()
            locked.set()
            release.wait(10)

    holder = InThread(hold)
    assert locked.wait(10)
    return holder


def test_a_subscriber_deleted_while_a_tick_releases_stale_fan_outs_is_deleted(
    enqueued: Enqueued,
) -> None:
    """A tick's UPDATE of several events locked them in the order it read them (the
    table's, or an index's), a subscriber's delete in id order: the tick held a later
    event and waited for an earlier one the delete held, while the delete waited for the
    later one. PostgreSQL ended the delete (a 503, the subscriber still there)."""
    client, key = client_with_key()
    ann = SubscriberFactory(client=client, subscriber_id="ann")
    first, second = (
        NotificationFactory(trigger_event__client=client, subscriber=ann).trigger_event
        for _ in range(2)
    )
    other = NotificationFactory(trigger_event__client=client).trigger_event
    # Their runs died: stale claims. The tick reads `second`, `other`, then `first` (as
    # created, and as stored: the one written last is the table's last row).
    for n, event in enumerate((second, other, first)):
        TriggerEvent.objects.filter(pk=event.pk).update(
            status=TriggerEvent.Status.PROCESSING,
            claimed_at=ago(STALE + 10),
            created_at=ago(STALE + 30 - n),
        )
    release = threading.Event()
    holder = held(other, release)
    tick = InThread(services.reconcile)  # holds `second`, waits for `other`
    lock_waiters(1)
    delete = InThread(lambda: api_for(key).delete("/v2/subscribers/ann"))
    lock_waiters(2)  # the delete holds `first`, waits for `second`
    release.set()  # the tick goes on to `first`
    holder.join()
    response = delete.join()
    tick.join()

    assert response.status_code == 200, response.content
    assert not Subscriber.objects.filter(pk=ann.pk).exists()
    assert not Notification.objects.filter(subscriber=ann).exists()
    for event in (first, second):  # released by the tick, and ann counted out of both
        event.refresh_from_db()
        assert (event.status, event.forgotten) == (TriggerEvent.Status.RECEIVED, ["ann"])
