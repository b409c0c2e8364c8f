"""URL routes: the landing page, the REST API under /api/v1/, the Django admin, and the probes and metrics."""
from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from detflow_site import landing
from detflow_site.api import health
from detflow_site.api.insight import InsightView

urlpatterns = [
    path("", landing.index, name="landing"),
    # Before the API's routes, whose last one answers every other path under api/v1/ with a 404.
    path("api/v1/executions/<str:execution_id>/insight/", InsightView.as_view(), name="execution-insight"),
    path("api/v1/", include(("detflow_site.api.urls", "api"))),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
]
