from __future__ import annotations

import hmac
import time

from django.conf import settings

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


# (client id, bridge URL, workflow id) -> (registry entry, when it was read)
_registry_cache: dict[tuple[int, str, str], tuple[BridgeWorkflow, float]] = {}


def bridge_workflow_get(
    *, client: Client, bridge_url: str, workflow_id: str, cached: bool = False
) -> BridgeWorkflow | None:
    """The registry entry. `cached`: may be up to NORM_REGISTRY_CACHE_SECONDS old, read
    from this process's memory; the trigger API takes that, it saves a query per trigger."""
    key = (client.pk, bridge_url, workflow_id)
    if cached and key in _registry_cache:
        entry, read_at = _registry_cache[key]
        if time.monotonic() - read_at < settings.NORM_REGISTRY_CACHE_SECONDS:
            return entry
    entry = BridgeWorkflow.objects.filter(
        client=client, bridge_url=bridge_url, workflow_id=workflow_id
    ).first()
    if entry is None:
        _registry_cache.pop(key, None)
    else:
        if len(_registry_cache) > 10_000:  # bound the memory of a long-lived process
            _registry_cache.clear()
        _registry_cache[key] = (entry, time.monotonic())
    return entry
