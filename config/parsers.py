from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

from config.errors import body_too_large

# What text and jsonb cannot hold: NUL, and a lone UTF-16 surrogate ("\ud800"), which
# JSON can escape and Python decodes, but which has no UTF-8 form.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _unstorable(data: Any) -> bool:
    stack = [data]  # iterative: the body may nest as deep as the JSON decoder allows
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if _UNSTORABLE.search(value):
                return True
        elif isinstance(value, Mapping):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _check_size(content_length: str | None) -> None:
    try:
        length = int(content_length or 0)
    except ValueError:
        length = 0
    if length > settings.NORM_MAX_BODY_BYTES:
        raise body_too_large()


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing what PostgreSQL would refuse later: a NUL character
    or a lone surrogate in any string or key. Refused here, before a service has
    written half of its rows; nesting too deep to decode is a 400 too. A body over
    NORM_MAX_BODY_BYTES is a 413 before it is read."""

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        request = (parser_context or {}).get("request")
        if request is not None:
            _check_size(request.META.get("CONTENT_LENGTH"))
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply") from exc
        if _unstorable(data):
            raise ParseError(
                "JSON parse error - strings must not contain NUL (\\u0000) or a lone surrogate"
            )
        return data
