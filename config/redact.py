"""Bridge URLs as they may be shown or logged.

A client may register a bridge behind basic auth (`https://user:pass@host/api/novu`) or
with a token in its query (`https://host/api/novu?token=...`): norm calls that URL as it
is, but an operator's console, a log line or an error message shows it with the password
and each query value as `***` (a token standing alone as the user, `https://TOKEN@host`,
likewise).
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# The scheme and the authority (user:pass@host:port), read as requests and urllib3 read
# them: the authority ends at the first / ? or #, and its credentials at its last @.
_AUTHORITY = re.compile(r"^([a-z][a-z0-9+.-]*://)([^/?#]*)", re.IGNORECASE)


def _userinfo(url: str) -> str:
    """What stands before the authority's last @ ("user:pass", a token alone); "" for none."""
    match = _AUTHORITY.match(url)
    if match is None:
        return ""
    userinfo, at, _host = match.group(2).rpartition("@")
    return userinfo if at else ""


def _masked(userinfo: str) -> str:
    """The password masked (the user name stays: it tells the operator which account the
    bridge expects); a user alone (`https://TOKEN@host`, a token sent as basic auth's
    user) masked whole. A user with an empty password has nothing to mask."""
    user, colon, password = userinfo.partition(":")
    if colon:
        return f"{user}:{MASK}" if password else userinfo
    return MASK if user else userinfo


def _masked_query(url: str) -> str:
    """`url` with the value of each parameter of its query as ***, the names kept (they
    tell the operator which bridge it is): a deployment's bypass token or an API key in
    the query is as secret as a password in the userinfo. A parameter with no `=` may be
    the token itself, and is masked whole; the fragment, which no request sends, stays."""
    rest, hash_, fragment = url.partition("#")
    base, mark, query = rest.partition("?")
    if not query:
        return url
    masked = "&".join(_masked_parameter(p) for p in query.split("&"))
    return f"{base}{mark}{masked}{hash_}{fragment}"


def _masked_parameter(parameter: str) -> str:
    name, equals, value = parameter.partition("=")
    if equals:
        return f"{name}={MASK}" if value else parameter
    return MASK if parameter else parameter


def masked_url(url: str) -> str:
    """`url` with its password, or a token standing as its user, and the values of its
    query replaced by ***."""
    userinfo = _userinfo(url)
    url = url.replace(f"{userinfo}@", f"{_masked(userinfo)}@", 1) if userinfo else url
    return _masked_query(url)


def masked_text(text: str, url: str) -> str:
    """`text` (an error message about `url`) with every copy of `url`'s secret masked and
    of its query (a token, say) and fragment left out: requests and urllib3 quote the URL,
    or its authority, in some of theirs."""
    userinfo = _userinfo(url)
    if userinfo:
        text = text.replace(f"{userinfo}@", f"{_masked(userinfo)}@")
    tail = url[len(url.split("?", 1)[0].split("#", 1)[0]) :]
    return text.replace(tail, "") if tail else text


def quoted_masked(text: str, url: str) -> str:
    """`text` (a bridge's own error message about a call to `url`) with `url`'s password
    and the value of each parameter of its query as *** wherever it quotes them: NestJS
    answers a path it does not route with "Cannot POST" and the URL it was called at,
    query and all."""
    userinfo = _userinfo(url)
    if userinfo:
        text = text.replace(f"{userinfo}@", f"{_masked(userinfo)}@")
    query = url.partition("#")[0].partition("?")[2]
    for parameter in filter(None, query.split("&")):
        masked = _masked_parameter(parameter)
        if masked != parameter:
            text = text.replace(parameter, masked)
    return text


def has_masked_secret(url: str) -> bool:
    """Whether `url` is a masked one (its password, token or a value of its query ***),
    as the admin's form shows it."""
    userinfo = _userinfo(url)
    query = url.partition("#")[0].partition("?")[2]
    return (
        userinfo == MASK
        or userinfo.endswith(f":{MASK}")
        or any(p == MASK or p.endswith(f"={MASK}") for p in query.split("&"))
    )


# A query's parameters in a log line: up to the next &, #, space or quote.
_PARAMETER = re.compile(r"([?&])([^=&#\s\"']*)=([^&#\s\"']*)")
# The parameters norm adds to every bridge call (bridge.call); all others are the URL's.
_NORMS_PARAMETERS = {"action", "workflowId", "stepId"}


class BridgeQueryMasked(logging.Filter):
    """urllib3 logs the path of each request with its query (at DEBUG, and in a warning
    of an answer's broken headers): the values of a bridge URL's own parameters are
    masked there as `***`, norm's kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _PARAMETER.sub(
            lambda m: m[0] if m[2] in _NORMS_PARAMETERS else f"{m[1]}{m[2]}={MASK}", message
        )
        if masked != message:
            record.msg, record.args = masked, None
        return True
