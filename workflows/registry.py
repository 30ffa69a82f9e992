"""The registry of a client's bridges: which flavour each speaks, which workflows it defines.

Filled from the bridge's health-check and discover; read by the trigger API (is the
workflow known, what is its payload schema) and by the echo worker (how to drive it).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DataError, transaction
from django.utils import timezone

from config.db import bounded, error_text, storable
from config.logs import loggable
from config.memo import Memo
from config.parsers import MAX_DEPTH, nested_deeper
from config.redact import masked_url
from notify.models import BridgeSync, BridgeWorkflow, Client
from notify.selectors import signing_secrets
from workflows import bridge

logger = logging.getLogger(__name__)

# A workflow whose id is longer than norm keeps is left out of the registry, as any
# other malformed entry is: stored, it failed the whole sync.
WORKFLOW_ID_LENGTH = BridgeWorkflow._meta.get_field("workflow_id").max_length or 0
# The most workflows norm keeps of one bridge. A sync stores each in its own row, in the
# trigger's request: a discover of 25,000 (9 MB, within the answer's limit) held that
# request and a transaction 77 s, again at each sync, one every NORM_REGISTRY_TTL or
# NORM_DISCOVER_MIN_INTERVAL (a trigger of a name the bridge lacks). Novu takes 100 an
# environment (1,000 on older ones).
MAX_WORKFLOWS = 1000
# The most levels one workflow's entry in a discover nests: its schemas, each about twice
# as deep as the payload it describes (which the API takes to parsers.MAX_DEPTH levels).
# Django and psycopg write and read JSON recursively, each level a frame: a schema as
# deep as the bridge client parses (900 levels) could not be stored in a request's
# stack, a trigger's 500, and one a little less deep made the admin's page of it a 500.
MAX_NESTING = 4 * MAX_DEPTH


def bridge_sync(*, client: Client, bridge_url: str) -> list[BridgeWorkflow]:
    """Ask the bridge which flavour it speaks and which workflows it defines; store them.

    Stamped when the bridge has answered (or failed to), not when it was first asked:
    NORM_DISCOVER_MIN_INTERVAL counts from there. A sync of a bridge that hangs takes a
    timeout for its health-check and one for its discover (20 s by default, twice the
    interval): stamped with its start, it was due again as it ended, and every trigger
    waited out both timeouts while the bridge was asked again and again."""
    try:
        health = bridge.health_check(bridge_url)
    except bridge.BridgeError:
        health = {}
    # Every SDK answers {"status": "ok", ...}. Any other answer (a maintenance page's
    # JSON) keeps what an earlier health-check told, as a failed one does: read as Novu's
    # SDK, it made a bridge of norm's a Novu one, and each echo ran its step twice.
    flavour = {"flavour": bridge.flavour_of(health)} if health.get("status") == "ok" else {}
    try:
        found = bridge.discover(bridge_url, secrets=signing_secrets(client_id=client.pk))
        if not isinstance(found.get("workflows"), list):
            # Every version of Novu's framework answers its list, empty or not. Any other
            # JSON (a maintenance page's, an endpoint that is not the bridge) read as no
            # workflows emptied the registry: every trigger a 404 until the next sync,
            # rather than served from the entries, as while the bridge is down.
            raise bridge.BridgeError(
                "BridgeInvalidResponse",
                f"the bridge {masked_url(bridge_url)} answered discover with no `workflows` "
                "list, as no version of Novu's framework does: is its URL the bridge endpoint?",
            )
        if len(found["workflows"]) > MAX_WORKFLOWS:
            # Kept as it was, as while the bridge is down, rather than a part of the list.
            raise bridge.BridgeError(
                "BridgeInvalidResponse",
                f"the bridge {masked_url(bridge_url)} declared {len(found['workflows'])} "
                f"workflows; norm keeps at most {MAX_WORKFLOWS} of one bridge",
            )
        if deep := next((w for w in found["workflows"] if nested_deeper(w, MAX_NESTING)), None):
            name = bounded(storable(str(_object(deep).get("workflowId"))), 100)
            raise bridge.BridgeError(
                "BridgeInvalidResponse",
                f"the bridge {masked_url(bridge_url)} declared workflow '{name}' nested "
                f"deeper than norm keeps: {MAX_NESTING} levels",
            )
    except bridge.BridgeError as exc:
        BridgeSync.objects.update_or_create(
            client=client,
            bridge_url=bridge_url,
            defaults={"synced_at": timezone.now(), "error": str(exc), **flavour},
        )
        raise
    now = timezone.now()
    workflows = [
        w
        for w in found["workflows"]
        if isinstance(w, dict)
        and isinstance(w.get("workflowId"), str)
        and 0 < len(w["workflowId"]) <= WORKFLOW_ID_LENGTH
    ]
    try:
        return _store(client, bridge_url, workflows=workflows, flavour=flavour, now=now)
    except (DataError, UnicodeEncodeError) as exc:
        # A value PostgreSQL cannot hold (a NUL character, which its JSON refuses, in a
        # schema's pattern; a lone surrogate, which no UTF-8 holds, in a name): the
        # bridge's answer, not the trigger's, and no reason to fail the echo that synced
        # for the flavour. Raised as a DataError, it was a trigger's 400 and an echo
        # task's crash, its notification left pending; as a UnicodeEncodeError, a 500.
        error = bridge.BridgeError(
            "BridgeInvalidResponse",
            f"norm cannot store the workflows the bridge declared: {error_text(exc)}",
        )
        BridgeSync.objects.update_or_create(
            client=client,
            bridge_url=bridge_url,
            defaults={"synced_at": now, "error": str(error), **flavour},
        )
        raise error from exc


def _store(
    client: Client,
    bridge_url: str,
    *,
    workflows: list[dict[str, Any]],
    flavour: dict[str, str],
    now: datetime,
) -> list[BridgeWorkflow]:
    """The sync's answer, stored in one transaction."""
    with transaction.atomic():
        BridgeSync.objects.update_or_create(
            client=client,
            bridge_url=bridge_url,
            defaults={"synced_at": now, "error": "", **flavour},
        )
        BridgeWorkflow.objects.filter(client=client, bridge_url=bridge_url).exclude(
            workflow_id__in=[w["workflowId"] for w in workflows]
        ).delete()
        rows = [
            BridgeWorkflow.objects.update_or_create(
                client=client,
                bridge_url=bridge_url,
                workflow_id=w["workflowId"],
                defaults={
                    "name": str(w.get("name") or w["workflowId"])[:200],
                    "payload_schema": _object(_object(w.get("payload")).get("schema")),
                    "payload_schema_translated": _translated(_object(w.get("payload"))),
                    "steps": [
                        {
                            "stepId": s.get("stepId"),
                            "type": s.get("type"),
                            "controlSchema": _object(_object(s.get("controls")).get("schema")),
                        }
                        for s in _list(w.get("steps"))
                        if isinstance(s, dict)
                    ],
                    "discovered_at": now,
                },
            )[0]
            for w in workflows
        ]
    return rows


