from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularSwaggerView

from workflows.demo import bridge_view

handler400 = "config.errors.bad_request"
handler404 = "config.errors.page_not_found"

_READ_ONLY = ["get", "head"]

urlpatterns = [
    path("admin/", admin.site.urls),
    # APPEND_SLASH is off for the API, so the admin's address as the README and
    # rundemo print it, without the slash, is redirected by hand (by name: under a
    # path prefix, /novu/admin goes on to /novu/admin/).
    path("admin", RedirectView.as_view(pattern_name="admin:index")),
    # The demo workflows, served by norm itself as a bridge (BRIDGE.md).
    path("bridge", bridge_view, name="demo-bridge"),
    # GET (and HEAD) only: DRF answers an OPTIONS with a description of the view, which
    # the docs page's HTML renderer has no template for (a 500 anyone could ask for).
    path(
        "v1/openapi.json",
        SpectacularJSONAPIView.as_view(
            authentication_classes=[], permission_classes=[], http_method_names=_READ_ONLY
        ),
        name="openapi",
    ),
    path(
        "docs",
        SpectacularSwaggerView.as_view(
            url_name="openapi",
            authentication_classes=[],
            permission_classes=[],
            http_method_names=_READ_ONLY,
        ),
        name="docs",
    ),
    # The address rundemo's banner gives: a new user opening it got a bare 404.
    path("", RedirectView.as_view(pattern_name="docs", http_method_names=_READ_ONLY)),
    path("", include("notify.urls")),
    path("", include("subscribers.urls")),
    path("", include("workflows.urls")),
    path("", include("messaging.urls")),
]

if settings.NORM_BENCH_ENDPOINTS:
    from bench.urls import urlpatterns as bench_urlpatterns

    urlpatterns += bench_urlpatterns
