from __future__ import annotations

import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.cache import cache, caches
from django.core.cache.backends import base, locmem

from notify import throttling
from notify.models import TriggerEvent
from tests.factories import BridgeWorkflowFactory, api_for, client_with_key


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    cache.clear()


@pytest.mark.django_db
def test_triggers_over_the_clients_rate_get_429_with_retry_after(enqueued) -> None:
    client, key = client_with_key(rate_limit_per_minute=3)
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    api = api_for(key)
    statuses = [
        api.post("/v1/events/trigger", {"name": "welcome", "to": "ann"}, format="json").status_code
        for _ in range(5)
    ]
    assert statuses == [201, 201, 201, 429, 429]
    refused = api.post("/v1/events/trigger", {"name": "welcome", "to": "ann"}, format="json")
    assert refused.json()["statusCode"] == 429
    assert 1 <= int(refused["Retry-After"]) <= 61
    assert TriggerEvent.objects.filter(client=client).count() == 3


@pytest.mark.django_db
def test_rate_is_counted_per_client(enqueued) -> None:
    limited, limited_key = client_with_key(rate_limit_per_minute=1)
    # Limited too: were the counter shared, the limited client's two would count here.
    other, other_key = client_with_key(rate_limit_per_minute=3)
    for c in (limited, other):
        BridgeWorkflowFactory(client=c, workflow_id="welcome")
    body = {"name": "welcome", "to": "ann"}
    assert api_for(limited_key).post("/v1/events/trigger", body, format="json").status_code == 201
    assert api_for(limited_key).post("/v1/events/trigger", body, format="json").status_code == 429
    for _ in range(3):
        assert api_for(other_key).post("/v1/events/trigger", body, format="json").status_code == 201


@pytest.mark.django_db
def test_a_bulk_request_costs_one_per_event(enqueued) -> None:
    client, key = client_with_key(rate_limit_per_minute=5)
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    api = api_for(key)
    events = [{"name": "welcome", "to": f"u{i}"} for i in range(4)]
    assert api.post("/v1/events/trigger/bulk", {"events": events}, format="json").status_code == 201
    # 4 spent of 5: another bulk of 4 is over the rate, and stores nothing.
    assert api.post("/v1/events/trigger/bulk", {"events": events}, format="json").status_code == 429
    assert TriggerEvent.objects.filter(client=client).count() == 4


@pytest.fixture
def counters_redis_down(settings: Any) -> None:
    """The rate's counters in a Redis that is not there: a port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"socket_connect_timeout": 1},
        }
    }


@pytest.mark.django_db
@pytest.mark.usefixtures("counters_redis_down")
def test_triggers_go_on_uncounted_while_the_counters_redis_is_down(
    enqueued, caplog: pytest.LogCaptureFixture
) -> None:
    client, key = client_with_key(rate_limit_per_minute=1)
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    body = {"name": "welcome", "to": "ann"}

    statuses = [api_for(key).post("/v1/events/trigger", body, format="json").status_code]
    statuses.append(api_for(key).post("/v1/events/trigger", body, format="json").status_code)

    assert statuses == [201, 201]
    assert "not counted" in caplog.text


@pytest.mark.django_db
@pytest.mark.usefixtures("counters_redis_down")
def test_triggers_uncounted_while_the_counters_redis_is_down_log_one_line_a_minute(
    enqueued, caplog: pytest.LogCaptureFixture
) -> None:
    """Not one a trigger: a client's whole rate of lines, for as long as Redis is down."""
    client, key = client_with_key(rate_limit_per_minute=1)
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    body = {"name": "welcome", "to": "ann"}

    statuses = {api_for(key).post("/v1/events/trigger", body, format="json").status_code}
    statuses |= {
        api_for(key).post("/v1/events/trigger", body, format="json").status_code for _ in range(4)
    }

    assert statuses == {201}
    [line] = [r.getMessage() for r in caplog.records if "not counted" in r.getMessage()]
    assert line.startswith(f"trigger rate of client {client.pk} not counted: ")


