"""One error shape for the whole API, in one place.

Novu's clients parse `{statusCode, timestamp, path, message, error}`; a 400 under
/v1/events also carries `type` and `errors: [{field, message}]`, and a 500 an
`errorId`. Domain code raises ApiError; DRF's own exceptions are mapped here too.
"""

from __future__ import annotations

import logging
import math
import uuid
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.core.exceptions import DisallowedHost, RequestDataTooBig, TooManyFieldsSent
from django.db import DataError, IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import Model
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views import defaults
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers
from rest_framework.response import Response

from config.dates import TimestampField, iso_z
from config.db import bounded
from config.logs import Quieted, said_already

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A request norm refuses, with an HTTP status and a machine-readable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        logged: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []
        self.headers = headers or {}
        # More of the answer, beside the error's fields: novu-py reads a 409 to
        # `failIfExists` as the object that exists.
        self.body = body or {}
        # Said in the log already, a line a minute (a 5xx that recurs for every request
        # while its cause lasts): not Django's ERROR for each request too.
        self.logged = logged


def error_body(status: int, path: str, message: Any, **extra: Any) -> dict[str, Any]:
    return {
        "statusCode": status,
        "timestamp": iso_z(timezone.now()),
        "path": path,
        "message": message,
        "error": HTTPStatus(status).phrase,
        **extra,
    }


def _under_api(request: HttpRequest) -> bool:
    """Whether the route is the API's: /v1 and /v2 themselves too, what a client asks
    for an id `..` (httpx and requests resolve dot segments)."""
    route = request.path_info
    return route.startswith(("/v1/", "/v2/")) or route in ("/v1", "/v2")


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: a path no API view serves answers Novu's error body under /v1 and
    /v2 (novu-py raises its typed ErrorDto only for JSON), Django's page elsewhere.
    The route is path_info: `path` holds the prefix of a deployment under one (/novu)."""
    if _under_api(request):
        # Named, as Novu's "Cannot GET /v1/..." does: a bare "Not found" for an endpoint of
        # Novu's that norm lacks (novu-py's preferences, online status) read as the
        # subscriber or message in its path not found.
        message = f"Cannot {request.method} {request.path}: norm has no such endpoint"
        if request.path_info.endswith("/"):
            message += " (its paths end without a slash)"
        body = error_body(404, request.get_full_path(), message, code="not_found")
        return JsonResponse(body, status=404)
    return defaults.page_not_found(request, exception)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400: under /v1 and /v2, Novu's error body, as for a 404. A host left out of
    ALLOWED_HOSTS (a proxy passing its own name on) answered every call with Django's
    page, "Bad Request (400)", and the reason only in the server's log."""
    if not _under_api(request):
        return defaults.bad_request(request, exception)
    message, code = "Bad request", "bad_request"
    if isinstance(exception, DisallowedHost):
        host = bounded(request.META.get("HTTP_HOST", ""), 255)  # get_host() raises again
        message = f"This server does not serve the host {host}: add it to ALLOWED_HOSTS"
        code = "host_not_allowed"
    body = error_body(400, request.get_full_path(), message, code=code, type=code, errors=[])
    return JsonResponse(body, status=400)


def _flatten(detail: Any, prefix: str = "") -> list[dict[str, str]]:
    if isinstance(detail, dict):
        out: list[dict[str, str]] = []
        for key, value in detail.items():
            # An object's error as a whole (non_field_errors) belongs to the object itself:
            # markAs's `mark` without `seen` or `read` is keyed `mark`, not "".
            if key == "non_field_errors":
                field = prefix
            else:
                field = f"{prefix}.{key}" if prefix else str(key)
            out.extend(_flatten(value, field))
        return out
    if isinstance(detail, list):
        return [e for item in detail for e in _flatten(item, prefix)]
    return [{"field": prefix, "message": str(detail)}]


def validation_message(exc: exceptions.ValidationError) -> str:
    """A serializer's errors as one readable line: `to: This field is required.`"""
    return "; ".join(
        # Not again before a message that names its field already, as class-validator's
        # (Novu's) do: "firstName must be a string", not "firstName: firstName must...".
        f"{e['field']}: {e['message']}"
        if e["field"] and not e["message"].startswith(f"{e['field']} ")
        else e["message"]
        for e in _flatten(exc.detail)
    )


