"""The OpenAPI schema: drf-spectacular's, with the error answers every operation can give, the
definition's body stated by the description that validates it, and a start's body stating every
bound the server checks (those JSON Schema has no keyword for as ``x-`` keywords and in words)."""
from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiSerializerExtension
from rest_framework.permissions import AllowAny

from detflow_site import conf
from detflow_site.api.fields import JSONValue
from detflow_site.api.representations import Error
from detflow_site.api.serializers import DefinitionBody, SignalRequest, StartRequest, Strict
from detflow_site.api.throttles import StartThrottle
from executions import operations
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
            if code == 429:
                response["description"] = (f"More than {conf.get().API_START_RATE} start requests by "
                                           "this user (DETFLOW_API_START_RATE); Retry-After says when "
                                           "to try again.")
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


class StrictSchema(OpenApiSerializerExtension):
    """A strict body (``serializers.Strict``): no field it does not declare (``additionalProperties``),
    and each JSON value nested at most ``DETFLOW_API_MAX_JSON_DEPTH`` levels (``x-maxDepth``: a
    scalar is 0 levels, ``[]`` and ``{}`` are 1)."""

    target_class = Strict
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        limit = conf.get().API_MAX_JSON_DEPTH
        for name, field in self.target.fields.items():
            if isinstance(field, JSONValue) and name in schema["properties"]:
                value = schema["properties"][name]
                value["x-maxDepth"] = limit
                value["description"] = (f"{value.get('description', '')} Nested at most {limit} "
                                        "levels (DETFLOW_API_MAX_JSON_DEPTH).").strip()
        return {**schema, "additionalProperties": False}


class StartSchema(StrictSchema):
    """``POST executions/``'s body: a strict body whose input is at most ``INPUT_CAP_BYTES`` of JSON
    (``x-maxJSONBytes``, as stored: compact, UTF-8) and which is at most ``DETFLOW_API_MAX_BODY_BYTES``
    as sent (``x-maxBodyBytes``; 413 past it)."""

    target_class = StartRequest
    match_subclasses = False
    priority = 1

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        from detflow_site.api.views import RECEIVE  # DRF's settings import this module while views load

        schema = super().map_serializer(auto_schema, direction)
        body = conf.get().API_MAX_BODY_BYTES
        cap = operations.INPUT_CAP_BYTES
        schema["x-maxBodyBytes"] = body
        schema["description"] = (
            f"A start. The body is at most {body} bytes (DETFLOW_API_MAX_BODY_BYTES; larger answers "
            "413); a field not listed here is refused.")
        value = schema["properties"]["input"]
        value["x-maxJSONBytes"] = cap
        value["description"] += (
            f" At most {cap} bytes as compact UTF-8 JSON. A workflow whose steps use "
            f"{RECEIVE} refuses input.path (upload the file with POST files/).")
        return schema


class SignalSchema(StrictSchema):
    """A signal's body: a strict body whose payload is at most ``SIGNAL_CAP_BYTES`` of JSON
    (``x-maxJSONBytes``, as stored: compact, UTF-8)."""

    target_class = SignalRequest
    match_subclasses = False
    priority = 1

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema = super().map_serializer(auto_schema, direction)
        cap = operations.SIGNAL_CAP_BYTES
        value = schema["properties"]["payload"]
        value["x-maxJSONBytes"] = cap
        value["description"] += (
            f" At most {cap} bytes as compact UTF-8 JSON; an execution keeps at most "
            f"{operations.MAX_SIGNALS} signals, and their payloads count in its outputs' budget.")
        return schema
