"""The landing page at ``/``: where the admin, the API's docs and schema, and the probes are.

Anyone may see it: it links, it shows no data (no execution, workflow or setting), so it reads no
store. Like the probes it answers any method with the same page and changes nothing.
"""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt  # nothing to forge: it reads nothing and writes nothing
def index(request: HttpRequest) -> HttpResponse:
    """Return the landing page: links to the admin, the API's docs and schema, and health."""
    links = [
        ("admin", reverse("admin:index"), "Admin console",
         "watch, retry, skip, cancel and pause executions (signing in with the viewers or operators role)"),
        ("docs", reverse("api:docs"), "API docs", "the REST API under /api/v1/, to try from the browser"),
        ("schema", reverse("api:schema"), "OpenAPI schema", "the API's machine-readable description"),
        ("health", reverse("api:health"), "Health", "the API's health check (MongoDB and Redis)"),
        ("healthz", reverse("healthz"), "Liveness probe", "the process answers"),
        ("readyz", reverse("readyz"), "Readiness probe", "the process can reach its store and broker"),
    ]
    return render(request, "detflow/landing.html", {"links": links})