@pytest.mark.django_db
def test_the_count_starts_again_each_minute_and_retry_after_names_the_next(
    enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, key = client_with_key(rate_limit_per_minute=1)
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    minute = (int(time.time()) // 60 + 10) * 60  # a minute's start, ahead of any other test's
    clock = [minute + 0.5]
    monkeypatch.setattr(throttling, "time", SimpleNamespace(time=lambda: clock[0]))
    body = {"name": "welcome", "to": "ann"}

    def trigger() -> Any:
        return api_for(key).post("/v1/events/trigger", body, format="json")

    assert trigger().status_code == 201
    # Seconds to the next minute, rounded up (and a second more, for the clocks' skew).
    assert 60 <= int(trigger()["Retry-After"]) <= 61
    clock[0] = minute + 59.5
    assert 1 <= int(trigger()["Retry-After"]) <= 2
    clock[0] = minute + 60.5  # the next minute: a fresh count
    assert trigger().status_code == 201
    assert trigger().status_code == 429
    assert TriggerEvent.objects.filter(client=client).count() == 2


@pytest.mark.django_db
def test_a_minutes_count_lasts_the_whole_minute(
    enqueued, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """The counter outlives its minute: one the cache let go sooner (after a second, say)
    forgot a client's triggers spaced further apart than that, and let each through."""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "rate"}
    }
    client, key = client_with_key(rate_limit_per_minute=2)
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    minute = (int(time.time()) // 60 + 30) * 60  # a minute's start, ahead of any other test's
    clock = [minute + 0.5]
    # The cache's expiry read on the window's clock: the minute passes in no time.
    for module in (throttling, base, locmem):
        monkeypatch.setattr(module, "time", SimpleNamespace(time=lambda: clock[0]))
    body = {"name": "welcome", "to": "ann"}

    statuses = []
    for into_the_minute in (0.5, 30.0, 59.5):
        clock[0] = minute + into_the_minute
        statuses.append(api_for(key).post("/v1/events/trigger", body, format="json").status_code)

    assert statuses == [201, 201, 429]


@pytest.mark.django_db
@pytest.mark.parametrize(("into_the_minute", "told"), [(0.5, 61), (30.0, 31), (59.75, 2)])
def test_retry_after_and_the_message_name_the_same_seconds(
    enqueued, monkeypatch: pytest.MonkeyPatch, into_the_minute: float, told: int
) -> None:
    """Whole seconds to the next minute, rounded up, and one more for the web processes'
    clocks: the header said a second more than the body (61 and 60, 31 and 30), and a
    client reading the body came back while the minute was still counted."""
    client, key = client_with_key(rate_limit_per_minute=1)
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    minute = (int(time.time()) // 60 + 20) * 60  # a minute's start, ahead of any other test's
    monkeypatch.setattr(throttling, "time", SimpleNamespace(time=lambda: minute + into_the_minute))
    body = {"name": "welcome", "to": "ann"}
    assert api_for(key).post("/v1/events/trigger", body, format="json").status_code == 201

    refused = api_for(key).post("/v1/events/trigger", body, format="json")

    assert refused.status_code == 429
    assert refused["Retry-After"] == str(told)
    assert f"Expected available in {told} seconds." in refused.json()["message"]


@pytest.mark.django_db
def test_a_refused_request_spends_none_of_the_rate(enqueued, counters: None) -> None:
    client, key = client_with_key(rate_limit_per_minute=5)
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    api = api_for(key)
    events = [{"name": "welcome", "to": f"u{i}"} for i in range(4)]
    assert api.post("/v1/events/trigger/bulk", {"events": events}, format="json").status_code == 201
    assert api.post("/v1/events/trigger/bulk", {"events": events}, format="json").status_code == 429
    # The refused bulk took none of the 1 left: it is there for a trigger, and then gone.
    body = {"name": "welcome", "to": "ann"}
    assert api.post("/v1/events/trigger", body, format="json").status_code == 201
    assert api.post("/v1/events/trigger", body, format="json").status_code == 429
    assert TriggerEvent.objects.filter(client=client).count() == 5


@pytest.mark.django_db
def test_a_bulk_beyond_the_whole_rate_is_a_400_not_a_429_to_retry(enqueued) -> None:
    """No minute would take 4 events from a client of 3 a minute: a 429 had novu-py
    retry it for an hour (and honour Retry-After each time), to fail in the end."""
    client, key = client_with_key(rate_limit_per_minute=3)
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    api = api_for(key)
    events = [{"name": "welcome", "to": f"u{i}"} for i in range(4)]

    refused = api.post("/v1/events/trigger/bulk", {"events": events}, format="json")

    assert (refused.status_code, refused.json()["code"]) == (400, "bulk_over_rate")
    assert "at most 3 per request" in refused.json()["message"]
    assert "Retry-After" not in refused
    assert not TriggerEvent.objects.filter(client=client).exists()
    # One beyond the bulk's own limit hears of that limit, not of the rate.
    client.rate_limit_per_minute = 100
    client.save(update_fields=["rate_limit_per_minute"])
    many = {"events": [{"name": "welcome", "to": f"u{i}"} for i in range(101)]}
    too_many = api.post("/v1/events/trigger/bulk", many, format="json")
    assert (too_many.status_code, too_many.json()["code"]) == (400, "invalid_request")
    assert "1 to 100" in too_many.json()["message"]
    # It spent nothing: a bulk within the rate goes through.
    assert (
        api.post("/v1/events/trigger/bulk", {"events": events[:3]}, format="json").status_code
        == 201
    )


@pytest.mark.django_db
def test_a_counter_evicted_between_its_add_and_its_increment_is_no_500(
    enqueued, counters: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis under maxmemory (or local memory past its 300 keys) may drop the counter
    that add() just made; Django's incr() of a missing key raises ValueError."""
    client, key = client_with_key(rate_limit_per_minute=5)
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    store = caches["default"]
    real_add = store.add

    def add_then_evicted(name: str, *args: Any, **kwargs: Any) -> bool:
        added = real_add(name, *args, **kwargs)
        store.delete(name)  # as the store's eviction would
        return added

    monkeypatch.setattr(store, "add", add_then_evicted)
    body = {"name": "welcome", "to": "ann"}

    assert api_for(key).post("/v1/events/trigger", body, format="json").status_code == 201
    assert "not counted" in caplog.text


@pytest.mark.django_db
def test_a_bulk_of_the_most_events_a_request_takes_costs_each_of_them(enqueued) -> None:
    """100 events, the bulk's limit, are 100 triggers of the rate, not one."""
    client, key = client_with_key(rate_limit_per_minute=100)
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    api = api_for(key)
    events = [{"name": "welcome", "to": f"u{i}"} for i in range(100)]
    assert api.post("/v1/events/trigger/bulk", {"events": events}, format="json").status_code == 201
    body = {"name": "welcome", "to": "ann"}
    assert api.post("/v1/events/trigger", body, format="json").status_code == 429
    assert TriggerEvent.objects.filter(client=client).count() == 100


@pytest.mark.django_db
def test_a_broadcast_counts_against_the_rate_as_a_trigger_does(enqueued) -> None:
    client, key = client_with_key(rate_limit_per_minute=1)
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    api = api_for(key)
    assert (
        api.post("/v1/events/trigger/broadcast", {"name": "welcome"}, format="json").status_code
        == 201
    )
    refused = api.post("/v1/events/trigger/broadcast", {"name": "welcome"}, format="json")
    assert refused.status_code == 429 and "Retry-After" in refused
    body = {"name": "welcome", "to": "ann"}
    assert api.post("/v1/events/trigger", body, format="json").status_code == 429
    assert TriggerEvent.objects.filter(client=client).count() == 1


@pytest.mark.django_db
def test_a_request_that_triggers_nothing_spends_none_of_the_rate(enqueued) -> None:
    """A GET or PUT of a trigger route (a 405) and an OPTIONS (DRF's description of the
    view) store no trigger: each took one of the client's rate, its next trigger a 429."""
    client, key = client_with_key(rate_limit_per_minute=1)
    BridgeWorkflowFactory(client=client, workflow_id="welcome")
    api = api_for(key)
    for path in ("/v1/events/trigger", "/v1/events/trigger/bulk", "/v1/events/trigger/broadcast"):
        assert api.get(path).status_code in (404, 405)  # bulk, broadcast: a transactionId's
        assert api.put(path, {}, format="json").status_code == 405
        assert api.options(path).status_code == 200
    body = {"name": "welcome", "to": "ann"}
    assert api.post("/v1/events/trigger", body, format="json").status_code == 201
    assert api.post("/v1/events/trigger", body, format="json").status_code == 429
