"""norm's HTTP client for a customer's bridge (BRIDGE.md).

Every call but the health-check is signed with the client's secret over the exact
bytes sent (without a secret, it is not made); each ends within NORM_BRIDGE_TIMEOUT
whatever the bridge does, reads at most NORM_BRIDGE_MAX_RESPONSE_BYTES, and never
follows a redirect: norm calls only URLs the client registered.
"""

from __future__ import annotations

import html
import http.client
import http.cookiejar
import json
import logging
import os
import queue
import re
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from functools import lru_cache, partial
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.response import HTTPResponse

from config import deadlines
from config.db import bounded, storable
from config.redact import masked_text, masked_url, quoted_masked
from workflows.sdk.signing import canonical_json, signature_header

logger = logging.getLogger(__name__)

# Novu's framework answers these for user-code, schema and setup problems: retrying
# cannot help, whatever the status code (StepExecutionFailedError comes with a 502,
# MissingDependencyError, zod given without zod-to-json-schema installed, with a 500;
# norm's SDK answers WorkflowExecutionFailedError for a payload schema it cannot apply).
# Its other 5xx, BridgeError (500), is its answer to any other exception, the workflow
# function's own outside a step included: retried, as Novu's worker retries a 500, for
# it may be the bridge's database or an API its code calls, down for now.
PERMANENT_CODES = {
    "StepExecutionFailedError",
    "ProviderExecutionFailedError",
    "WorkflowExecutionFailedError",
    "MissingDependencyError",
}
TRANSIENT_STATUSES = {408, 425, 429}
# A bridge's error message is the notification's reason, shown in the admin and in every
# page of the activity API that lists it: kept to this many characters.
MAX_MESSAGE = 1000

# A URL requests cannot call (no scheme, another scheme, a port past 65535, a host IDNA
# refuses; urllib3 and urlsplit raise a bare ValueError for some) fails every time: it is
# no unreachable bridge, and retrying it only delays the failure.
UNUSABLE_URL = (
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.URLRequired,
    ValueError,
)


class _Unanswered(http.client.RemoteDisconnected):
    """The connection closed, or reset, before the first byte of the call's answer."""


class _ClosedUnanswered(ConnectionResetError):
    """A kept-alive connection the bridge closed as the call went over it, before any
    byte of its answer: its keep-alive ran out just then (gunicorn's is 2 s, Node's 5 s),
    and it most likely never read the call."""


class _Answer(http.client.HTTPResponse):
    """http.client's answer, telling a connection closed before its first byte
    (`_Unanswered`) from one closed later: http.client raises the same RemoteDisconnected
    for an end of file after a 100 Continue, and the same ConnectionResetError for a
    reset amid the status line or the headers, all sent by a bridge that read the call."""

    began = False

    def _read_status(self) -> tuple[str, int, str]:
        if not self.began:  # not again after a 100 Continue
            try:
                # Peeked, not read: the status line's readline reads it next.
                self.began = bool(self.fp.peek(1))
            except ConnectionResetError as exc:
                raise _Unanswered(*exc.args) from exc
            if not self.began:
                raise _Unanswered("Remote end closed connection without response")
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            # http.client passes over a 100 Continue alone (begin()); any other interim
            # answer (103 Early Hints, 102 Processing) it took for the answer. 101 is no
            # interim one: it ends HTTP on the connection.
            if not 102 <= status < 200:
                return version, status, reason
            http.client._read_headers(self.fp)  # type: ignore[attr-defined]


class _WatchedConnection(HTTPConnection):
    """urllib3's connection, its socket handed to the call's deadline: each call ends
    within NORM_BRIDGE_TIMEOUT (config/deadlines.py), where requests' timeout bounds each
    socket operation, not the call. This class is the one place urllib3 shows the socket
    before the answer arrives."""

    response_class = _Answer
    answers = 0  # the answers read over its socket: a kept-alive connection has some

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        deadlines.watch(sock)
        self.answers = 0
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if self.sock is not None:
            deadlines.watch(self.sock)  # a kept-alive connection: no _new_conn
        super().request(*args, **kwargs)

    def getresponse(self) -> HTTPResponse:  # type: ignore[override]
        """The answer's status line and headers; `_ClosedUnanswered` for a kept-alive
        connection closed, or reset, before their first byte: a server that closes a
        connection with the call in it unread resets it."""
        try:
            response = super().getresponse()
        except _Unanswered as exc:
            if self.answers:
                raise _ClosedUnanswered(*exc.args) from exc
            raise
        self.answers += 1
        return response


