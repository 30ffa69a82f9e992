from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import TooManyFieldsSent
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest, get_bytes_from_wsgi
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse, QueryDict
from django.utils.functional import cached_property

from config.logs import Quieted, said_already

logger = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def chunked_bodies(app: WSGIApp) -> WSGIApp:
    """WSGI middleware: a body sent chunked, with no Content-Length (a client streaming
    it: Go's when it cannot tell the length, Node's fetch of a stream), read whole and
    its length set. Django reads a body up to its Content-Length, so such a body was
    read as none: a trigger was a 400 "name is required", a subscriber's PATCH changed
    nothing and answered 200, a mark of some notifications marked them all. gunicorn
    decodes the chunks (wsgi.input_terminated); a server that does not (runserver) leaves
    them undecoded, and such a request is a 411."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not environ.get("CONTENT_LENGTH"):
            if not environ.get("wsgi.input_terminated"):
                return _length_required(environ, start_response)
            # One byte past the limit: the parser's 413 then, as for any body over it.
            body = environ["wsgi.input"].read(settings.NORM_MAX_BODY_BYTES + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return app(environ, start_response)

    return wrapped


def _length_required(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    from config.errors import error_body  # it reads the settings: not at import

    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    message = "This server cannot read a chunked body: send it with a Content-Length"
    answer = error_body(411, path, message, code="length_required")
    body = json.dumps(answer, separators=(",", ":")).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response("411 Length Required", headers)
    return [body]


class Request(WSGIRequest):
    """Django's request, its query read as UTF-8 whatever charset the Content-Type names
    (the body's), as Novu's Express reads it. Django decodes the query with that charset,
    and at once, while it builds the request, outside every handler of errors: a
    `charset=utf-8` beside a query of over DATA_UPLOAD_MAX_NUMBER_FIELDS parameters, or a
    charset that is no text encoding (base64) beside any query, was gunicorn's bare 500;
    `charset=utf-7` made a lone surrogate of `%2B2AA-`, which PostgreSQL's driver cannot
    encode (a 500 at each lookup by it)."""

    @property
    def encoding(self) -> str | None:
        return self._encoding

    @encoding.setter
    def encoding(self, value: str | None) -> None:
        self._encoding = value
        if hasattr(self, "_post"):
            del self._post

    @cached_property
    def GET(self) -> QueryDict:
        return QueryDict(get_bytes_from_wsgi(self.environ, "QUERY_STRING", ""), encoding="utf-8")


class Handler(WSGIHandler):
    request_class = Request


# Novu's path for its API's health check.
HEALTH_CHECK_PATH = "/v1/health-check"


def collapse_slashes(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Serve `//v1/...` as `/v1/...`: novu 1.14 keeps the base URL's trailing slash.
    Only the leading slashes: the path is decoded, and further on a "//" is an id's
    own (a transactionId that is a URL, sent as is or with %2F), which collapsed named
    another trigger to read or cancel."""

    def middleware(request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith("//"):
            collapsed = "/" + request.path_info.lstrip("/")
            # `path` is the script prefix (a deployment under /novu) and then path_info.
            request.path = request.path.removesuffix(request.path_info) + collapsed
            request.path_info = collapsed
        return get_response(request)

    return middleware


def bracket_lists(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Read `severity[]=high` (and `severity[0]=high`, `tags[and][0][or][]=a`) as
    `severity=high`: Novu's API parses its query as Express does (qs), and what a
    JavaScript caller sends by default (axios, @novu/js) are those forms. Unread, such a
    filter narrowed nothing, or one norm refuses was not refused: every row answered."""

    def middleware(request: HttpRequest) -> HttpResponse:
        try:
            bracketed = [k for k in request.GET if "[" in k and not k.startswith("[")]
        except TooManyFieldsSent:
            # Left for the view to meet again, where the API's handler answers its 400.
            return get_response(request)
        if bracketed:
            query = request.GET.copy()
            for key in bracketed:
                query.setlistdefault(key.partition("[")[0], []).extend(request.GET.getlist(key))
            query._mutable = False
            request.GET = query
        return get_response(request)

    return middleware


# Where config.urls serves the admin (within the script prefix, as path_info is).
ADMIN_PATH = "/admin/"


def admin_nul_refused(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """A 400 for an admin page asked with a NUL character in its query (a list filter's
    value, an autocomplete's term, edited into the URL): PostgreSQL cannot compare text
    with it, and its refusal was a 500. The API answers that refusal with its own 400
    (config.errors); Django's search box refuses one itself."""

    def middleware(request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(ADMIN_PATH):
            try:
                values = [v for _, vs in request.GET.lists() for v in vs]
            except TooManyFieldsSent:
                return get_response(request)  # Django's own 400, where the view reads it
            if any("\x00" in v for v in values):
                return HttpResponseBadRequest("A value in the query holds a NUL character.")
        return get_response(request)

    return middleware


def health_check(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """`GET /v1/health-check` for compose's healthcheck and Kubernetes' probes: 200 while
    the database answers, 503 when it does not (a trigger could not be stored). Answered
    before Django checks the Host header, as a probe calls the container's or pod's own
    address, which ALLOWED_HOSTS does not list: a healthy norm would answer it 400."""

    def middleware(request: HttpRequest) -> HttpResponse:
        if request.path_info == HEALTH_CHECK_PATH and request.method in ("GET", "HEAD"):
            return _health()
        return get_response(request)

    return middleware


# Every probe while the database is away or behind (compose's every 15 s, Kubernetes'
# liveness and readiness probes of each pod): a line a minute, as the API's 503s.
_unhealthy = Quieted()


def _health() -> HttpResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        unapplied = _unapplied_migrations()
    except DatabaseError as exc:
        _warn("down", f"the database does not answer: {exc}")
        return _unhealthy_answer({"db": {"status": "down"}})
    if unapplied:
        # Up, but without this release's tables or columns: every trigger a 500, while a
        # health check that only asked for SELECT 1 said ok (gunicorn started on a fresh
        # PostgreSQL, or a new release before its migrate).
        message = f"{unapplied} migration(s) not applied: run manage.py migrate"
        _warn("behind", message)
        return _unhealthy_answer({"db": {"status": "up", "message": message}})
    return JsonResponse({"data": {"status": "ok", "info": {"db": {"status": "up"}}}})


def _warn(state: str, message: str) -> None:
    if (held := _unhealthy.due(state)) is not None:
        logger.warning(
            "health check: %s (%d more probes answered 503 for it since the last such line)",
            message,
            held,
        )


def _unhealthy_answer(error: dict[str, Any]) -> HttpResponse:
    # Said by _warn, a line a minute.
    return said_already(JsonResponse({"data": {"status": "error", "error": error}}, status=503))


_migrated = False  # this process found every migration of its code applied once


def _unapplied_migrations() -> int:
    """How many of this code's migrations the database has not applied; not asked again
    once none (3 ms a probe): a running release's migrations are not unapplied."""
    global _migrated
    if _migrated:
        return 0
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    _migrated = not plan
    return len(plan)
