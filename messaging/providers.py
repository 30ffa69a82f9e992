"""Delivery providers: one small class per provider behind a common `send()`.

A provider raises SendError saying whether another try can help, so the message
worker retries only what can succeed.
"""

from __future__ import annotations

import smtplib
from typing import Any, ClassVar

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.utils.html import strip_tags

from messaging.models import Message


class SendError(Exception):
    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class Provider:
    name: ClassVar[str]
    channel: ClassVar[str]

    def recipient(self, message: Message) -> str:
        return ""

    def send(self, message: Message) -> str:
        """Deliver the message; return the provider's message id ("" if none)."""
        raise NotImplementedError


class DjangoEmailProvider(Provider):
    """Email through Django's email framework: console in development, SMTP in production."""

    name = "django-email"
    channel = "email"

    def recipient(self, message: Message) -> str:
        return message.subscriber.email

    def send(self, message: Message) -> str:
        if not message.recipient:
            raise SendError("the subscriber has no email address", transient=False)
        content: dict[str, Any] = message.content
        sender = content.get("from") or {}
        from_email = settings.DEFAULT_FROM_EMAIL
        if isinstance(sender, dict) and sender.get("email"):
            from_email = f"{sender.get('name', '')} <{sender['email']}>".strip()
        body = str(content.get("body", ""))
        email = EmailMultiAlternatives(
            subject=str(content.get("subject", "")),
            body=strip_tags(body),
            from_email=from_email,
            to=[message.recipient],
            reply_to=[content["replyTo"]] if content.get("replyTo") else None,
            headers={"X-Norm-Message-Id": str(message.pk)},
            connection=get_connection(timeout=settings.EMAIL_TIMEOUT),
        )
        email.attach_alternative(body, "text/html")
        try:
            email.send()
        except smtplib.SMTPResponseException as exc:
            # 4xx replies are the server's "try again later"; 5xx are final.
            raise SendError(
                f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", transient=exc.smtp_code < 500
            ) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise SendError(
                f"recipient refused: {exc.recipients}", transient=all(c < 500 for c in codes)
            ) from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            raise SendError(f"SMTP connection failed: {exc}", transient=True) from exc
        except ValueError as exc:  # a newline in a header, an address Django refuses
            raise SendError(f"the message cannot be sent: {exc}", transient=False) from exc
        return email.extra_headers["X-Norm-Message-Id"]


class InboxProvider(Provider):
    """In-app: the stored message is the delivery; the subscriber's feed reads it."""

    name = "inbox"
    channel = "in_app"

    def send(self, message: Message) -> str:
        return ""


PROVIDERS: dict[str, type[Provider]] = {p.name: p for p in (DjangoEmailProvider, InboxProvider)}


def provider_for(channel: str) -> Provider | None:
    name = settings.NORM_PROVIDERS.get(channel)
    provider = PROVIDERS.get(name) if name else None
    return provider() if provider and provider.channel == channel else None