class _WatchedHTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


def _release(conn: Any) -> None:
    """A connection goes back to the pool: its call's deadline no longer touches it, and
    one the deadline cut is closed, never handed to another call."""
    if (deadline := deadlines.current()) is not None:
        deadline.end()
        if deadline.expired and conn is not None:
            conn.close()


class _Pool(HTTPConnectionPool):
    ConnectionCls = _WatchedConnection

    def _put_conn(self, conn: Any) -> None:
        _release(conn)
        super()._put_conn(conn)


class _HTTPSPool(_Pool, HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _Pool, "https": _HTTPSPool}


def _close_idle(pool: HTTPConnectionPool) -> None:
    """Close the idle connections of a pool the process no longer keeps (it keeps one for
    each of the last 10 bridges it called). urllib3 2 leaves them to the pool's garbage
    collection, which waits on any error still held that refers to the pool (a key
    refused, a task's retry): a connection stayed open for each call to a bridge outside
    the last 10, in a worker that calls the bridges of many clients. The pool stays
    usable, unlike after its close(): a call in another thread may hold it still."""
    idle = pool.pool
    while idle is not None:  # None: closed already
        try:
            conn = idle.get(block=False)
        except queue.Empty:
            return
        if conn is not None:  # else a free slot
            conn.close()


class _Adapter(HTTPAdapter):
    """requests' adapter, with connections the deadline can watch (directly or through
    an HTTP proxy; a SOCKS proxy has connections of its own, bounded per read only)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS
        self.poolmanager.pools.dispose_func = _close_idle

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        manager.pools.dispose_func = _close_idle
        return manager


_session = requests.Session()
# requests would read the proxy variables and ~/.netrc again on every call (a third of
# a call's CPU), and send a netrc's login for the bridge's host as basic auth: the
# proxies for a bridge are resolved once per URL instead, and no netrc is read.
_session.trust_env = False
# Nor does it keep cookies: the session is the process's, shared by every client, and a
# cookie one client's bridge set (a load balancer's stickiness, a bot check) went with
# the calls to any other bridge on that host or domain. No domain is allowed one.
_session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
_session.mount("http://", _Adapter())
_session.mount("https://", _Adapter())


@lru_cache(maxsize=1024)
def _proxies(url: str) -> dict[str, str]:
    """HTTP(S)_PROXY for `url` from the environment, unless NO_PROXY exempts it."""
    return requests.utils.get_environ_proxies(url)


def _ca_bundle() -> str | None:
    """The CA bundle requests' variables name (a bridge whose certificate an internal CA
    signed), read as requests reads them; None for the session's own (certifi's CAs)."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


def _usable_ca_bundle(url: str) -> str | None:
    """`_ca_bundle()`, checked for an HTTPS bridge (a plain HTTP one does not use it).
    requests raises a bare OSError for a path that does not exist (no BridgeError: a 500
    on a trigger, a bug in the echo worker), and OpenSSL's error for a file without a PEM
    certificate reads as an unreachable bridge; either is norm's setting, not the bridge."""
    path = _ca_bundle()
    if path is None or not url.lower().startswith("https:"):
        return path
    try:
        stat = os.stat(path)
    except OSError as exc:
        problem: str | None = exc.strerror or str(exc)
    else:
        problem = _ca_bundle_problem(path, stat.st_mtime_ns, stat.st_size)
    if problem is None:
        return path
    variable = "REQUESTS_CA_BUNDLE" if os.environ.get("REQUESTS_CA_BUNDLE") else "CURL_CA_BUNDLE"
    raise BridgeUnavailable(  # retried, as a certificate is: the file may be fixed meanwhile
        "BridgeCertificateInvalid",
        f"norm cannot check the bridge's HTTPS certificate: the CA bundle {path} "
        f"({variable}) cannot be used: {problem}",
    )


@lru_cache(maxsize=8)
def _ca_bundle_problem(path: str, mtime_ns: int, size: int) -> str | None:
    """Why OpenSSL cannot load the CA file at `path`; None if it can. Read once per
    version of the file (its mtime and size), not on every call."""
    if os.path.isdir(path):
        return None  # a directory of hashed certificates, which OpenSSL reads as it needs
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        # "[X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found (_ssl.c:4154)"
        text = exc.strerror if isinstance(exc.strerror, str) else str(exc)
        return re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", text)
    return None


