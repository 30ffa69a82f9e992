"""The admin's login, throttled per username and address in the cache (NORM_CACHE_URL's
Redis in production, local memory under `make run`), as the trigger rate is counted.

Django's login takes any number of guesses: the admin is served with the API, often on
the Internet, and one password guessed is every client's keys and subscribers."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from typing import Any

from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError
from redis.exceptions import RedisError

from config.addresses import client_address

logger = logging.getLogger(__name__)

# Failed logins of one username from one address before its logins are refused; and
# how long the refusal lasts, counted from the first failure: a refusal ends on its own,
# and a guesser elsewhere does not lock an admin out (its address is another key), unless
# both reach norm through one proxy not counted in NORM_NUM_PROXIES, whose address is
# then theirs (README, Admin).
LOGIN_FAILURES = 5
LOGIN_LOCK_SECONDS = 15 * 60


def _source(address: str) -> str:
    """The address a guesser cannot change at will: an IPv6 host is given a /64 (2^64
    addresses) to pick from, each its own count else."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)  # an IPv4 client of a dual-stack socket
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _key(username: str, address: str) -> str:
    # Hashed: a username is any text, of any length, and keys a cache may refuse.
    named = f"{username.casefold()}\n{_source(address)}".encode()
    return f"norm:admin-login:{hashlib.sha256(named).hexdigest()}"


def _ends(key: str) -> str:
    """The key of when the failures counted at `key` expire, for the refusal to say."""
    return f"{key}:ends"


class ThrottledLoginForm(AdminAuthenticationForm):
    """Refused before the password is checked once the username failed LOGIN_FAILURES
    times from this address: whether a guess was right is not told while refused."""

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "throttled": "Too many failed logins for this username from your address: try "
        "again in %(minutes)d %(unit)s.",
    }

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        address = client_address(self.request) if self.request else ""
        key = _key(username, address)
        try:
            counted = cache.get_many([key, _ends(key)])
        except (RedisError, OSError) as exc:
            # The counters' Redis is down: logins go on uncounted rather than fail.
            logger.warning("admin login failures not counted: %s", exc)
            return super().clean()
        if counted.get(key, 0) >= LOGIN_FAILURES:
            # It ends LOGIN_LOCK_SECONDS after the first failure, not the last: guesses
            # spread over 14 minutes are held off one minute more.
            now = time.time()
            left = counted.get(_ends(key), now + LOGIN_LOCK_SECONDS) - now
            minutes = max(1, math.ceil(left / 60))
            raise ValidationError(
                self.error_messages["throttled"],
                code="throttled",
                params={"minutes": minutes, "unit": "minute" if minutes == 1 else "minutes"},
            )
        try:
            cleaned = super().clean()
        except ValidationError:
            self._failed(key)
            raise
        # Logged in: an admin's typos before are not held against the next login.
        try:
            cache.delete_many([key, _ends(key)])
        except (RedisError, OSError) as exc:
            logger.warning("admin login failures not cleared: %s", exc)
        return cleaned

    def _failed(self, key: str) -> None:
        try:
            # add() is a no-op when the key exists: the lock runs from the first failure.
            cache.add(_ends(key), time.time() + LOGIN_LOCK_SECONDS, timeout=LOGIN_LOCK_SECONDS)
            cache.add(key, 0, timeout=LOGIN_LOCK_SECONDS)
            cache.incr(key)
        except (RedisError, OSError, ValueError) as exc:
            # incr's ValueError: the counter evicted between add() and incr().
            logger.warning("admin login failure not counted: %s", exc)
