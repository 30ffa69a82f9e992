"""URL converters the API's routes share (registered on import)."""

from __future__ import annotations

from django.urls import register_converter
from django.urls.converters import StringConverter


class TrimmedConverter(StringConverter):
    """A subscriberId or a topic key in a URL as the API stores one: without the white
    space around it. Created as " ann " (a cell of a file), a subscriber is "ann", and
    the caller's own id was a 404 at each of its URLs (its inbox's too)."""

    def to_python(self, value: str) -> str:
        return value.strip()


register_converter(TrimmedConverter, "trimmed")
