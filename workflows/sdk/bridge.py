"""The bridge endpoint's protocol, independent of any web framework."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import (
    BridgeError,
    ExecutionEventPayloadInvalidError,
    FrameworkError,
    InvalidActionError,
    MethodNotAllowedError,
    WorkflowNotFoundError,
    exception_text,
)
from .signing import verify_signature
from .workflow import Workflow

logger = logging.getLogger(__name__)

SDK_NAME = "norm-python"
SDK_VERSION = "0.1.0"
FRAMEWORK_VERSION = "2024-06-26"
HEALTH_CHECK = "health-check"
# The SDK copies and validates bodies recursively: deeper ones would exhaust Python's
# stack wherever they reached it first (a 500, which norm would retry).
MAX_DEPTH = 200
ACTIONS = {"GET": ("discover", HEALTH_CHECK), "POST": ("execute",)}

Response = tuple[int, dict[str, Any], dict[str, str]]
SecretKey = str | Callable[[], str | None] | None

RESPONSE_HEADERS = {
    "access-control-allow-origin": "*",
    "access-control-allow-private-network": "true",
    "access-control-allow-methods": "GET, POST",
    "access-control-allow-headers": "*",
    "access-control-max-age": "604800",
    "novu-framework-version": FRAMEWORK_VERSION,
    "novu-framework-sdk": SDK_VERSION,
    "user-agent": f"norm-sdk-python:v{SDK_VERSION}",
}


class Bridge:
    """Serves workflows.

    `strict` (the default): only requests signed with the secret key are answered, and
    without a key (`None`, "", a callable returning neither, as an unset environment
    variable would) none is, with 401 SigningKeyNotFoundError: a key missing from a
    deployment must not open the bridge to anyone. `strict=False`: unsigned requests
    are answered too (local development). `strict=None`: strict iff a key is set when a
    request comes (norm's demo bridge, whose key is optional).
    """

    def __init__(
        self,
        workflows: Iterable[Workflow],
        secret_key: SecretKey = None,
        strict: bool | None = True,
    ) -> None:
        self.workflows: dict[str, Workflow] = {}
        for workflow in workflows:
            if not isinstance(workflow, Workflow):
                # A function without its @workflow(...), say: an AttributeError otherwise.
                raise TypeError(
                    f"A Bridge serves Workflow objects (from @workflow), not a "
                    f"{type(workflow).__name__}: {workflow!r:.100}"
                )
            if workflow.workflow_id in self.workflows:
                raise ValueError(f"Duplicate workflow id: {workflow.workflow_id!r}")
            self.workflows[workflow.workflow_id] = workflow
        self._secret_key = secret_key
        self.strict = strict

    def handle(
        self,
        *,
        method: str,
        query: Mapping[str, str],
        body: bytes | str | None,
        headers: Mapping[str, str],
    ) -> Response:
        """Answer one request: (HTTP status, JSON body, response headers)."""
        lowered = {key.lower(): value for key, value in headers.items()}
        try:
            status, answer = self._dispatch(method.upper(), query, body, lowered)
        except FrameworkError as exc:
            status, answer = exc.status, exc.to_dict()
        except Exception as exc:
            # Which of norm's calls, for which workflow: the traceback alone does not say.
            logger.exception(
                "Bridge request failed: action %s, workflow %s%s",
                query.get("action") or HEALTH_CHECK,
                query.get("workflowId") or "-",
                f", step {query['stepId']}" if query.get("stepId") else "",
            )
            error = BridgeError(f"Unknown BridgeError: {exception_text(exc)}")
            status, answer = error.status, error.to_dict()
        return status, answer, dict(RESPONSE_HEADERS)

    def secret_key(self) -> str | None:
        key = self._secret_key() if callable(self._secret_key) else self._secret_key
        return key or None

    def _dispatch(
        self,
        method: str,
        query: Mapping[str, str],
        body: bytes | str | None,
        headers: dict[str, str],
    ) -> tuple[int, dict[str, Any]]:
        action = query.get("action") or HEALTH_CHECK
        if method not in ("GET", "POST", "OPTIONS"):
            raise MethodNotAllowedError(
                "Method not allowed. Please use one of `POST`, `GET`, `OPTIONS`"
            )
        # As in Novu's SDK, the signature is checked before the method is dispatched.
        if action != HEALTH_CHECK:
            self._authenticate(body if method == "POST" else None, headers)
        if method == "OPTIONS":
            return 200, {}
        if action not in ACTIONS[method]:
            allowed = ", ".join(f"`{a}`" for a in ACTIONS[method])
            raise InvalidActionError(
                f"Invalid query string: `action`=`{action}`. Please use one of {allowed}"
            )
        if action == HEALTH_CHECK:
            return 200, self.health_check()
        if action == "discover":
            return 200, self.discover()
        workflow = self._workflow(query.get("workflowId", ""))
        return 200, workflow.execute(_json_object(body), step_id=query.get("stepId") or None)

    def _authenticate(self, body: bytes | str | None, headers: Mapping[str, str]) -> None:
        secret = self.secret_key()
        strict = self.strict if self.strict is not None else secret is not None
        if strict:
            header = headers.get("novu-signature") or headers.get("x-novu-signature")
            verify_signature(secret, header, body)

    def _workflow(self, workflow_id: str) -> Workflow:
        try:
            return self.workflows[workflow_id]
        except KeyError:
            raise WorkflowNotFoundError(
                f"Workflow with id: `{workflow_id}` does not exist. Please provide a valid id."
            ) from None

    def health_check(self) -> dict[str, Any]:
        steps = sum(len(workflow.steps) for workflow in self.workflows.values())
        return {
            "status": "ok",
            "sdkVersion": SDK_VERSION,
            "frameworkVersion": FRAMEWORK_VERSION,
            # How norm tells its own SDKs (which choose the next step) from Novu's.
            "sdk": SDK_NAME,
            "discovered": {"workflows": len(self.workflows), "steps": steps},
        }

    def discover(self) -> dict[str, Any]:
        return {"workflows": [workflow.describe() for workflow in self.workflows.values()]}


def _json_object(body: bytes | str | None) -> dict[str, Any]:
    try:
        parsed = json.loads(body or "{}")
    except (ValueError, RecursionError):  # not JSON, or nested too deep to decode
        parsed = None
    if not isinstance(parsed, dict):
        raise ExecutionEventPayloadInvalidError("The request body must be a JSON object")
    if _nested_deeper(parsed, MAX_DEPTH):
        raise ExecutionEventPayloadInvalidError(
            f"The request body must not be nested deeper than {MAX_DEPTH} levels"
        )
    return parsed


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest beyond `limit`; counted without recursion."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return False
