"""The bridge client resolves proxies from the environment once per bridge URL, and
trusts the CA bundle the environment names."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import ssl
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import Enqueued, json_serving, sdk_serving, self_signed, serve_in_background
from tests.factories import BridgeSyncFactory, NotificationFactory
from workflows import bridge
from workflows.models import Notification, Step
from workflows.sdk import Bridge, workflow
from workflows.services import echo

UNREACHABLE = "http://127.0.0.1:9/bridge"  # the discard port: nothing listens there


class _Proxy(BaseHTTPRequestHandler):
    """A forward proxy that answers every request itself, and records its target."""

    targets: list[str] = []

    def do_GET(self) -> None:
        _Proxy.targets.append(self.path)  # a proxied request names the absolute URL
        body = json.dumps({"status": "ok", "sdk": "norm-python"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    _Proxy.targets = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    serve_in_background(server)
    url = f"http://127.0.0.1:{server.server_port}"
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", url)
    bridge._proxies.cache_clear()
    yield url
    bridge._proxies.cache_clear()
    server.shutdown()
    server.server_close()


def test_bridge_calls_go_through_the_environments_proxy(proxy: str) -> None:
    assert bridge.health_check(UNREACHABLE)["status"] == "ok"
    assert _Proxy.targets == [f"{UNREACHABLE}?action=health-check"]


def test_no_proxy_exempts_a_bridge(proxy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pytest.raises(bridge.BridgeUnavailable):
        bridge.health_check(UNREACHABLE)
    assert _Proxy.targets == []


# norm's SDK with one workflow whose payload schema has a `$ref` to nowhere, checking no
# signature.
DANGLING = Bridge(
    workflows=[
        workflow(
            "dangling",
            payload_schema={"type": "object", "properties": {"n": {"$ref": "#/$defs/x"}}},
        )(lambda ctx: ctx.step.sms("sms", lambda: {"body": "b"}))
    ],
    strict=False,
)


class _Nested(BaseHTTPRequestHandler):
    """A bridge whose answer nests deeper than Python's JSON parser recurses."""

    def do_GET(self) -> None:
        body = b"[" * 100_000 + b"]" * 100_000
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_workflow_the_sdk_cannot_execute_is_a_final_error_not_retried() -> None:
    """Answered 500 and read as the bridge being down, it was retried for minutes."""
    with sdk_serving(DANGLING) as url, pytest.raises(bridge.BridgeError) as exc:
        bridge.execute(
            f"{url}/api/norm",
            secrets=("nk_test",),  # the SDK bridge here checks none: strict=False
            workflow_id="dangling",
            body={"payload": {"n": 1}, "state": [], "controls": {}},
        )
    assert not isinstance(exc.value, bridge.BridgeUnavailable)
    assert (exc.value.status, exc.value.code) == (502, "WorkflowExecutionFailedError")


@pytest.mark.parametrize(
    "url",
    [
        "localhost/api/norm",  # no scheme: requests' MissingSchema
        "ftp://localhost/api/norm",  # InvalidSchema
        "http://localhost:99999/api/norm",  # InvalidURL (Django's URLField takes it)
        "http://\u2488.example.test/api/norm",  # a host IDNA refuses (URLField takes it)
        "http://[::1/api/norm",  # a ValueError, no requests error
    ],
)
def test_a_bridge_url_requests_cannot_use_is_a_final_error_not_unreachable(url: str) -> None:
    """Each was read as the bridge being down (or escaped as a ValueError) and retried
    for minutes, though no retry can succeed."""
    with pytest.raises(bridge.BridgeError) as exc:
        bridge.execute(url, secrets=("nk_test",), workflow_id="w", body={"payload": {}})
    assert not isinstance(exc.value, bridge.BridgeUnavailable)
    assert exc.value.code == "BridgeInvalidURL"
    assert exc.value.message.startswith(f"norm cannot call the bridge URL {url}: ")


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:99999/api/norm?token=tk-41f2",  # requests quotes the URL in its error
        "ftp://localhost/api/norm?token=tk-41f2",
        "https:///api/norm?token=tk-41f2#x",
    ],
)
def test_a_bridge_url_norm_cannot_call_is_named_without_its_query(url: str) -> None:
    """The query may carry a token, as the unreachable bridge's message already knows:
    the notification's error showed it, in norm's words and in requests'."""
    with pytest.raises(bridge.BridgeError) as exc:
        bridge.execute(url, secrets=("nk_test",), workflow_id="w", body={"payload": {}})
    assert exc.value.code == "BridgeInvalidURL"
    assert "tk-41f2" not in exc.value.message
    shown = url.split("?")[0]
    assert exc.value.message.startswith(f"norm cannot call the bridge URL {shown}: ")


