"""Bridge URLs as they may be shown or logged.

A client may register a bridge behind basic auth (`https://user:pass@host/api/novu`):
norm calls that URL as it is, but an operator's console, a log line or an error message
shows it with the password as `***`.
"""

from __future__ import annotations

import re

MASK = "***"

# The scheme and the authority (user:pass@host:port), read as requests and urllib3 read
# them: the authority ends at the first / ? or #, and its credentials at its last @.
_AUTHORITY = re.compile(r"^([a-z][a-z0-9+.-]*://)([^/?#]*)", re.IGNORECASE)


def _credentials(url: str) -> tuple[str, str] | None:
    """The user and password of a URL; None when it has no password."""
    match = _AUTHORITY.match(url)
    if match is None:
        return None
    userinfo, at, _host = match.group(2).rpartition("@")
    user, _, password = userinfo.partition(":")
    return (user, password) if at and password else None


def masked_url(url: str) -> str:
    """`url` with its password, if any, replaced by *** (the user name stays: it tells
    the operator which account the bridge expects)."""
    credentials = _credentials(url)
    if credentials is None:
        return url
    user, password = credentials
    return url.replace(f"{user}:{password}@", f"{user}:{MASK}@", 1)


def masked_text(text: str, url: str) -> str:
    """`text` (an error message about `url`) with every copy of `url`'s password masked:
    requests and urllib3 quote the URL, or its authority, in some of theirs."""
    credentials = _credentials(url)
    if credentials is None:
        return text
    user, password = credentials
    return text.replace(f"{user}:{password}@", f"{user}:{MASK}@")


def has_masked_password(url: str) -> bool:
    """Whether `url` is a masked one (its password ***), as the admin's form shows it."""
    credentials = _credentials(url)
    return credentials is not None and credentials[1] == MASK
