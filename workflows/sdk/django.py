"""Serve a Bridge from a Django view: `path("bridge", bridge_view(bridge))`."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from .bridge import RESPONSE_HEADERS, Bridge
from .errors import RequestBodyTooLargeError
from .signing import canonical_json


def bridge_view(bridge: Bridge) -> Callable[[HttpRequest], HttpResponse]:
    @csrf_exempt
    def view(request: HttpRequest) -> HttpResponse:
        try:
            raw = request.body
        except RequestDataTooBig:
            # Django would answer its HTML 400, which norm could only record as "HTTP400".
            error = RequestBodyTooLargeError(
                "The request body is larger than this bridge accepts "
                f"(DATA_UPLOAD_MAX_MEMORY_SIZE: {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes)"
            )
            status, body, headers = error.status, error.to_dict(), dict(RESPONSE_HEADERS)
        else:
            status, body, headers = bridge.handle(
                method=request.method or "GET",
                query=request.GET.dict(),
                body=raw,
                headers=dict(request.headers),
            )
        # Written as JS writes it, lone surrogates escaped: a str holding one (a payload's
        # "\ud800", in outputs or in an error's message) cannot be encoded as UTF-8, and
        # json.dumps(ensure_ascii=False) left the adapter to fail with Django's HTML 500,
        # which norm retried as a bridge that is down.
        response = HttpResponse(
            canonical_json(body), status=status, content_type="application/json"
        )
        for name, value in headers.items():
            response[name] = value
        response["novu-framework-server"] = "django"
        return response

    return view
