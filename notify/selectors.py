from __future__ import annotations

import hmac

from config.memo import Memo
from notify import crypto
from notify.models import BridgeWorkflow, Client, SecretKey


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
        newest = live.order_by("-created_at", "-id")[:MAX_SIGNING_KEYS]
        return tuple(crypto.decrypt(secret.encrypted) for secret in newest) or None

    return _signing_secrets.get(client_id, load, fresh=not cached) or ()


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
