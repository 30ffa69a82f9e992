"""The `novu-signature` HMAC: `t=<unix ms>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.

norm's server signs with `signature_header(secret, canonical_json(body))` and sends exactly
those bytes; the bridge verifies with `verify_signature`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import re
import time
from decimal import Decimal
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


def canonical_json(obj: Any, *, js_integers: bool = False) -> str:
    """Compact JSON exactly as JS writes it back after parsing it: Novu's SDK checks the
    signature against `JSON.stringify(JSON.parse(body))`, so anything JS would write
    differently breaks it. Floats with no fraction are written as integers (`1.0` as
    `1`), tiny ones in JS's notation (`1e-07` as `1e-7`, `1e-05` as `0.00001`), NaN and
    infinities as `null`, lone surrogates escaped, and an object's integer-like keys
    first in ascending order, where JS objects keep them. An integer beyond 2**53 is
    written whole: norm's SDK takes it so, but JS reads it rounded, and a Novu bridge
    refuses the signature of a body that holds one. `js_integers`: one is written as JS
    writes it back (`1e+21`, `12345678901234567000`), for a bridge that parses with JS.
    PostgreSQL gives back a stored 1e21 as such an integer (jsonb has no floats)."""
    out: list[str] = []
    _write(obj, out, js_integers)
    return "".join(out)


# The form of a key JS treats as an array index (one below 2**32 - 1: _js_order).
_INDEX_KEY = re.compile(r"0|[1-9][0-9]{0,9}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _write(value: Any, out: list[str], js_integers: bool) -> None:
    if isinstance(value, str):
        out.append(_string(value))
    elif value is None or value is True or value is False:
        out.append({None: "null", True: "true", False: "false"}[value])
    elif isinstance(value, int):
        out.append(_integer(value, js_integers))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, dict):
        keys = [k if isinstance(k, str) else str(k) for k in value]
        items = dict(zip(keys, value.values(), strict=True))
        out.append("{")
        for n, key in enumerate(_js_order(keys)):
            out.append(("," if n else "") + _string(key) + ":")
            _write(items[key], out, js_integers)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for n, item in enumerate(value):
            if n:
                out.append(",")
            _write(item, out, js_integers)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _integer(value: int, js_integers: bool) -> str:
    """`value` as JSON: whole, or, with `js_integers` and beyond 2**53, as JS writes it
    back (see `canonical_json`)."""
    if js_integers and abs(value) > 2**53:
        try:
            return _number(float(value))  # rounded as JS rounds it
        except OverflowError:  # past a double's range: JS reads Infinity, writes null
            return "null"
    return str(value)


def _js_order(keys: list[str]) -> list[str]:
    """`keys` in the order a JS object keeps them: those it takes for array indices first,
    in numeric order, then the others as inserted."""
    indices = sorted((k for k in keys if _INDEX_KEY.fullmatch(k) and int(k) < 2**32 - 1), key=int)
    taken = set(indices)
    return indices + [k for k in keys if k not in taken]


def _string(text: str) -> str:
    # Python and JS escape the same characters, but for lone surrogates: JS writes \udXXX.
    written = json.dumps(text, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", written)


def _number(value: float) -> str:
    if not math.isfinite(value):
        return "null"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    text = repr(value)  # the shortest digits that round-trip, as JS writes too
    mantissa, _, exponent = text.partition("e")
    if not exponent:
        return text.removesuffix(".0")
    power = int(exponent)
    if -7 < power < 21:  # JS writes these without an exponent
        return format(Decimal(text), "f")
    return f"{mantissa}e{'+' if power > 0 else '-'}{abs(power)}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _digest(secret: str, timestamp_ms: int, body: str) -> str:
    # A body handed over as text may hold a lone surrogate (one decoded with
    # surrogateescape), which has no UTF-8 form: such text is none norm signed, a mismatch,
    # where its UnicodeEncodeError answered an unsigned request with a 500.
    message = f"{timestamp_ms}.{body}".encode("utf-8", "surrogatepass")
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
    # Too deep to decode or to write back: only the raw text can match.
    with contextlib.suppress(ValueError, RecursionError):
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