def test_a_bridge_error_quoting_the_url_it_was_called_at_shows_no_token_of_its_query() -> None:
    """NestJS answers a path it does not route (a wrong bridge URL) with "Cannot POST" and
    the URL it was called at, query and all: the client's token in it went to the
    notification's error (the API, the admin) and to the log."""

    def nest_404(method: str, path: str, *_: object) -> tuple[int, dict[str, object], dict]:
        return 404, {"statusCode": 404, "message": f"Cannot {method} {path}"}, {}

    with json_serving(nest_404) as url, pytest.raises(bridge.BridgeError) as exc:
        bridge.execute(
            f"{url}/api/novu?token=s3cret-tk&region=eu",
            secrets=("nk_test",),
            workflow_id="w",
            body={},
        )
    assert "s3cret-tk" not in exc.value.message and "eu" not in exc.value.message
    assert exc.value.message.startswith("Cannot POST /api/novu?token=***&region=***&action=")


def test_an_answer_nested_too_deep_to_parse_is_an_invalid_answer() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Nested)
    serve_in_background(server)
    try:
        with pytest.raises(bridge.BridgeError) as caught:
            bridge.health_check(f"http://127.0.0.1:{server.server_port}/bridge")
    finally:
        server.shutdown()
        server.server_close()
    assert caught.value.code == "BridgeInvalidResponse"  # failed at once, not a crashed task
    assert not isinstance(caught.value, bridge.BridgeUnavailable)


def test_an_error_message_nested_as_deep_as_the_parser_takes_is_the_errors_reason() -> None:
    """A message that is no text is shown as JSON, written again: as deep as the parser
    took it, a few frames further down, the writing passed Python's recursion limit, and
    the RecursionError, no BridgeError, crashed the echo: a bug, the notification left
    pending until NORM_MAX_CLAIMS made it an InternalError. Where it fails depends on the
    stack: each depth up to where the parser gives up."""

    def respond(method: str, path: str, *_: Any) -> tuple[int, bytes, dict[str, str]]:
        levels = int(parse_qs(urlsplit(path).query)["levels"][0])
        return 400, b'{"code": "BadInput", "message": ' + b"[" * levels + b"]" * levels + b"}", {}

    with json_serving(respond, keep_alive=True) as url:
        for levels in range(800, 1000):
            with pytest.raises(bridge.BridgeError) as caught:
                bridge.execute(
                    f"{url}/bridge?levels={levels}", secrets=("nk_test",), workflow_id="w", body={}
                )
            assert caught.value.status == 400, levels
            assert len(caught.value.message) <= bridge.MAX_MESSAGE, levels


