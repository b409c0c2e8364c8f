"""The OpenAPI schema: drf-spectacular's, with the error answers every operation can give, and the
definition's body stated by the description that validates it."""
from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiSerializerExtension
from rest_framework.permissions import AllowAny

from executions.api.representations import Error
from executions.api.serializers import DefinitionBody
from executions.api.throttles import StartThrottle
from workflows import spec

#: What each error status means, for the schema.
ERRORS = {
    400: "The request is invalid; `fields` names what and why.",
    401: "No credentials, or bad ones.",
    403: "The user lacks the role this needs.",
    404: "No such workflow, version or execution.",
    409: "The execution's state does not allow this, or an Idempotency-Key was used with another body.",
    413: "The body is larger than the configured limit.",
    415: "The body's content type is not the one this operation reads.",
    429: "Too many start requests; Retry-After says when to try again.",
}


class AutoSchema(openapi.AutoSchema):
    """Documents the error responses (the one ``Error`` body) of each operation."""

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for code in self._error_codes():
            response = self._get_response_for_code(Error, str(code), direction=direction)
            response["description"] = ERRORS[code]
            responses.setdefault(str(code), response)
        return responses

    def _error_codes(self) -> list[int]:
        if any(isinstance(p, AllowAny) for p in self.view.get_permissions()):
            return []
        codes = [400, 401, 403]
        if "{" in self.path:
            codes.append(404)
        if self.method == "POST":
            codes += [409, 413, 415]
        if any(isinstance(t, StartThrottle) for t in self.view.get_throttles()):
            codes.append(429)
        return sorted(codes)


class DefinitionSchema(OpenApiSerializerExtension):
    """``POST workflows/``'s body: ``workflows.spec.DEFINITION``, which ``parse_workflow`` checks."""

    target_class = DefinitionBody

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        return spec.DEFINITION.openapi()