class BridgeError(Exception):
    """The bridge refused: deterministic, retrying will not help."""

    def __init__(
        self, code: str, message: str, data: Any = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BridgeUnavailable(BridgeError):
    """Timeout, connection error, a certificate that fails verification, or a 5xx or
    TRANSIENT_STATUSES answer whose code is none of PERMANENT_CODES: worth another try."""


HEALTH_CHECK = "health-check"  # the one action a bridge answers unsigned (BRIDGE.md)
# What Novu's framework and norm's SDK answer (401) to a signature made with another key.
WRONG_KEY = "SignatureMismatchError"
# What to change when a bridge refuses norm's signature for its key or its time (401):
# its own words ask for a correct or newer `novu-signature` header, which norm writes as
# it calls, or name the JS Client's `config.secretKey`, which norm's SDK has none of.
KEY_HINTS = {
    WRONG_KEY: (
        " (norm signed with the client's secret key, and the bridge checks with another: "
        "give it the client's key, as NOVU_SECRET_KEY or Bridge(secret_key=...))"
    ),
    "SigningKeyNotFoundError": (
        " (the bridge has no secret key to check norm's signature with: give it the "
        "client's key, as NOVU_SECRET_KEY or Bridge(secret_key=...))"
    ),
    "SignatureExpiredError": (
        " (norm signs each call as it makes it: the clocks of norm's host and the bridge's "
        "differ by more than the bridge allows; set both by NTP)"
    ),
}


def call(
    url: str,
    *,
    secrets: Sequence[str],
    action: str,
    params: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
    js_integers: bool | None = None,
) -> dict[str, Any]:
    """Call the bridge, signed with the first of `secrets` (the client's live keys,
    newest first) that it accepts. `js_integers`: see `canonical_json`; True for a bridge
    that parses with JS (Novu's), False for one that parses with Python (norm's SDK), None
    for one that may do either (`_writings`): norm's flavour, which drives a bridge whose
    flavour is not told, and one told norm's that may run Novu's SDK since its last sync.

    A bridge holds one key. While a client rotates, norm already has the new key and the
    bridge still the old one until it is redeployed: a call refused with the newest key
    is signed again with the next, rather than fail the notification for good.
    """
    if action == HEALTH_CHECK:
        return _call_once(url, secret=None, action=action, params=params, text=None)
    if not secrets:
        # A client whose keys are all revoked: an unsigned call would still be answered
        # by a bridge that verifies nothing, so norm makes none.
        raise BridgeError(
            "SigningKeyMissing",
            "the client has no live secret key to sign the bridge call with; "
            "norm calls no bridge unsigned (create a key for the client)",
        )
    refused: BridgeError | None = None
    for secret in secrets:
        for text in _writings(body, js_integers):
            try:
                return _call_once(url, secret=secret, action=action, params=params, text=text)
            except BridgeError as exc:
                if exc.status != 401 or exc.code not in KEY_HINTS:
                    raise
                if exc.code != WRONG_KEY:
                    raise _with_key_hint(exc) from exc
                refused = exc
    # The last refusal: a bridge that holds none of the client's keys fails with it.
    assert refused is not None  # secrets is not empty
    raise _with_key_hint(refused) from refused


def _with_key_hint(exc: BridgeError) -> BridgeError:
    """The bridge's refusal of norm's signature over its key, with what to change."""
    hint = KEY_HINTS[exc.code]
    message = bounded(exc.message, MAX_MESSAGE - len(hint)) + hint
    return BridgeError(exc.code, message, exc.data, exc.status)


def _writings(body: dict[str, Any] | None, js_integers: bool | None) -> Iterator[str | None]:
    """The texts to send `body` as, signed with one key, until the bridge takes one.

    Not told how the bridge parses (None): written whole, then, if JS would write it back
    otherwise (an integer beyond 2**53), as JS does. Whole first, as norm's SDK takes it:
    that SDK also checks the bytes it got, so it accepts them with its key and refuses
    both writings with another, and never runs on an integer rounded as JS reads it; a
    Novu bridge refuses the whole writing with its own key, and takes JS's.
    """
    if body is None:
        yield None
        return
    text = canonical_json(body, js_integers=bool(js_integers))
    yield text
    if js_integers is None and (js_text := canonical_json(body, js_integers=True)) != text:
        yield js_text


def _call_once(
    url: str,
    *,
    secret: str | None,
    action: str,
    params: dict[str, str] | None,
    text: str | None,
) -> dict[str, Any]:
    headers = _signed_headers(secret, text)
    response, content = _answer_read(url, headers=headers, action=action, params=params, text=text)
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):  # `[[[[…`: the parser recurses per level
        data = None
    status = response.status_code
    if 300 <= status < 400:
        raise BridgeError("BridgeRedirect", _redirect_message(status, response, url))
    if status >= 400:
        raise _error_answered(status, data, content, response, url)
    if not isinstance(data, dict):
        raise BridgeError(
            "BridgeInvalidResponse", f"the bridge answered {status} without a JSON object"
        )
    return data


