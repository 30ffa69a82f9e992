from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed, NotAuthenticated
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from config.errors import API_KEY_SCHEME, REVOKED_KEY, ApiError
from notify import selectors
from notify.models import Client


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: ApiKey <secret key>`, as Novu's clients send it."""

    def authenticate(self, request: Request) -> tuple[Client, str] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            raise NotAuthenticated(
                "Unauthorized: API key missing; send 'Authorization: ApiKey <key>'"
            )
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "apikey" or not key.strip():
            raise AuthenticationFailed("Unauthorized: use 'Authorization: ApiKey <key>'")
        client = selectors.client_by_api_key(key=key.strip())
        if client is None:
            raise AuthenticationFailed(REVOKED_KEY)
        if not client.is_active:
            raise ApiError(403, "client_inactive", "This client is inactive")
        return client, key.strip()

    def authenticate_header(self, request: Request) -> str:
        return API_KEY_SCHEME


class IsClient(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, Client)


class ApiKeySchemeExtension(OpenApiAuthenticationExtension):
    """Names ApiKeyAuthentication in the OpenAPI schema (registered on import)."""

    target_class = ApiKeyAuthentication
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`ApiKey <secret key>`",
        }
