"""``GET schema/`` and ``GET docs/``: drf-spectacular's views, refusing in the API's JSON error shape.

Apart from ``openapi`` (the schema class), which DRF's settings import while these views are built.
"""
from __future__ import annotations

from typing import Any

from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.renderers import JSONRenderer


class JSONErrors:
    """Render a refusal (a 405, a 406) as the API's JSON error body, and an OPTIONS answer as JSON,
    rather than in the view's own format: the schema's YAML would hide the error shape, and the docs
    page's template can render neither (a POST or an OPTIONS to it was a 500)."""

    def finalize_response(self, request: Any, response: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(response, "exception", False) or request.method == "OPTIONS":
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]


class SchemaView(JSONErrors, SpectacularAPIView):
    """The OpenAPI document."""


class DocsView(JSONErrors, SpectacularSwaggerView):
    """The Swagger UI page."""