def _translated(declared: dict[str, Any]) -> bool:
    """Whether a schema discover declares is a translation of the one the SDK checks with.

    @novu/framework takes a JSON Schema, which its discover gives back as is beside the
    original (`unknownSchema`), or a zod schema, which it checks with zod and shows as
    zod-to-json-schema's translation, the zod object beside it as JSON ({"_def": ...}).
    norm's own SDK declares no original."""
    original = declared.get("unknownSchema")
    return isinstance(original, dict) and original != _object(declared.get("schema"))


# A discover answer is the bridge's to get wrong: what is not of the expected shape
# reads as absent, so a malformed entry cannot crash the sync (and every trigger).
def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


_flavours: Memo[str] = Memo()


def bridge_flavour(*, client_id: int, bridge_url: str, cached: bool = False) -> str:
    """The flavour a bridge speaks, detected by a sync when it is not known yet (at most
    once per NORM_DISCOVER_MIN_INTERVAL); `norm` while it cannot be told.
    `cached`: a known flavour as this process read it up to NORM_PROCESS_CACHE_SECONDS ago."""
    known = _flavours.get(
        (client_id, bridge_url), lambda: _known_flavour(client_id, bridge_url), fresh=not cached
    )
    # A choice is its value, a str: mypy without Django's stubs reads (value, label).
    return known or BridgeSync.Flavour.NORM  # type: ignore[return-value]


def _known_flavour(client_id: int, bridge_url: str) -> str | None:
    last = BridgeSync.objects.filter(client_id=client_id, bridge_url=bridge_url).first()
    stale = timezone.now() - timedelta(seconds=settings.NORM_DISCOVER_MIN_INTERVAL)
    if last is None or (not last.flavour and last.synced_at < stale):
        try:
            bridge_sync(client=Client.objects.get(pk=client_id), bridge_url=bridge_url)
        except bridge.BridgeError as exc:
            # The health-check may have answered even if discover did not (a wrong key).
            logger.info(
                "sync of %s for its flavour failed: %s", masked_url(bridge_url), loggable(exc)
            )
        last = BridgeSync.objects.filter(client_id=client_id, bridge_url=bridge_url).first()
    return (last.flavour if last else "") or None