@pytest.fixture
def internal_tls_bridge(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A bridge over HTTPS with a certificate of an internal CA: its URL, and the CA's PEM."""
    cert_path, key_path = self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)  # answers every GET with ok
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    serve_in_background(server)
    yield f"https://127.0.0.1:{server.server_port}/bridge", cert_path
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_bridge_behind_an_internal_ca_is_trusted_through_the_environments_ca_bundle(
    internal_tls_bridge: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """requests' variables for a CA bundle were ignored (the session reads no environment),
    so no setting let norm call a bridge whose certificate an internal CA signed."""
    url, ca = internal_tls_bridge
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(bridge.BridgeUnavailable, match="certificate failed verification"):
        bridge.health_check(url)  # certifi's CAs alone: refused

    monkeypatch.setenv(variable, str(ca))
    assert bridge.health_check(url)["status"] == "ok"


@pytest.mark.django_db
def test_a_bridge_certificate_norm_does_not_trust_is_retried_then_fails_saying_so(
    internal_tls_bridge: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    """It was retried and failed as `BridgeUnreachable`, "the bridge is unreachable:
    [SSL: CERTIFICATE_VERIFY_FAILED] ... (_ssl.c:1006)": read as the bridge being down,
    when what needs fixing is its certificate or the CAs norm trusts."""
    url, _ = internal_tls_bridge
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    notification = NotificationFactory(trigger_event__client__bridge_url=url)

    # Retried as a bridge that is down is (a certificate being renewed passes later)...
    with pytest.raises(bridge.BridgeUnavailable):
        echo.echo_run(notification_id=str(notification.pk), final_attempt=False)
    echo.echo_run(notification_id=str(notification.pk), final_attempt=True)

    # ...and the final failure names the certificate, and where norm's trusted CAs come from.
    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("failed", "BridgeCertificateInvalid")
    assert notification.error == (
        "the bridge's HTTPS certificate failed verification: self-signed certificate "
        f"({url.removesuffix('/bridge')}); norm trusts certifi's public CAs, or the CAs "
        "of the PEM file REQUESTS_CA_BUNDLE names"
    )
    assert notification.bridge_attempts == 2 and enqueued.calls == []


@pytest.mark.parametrize("bundle", ["missing.pem", "no-certificate.pem"])
def test_a_ca_bundle_norm_cannot_use_fails_the_call_as_a_certificate_problem(
    internal_tls_bridge: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    bundle: str,
) -> None:
    """The CA bundle REQUESTS_CA_BUNDLE names (as BridgeCertificateInvalid's message
    advises) missing, mistyped, or holding no PEM certificate: requests raised a bare
    OSError for the first, no BridgeError (a 500 on a trigger, a bug in the echo worker),
    and the second read as "the bridge is unreachable: [X509: NO_CERTIFICATE_OR_CRL_FOUND]"."""
    url, _ = internal_tls_bridge
    (tmp_path / "no-certificate.pem").write_text("not a certificate\n")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / bundle))

    with pytest.raises(bridge.BridgeUnavailable) as exc:  # retried: the file may be fixed
        bridge.health_check(url)

    assert exc.value.code == "BridgeCertificateInvalid"
    assert exc.value.message.startswith(
        f"norm cannot check the bridge's HTTPS certificate: the CA bundle {tmp_path / bundle} "
        "(REQUESTS_CA_BUNDLE) "
    )


def test_a_ca_bundle_norm_cannot_use_does_not_stop_a_bridge_on_plain_http(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with json_serving(lambda *_: (200, {"status": "ok"}, {})) as url:
        assert bridge.health_check(url)["status"] == "ok"


def test_a_certificate_for_another_host_is_named_as_such(
    internal_tls_bridge: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca = internal_tls_bridge
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))  # the CA trusted: only the name is wrong
    other_host = url.replace("127.0.0.1", "localhost")  # the certificate names 127.0.0.1 only

    with pytest.raises(bridge.BridgeUnavailable) as exc:
        bridge.health_check(other_host)

    assert exc.value.code == "BridgeCertificateInvalid"
    assert "Hostname mismatch, certificate is not valid for 'localhost'" in exc.value.message


