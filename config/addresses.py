"""The address of the client a request came from, behind the proxies the operator
trusts (NORM_NUM_PROXIES): what the admin login's throttle counts failures by."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_address(request: HttpRequest) -> str:
    """REMOTE_ADDR, the peer norm's web server sees; behind NORM_NUM_PROXIES proxies, the
    address the farthest of them saw, which each proxy's X-Forwarded-For entry names.

    That is the NUM_PROXIES-th entry from the right, as DRF's get_ident reads it: a
    client may send an X-Forwarded-For of its own, whose entries come first (each proxy
    appends the peer it saw), so any entry further left is whatever the client wrote.
    With no proxy trusted, the header is not read at all: served directly, it would let a
    guesser name a new address for each guess."""
    remote = request.META.get("REMOTE_ADDR") or ""
    trusted = settings.NORM_NUM_PROXIES
    if not trusted:
        return remote
    header = request.META.get("HTTP_X_FORWARDED_FOR", "")
    forwarded = [entry.strip() for entry in header.split(",") if entry.strip()]
    if not forwarded:
        # A request that came by no proxy (a health check from inside): its peer is all.
        return remote
    return _host(forwarded[-min(trusted, len(forwarded))])


def _host(entry: str) -> str:
    """The address of an entry some proxies write with the client's port (Azure's
    `203.0.113.7:51234`, `[2001:db8::1]:51234`): the port is the client's to pick, so
    kept it would make each of its connections another address."""
    if entry.startswith("[") and "]" in entry:
        entry = entry[1 : entry.index("]")]
    elif entry.count(":") == 1:
        entry = entry.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(entry))
    except ValueError:
        return entry