def _signed_headers(secret: str | None, text: str | None) -> dict[str, str]:
    """A call's headers: JSON both ways, and norm's signature of `text` with `secret`."""
    headers = {"content-type": "application/json", "accept": "application/json"}
    if secret is not None:
        # The signature covers `{}` for a GET, as Novu's framework expects.
        signature = signature_header(
            secret, text if text is not None else "{}", int(time.time() * 1000)
        )
        headers["novu-signature"] = signature
        headers["x-novu-signature"] = signature
    return headers


def _answer_read(
    url: str,
    *,
    headers: dict[str, str],
    action: str,
    params: dict[str, str] | None,
    text: str | None,
) -> tuple[requests.Response, bytes]:
    """The bridge's answer to one call (a GET without `text`), and its body, read whole
    within NORM_BRIDGE_TIMEOUT. No answer raises the BridgeError that says why."""
    timeout = settings.NORM_BRIDGE_TIMEOUT
    ends = time.monotonic() + timeout
    try:
        send = partial(
            _session.request,
            "GET" if text is None else "POST",
            url,
            params={"action": action, **(params or {})},
            data=text.encode() if text is not None else None,
            headers=headers,
            proxies=_proxies(url),
            verify=_usable_ca_bundle(url),
            allow_redirects=False,
            stream=True,  # read under the size limit, and the deadline, below
        )
        try:
            return _answered(send, timeout, timeout)
        except requests.ConnectionError as exc:
            left = ends - time.monotonic()
            if left <= 0 or not any(isinstance(e, _ClosedUnanswered) for e in _causes(exc)):
                raise
        # The bridge closed a kept-alive connection before any byte of its answer: its
        # keep-alive ran out as the call went. The call is sent again at once, as browsers
        # do, rather than fail and wait for the task's retry and its backoff (bridge calls
        # are safe to repeat: that retry repeats them too); once, within what is left of
        # NORM_BRIDGE_TIMEOUT, its connect included, which no deadline watches. Through an
        # HTTP proxy alike, whose own keep-alive ran out (urllib3 reports a ProxyError).
        # Nothing else is sent again: a timeout or the deadline's cut leaves no time, a
        # bridge down is for the task's retry, and an answer begun, or a new connection
        # closed, may come of a bridge that ran the call. Sent outside the `except`, so
        # that its errors are not chained to the first try's, whose cause norm would report.
        # Logged: a bridge killed as it took the call ends it alike, and may have run it.
        logger.info(
            "bridge call: %s closed a kept-alive connection before answering %s; "
            "sent again over a new connection",
            _origin(url),
            action,
        )
        return _answered(send, left, timeout)
    except UNUSABLE_URL as exc:
        raise BridgeError(
            "BridgeInvalidURL",
            masked_text(f"norm cannot call the bridge URL {url}: {exc}", url),
        ) from exc
    except requests.RequestException as exc:
        if isinstance(exc, requests.Timeout):
            raise _timed_out(timeout) from exc
        if isinstance(root := _root_cause(exc), ssl.SSLCertVerificationError):
            raise _untrusted(root, url) from exc
        raise BridgeUnavailable(
            "BridgeUnreachable", f"the bridge is unreachable: {_cause(exc)} ({_origin(url)})"
        ) from exc


def _answered(
    send: partial[requests.Response], seconds: float, timeout: float
) -> tuple[requests.Response, bytes]:
    """One try of a call, `send`, and its answer read whole within `seconds`, its own
    deadline: an error of a call the deadline cut is its timeout."""
    with deadlines.within(seconds) as deadline:
        try:
            response = send(timeout=(seconds, timeout))
            with response:  # closes the connection, rather than reuse it, unless read to its end
                content = _read(response)
        except (*UNUSABLE_URL, requests.RequestException) as exc:
            if deadline.expired:
                raise _timed_out(timeout) from exc
            raise
    if deadline.expired:
        # Without a content-length, a body ends when its connection does, shut down here.
        raise _timed_out(timeout)
    return response, content