@pytest.mark.parametrize(
    ("status", "answer", "transient"),
    [
        (500, {"code": "HTTP500"}, True),
        (503, {}, True),
        (408, {}, True),
        (425, {}, True),  # Too Early: a retry is what it asks for
        (429, {}, True),
        (400, {"code": "BadRequest"}, False),
        (404, {}, False),
        # The SDKs' errors for user code and schemas: permanent whatever the status.
        (502, {"code": "StepExecutionFailedError"}, False),
        (500, {"code": "ProviderExecutionFailedError"}, False),
        (502, {"code": "WorkflowExecutionFailedError"}, False),
        # @novu/framework's 500 for a zod schema without zod-to-json-schema installed:
        # the bridge's package setup, which no retry mends.
        (500, {"code": "MissingDependencyError"}, False),
        # Its 500 for any other exception, the workflow function's own outside a step
        # among them: retried, as Novu's worker retries it.
        (500, {"code": "BridgeError"}, True),
    ],
)
def test_which_bridge_errors_are_retried(status: int, answer: dict, transient: bool) -> None:
    """BridgeUnavailable is retried (NORM_BRIDGE_MAX_RETRIES); any other BridgeError
    fails the notification at once."""
    with (
        json_serving(lambda *_: (status, answer, {})) as url,
        pytest.raises(bridge.BridgeError) as exc,
    ):
        bridge.execute(f"{url}/bridge", secrets=("nk_test",), workflow_id="w", body={})
    assert isinstance(exc.value, bridge.BridgeUnavailable) is transient
    assert (exc.value.status, exc.value.code) == (status, answer.get("code") or f"HTTP{status}")


def test_a_bridge_errors_code_is_kept_to_what_a_notification_stores() -> None:
    """Notification.error_code holds 100 characters: a longer code failed the save."""
    answer = {"code": "E" * 300, "message": "no"}
    with (
        json_serving(lambda *_: (400, answer, {})) as url,
        pytest.raises(bridge.BridgeError) as exc,
    ):
        bridge.execute(f"{url}/bridge", secrets=("nk_test",), workflow_id="w", body={})
    assert exc.value.code == "E" * 100


# Express's own page for a route that is not there, and a proxy's or a host's page in
# front of the bridge: no JSON.
EXPRESS_404 = (
    b'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Error</title>'
    b"\n<style>body { color: red }</style>\n</head>\n<body>\n<pre>Cannot POST /api/novu</pre>"
    b"\n</body>\n</html>\n"
)
NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad "
    b"Gateway</h1></center>\r\n<hr><center>nginx/1.25.3</center>\r\n</body>\r\n</html>\r\n"
)
_ERROR_PAGE = (404, EXPRESS_404, {"content-type": "text/html"})
_PAGE_OK = (200, b"<html><body>Welcome to nginx!</body></html>", {"content-type": "text/html"})
NOTHING_THERE = " (nothing serves a bridge at this URL: check the client's bridge URL)"
# Django's page for a request it refuses before any view (DisallowedHost, with DEBUG off).
DJANGO_400 = (
    b'<!doctype html>\n<html lang="en">\n<head>\n  <title>Bad Request (400)</title>\n</head>'
    b"\n<body>\n  <h1>Bad Request (400)</h1><p></p>\n</body>\n</html>\n"
)
REFUSED_FIRST = (
    " (no bridge's answer, which is JSON: the web server refused the call first, as Django"
    " does when ALLOWED_HOSTS lacks the bridge URL's host)"
)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (_ERROR_PAGE, f"Cannot POST /api/novu{NOTHING_THERE}"),
        ((404, b"Cannot POST /api/novu", {}), f"Cannot POST /api/novu{NOTHING_THERE}"),
        ((405, b"", {}), f"Method Not Allowed{NOTHING_THERE}"),
        ((502, NGINX_502, {"content-type": "text/html"}), "502 Bad Gateway nginx/1.25.3"),
        ((400, DJANGO_400, {"content-type": "text/html"}), f"Bad Request (400){REFUSED_FIRST}"),
    ],
)
def test_an_error_page_that_is_no_json_is_the_errors_message_in_words(
    answer: tuple[int, bytes, dict[str, str]], message: str
) -> None:
    """It says more than the status's reason phrase ("Not Found"): the page's words, not
    its markup, which filled the reason with 500 characters of tags and styles; and for a
    path nothing serves (a wrong bridge URL, its trailing slash), what to check; for a 400
    of a page (Django's, for a Host its ALLOWED_HOSTS lacks), that the bridge never saw it."""
    with json_serving(lambda *_: answer) as url, pytest.raises(bridge.BridgeError) as exc:
        bridge.execute(f"{url}/api/novu", secrets=("nk_test",), workflow_id="w", body={})
    assert isinstance(exc.value, bridge.BridgeUnavailable) is (answer[0] == 502)
    assert (exc.value.code, exc.value.message) == (f"HTTP{answer[0]}", message)


