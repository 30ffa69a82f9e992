from __future__ import annotations

import re
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

_SLASHES = re.compile(r"/{2,}")


def collapse_slashes(get_response: Callable[[HttpRequest], HttpResponse]):
    """Serve `//v1/...` as `/v1/...`: novu 1.14 keeps the base URL's trailing slash."""

    def middleware(request: HttpRequest) -> HttpResponse:
        if "//" in request.path_info:
            request.path_info = _SLASHES.sub("/", request.path_info)
            request.path = _SLASHES.sub("/", request.path)
        return get_response(request)

    return middleware
