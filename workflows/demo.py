"""The demo workflows, served by norm itself at `/bridge` (`workflows.demo.bridge_view`)."""

from __future__ import annotations

from workflows.sdk import Bridge, Context, workflow
from workflows.sdk.django import bridge_view as django_bridge_view


@workflow(
    "welcome",
    name="Welcome",
    description="An in-app message, then an email reminder if it is still unread.",
    tags=["demo", "onboarding"],
    payload_schema={
        "type": "object",
        "properties": {
            "name": {"type": "string", "default": "there"},
            "delaySeconds": {"type": "integer", "minimum": 0, "default": 60},
        },
    },
)
def welcome(ctx: Context) -> None:
    name = ctx.payload["name"]
    inbox = ctx.step.in_app(
        "inbox", lambda: {"subject": "Welcome!", "body": f"Hi {name}, welcome to norm."}
    )
    ctx.step.delay("wait", lambda: {"amount": ctx.payload["delaySeconds"], "unit": "seconds"})
    ctx.step.email(
        "reminder",
        lambda: {"subject": f"{name}, you have an unread message", "body": "Hi, welcome to norm."},
        skip=lambda: inbox["read"],
    )


@workflow(
    "order-update",
    name="Order update",
    description="One message per order status; the steps depend on the payload.",
    tags=["demo"],
    payload_schema={
        "type": "object",
        "properties": {
            "orderId": {"type": "string"},
            "status": {"enum": ["shipped", "delayed", "delivered"]},
        },
        "required": ["orderId", "status"],
    },
)
def order_update(ctx: Context) -> None:
    order_id, status = ctx.payload.get("orderId"), ctx.payload.get("status")
    if status == "shipped":
        ctx.step.email(
            "shipped-email",
            lambda: {"subject": f"Order {order_id} has shipped", "body": "It is on its way."},
        )
        ctx.step.in_app("shipped-inbox", lambda: {"body": f"Order {order_id} has shipped."})
    elif status == "delayed":
        ctx.step.in_app("delayed-inbox", lambda: {"body": f"Order {order_id} is delayed."})
    elif status == "delivered":
        ctx.step.email(
            "delivered-email",
            lambda: {"subject": f"Order {order_id} was delivered", "body": "Enjoy!"},
        )


def _demo_secret() -> str | None:
    from django.conf import settings

    return getattr(settings, "NORM_DEMO_BRIDGE_SECRET", None) or None


demo_bridge = Bridge(workflows=[welcome, order_update], secret_key=_demo_secret, strict=None)
bridge_view = django_bridge_view(demo_bridge)
