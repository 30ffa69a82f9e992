"""Secret keys at rest: a hash to find them, an encrypted copy to sign with."""

from __future__ import annotations

import base64
import hashlib
import secrets

from cryptography.fernet import Fernet, MultiFernet
from django.conf import settings

KEY_PREFIX = "nk_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # Keys are 256 random bits, so a plain SHA-256 suffices: no dictionary to guard against.
    return hashlib.sha256(key.encode()).hexdigest()


def given_keys() -> list[str]:
    """NORM_ENCRYPTION_KEY's keys, the one that encrypts first (none when it is blank).
    Comma-separated, so the key can be rotated: a new key in front encrypts, the old ones
    still decrypt."""
    return [key.strip() for key in settings.NORM_ENCRYPTION_KEY.split(",") if key.strip()]


def derived_key() -> str:
    """The key derived from SECRET_KEY, which encrypts when NORM_ENCRYPTION_KEY is blank."""
    return base64.urlsafe_b64encode(hashlib.sha256(settings.SECRET_KEY.encode()).digest()).decode()


def encryption_keys() -> list[str]:
    """The keys secret keys are encrypted with: NORM_ENCRYPTION_KEY's, else one derived
    from SECRET_KEY."""
    return given_keys() or [derived_key()]


def _fernet() -> MultiFernet:
    # The derived key last, to decrypt only: a deployment that ran without
    # NORM_ENCRYPTION_KEY (norm.W001) and sets it, as the warning says, still reads the
    # keys stored until then, and reencryptkeys moves them to it. Its operator never saw
    # the derived key to list it after the new one, so every one was unreadable at once.
    keys = [*encryption_keys(), derived_key()]
    return MultiFernet([Fernet(key) for key in dict.fromkeys(keys)])


def encrypt(value: str) -> str:
    return _fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()


def reencrypt(token: str) -> str:
    """`token` encrypted again with the first of NORM_ENCRYPTION_KEY's keys."""
    return _fernet().rotate(token.encode()).decode()
