"""URL routes: the REST API under /api/v1/ and the Django admin."""
from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("api/v1/", include(("executions.api.urls", "api"))),
    path("admin/", admin.site.urls),
]