def body_too_large() -> ApiError:
    limit = settings.NORM_MAX_BODY_BYTES
    return ApiError(413, "payload_too_large", f"The body exceeds {limit} bytes")


# The authentication's refusal of a key, and the answer to a write whose client was
# deleted while it ran: to the caller, the same revoked key.
REVOKED_KEY = "Unauthorized: API key unknown or revoked"
# The scheme of `Authorization: ApiKey <key>`, which every 401 names in its
# WWW-Authenticate, as RFC 9110 asks (DRF's own handler sends it; this one left it out).
API_KEY_SCHEME = "ApiKey"


def revoked_key() -> ApiError:
    return ApiError(
        401,
        "authentication_failed",
        REVOKED_KEY,
        headers={"WWW-Authenticate": API_KEY_SCHEME},
    )


def _client_deleted(request: Any) -> bool:
    """Whether the request's client (its authenticated user) was deleted since its key
    was looked up. A write for it was then refused by a foreign key, at its INSERT or
    at commit, as the client's delete (notify.services.clients_delete) locks its row."""
    client = getattr(request, "user", None)
    db = transaction.get_connection()
    if not isinstance(client, Model) or (db.in_atomic_block and db.needs_rollback):
        return False  # no client, or a transaction that can read nothing more
    return not type(client)._default_manager.filter(pk=client.pk).exists()


# Every request while the database is away (each client's retries): a line a minute.
_database_away = Quieted()
# Every request carrying a value PostgreSQL refuses, the caller's to send at will (a NUL in
# a path, over and over): a line a minute, as Django's own line for each 4xx
# (config.logs.ClientErrorsQuieted), which the access log has already.
_unstorable = Quieted()


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    request = context.get("request")
    path = request.get_full_path() if request is not None else ""
    exc = _known_cause(exc, request, path)
    error = _api_error(exc, request)
    if error is None:
        error_id = str(uuid.uuid4())
        logger.exception("unhandled API error %s on %s", error_id, path)
        return Response(
            error_body(500, path, "Internal server error", errorId=error_id), status=500
        )
    response = Response(
        error_body(error.status, path, error.message, **_error_fields(error)),
        status=error.status,
        headers=error.headers,
    )
    if isinstance(exc, ApiError) and exc.logged:
        said_already(response)  # a "Service Unavailable" or "Bad Gateway" a line a minute
    return response


def _known_cause(exc: Exception, request: Any, path: str) -> Exception:
    """The ApiError that answers `exc`, an error of Django's or the database's whose cause
    is known: the request (a value, a body, a query too much), its client deleted
    meanwhile, the database away. Any other `exc` as it is."""
    if isinstance(exc, IntegrityError) and _client_deleted(request):
        # The 401 its key's check answers once the delete has committed, not a 500 that
        # clients retry (to the same 401).
        exc = revoked_key()
    if isinstance(exc, Http404):
        exc = ApiError(404, "not_found", "Not found")
    if isinstance(exc, RequestDataTooBig):  # a body read before the parser saw it
        exc = body_too_large()
    elif isinstance(exc, TooManyFieldsSent):
        # Django's 400 for a query of over DATA_UPLOAD_MAX_NUMBER_FIELDS parameters (novu-py
        # repeats a list's name per item), raised where a view first reads the query.
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        exc = ApiError(400, "invalid_query", f"The query has more than {limit} parameters")
    if isinstance(exc, DataError):
        # PostgreSQL refuses a value the request carried (a NUL character in a path,
        # query or JSON string; an id beyond bigint): the request is at fault.
        if (held := _unstorable.due("unstorable")) is not None:
            logger.warning(
                "unstorable value on %s: %s (%d more requests answered 400 for one since "
                "the last such line)",
                path,
                exc,
                held,
            )
        exc = ApiError(400, "invalid_value", "A value in the request cannot be stored or searched")
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is away (restarting, failing over): nothing was accepted, and the
        # same request will do once it is back, so a 503 that clients retry, not a 500.
        exc = _database_unavailable(exc, path)
    return exc


