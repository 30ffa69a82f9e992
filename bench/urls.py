"""Mounted by config/urls.py only when NORM_BENCH_ENDPOINTS is set (the bench's gunicorn).

`v1/bench/auth-only`: the cheapest authenticated API view, the trigger API's baseline.
`bench/bridge`: the bench's workflows, served like the demo bridge (strict when
NORM_DEMO_BRIDGE_SECRET is set). `bench-routed` is `bench-one-step` under another name,
the one the bench routes to a queue of its own (NORM_WORKFLOW_QUEUES): only the
isolation phase triggers it.
"""

from __future__ import annotations

from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from workflows.demo import _demo_secret
from workflows.sdk import Bridge, Context, workflow
from workflows.sdk.django import bridge_view

_PAYLOAD = {"type": "object", "properties": {"n": {"type": "integer", "default": 0}}}


@workflow("bench-one-step", payload_schema=_PAYLOAD)
def one_step(ctx: Context) -> None:
    ctx.step.in_app("inbox", lambda: {"body": f"Bench message {ctx.payload['n']}."})


@workflow("bench-routed", payload_schema=_PAYLOAD)
def routed(ctx: Context) -> None:
    ctx.step.in_app("inbox", lambda: {"body": f"Bench message {ctx.payload['n']}."})


@workflow("bench-two-step", payload_schema=_PAYLOAD)
def two_step(ctx: Context) -> None:
    ctx.step.in_app("inbox", lambda: {"body": f"Bench message {ctx.payload['n']}."})
    ctx.step.email("email", lambda: {"subject": "Bench", "body": "<p>Bench email.</p>"})


class AuthOnlyApi(APIView):
    """Authenticates the key like every API view, and does nothing else."""

    def post(self, request: Request) -> Response:
        return Response({"data": {"ok": True}})

    get = post


bench_bridge = Bridge(workflows=[one_step, routed, two_step], secret_key=_demo_secret, strict=None)

urlpatterns = [
    path("v1/bench/auth-only", AuthOnlyApi.as_view(), name="bench-auth-only"),
    path("bench/bridge", bridge_view(bench_bridge), name="bench-bridge"),
]
