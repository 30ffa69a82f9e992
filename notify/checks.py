"""`manage.py check --deploy`: what a production deployment must set for its secret keys."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

_FERNET_HINT = (
    "Set NORM_ENCRYPTION_KEY to a Fernet key: python3 -c 'from cryptography.fernet import "
    "Fernet; print(Fernet.generate_key().decode())'"
)


@register(Tags.security, deploy=True)
def encryption_key_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Clients' secret keys are stored encrypted (for signing bridge calls). Without
    NORM_ENCRYPTION_KEY the key is derived from SECRET_KEY: from the public development
    default, anyone who reads the database can decrypt them."""
    if settings.NORM_ENCRYPTION_KEY:
        return []
    if settings.SECRET_KEY == settings.DEVELOPMENT_SECRET_KEY:
        return [
            Error(
                "Secret keys would be encrypted with a key derived from the public "
                "development SECRET_KEY.",
                hint=_FERNET_HINT,
                id="norm.E001",
            )
        ]
    return [
        Warning(
            "NORM_ENCRYPTION_KEY is not set: secret keys are encrypted with a key derived "
            "from SECRET_KEY, and rotating SECRET_KEY makes them unreadable.",
            hint=_FERNET_HINT,
            id="norm.W001",
        )
    ]