def test_an_error_page_of_tags_never_closed_is_read_in_a_moment() -> None:
    """Its words were found by a regex that looked, from each `<`, for the end of a style
    (or of a tag): a page of `<style>` never closed (a hostile bridge's, or one the 64 KB
    read cut), as its square, 9 s of the worker's time for each answer, after the answer
    had arrived, which NORM_BRIDGE_TIMEOUT bounds."""
    page = b"<style>" * 9000 + b"Bad Gateway"  # 63 KB
    with (
        json_serving(lambda *_: (502, page, {"content-type": "text/html"})) as url,
        pytest.raises(bridge.BridgeUnavailable) as exc,
    ):
        started = time.monotonic()
        bridge.execute(f"{url}/api/novu", secrets=("nk_test",), workflow_id="w", body={})
    assert time.monotonic() - started < 1
    assert exc.value.message == "Bad Gateway"


def _garbage_bridge_echo(url: str) -> Notification:
    """One echo, not its last attempt, against the bridge at `url`; the notification after."""
    notification = NotificationFactory(trigger_event__client__bridge_url=f"{url}/bridge")
    BridgeSyncFactory(client=notification.client, bridge_url=notification.resource, flavour="norm")
    echo.echo_run(notification_id=str(notification.pk), final_attempt=False)  # no retry
    notification.refresh_from_db()
    return notification


@pytest.mark.django_db
@pytest.mark.parametrize(
    "answer", [[{"stepId": "mail", "type": "email"}], "done", None, 7], ids=str
)
def test_a_200_whose_json_is_no_object_fails_the_notification_at_once(
    answer: object, enqueued: Enqueued
) -> None:
    """Pinned: no retry of an answer that will not change, no step, no crash of the echo."""
    with json_serving(lambda *_: (200, answer, {})) as url:
        notification = _garbage_bridge_echo(url)

    assert (notification.status, notification.error_code) == ("failed", "BridgeInvalidResponse")
    assert notification.error == "the bridge answered 200 without a JSON object"
    assert notification.bridge_attempts == 0 and notification.internal_errors == 0
    assert not Step.objects.exists() and enqueued.calls == []


@pytest.mark.django_db
def test_a_200_that_is_no_json_fails_the_notification_at_once(enqueued: Enqueued) -> None:
    with json_serving(lambda *_: _PAGE_OK) as url:
        notification = _garbage_bridge_echo(url)

    assert (notification.status, notification.error_code) == ("failed", "BridgeInvalidResponse")
    assert not Step.objects.exists() and enqueued.calls == []


def _appending_slash(
    method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes, dict[str, str]]:
    """What Django's CommonMiddleware answers for a bridge served at `/api/norm/` and
    called without the slash (APPEND_SLASH): a 301 to the same path and query, slashed."""
    route, _, query = path.partition("?")
    return 301, b"", {"location": f"{route}/?{query}"}


