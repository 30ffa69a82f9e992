from __future__ import annotations

import hmac
import logging

from cryptography.fernet import InvalidToken
from django.db.models import Count

from config.memo import Memo
from notify import crypto
from notify.models import BridgeWorkflow, Client, SecretKey, TriggerEvent
from workflows.bridge import BridgeError
from workflows.models import Notification

logger = logging.getLogger(__name__)


def client_by_api_key(*, key: str) -> Client | None:
    digest = crypto.hash_key(key)
    secret = (
        SecretKey.objects.select_related("client")
        .filter(key_hash=digest, revoked_at__isnull=True)
        .first()
    )
    # The lookup is by hash; the compare is constant-time anyway, for defence in depth.
    if secret is None or not hmac.compare_digest(secret.key_hash, digest):
        return None
    return secret.client


_signing_secrets: Memo[tuple[str, ...]] = Memo()
_registry: Memo[BridgeWorkflow] = Memo()

# A rotation has two live keys, rarely more; a refused signature costs one more call.
MAX_SIGNING_KEYS = 3


def signing_secrets(*, client_id: int, cached: bool = False) -> tuple[str, ...]:
    """The secrets norm signs bridge calls with: the client's live keys, newest first
    (at most MAX_SIGNING_KEYS). The newest signs; during a rotation the bridge may still
    hold an older one, which bridge.call tries next when the newest is refused.
    `cached`: as this process read them up to NORM_PROCESS_CACHE_SECONDS ago (the echo
    worker signs every call; a new key or a revocation reaches it within those seconds)."""

    def load() -> tuple[str, ...] | None:
        live = SecretKey.objects.filter(client_id=client_id, revoked_at__isnull=True)
        newest = list(live.order_by("-created_at", "-id")[:MAX_SIGNING_KEYS])
        if not newest:
            return None
        # The newest signs, and unreadable fails the call. An older one is tried only if
        # the bridge refuses the newest: unreadable, it is left out, not made to fail every
        # call the newest signs (a new key made before the unreadable one is revoked).
        first, *older = newest
        return (_decrypted(first), *filter(None, map(_readable, older)))

    return _signing_secrets.get(client_id, load, fresh=not cached) or ()


def _readable(secret: SecretKey) -> str:
    """A secret key as stored; "" (logged) for one NORM_ENCRYPTION_KEY does not decrypt."""
    try:
        return _decrypted(secret)
    except BridgeError as exc:
        logger.warning("an older signing key is left out: %s", exc.message)
        return ""


def _decrypted(secret: SecretKey) -> str:
    """A secret key as stored; a BridgeError (SigningKeyUnreadable) for one that
    NORM_ENCRYPTION_KEY does not decrypt. Raised as the error of the bridge call it was
    to sign, it fails the notification with this reason (and a discover answers 502):
    InvalidToken went to the worker's log only, and left the notification pending for
    good, the reconciler asking for it again every grace period."""
    try:
        return crypto.decrypt(secret.encrypted)
    except InvalidToken:
        raise BridgeError(
            "SigningKeyUnreadable",
            f"norm cannot decrypt the client's secret key {secret.prefix}… to sign the bridge "
            "call: NORM_ENCRYPTION_KEY is not the key it was stored with (set otherwise in "
            "this process, replaced rather than rotated, or derived from a SECRET_KEY that "
            "changed). Put that key back in NORM_ENCRYPTION_KEY (after the new one, to "
            "rotate), or revoke this secret key and create another",
        ) from None


def bridge_workflow_get(
    *, client_id: int, bridge_url: str, workflow_id: str, cached: bool = False
) -> BridgeWorkflow | None:
    """The registry entry. `cached`: as this process read it up to
    NORM_PROCESS_CACHE_SECONDS ago; the trigger API and the echo worker take that."""
    return _registry.get(
        (client_id, bridge_url, workflow_id),
        lambda: BridgeWorkflow.objects.filter(
            client_id=client_id, bridge_url=bridge_url, workflow_id=workflow_id
        ).first(),
        fresh=not cached,
    )


def trigger_event_find(*, client_id: int, transaction_id: str) -> TriggerEvent | None:
    """A client's trigger by its transactionId, if it has one."""
    return TriggerEvent.objects.filter(client_id=client_id, transaction_id=transaction_id).first()


def trigger_event_get(*, client_id: int, transaction_id: str) -> TriggerEvent | None:
    """A client's trigger, with `outcomes`: how many of its notifications are in each
    status (every status present, 0 when none)."""
    event = trigger_event_find(client_id=client_id, transaction_id=transaction_id)
    if event is None:
        return None
    # By the unique (trigger event, subscriber) index: one pass over the trigger's own rows.
    counted = dict(event.notifications.order_by().values_list("status").annotate(count=Count("pk")))
    event.outcomes = {status: counted.get(status, 0) for status in Notification.Status.values}
    return event
