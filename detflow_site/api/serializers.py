"""Request bodies: strict (unknown fields and wrong types are refused, naming the field)."""
from __future__ import annotations

from typing import Any

from rest_framework import serializers

from detflow_site.api.fields import Flag, Integer, JSONValue, Text

#: Largest version number a request may name (MongoDB integers are 64-bit; no workflow gets near).
MAX_VERSION = 2**31 - 1


class Strict(serializers.Serializer):
    """A serializer that refuses fields it does not declare."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields), key=str)
            if unknown:
                allowed = ", ".join(self.fields)
                raise serializers.ValidationError(
                    {str(name): [serializers.ErrorDetail(f"unknown field; allowed: {allowed}",
                                                         code="unknown_field")] for name in unknown}
                )
        return super().to_internal_value(data)


class StartRequest(Strict):
    """``POST executions/``: a start. Its schema (``openapi.StartSchema``) also states the bounds
    the server checks past these fields: the body's bytes, the input's bytes and nesting, and the
    ``Idempotency-Key``."""

    # Not trimmed: a name has no spaces, and ``max_length`` then bounds what was sent.
    workflow = Text(max_length=100, trim_whitespace=False, help_text="Name of a registered workflow.")
    version = Integer(required=False, min_value=1, max_value=MAX_VERSION,
                      help_text="Version to pin; the latest when absent.")
    input = JSONValue(required=False, allow_null=True, default=None,
                      help_text="Any JSON value; handlers read it as ctx.input.")


class ActionRequest(Strict):
    """``POST executions/{id}/cancel/``."""

    reason = Text(max_length=1000, help_text="Why; recorded in the execution's history.")
    dry_run = Flag(required=False, default=False,
                   help_text="Return what would change, and change nothing.")


class RetryRequest(ActionRequest):
    """``POST executions/{id}/retry/``."""

    input = JSONValue(required=False, allow_null=True,
                      help_text="A new input for the failed step alone; the difference is recorded. "
                                "Refused for a failed compensation (it runs with its step's input).")


class SkipRequest(ActionRequest):
    """``POST executions/{id}/skip/``."""

    step = Text(required=False, max_length=100, help_text="The failed step (checked when given).")
    output = JSONValue(required=False, allow_null=True, default=None,
                       help_text="Stands in for the skipped step's output. Refused for a failed "
                                 "compensation (a skipped compensation has none).")


class CompensateRequest(ActionRequest):
    """``POST executions/{id}/compensate/``."""

    include_skipped = Flag(required=False, default=False,
                           help_text="Also undo the steps an operator skipped (when they name a "
                                     "compensation).")


class SignalRequest(Strict):
    """``POST executions/{id}/signals/{name}/``."""

    payload = JSONValue(required=False, allow_null=True, default=None,
                        help_text="Any JSON value (default null): the output of the wait step that "
                                  "takes the signal.")
    reason = Text(required=False, allow_blank=True, default="", max_length=1000,
                  help_text="Why; recorded in the execution's history.")


class DefinitionBody(serializers.Serializer):
    """``POST workflows/``: its schema is ``workflows.spec.DEFINITION``'s (``openapi.DefinitionSchema``),
    the same description that ``workflows.definitions`` validates the body with."""