def test_a_redirect_names_where_it_points_without_the_bridge_urls_password() -> None:
    """A relative Location is joined to the bridge URL, its credentials with it: the
    reason (stored, shown in the admin and the activity API) masks them as it masks the
    bridge URL itself."""
    with json_serving(_appending_slash) as url, pytest.raises(bridge.BridgeError) as exc:
        authed = url.replace("http://", "http://norm:s3cret-pass@", 1)
        bridge.discover(f"{authed}/api/norm", secrets=("nk_test",))

    assert exc.value.code == "BridgeRedirect"
    assert "s3cret-pass" not in exc.value.message
    assert "/api/norm/; norm follows none" in exc.value.message


def test_a_redirect_names_where_it_points_without_the_query() -> None:
    """A Django app serving its bridge at `/api/norm/`, registered as `/api/norm`: the
    reason said only that the bridge answered a redirect, not which URL to register."""
    with json_serving(_appending_slash) as url, pytest.raises(bridge.BridgeError) as exc:
        bridge.discover(f"{url}/api/norm", secrets=("nk_test",))

    assert exc.value.code == "BridgeRedirect"
    assert exc.value.message == (
        f"the bridge answered a redirect (301) to {url}/api/norm/; norm follows none: "
        "if the bridge is served there, make that the client's bridge URL"
    )


def test_a_call_is_signed_in_both_headers_novu_reads_with_the_first_key_at_norms_time() -> None:
    """Novu's framework reads `novu-signature`, its older versions `x-novu-signature`:
    both carry `t=<unix ms>,v1=<HMAC of "<t>.<body>">`, made with the newest key as the
    call goes (a GET signs `{}`); a health-check goes unsigned."""
    seen: list[tuple[str, bytes, dict[str, str]]] = []

    def respond(method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
        seen.append((method, body, {k.lower(): v for k, v in headers.items()}))
        return 200, {"status": "ok", "workflows": []}, {}

    with json_serving(respond) as url:
        before = time.time_ns() // 1_000_000
        bridge.execute(
            f"{url}/bridge",
            secrets=("nk_new", "nk_old"),
            workflow_id="w",
            body={"payload": {"n": 1}},
        )
        bridge.discover(f"{url}/bridge", secrets=("nk_new", "nk_old"))
        bridge.health_check(f"{url}/bridge")
        after = time.time_ns() // 1_000_000
    (post, sent, posted), (get, _, got), (_, _, health) = seen
    assert (post, get) == ("POST", "GET")
    for signed, headers in ((sent.decode(), posted), ("{}", got)):
        header = headers["novu-signature"]
        assert headers["x-novu-signature"] == header
        t, v1 = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", header).groups()  # type: ignore[union-attr]
        assert before <= int(t) <= after
        assert v1 == hmac.new(b"nk_new", f"{t}.{signed}".encode(), hashlib.sha256).hexdigest()
    assert "novu-signature" not in health and "x-novu-signature" not in health


def test_a_300_is_a_redirect_norm_follows_not_an_answer() -> None:
    """300 Multiple Choices is a redirect as 301 to 308 are: its JSON is no bridge's answer."""
    with (
        json_serving(lambda *_: (300, {"status": "ok", "workflows": []}, {})) as url,
        pytest.raises(bridge.BridgeError) as exc,
    ):
        bridge.discover(f"{url}/bridge", secrets=("nk_test",))
    assert exc.value.code == "BridgeRedirect"
    assert not isinstance(exc.value, bridge.BridgeUnavailable)


class _EarlyHints(BaseHTTPRequestHandler):
    """A bridge that sends interim answers (102 Processing, 103 Early Hints: Node's
    writeEarlyHints()) before its answer, over one kept-alive connection."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        for status in (103, 102, 103):
            self.send_response_only(status)
            self.send_header("link", "</style.css>; rel=preload; as=style")
            self.end_headers()
        body = b'{"status": "ok", "sdk": "norm-python"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_interim_answers_before_the_answer_are_passed_over() -> None:
    """A client must take any number of 1xx answers before the final one (RFC 9110,
    15.2); Python's HTTP client passes over 100 Continue alone. The first 103 was read as
    the bridge's answer, "the bridge answered 103 without a JSON object", and its
    notification failed for good though the bridge answered it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EarlyHints)
    serve_in_background(server)
    try:
        for _ in range(2):  # the second over the kept-alive connection
            answer = bridge.health_check(f"http://127.0.0.1:{server.server_port}/bridge")
            assert answer == {"status": "ok", "sdk": "norm-python"}
    finally:
        server.shutdown()
        server.server_close()


