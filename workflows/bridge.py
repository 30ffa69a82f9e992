"""norm's HTTP client for a customer's bridge (BRIDGE.md).

Every call but the health-check is signed with the client's secret over the exact
bytes sent (without a secret, it is not made), has a timeout, and never follows a
redirect: norm calls only URLs the client registered.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import requests
from django.conf import settings

from workflows.sdk.signing import canonical_json, signature_header

# Novu's framework answers these for user-code and schema problems: retrying cannot
# help, whatever the status code (StepExecutionFailedError comes with a 502; norm's SDK
# answers WorkflowExecutionFailedError for a payload schema it cannot apply).
PERMANENT_CODES = {
    "StepExecutionFailedError",
    "ProviderExecutionFailedError",
    "WorkflowExecutionFailedError",
}
TRANSIENT_STATUSES = {408, 425, 429}

# A URL requests cannot call (no scheme, another scheme, a port past 65535, a host IDNA
# refuses; urllib3 and urlsplit raise a bare ValueError for some) fails every time: it is
# no unreachable bridge, and retrying it only delays the failure.
UNUSABLE_URL = (
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.URLRequired,
    ValueError,
)

_session = requests.Session()
# requests would read the proxy variables and ~/.netrc again on every call (a third of
# a call's CPU); the proxies for a bridge are resolved once per URL instead.
_session.trust_env = False


@lru_cache(maxsize=1024)
def _proxies(url: str) -> dict[str, str]:
    """HTTP(S)_PROXY for `url` from the environment, unless NO_PROXY exempts it."""
    return requests.utils.get_environ_proxies(url)


class BridgeError(Exception):
    """The bridge refused: deterministic, retrying will not help."""

    def __init__(
        self, code: str, message: str, data: Any = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BridgeUnavailable(BridgeError):
    """Timeout, connection error, 5xx or 429: worth another try later."""


HEALTH_CHECK = "health-check"  # the one action a bridge answers unsigned (BRIDGE.md)


def call(
    url: str,
    *,
    secret: str | None,
    action: str,
    params: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    method = "GET" if body is None else "POST"
    text = canonical_json(body) if body is not None else None
    headers = {"content-type": "application/json", "accept": "application/json"}
    if action != HEALTH_CHECK:
        if not secret:
            # A client whose keys are all revoked: an unsigned call would still be
            # answered by a bridge that verifies nothing, so norm makes none.
            raise BridgeError(
                "SigningKeyMissing",
                "the client has no live secret key to sign the bridge call with; "
                "norm calls no bridge unsigned (create a key for the client)",
            )
        # The signature covers `{}` for a GET, as Novu's framework expects.
        signature = signature_header(
            secret, text if text is not None else "{}", int(time.time() * 1000)
        )
        headers["novu-signature"] = signature
        headers["x-novu-signature"] = signature
    try:
        response = _session.request(
            method,
            url,
            params={"action": action, **(params or {})},
            data=text.encode() if text is not None else None,
            headers=headers,
            proxies=_proxies(url),
            timeout=settings.NORM_BRIDGE_TIMEOUT,
            allow_redirects=False,
        )
    except requests.Timeout as exc:
        raise BridgeUnavailable(
            "BridgeTimeout", f"the bridge did not answer in time: {exc}"
        ) from exc
    except UNUSABLE_URL as exc:
        raise BridgeError(
            "BridgeInvalidURL", f"norm cannot call the bridge URL {url}: {exc}"
        ) from exc
    except requests.RequestException as exc:
        raise BridgeUnavailable("BridgeUnreachable", f"the bridge is unreachable: {exc}") from exc

    try:
        data = response.json()
    except ValueError:
        data = None
    status = response.status_code
    if 300 <= status < 400:
        raise BridgeError(
            "BridgeRedirect", f"the bridge answered a redirect ({status}); norm follows none"
        )
    if status >= 400:
        code = data.get("code") if isinstance(data, dict) else None
        code = code[:100] if isinstance(code, str) else None  # it is stored, and compared
        message = data.get("message") if isinstance(data, dict) else None
        message = str(message or response.text[:500] or response.reason)
        error_data = data.get("data") if isinstance(data, dict) else None
        if (status >= 500 or status in TRANSIENT_STATUSES) and code not in PERMANENT_CODES:
            raise BridgeUnavailable(code or f"HTTP{status}", message, error_data, status)
        raise BridgeError(code or f"HTTP{status}", message, error_data, status)
    if not isinstance(data, dict):
        raise BridgeError(
            "BridgeInvalidResponse", f"the bridge answered {status} without a JSON object"
        )
    return data


def discover(url: str, *, secret: str | None) -> dict[str, Any]:
    return call(url, secret=secret, action="discover")


def health_check(url: str) -> dict[str, Any]:
    return call(url, secret=None, action=HEALTH_CHECK)


def flavour_of(health: dict[str, Any]) -> str:
    """`norm` for a bridge served by one of norm's SDKs, `novu` for any other that answers
    a health-check (Novu's `@novu/framework`)."""
    return "norm" if str(health.get("sdk") or "").startswith("norm") else "novu"


def execute(
    url: str,
    *,
    secret: str | None,
    workflow_id: str,
    body: dict[str, Any],
    step_id: str | None = None,
) -> dict[str, Any]:
    params = {"workflowId": workflow_id} | ({"stepId": step_id} if step_id else {})
    return call(url, secret=secret, action="execute", params=params, body=body)
