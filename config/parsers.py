from __future__ import annotations

import codecs
import json
import math
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework import negotiation, parsers
from rest_framework.exceptions import ParseError, UnsupportedMediaType

from config.db import UNSTORABLE
from config.errors import ApiError, body_too_large

# Every stage after the API walks a body recursively (storing it, signing it for the
# bridge, norm's SDK, which refuses an execute body nested deeper than 200 levels), and
# a bridge call wraps a payload or a subscriber's data a level or two deeper again: a
# body the decoder could just take failed to be stored (a 500), and a deep one norm
# stored failed at the bridge on every step. Half the SDK's limit leaves the margin.
MAX_DEPTH = 100
TOO_DEEP = f"objects and arrays must not nest deeper than {MAX_DEPTH} levels"


def unfit(data: Any) -> str:
    """Why parsed JSON (a body) cannot be taken ("" when it can): a string PostgreSQL cannot
    hold, a number beyond a double (1e400, which Python reads as inf and PostgreSQL's
    json refuses), or objects and arrays nested deeper than MAX_DEPTH (the body is level 1)."""
    stack = [(data, 1)]  # iterative: the body may nest as deep as the JSON decoder allows
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if UNSTORABLE.search(value):
                return "strings must not contain NUL (\\u0000) or a lone surrogate"
        elif isinstance(value, float):
            if not math.isfinite(value):
                # NaN and the infinities, which Python's JSON reads (1e400 as inf).
                return "numbers must be finite and within a double's range (not NaN, 1e400)"
        elif isinstance(value, Mapping | list):
            if depth > MAX_DEPTH:
                return TOO_DEEP
            children = [*value.keys(), *value.values()] if isinstance(value, Mapping) else value
            stack.extend((child, depth + 1) for child in children)
    return ""


def nested_deeper(value: Any, levels: int) -> bool:
    """Whether objects and arrays nest in `value` more than `levels` deep (`value` itself
    is the first level), as `unfit` counts them; without recursing, whatever the depth. For
    JSON another system wrote, which norm writes (and reads) back recursively."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > levels:
                return True
            stack.extend(
                (child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
            )
    return False


def query_json(text: str | bytes) -> Any:
    """JSON a query parameter holds (a filter), taken as a body is (`unfit`); a ValueError
    that says why not. Django's lookups recurse per level of a filter, past Python's limit
    well before the decoder's."""
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise ValueError(TOO_DEEP) from exc
    problem = unfit(data)
    if problem:
        raise ValueError(problem)
    return data


def _check_size(content_length: str | None) -> None:
    try:
        length = int(content_length or 0)
    except ValueError:
        length = 0
    if length > settings.NORM_MAX_BODY_BYTES:
        raise body_too_large()


# Content-Encodings that compress. Others are left unread as before: clients that send
# "Content-Encoding: utf-8" for a charset are not refused for it.
_COMPRESSIONS = frozenset({"gzip", "x-gzip", "deflate", "br", "compress", "x-compress", "zstd"})


def _is_utf8(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


class JsonOnly(negotiation.DefaultContentNegotiation):
    """DRF's negotiation, answering in norm's words where no parser takes the body: curl's
    -d without a Content-Type sends it as a form, and DRF's "Unsupported media type" said
    nothing of what norm reads."""

    def select_parser(self, request: Any, parsers: Any) -> Any:
        parser = super().select_parser(request, parsers)
        if parser is None:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"The body's Content-Type is {request.content_type!r}: norm reads JSON alone; "
                "send the header Content-Type: application/json",
            )
        return parser


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing what PostgreSQL would refuse later: a NUL character
    or a lone surrogate in any string or key, a number beyond a double. Refused here,
    before a service has written half of its rows (a bulk's first subscribers, then a
    400); nesting deeper than MAX_DEPTH (or too deep to decode) is a 400 too. A body
    over NORM_MAX_BODY_BYTES is a 413 before it is read, a compressed one a 415."""

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        context = dict(parser_context or {})
        request = context.get("request")
        if request is not None:
            _check_size(request.META.get("CONTENT_LENGTH"))
            coding = request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower()
            if coding in _COMPRESSIONS:
                # Read as JSON text, a gzip body was a 400 about a byte 0x8b.
                raise UnsupportedMediaType(
                    media_type or "",
                    f"Content-Encoding {coding} is not supported: send the body as it is",
                )
        if _is_utf8(context.get("encoding") or settings.DEFAULT_CHARSET):
            # A file a Windows editor saved opens with a byte order mark, which Novu's
            # body parser (iconv-lite) drops and Python's JSON refuses.
            context["encoding"] = "utf-8-sig"
        try:
            data = super().parse(stream, media_type, context)
        except RecursionError as exc:
            raise ParseError(f"JSON parse error - {TOO_DEEP}") from exc
        problem = unfit(data)
        if problem:
            raise ParseError(f"JSON parse error - {problem}")
        return data
