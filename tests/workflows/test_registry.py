"""The registry of a client's bridge, synced from a real bridge on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from django.db import connection
from django.utils import timezone

from notify.models import BridgeSync, BridgeWorkflow, Client, TriggerEvent
from tests.conftest import Enqueued, ago, json_serving
from tests.factories import (
    BridgeSyncFactory,
    BridgeWorkflowFactory,
    NotificationFactory,
    api_for,
    client_with_key,
)
from workflows import bridge, registry
from workflows.models import Notification
from workflows.sdk import Bridge, workflow
from workflows.services import echo

pytestmark = pytest.mark.django_db

WELCOME = {"workflowId": "welcome", "steps": [{"stepId": "inbox", "type": "in_app"}]}


@pytest.fixture
def served() -> Iterator[tuple[str, dict[str, Any]]]:
    """A bridge on 127.0.0.1 whose discover answers `answers["discover"]`: its URL."""
    answers: dict[str, Any] = {"discover": {"workflows": [WELCOME]}}

    def respond(
        method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        action = dict(parse_qsl(urlsplit(path).query)).get("action")
        if action == "discover":
            return 200, answers["discover"], {}
        return 200, {"status": "ok", "sdk": "norm-python"}, {}

    with json_serving(respond) as url:
        yield f"{url}/bridge", answers


@pytest.mark.parametrize(
    "answer", [{}, {"status": "maintenance"}, {"workflows": None}, {"workflows": "welcome"}]
)
def test_a_discover_answer_without_a_workflows_list_keeps_the_registry(
    served: tuple[str, dict[str, Any]], enqueued: Enqueued, settings: Any, answer: dict[str, Any]
) -> None:
    """A 200 that is no discover answer (a maintenance page's JSON, a URL that is not the
    bridge endpoint's) is a failed sync, as a bridge that is down: read as a bridge that
    declares no workflows, it emptied the registry, and every trigger of a workflow the
    bridge still defines was a 404 (and a Novu bridge's running notifications failed with
    StepNotDiscovered) until a later sync."""
    url, answers = served
    client, key = client_with_key(bridge_url=url)
    registry.bridge_sync(client=client, bridge_url=url)
    answers["discover"] = answer
    settings.NORM_REGISTRY_TTL = settings.NORM_DISCOVER_MIN_INTERVAL = 60
    stale = timezone.now() - timedelta(seconds=61)
    BridgeWorkflow.objects.filter(client=client).update(discovered_at=stale)
    BridgeSync.objects.filter(client=client).update(synced_at=stale)

    # The trigger syncs the stale entry, and is served from it, as while the bridge is down.
    response = api_for(key).post(
        "/v1/events/trigger",
        data=json.dumps({"name": "welcome", "to": "ann"}),
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    assert TriggerEvent.objects.filter(client=client).count() == 1
    assert BridgeWorkflow.objects.filter(client=client, workflow_id="welcome").exists()
    assert "no `workflows` list" in BridgeSync.objects.get(client=client).error
    with pytest.raises(bridge.BridgeError) as raised:
        registry.bridge_sync(client=client, bridge_url=url)
    assert raised.value.code == "BridgeInvalidResponse"


def test_a_discover_of_more_workflows_than_norm_keeps_is_a_failed_sync(
    served: tuple[str, dict[str, Any]], enqueued: Enqueued
) -> None:
    """Each workflow is a row the sync writes in the trigger's request: a discover of
    25,000 held it 77 s, again at each sync. One of more than MAX_WORKFLOWS (1000) is a
    failed sync, which keeps the registry as it was."""
    url, answers = served
    client, key = client_with_key(bridge_url=url)
    BridgeWorkflowFactory(client=client, workflow_id="welcome", discovered_at=ago(3600))
    answers["discover"] = {
        "workflows": [WELCOME, *({**WELCOME, "workflowId": f"w{n}"} for n in range(1000))]
    }

    with pytest.raises(bridge.BridgeError) as raised:
        registry.bridge_sync(client=client, bridge_url=url)

    assert raised.value.code == "BridgeInvalidResponse"
    assert "declared 1001 workflows; norm keeps at most 1000" in raised.value.message
    assert list(BridgeWorkflow.objects.values_list("workflow_id", flat=True)) == ["welcome"]
    assert "declared 1001 workflows" in BridgeSync.objects.get(client=client).error

    answers["discover"]["workflows"].pop()  # 1000: kept, every one
    assert len(registry.bridge_sync(client=client, bridge_url=url)) == 1000


def _trigger(key: str) -> int:
    body = json.dumps({"name": "welcome", "to": "ann"})
    api = api_for(key)
    return api.post("/v1/events/trigger", data=body, content_type="application/json").status_code


def test_a_sync_slower_than_the_interval_is_not_due_again_as_it_ends(
    enqueued: Enqueued, settings: Any
) -> None:
    """NORM_DISCOVER_MIN_INTERVAL counts from the end of a sync. Stamped with its start, a
    sync of a bridge that hangs (a timeout for its health-check, one for its discover:
    20 s by default, twice the interval) was due again as it ended: every trigger waited
    out both timeouts, the bridge was asked again at once."""
    settings.NORM_BRIDGE_TIMEOUT, settings.NORM_DISCOVER_MIN_INTERVAL = 1.0, 1.5  # a sync: 2 s
    asked: list[str] = []

    def hang(
        method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        asked.append(dict(parse_qsl(urlsplit(path).query)).get("action", ""))
        time.sleep(1.2)
        return 200, {}, {}

    with json_serving(hang) as url:
        client, key = client_with_key(bridge_url=f"{url}/bridge")
        stale = timezone.now() - timedelta(days=1)
        BridgeWorkflowFactory(client=client, bridge_url=f"{url}/bridge", discovered_at=stale)

        assert [_trigger(key), _trigger(key)] == [201, 201]  # from the stale entry

    assert asked == ["health-check", "discover"]  # one sync, not one per trigger
    assert TriggerEvent.objects.filter(client=client).count() == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_triggers_of_a_stale_entry_sync_it_once(
    enqueued: Enqueued, settings: Any
) -> None:
    """At most one sync per NORM_DISCOVER_MIN_INTERVAL, also for triggers that come while
    one is under way: each saw the last sync's old stamp and synced too, so while a bridge
    hung every trigger of its client waited out two timeouts (20 s by default), and held a
    web worker as long."""
    settings.NORM_BRIDGE_TIMEOUT, settings.NORM_DISCOVER_MIN_INTERVAL = 0.3, 60
    asked: list[str] = []

    def hang(
        method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        asked.append(dict(parse_qsl(urlsplit(path).query)).get("action", ""))
        time.sleep(0.5)
        return 200, {}, {}

    with json_serving(hang) as url:
        client, key = client_with_key(bridge_url=f"{url}/bridge")
        stale = timezone.now() - timedelta(days=1)
        BridgeWorkflowFactory(client=client, bridge_url=f"{url}/bridge", discovered_at=stale)
        BridgeSyncFactory(client=client, bridge_url=f"{url}/bridge", synced_at=stale)
        statuses: list[int] = []

        def trigger() -> None:
            try:
                statuses.append(_trigger(key))
            finally:
                connection.close()

        threads = [threading.Thread(target=trigger) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)

    assert statuses == [201, 201, 201]  # from the stale entry
    assert asked == ["health-check", "discover"]


resolved: list[str] = []


@workflow("counted")
def counted(ctx: Any) -> None:
    ctx.step.in_app("inbox", lambda: resolved.append("inbox") or {"body": "Hi"})


def test_a_health_check_answer_that_is_no_health_check_keeps_the_known_flavour(
    enqueued: Enqueued, django_capture_on_commit_callbacks: Any
) -> None:
    """Every SDK answers its health-check `{"status": "ok", ...}`. Any other JSON (a
    maintenance page's) read as Novu's SDK made a bridge of norm's a Novu one until a
    later sync: each echo then ran its step twice, the probe of Novu's flavour first."""
    resolved.clear()
    client, key = client_with_key()
    sdk = Bridge(workflows=[counted], secret_key=key)
    health: dict[str, Any] = {}

    def respond(
        method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        query = dict(parse_qsl(urlsplit(path).query))
        if query.get("action") == "health-check" and health:
            return 200, health, {}
        return sdk.handle(method=method, query=query, body=body, headers=headers)

    with json_serving(respond) as base:
        url = f"{base}/bridge"
        Client.objects.filter(pk=client.pk).update(bridge_url=url)
        client.refresh_from_db()
        registry.bridge_sync(client=client, bridge_url=url)
        health["status"] = "maintenance"
        registry.bridge_sync(client=client, bridge_url=url)
        assert BridgeSync.objects.get(client=client).flavour == "norm"

        notification = NotificationFactory(
            trigger_event__client=client,
            trigger_event__workflow_id="counted",
            status=Notification.Status.RUNNING,
        )
        with django_capture_on_commit_callbacks(execute=True):
            echo.echo_run(notification_id=str(notification.pk))

    assert notification.steps.get().step_id == "inbox"
    assert resolved == ["inbox"]


def test_a_sync_leaves_the_workflows_another_bridge_of_the_client_declared(
    served: tuple[str, dict[str, Any]],
) -> None:
    """The registry is by bridge: a sync replaces what that bridge declared, not what
    another bridge of the client (its old one, after a move) did."""
    url, _ = served
    client, _ = client_with_key(bridge_url=url)
    BridgeWorkflowFactory(client=client, bridge_url="http://old.example/bridge", workflow_id="old")

    registry.bridge_sync(client=client, bridge_url=url)

    assert set(
        BridgeWorkflow.objects.filter(client=client).values_list("bridge_url", "workflow_id")
    ) == {
        ("http://old.example/bridge", "old"),
        (url, "welcome"),
    }


def test_a_failed_discover_keeps_the_flavour_its_health_check_told(
    served: tuple[str, dict[str, Any]],
) -> None:
    """A bridge that answers its health-check and fails its discover (a wrong key, a
    maintenance page): the flavour is what the health-check told, stored with the error."""
    url, answers = served
    answers["discover"] = {"status": "maintenance"}
    client, _ = client_with_key()
    with pytest.raises(bridge.BridgeError):
        registry.bridge_sync(client=client, bridge_url=url)
    sync = BridgeSync.objects.get(client=client, bridge_url=url)
    assert sync.flavour == "norm"
    assert sync.error.startswith("BridgeInvalidResponse")


def test_a_workflow_declared_without_a_name_is_named_by_its_id(
    served: tuple[str, dict[str, Any]],
) -> None:
    url, answers = served
    answers["discover"] = {"workflows": [WELCOME, {**WELCOME, "workflowId": "w2", "name": "Two"}]}
    client, _ = client_with_key()
    registry.bridge_sync(client=client, bridge_url=url)
    names = BridgeWorkflow.objects.filter(client=client).values_list("workflow_id", "name")
    assert sorted(names) == [("w2", "Two"), ("welcome", "welcome")]


def test_a_flavour_read_not_cached_is_the_one_stored_now() -> None:
    """`cached` may serve a flavour this process read a moment ago; without it, the
    flavour is read again, as a sync just stored it."""
    sync = BridgeSyncFactory(flavour="norm")
    key = {"client_id": sync.client_id, "bridge_url": sync.bridge_url}
    assert registry.bridge_flavour(**key) == "norm"
    BridgeSync.objects.filter(pk=sync.pk).update(flavour="novu")
    assert registry.bridge_flavour(**key, cached=True) == "norm"  # read a moment ago
    assert registry.bridge_flavour(**key) == "novu"
