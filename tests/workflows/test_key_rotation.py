"""A secret key rotated while notifications are in flight: the bridge holds one key, and
is redeployed with the new one some time after the client has it. Every step still runs,
signed with whichever live key the bridge accepts, and none is sent twice."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from bench.urls import two_step
from config import pipeline
from messaging import tasks as messaging_tasks
from messaging.models import Message
from notify import services as notify_services
from notify.models import Client
from subscribers import tasks as subscriber_tasks
from tests.conftest import Enqueued, sdk_serving
from tests.factories import BridgeSyncFactory, BridgeWorkflowFactory, api_for, client_with_key
from workflows import bridge
from workflows import tasks as workflow_tasks
from workflows.models import Notification
from workflows.sdk import Bridge

pytestmark = pytest.mark.django_db(transaction=True)  # the pipeline enqueues on commit

TASKS = {
    pipeline.WORKFLOW.task: workflow_tasks.workflow_run,
    pipeline.SUBSCRIBER.task: subscriber_tasks.subscriber_process,
    pipeline.ECHO.task: workflow_tasks.echo_run,
    pipeline.MESSAGE.task: messaging_tasks.message_send,
}
BODY = {"payload": {"n": 1}, "state": [], "controls": {}}


def _notify(client: Client, key: str, enqueued: Enqueued, subscriber_id: str) -> Notification:
    """Trigger the two-step workflow (in_app, then email) and run every task it leads to."""
    body = {
        "name": "bench-two-step",
        "to": [{"subscriberId": subscriber_id, "email": f"{subscriber_id}@example.com"}],
        "payload": {"n": 1},
    }
    response = api_for(key).post(
        "/v1/events/trigger", data=json.dumps(body), content_type="application/json"
    )
    assert response.status_code == 201, response.content
    while enqueued.calls:
        task, args, _ = enqueued.calls.pop(0)
        TASKS[task].apply(args=json.loads(json.dumps(args)), throw=True)
    return Notification.objects.get(subscriber__subscriber_id=subscriber_id)


def test_a_call_refused_for_its_key_is_signed_again_with_the_next_live_key() -> None:
    with sdk_serving(Bridge(workflows=[two_step], secret_key="nk_old")) as url:
        answer = bridge.execute(
            f"{url}/bridge", secrets=("nk_new", "nk_old"), workflow_id="bench-two-step", body=BODY
        )
        assert answer["stepId"] == "inbox"
        with pytest.raises(bridge.BridgeError) as refused:
            bridge.execute(
                f"{url}/bridge", secrets=("nk_new",), workflow_id="bench-two-step", body=BODY
            )
    # The last key refused is the error: a bridge whose key the client has none of fails.
    assert (refused.value.status, refused.value.code) == (401, "SignatureMismatchError")
    assert not isinstance(refused.value, bridge.BridgeUnavailable)


def test_a_rotation_done_in_order_fails_no_notification(enqueued: Enqueued, settings: Any) -> None:
    """Create the new key, redeploy the bridge with it, revoke the old one (README): at
    each stage a notification completes. The echo signed with the newest key only, so
    between the new key and the redeploy every notification failed for good with
    SignatureMismatchError."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.NORM_PROCESS_CACHE_SECONDS = 0  # each change of keys reaches the echo at once
    client, old_key = client_with_key()
    old = client.secret_keys.get()
    _, new_key = notify_services.secret_key_create(client=client)

    def stage(bridge_key: str, subscriber_id: str) -> Notification:
        with sdk_serving(Bridge(workflows=[two_step], secret_key=bridge_key)) as url:
            Client.objects.filter(pk=client.pk).update(bridge_url=f"{url}/bench/bridge")
            BridgeWorkflowFactory(
                client=client, bridge_url=f"{url}/bench/bridge", workflow_id="bench-two-step"
            )
            BridgeSyncFactory(client=client, bridge_url=f"{url}/bench/bridge", flavour="norm")
            return _notify(client, new_key, enqueued, subscriber_id)

    assert stage(old_key, "ann").status == "completed"  # the bridge not yet redeployed
    assert stage(new_key, "bob").status == "completed"  # redeployed, both keys live
    notify_services.secret_key_revoke(secret_key=old)
    assert stage(new_key, "cy").status == "completed"  # the old key revoked

    sent = Message.objects.filter(status="sent").values_list("subscriber__subscriber_id", "channel")
    assert sorted(sent) == sorted(
        (who, channel) for who in ("ann", "bob", "cy") for channel in ("in_app", "email")
    )

    # A bridge left on the revoked key is refused by norm's remaining key: it fails, once.
    failed = stage(old_key, "dee")
    assert (failed.status, failed.error_code) == ("failed", "SignatureMismatchError")
    assert not Message.objects.filter(subscriber__subscriber_id="dee").exists()


@pytest.mark.parametrize(
    ("bridge_key", "refusal", "hint"),
    [
        (
            "nk_another_clients",
            "SignatureMismatchError: Signature does not match the expected signature",
            "(norm signed with the client's secret key, and the bridge checks with another: "
            "give it the client's key, as NOVU_SECRET_KEY or Bridge(secret_key=...))",
        ),
        (
            None,
            "SigningKeyNotFoundError: Signature key not found",
            "(the bridge has no secret key to check norm's signature with: give it the "
            "client's key, as NOVU_SECRET_KEY or Bridge(secret_key=...))",
        ),
    ],
)
def test_a_bridge_refusing_norms_signature_over_its_key_says_what_to_change(
    bridge_key: str | None, refusal: str, hint: str
) -> None:
    """A new bridge given another key than its client's (one copied wrong, the demo's) or
    none (its variable unset): the trigger's 502 gave only the bridge's words, to ensure
    the `novu-signature` header is correct, which norm writes and its user cannot change,
    or to set `config.secretKey` in a Client constructor that norm's SDK does not have."""
    message = _trigger_refused(lambda _: bridge_key)
    assert refusal in message and message.endswith(hint)


def _trigger_refused(key_of_bridge: Callable[[str], str | None]) -> str:
    """The message of the 502 a trigger gets from a bridge given `key_of_bridge(the
    client's key)`, as norm's SDK serves it."""
    client, key = client_with_key()
    with sdk_serving(Bridge(workflows=[two_step], secret_key=key_of_bridge(key))) as url:
        Client.objects.filter(pk=client.pk).update(bridge_url=f"{url}/bridge")
        response = api_for(key).post(
            "/v1/events/trigger",
            data=json.dumps({"name": "bench-two-step", "to": "ann", "payload": {"n": 1}}),
            content_type="application/json",
        )
    assert response.status_code == 502
    message: str = response.json()["message"]
    return message


def test_a_bridge_refusing_norms_signature_as_expired_says_to_set_the_clocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """norm's host ten minutes behind the bridge's: the bridge takes each signature, made
    as norm calls, for an old one, and its words ask for a newer `novu-signature` header,
    which norm writes and its user cannot change. The clocks are what to change."""
    signed = bridge.signature_header

    def ten_minutes_behind(secret: str, body: str, timestamp_ms: int | None = None) -> str:
        return signed(secret, body, int(time.time() * 1000) - 600_000)

    monkeypatch.setattr(bridge, "signature_header", ten_minutes_behind)
    message = _trigger_refused(lambda key: key)  # the right key, at the wrong time
    assert "SignatureExpiredError: Signature expired" in message
    assert message.endswith(
        "(norm signs each call as it makes it: the clocks of norm's host and the bridge's "
        "differ by more than the bridge allows; set both by NTP)"
    )
