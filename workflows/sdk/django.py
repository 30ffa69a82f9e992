"""Serve a Bridge from a Django view: `path("bridge", bridge_view(bridge))`."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .bridge import Bridge


def bridge_view(bridge: Bridge) -> Callable[[HttpRequest], HttpResponse]:
    @csrf_exempt
    def view(request: HttpRequest) -> HttpResponse:
        status, body, headers = bridge.handle(
            method=request.method or "GET",
            query=request.GET.dict(),
            body=request.body,
            headers=dict(request.headers),
        )
        response = JsonResponse(body, status=status, json_dumps_params={"ensure_ascii": False})
        for name, value in headers.items():
            response[name] = value
        response["novu-framework-server"] = "django"
        return response

    return view
