from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from workflows.demo import bridge_view

urlpatterns = [
    path("admin/", admin.site.urls),
    # The demo workflows, served by norm itself as a bridge (BRIDGE.md).
    path("bridge", bridge_view, name="demo-bridge"),
    path("", include("notify.urls")),
    path("", include("subscribers.urls")),
    path("", include("workflows.urls")),
    path("", include("messaging.urls")),
]
