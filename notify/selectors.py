from __future__ import annotations

import hmac

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


def signing_secret(*, client_id: int) -> str | None:
    """The secret norm signs bridge calls with: the client's newest live key."""
    secret = (
        SecretKey.objects.filter(client_id=client_id, revoked_at__isnull=True)
        .order_by("-created_at", "-id")
        .first()
    )
    return crypto.decrypt(secret.encrypted) if secret else None


def bridge_workflow_get(
    *, client: Client, bridge_url: str, workflow_id: str
) -> BridgeWorkflow | None:
    return BridgeWorkflow.objects.filter(
        client=client, bridge_url=bridge_url, workflow_id=workflow_id
    ).first()