def _database_unavailable(exc: OperationalError | InterfaceError, path: str) -> ApiError:
    """The 503 of a request the database's absence failed, said in the log a line a
    minute."""
    if (held := _database_away.due("database")) is not None:
        logger.warning(
            "database unavailable on %s: %s (%d more requests answered 503 for it since "
            "the last such line)",
            path,
            exc,
            held,
        )
    return ApiError(
        503,
        "service_unavailable",
        "The database is unavailable; nothing was stored. Try again shortly",
        headers={"Retry-After": "5"},
        logged=True,
    )


def _api_error(exc: Exception, request: Any) -> ApiError | None:
    """The ApiError that answers `exc`: itself, or one with the status, code and message of
    DRF's exception. None for any other, a bug."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, exceptions.ValidationError):
        # As in Novu: a body that fails its schema is a 422 (novu-py's typed
        # ValidationErrorDto), except under /v1/events, whose clients expect a 400.
        # A bad query string stays a 400.
        as_422 = (
            request is not None
            and request.method != "GET"
            and not request.path_info.startswith("/v1/events")
        )
        errors = _flatten(exc.detail)
        return ApiError(
            422 if as_422 else 400, "invalid_request", validation_message(exc), errors=errors
        )
    if isinstance(exc, exceptions.APIException):
        status, headers = exc.status_code, {}
        if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
            status = 401
            headers["WWW-Authenticate"] = API_KEY_SCHEME
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            # The seconds the message says (DRF rounds the throttle's wait up): a second
            # more here told a client one thing in the header and another in the body.
            headers = {"Retry-After": str(max(1, math.ceil(exc.wait)))}
        return ApiError(status, exc.default_code, str(exc.detail), headers=headers)
    return None


def _error_fields(error: ApiError) -> dict[str, Any]:
    """The body's fields beside Novu's five: the error's own, its code, and on a 400 or a
    422 its errors, each as Novu's clients read them."""
    extra: dict[str, Any] = {**error.body, "code": error.code}
    if error.status == 400:
        extra["type"] = error.code
        extra["errors"] = error.errors
    elif error.status == 422:
        # Every message of a field, as Novu lists them: a second one (an email both
        # too long and malformed) replaced the first.
        by_field: dict[str, dict[str, list[str]]] = {}
        for e in error.errors:
            by_field.setdefault(e["field"], {"messages": []})["messages"].append(e["message"])
        extra["errors"] = by_field
    return extra


class ErrorSerializer(serializers.Serializer):
    """The error body, for the OpenAPI schema only (the handler above builds it)."""

    class FieldErrorSerializer(serializers.Serializer):
        field = serializers.CharField(allow_blank=True)
        message = serializers.CharField()

    statusCode = serializers.IntegerField()
    timestamp = TimestampField()
    path = serializers.CharField()
    message = serializers.CharField()
    error = serializers.CharField()
    code = serializers.CharField(required=False, help_text="Machine-readable reason")
    type = serializers.CharField(required=False, help_text="On a 400: the code again")
    errors = FieldErrorSerializer(many=True, required=False, help_text="On a 400: each field")
    errorId = serializers.CharField(required=False, help_text="On a 500: look it up in the logs")


class ValidationErrorSerializer(serializers.Serializer):
    """The 422 body, for the OpenAPI schema only: `errors` keyed by field, as in Novu."""

    class FieldMessagesSerializer(serializers.Serializer):
        messages = serializers.ListField(child=serializers.CharField())

    statusCode = serializers.IntegerField()
    timestamp = TimestampField()
    path = serializers.CharField()
    message = serializers.CharField()
    error = serializers.CharField()
    code = serializers.CharField(required=False)
    errors = serializers.DictField(child=FieldMessagesSerializer())


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """`@extend_schema(responses=...)` entries for the errors an operation answers, with
    the 401/403 of the API key check on every operation."""
    return {
        status: OpenApiResponse(
            ValidationErrorSerializer if status == 422 else ErrorSerializer,
            description=HTTPStatus(status).phrase,
        )
        for status in sorted({401, 403, *statuses})
    }
