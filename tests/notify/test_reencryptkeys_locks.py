"""reencryptkeys beside the traffic it runs under, on real connections (hence
`transaction=True`): it locks the secret keys it rewrites, and nothing else."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command

from notify import crypto
from notify.models import SecretKey, TriggerEvent
from subscribers.models import Subscriber
from tests.conftest import Enqueued, InThread
from tests.factories import BridgeWorkflowFactory, api_for, client_with_key

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_trigger_is_not_held_up_while_reencryptkeys_rewrites_its_clients_keys(
    settings: Any, enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command read the keys `select_for_update().select_related("client")`, which
    PostgreSQL takes as FOR UPDATE of the client rows joined too: every insert that
    references the client (a trigger's event, the subscriber it creates) checks its
    foreign key with FOR KEY SHARE of that row, and waited for the whole run. It locks
    only the keys now; a trigger and a subscriber's create finish while the command's
    transaction is open."""
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.NORM_ENCRYPTION_KEY = old
    client, key = client_with_key()
    BridgeWorkflowFactory(client=client, workflow_id="welcome")  # no bridge asked
    settings.NORM_ENCRYPTION_KEY = f"{new},{old}"

    # The command paused inside its transaction, its rows locked, until released.
    locked, release = threading.Event(), threading.Event()
    reencrypt = crypto.reencrypt

    def paused(token: str) -> str:
        locked.set()
        release.wait(30)
        return reencrypt(token)

    monkeypatch.setattr(crypto, "reencrypt", paused)
    stored = SecretKey.objects.get().encrypted
    command = InThread(lambda: call_command("reencryptkeys", stdout=io.StringIO()))
    try:
        assert locked.wait(10)
        body = {"name": "welcome", "to": {"subscriberId": "ann"}, "transactionId": "tx-1"}
        api = api_for(key)
        trigger = InThread(
            lambda: (
                api.post("/v1/events/trigger", body, format="json"),
                api.post("/v2/subscribers", {"subscriberId": "bob"}, format="json"),
            )
        )
        # Done while the command still holds its locks: on main it waited for them all
        # (8 s is ample for a trigger on a busy machine; the command waits 30).
        trigger.thread.join(8)
        finished = not trigger.thread.is_alive()
    finally:
        release.set()
    command.join()
    triggered, created = trigger.join()

    assert finished, "the trigger waited for reencryptkeys' transaction"
    assert triggered.status_code == 201, triggered.content
    assert created.status_code == 201, created.content
    assert TriggerEvent.objects.filter(client=client).count() == 1
    assert Subscriber.objects.filter(client=client, subscriber_id="bob").exists()
    assert SecretKey.objects.get().encrypted != stored  # and the command did its work
