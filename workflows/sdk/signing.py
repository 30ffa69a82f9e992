"""The `novu-signature` HMAC: `t=<unix ms>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.

norm's server signs with `signature_header(secret, canonical_json(body))` and sends exactly
those bytes; the bridge verifies with `verify_signature`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import time
from typing import Any

from .errors import (
    SignatureExpiredError,
    SignatureInvalidError,
    SignatureMismatchError,
    SignatureNotFoundError,
    SigningKeyNotFoundError,
)

TOLERANCE_MS = 300_000
# Milliseconds since the epoch, up to the year 33658: int() never sees a giant number.
_TIMESTAMP = re.compile(r"[0-9]{1,15}")


def canonical_json(obj: Any) -> str:
    """Compact JSON as JS `JSON.stringify` writes it (for strings, ints and nested objects)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _digest(secret: str, timestamp_ms: int, body: str) -> str:
    message = f"{timestamp_ms}.{body}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: str, timestamp_ms: int | None = None) -> str:
    # `t` first: older SDKs (2.3.x) parse the header positionally.
    t = _now_ms() if timestamp_ms is None else timestamp_ms
    return f"t={t},v1={_digest(secret, t, body)}"


def _parse_header(header: str) -> tuple[int, str]:
    parts = dict(item.strip().partition("=")[::2] for item in header.split(","))
    t, v1 = parts.get("t", ""), parts.get("v1", "")
    # ASCII digits only: str.isdigit() takes "²", which int() refuses.
    if not _TIMESTAMP.fullmatch(t) or not v1:
        raise SignatureInvalidError(
            "Signature is invalid. Please provide a valid signature in the `novu-signature` header"
        )
    return int(t), v1


def _signed_candidates(body: str | bytes | None) -> list[str]:
    """The canonical re-serialization (what Novu's JS SDK checks) and the raw text."""
    raw = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else (body or "")
    if not raw.strip():
        return ["{}"]
    candidates = [raw]
    with contextlib.suppress(ValueError):
        candidates.insert(0, canonical_json(json.loads(raw)))
    return list(dict.fromkeys(candidates))  # norm's server sends the canonical form: one


def verify_signature(
    secret: str | None,
    header: str | None,
    body: str | bytes | None,
    now_ms: int | None = None,
    tolerance_ms: int = TOLERANCE_MS,
) -> None:
    """Raise a 401 framework error unless `header` signs `body` (raw request body; empty = `{}`)."""
    if not header:
        raise SignatureNotFoundError(
            "Signature not found. Please provide a signature in the `novu-signature` header"
        )
    if not secret:
        raise SigningKeyNotFoundError(
            "Signature key not found. Please provide a valid key in the Client constructor "
            "`config.secretKey`"
        )
    timestamp, v1 = _parse_header(header)
    current = _now_ms() if now_ms is None else now_ms
    if abs(current - timestamp) > tolerance_ms:
        raise SignatureExpiredError(
            "Signature expired. Please provide a signature with a timestamp no older than "
            f"{tolerance_ms // 60_000} minutes in the `novu-signature` header"
        )
    matches = [
        # As bytes: compare_digest refuses a str with non-ASCII characters.
        hmac.compare_digest(_digest(secret, timestamp, c).encode(), v1.encode())
        for c in _signed_candidates(body)
    ]
    if not any(matches):
        raise SignatureMismatchError(
            "Signature does not match the expected signature. Please ensure the signature "
            "provided in the `novu-signature` header is correct and try again."
        )