def _error_answered(
    status: int, data: Any, content: bytes, response: requests.Response, url: str
) -> BridgeError:
    """The bridge's answer of an error status (400 and up) as the error it raises:
    BridgeUnavailable if a later call can succeed."""
    code = data.get("code") if isinstance(data, dict) else None
    # Stored, and compared; as the message, without what PostgreSQL cannot hold.
    code = storable(code[:100]) if isinstance(code, str) else None
    message = _text(data.get("message")) if isinstance(data, dict) else ""
    error_data = data.get("data") if isinstance(data, dict) else None
    message = message or _page_text(content) or response.reason
    if data is None and status in (404, 405):
        # No JSON: no bridge answered, but a web server's own page for a path it does
        # not serve (Express's "Cannot POST /api/novu", Django's 404).
        message += " (nothing serves a bridge at this URL: check the client's bridge URL)"
    elif data is None and status == 400:
        # No JSON: the bridge never saw the call, which a web server refused first; most
        # often Django's page for a Host header its ALLOWED_HOSTS lacks, which an app
        # with DEBUG off logs nowhere its developer looks.
        message += (
            " (no bridge's answer, which is JSON: the web server refused the call first,"
            " as Django does when ALLOWED_HOSTS lacks the bridge URL's host)"
        )
    if problems := _problems(error_data):
        message = f"{message} ({problems})"
    message = bounded(storable(quoted_masked(message, url)), MAX_MESSAGE)
    if (status >= 500 or status in TRANSIENT_STATUSES) and code not in PERMANENT_CODES:
        return BridgeUnavailable(code or f"HTTP{status}", message, error_data, status)
    return BridgeError(code or f"HTTP{status}", message, error_data, status)


def _redirect_message(status: int, response: requests.Response, url: str) -> str:
    """Why a redirect fails, and where it pointed: a web framework's own redirect (Django's
    APPEND_SLASH to `/api/norm/`, http to https) means the bridge is served at another URL,
    which is the one to register. The query is left out (norm's `action`, a token)."""
    location = response.headers.get("location")
    if not location:
        return f"the bridge answered a redirect ({status}); norm follows none"
    try:
        target = urljoin(url, location.strip()).split("#", 1)[0].split("?", 1)[0]
    except ValueError:  # `http://[oops`: urlsplit refuses it
        target = location
    target = bounded(storable(masked_url(target)), 500)
    return (
        f"the bridge answered a redirect ({status}) to {target}; norm follows none: "
        "if the bridge is served there, make that the client's bridge URL"
    )


def _text(message: Any) -> str:
    """A bridge's error message as text: a list of problems (NestJS's validation errors)
    one after another, anything else but a string as JSON, not as Python writes it."""
    if message is None or isinstance(message, str):
        return message or ""
    if isinstance(message, list) and all(isinstance(m, str) for m in message):
        return "; ".join(message)
    try:
        return json.dumps(message, ensure_ascii=False)
    except RecursionError:  # as deep as the parser took: written from further down the stack
        return ""  # the answer's text stands in


_BLOCK = re.compile(r"<(head|script|style)\b", re.I)
_BLOCK_END = {name: re.compile(rf"</{name}\s*>", re.I) for name in ("head", "script", "style")}


def _page_text(content: bytes) -> str:
    """An error answer that is no JSON (an error page, say), as a line of text: an HTML
    page's words without its markup, which a 404 from Express or Django or a proxy's 502
    otherwise filled the reason with, 500 characters of tags and styles."""
    text = content[: 64 * 1024].decode(errors="replace")
    if "<" in text:
        text = html.unescape(_unmarked(text))
    return bounded(" ".join(text.split()), 300)


def _unmarked(text: str) -> str:
    """`text` with each head, script and style (what it holds too), and each other tag, as
    a space. In one pass: a regex that looked from each `<` for the end of its block or
    tag read a page of them never closed as its square (9 s for 64 KB of `<style>`)."""
    parts: list[str] = []
    unclosed: set[str] = set()
    at, last_end = 0, text.rfind(">")  # no tag starts after the last `>`
    while (start := text.find("<", at)) != -1 and start < last_end:
        parts.append(text[at:start] + " ")
        block = _BLOCK.match(text, start)
        name = block[1].lower() if block else ""
        if block and name not in unclosed:
            if end := _BLOCK_END[name].search(text, block.end()):
                at = end.end()
                continue
            unclosed.add(name)  # nor does a later one close: each a tag alone
        at = text.index(">", start) + 1
    return "".join(parts) + text[at:]


