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


_signing_secrets: Memo[str] = Memo()
_registry: Memo[BridgeWorkflow] = Memo()


def signing_secret(*, client_id: int, cached: bool = False) -> str | None:
    """The secret norm signs bridge calls with: the client's newest live key.
    `cached`: as this process read it up to NORM_PROCESS_CACHE_SECONDS ago (the echo
    worker signs every call; a rotation reaches it within those seconds)."""

    def load() -> str | None:
        secret = (
            SecretKey.objects.filter(client_id=client_id, revoked_at__isnull=True)
            .order_by("-created_at", "-id")
            .first()
        )
        return crypto.decrypt(secret.encrypted) if secret else None

    return _signing_secrets.get(client_id, load, fresh=not cached)


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
