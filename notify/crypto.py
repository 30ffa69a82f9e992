"""Secret keys at rest: a hash to find them, an encrypted copy to sign with."""

from __future__ import annotations

import base64
import hashlib
import secrets

from cryptography.fernet import Fernet
from django.conf import settings

KEY_PREFIX = "nk_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # Keys are 256 random bits, so a plain SHA-256 suffices: no dictionary to guard against.
    return hashlib.sha256(key.encode()).hexdigest()


def _fernet() -> Fernet:
    key = settings.NORM_ENCRYPTION_KEY
    if not key:
        key = base64.urlsafe_b64encode(
            hashlib.sha256(settings.SECRET_KEY.encode()).digest()
        ).decode()
    return Fernet(key)


def encrypt(value: str) -> str:
    return _fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()