def test_only_a_401_refusing_the_key_is_signed_again_with_the_next_key() -> None:
    """A bridge refuses a signature with a 401: an answer of another status whose code
    happens to read as a refused key (a workflow's own error) is the call's answer, not
    a reason to call again with the next key, nor to name the key as what to change."""
    calls: list[str] = []

    def respond(method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
        calls.append(path)
        return 403, {"code": "SignatureMismatchError", "message": "no"}, {}

    with json_serving(respond) as url, pytest.raises(bridge.BridgeError) as exc:
        bridge.execute(
            f"{url}/bridge",
            secrets=("nk_new", "nk_old"),
            workflow_id="w",
            body={"payload": {"n": 1}},
        )
    assert len(calls) == 1
    assert (exc.value.status, exc.value.code, exc.value.message) == (
        403,
        "SignatureMismatchError",
        "no",
    )


def test_a_long_refusal_of_the_key_keeps_its_hint_within_the_bound() -> None:
    """The hint on a refused key is what to change: a bridge's long refusal is cut to
    leave room for it, within the MAX_MESSAGE a notification keeps."""
    refusal = {"code": "SignatureMismatchError", "message": "m" * 5000}
    with (
        json_serving(lambda *_: (401, refusal, {})) as url,
        pytest.raises(bridge.BridgeError) as exc,
    ):
        bridge.execute(
            f"{url}/bridge", secrets=("nk_test",), workflow_id="w", body={"payload": {"n": 1}}
        )
    assert len(exc.value.message) <= bridge.MAX_MESSAGE
    assert exc.value.message.endswith(bridge.KEY_HINTS["SignatureMismatchError"])


def test_an_unreachable_bridge_is_named_by_its_origin_without_its_credentials() -> None:
    """The reason names where norm called (stored, shown in the admin and the activity
    API): the scheme, host and port, not the URL's login, path or query."""
    with pytest.raises(bridge.BridgeUnavailable) as exc:
        bridge.discover("http://norm:s3cret-pass@127.0.0.1:9/bridge?token=t0k", secrets=("nk",))
    assert exc.value.code == "BridgeUnreachable"
    assert exc.value.message == "the bridge is unreachable: Connection refused (http://127.0.0.1:9)"


def test_a_cookie_one_bridge_set_goes_with_no_call_to_another() -> None:
    """The session is the process's, shared by every client: a cookie a bridge set (a
    load balancer's stickiness) went with the calls to any other bridge on that host."""
    cookies: list[str | None] = []

    def setting(method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
        return 200, {"status": "ok"}, {"set-cookie": "sticky=client-a; Path=/"}

    def recording(method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
        cookies.append({k.lower(): v for k, v in headers.items()}.get("cookie"))
        return 200, {"status": "ok"}, {}

    with json_serving(setting) as a, json_serving(recording) as b:
        bridge.health_check(f"{a}/bridge")
        bridge.health_check(f"{a}/bridge")
        bridge.health_check(f"{b}/bridge")
    assert cookies == [None]


def test_a_netrc_login_for_the_bridges_host_is_not_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests sends a netrc's login for a host as basic auth: the host's user's, not the
    client's, and to a bridge the client may not run. norm reads no netrc."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login norm password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    authorizations: list[str | None] = []

    def recording(method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
        authorizations.append({k.lower(): v for k, v in headers.items()}.get("authorization"))
        return 200, {"status": "ok"}, {}

    with json_serving(recording) as url:
        bridge.health_check(f"{url}/bridge")
    assert authorizations == [None]