def _problems(data: Any) -> str:
    """What an SDK found wrong with a payload, controls or outputs: the data of its error,
    [{path, message}] (Novu's framework and norm's SDK alike), whose message says only
    that something is ("Step with id: `mail` has invalid output.")."""
    if not isinstance(data, list):
        return ""
    return "; ".join(
        f"{p.get('path') or '/'}: {p['message']}"
        for p in data
        if isinstance(p, dict) and isinstance(p.get("message"), str)
    )


def _read(response: requests.Response) -> bytes:
    """The answer's body, decoded; BridgeResponseTooLarge past
    NORM_BRIDGE_MAX_RESPONSE_BYTES, read no further."""
    limit = settings.NORM_BRIDGE_MAX_RESPONSE_BYTES
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):  # decoded: a gzip bomb counts in full
        size += len(chunk)
        if size > limit:
            raise BridgeError(
                "BridgeResponseTooLarge",
                f"the bridge answered more than {limit} bytes (NORM_BRIDGE_MAX_RESPONSE_BYTES)",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _cause(exc: BaseException) -> str:
    """Why a call did not reach the bridge, as the system said it (Connection refused,
    Name or service not known). requests' own text is urllib3's repr of its pool and
    connection objects, with the URL's query (a token, say): "_Pool(host=..., port=9):
    Max retries exceeded with url: ... (Caused by NewConnectionError(...))"."""
    root = _root_cause(exc)
    strerror = root.strerror if isinstance(root, OSError) else None
    return str(strerror or root)


def _root_cause(exc: BaseException) -> BaseException:
    """The end of the chain of causes of a requests error: the system's own error."""
    *_, root = _causes(exc)
    return root


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """A requests error, and each of the chain of its causes."""
    seen = set()
    while id(exc) not in seen:
        yield exc
        seen.add(id(exc))
        reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError
        wrapped = [a for a in exc.args if isinstance(a, BaseException)]  # requests', ProtocolError
        cause = next(
            (e for e in (reason, *wrapped, exc.__cause__, exc.__context__) if e is not None), None
        )
        if not isinstance(cause, BaseException):
            break
        exc = cause


def _untrusted(error: ssl.SSLCertVerificationError, url: str) -> BridgeUnavailable:
    """A bridge whose HTTPS certificate norm does not trust. Retried as an unreachable
    bridge is (BRIDGE.md: connection errors are transient): an expired certificate
    renewed, or one bad node behind a balancer, passes on a later try, and one that
    stays wrong fails after NORM_BRIDGE_MAX_RETRIES like a bridge that stays down. What
    the failure must show is that the fix is the certificate or the CAs norm trusts, not
    the bridge's uptime: OpenSSL's own text ("[SSL: CERTIFICATE_VERIFY_FAILED] ...
    (_ssl.c:1006)") reads like any other connection error."""
    why = error.verify_message or error.reason or str(error)
    return BridgeUnavailable(
        "BridgeCertificateInvalid",
        f"the bridge's HTTPS certificate failed verification: {why} ({_origin(url)}); "
        "norm trusts certifi's public CAs, or the CAs of the PEM file REQUESTS_CA_BUNDLE names",
    )


def _origin(url: str) -> str:
    """The scheme, host and port of a URL: not its credentials, path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _timed_out(timeout: float) -> BridgeUnavailable:
    return BridgeUnavailable(
        "BridgeTimeout",
        f"the bridge did not answer in time: no whole answer within {timeout:g} s "
        "(NORM_BRIDGE_TIMEOUT)",
    )


def discover(url: str, *, secrets: Sequence[str]) -> dict[str, Any]:
    return call(url, secrets=secrets, action="discover")


def health_check(url: str) -> dict[str, Any]:
    return call(url, secrets=(), action=HEALTH_CHECK)


def flavour_of(health: dict[str, Any]) -> str:
    """`norm` for a bridge served by one of norm's SDKs, `novu` for any other that answers
    a health-check (Novu's `@novu/framework`)."""
    return "norm" if str(health.get("sdk") or "").startswith("norm") else "novu"


def execute(
    url: str,
    *,
    secrets: Sequence[str],
    workflow_id: str,
    body: dict[str, Any],
    step_id: str | None = None,
    js_integers: bool | None = None,
) -> dict[str, Any]:
    params = {"workflowId": workflow_id} | ({"stepId": step_id} if step_id else {})
    return call(
        url,
        secrets=secrets,
        action="execute",
        params=params,
        body=body,
        js_integers=js_integers,
    )
