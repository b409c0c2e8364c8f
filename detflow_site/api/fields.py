"""Strict request fields (a string is a string: no coercion of numbers or "true"), JSON values with a
nesting limit, and the response field for JSON stored as text."""
from __future__ import annotations

import json
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from detflow_site import conf


class Text(serializers.CharField):
    """A JSON string, nothing else."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class Integer(serializers.IntegerField):
    """A JSON integer, nothing else (no ``true``, ``"3"`` or ``3.0``)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class Flag(serializers.BooleanField):
    """A JSON ``true`` or ``false``, nothing else."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


@extend_schema_field(OpenApiTypes.ANY)
class JSONValue(serializers.JSONField):
    """Any JSON value nested at most ``DETFLOW_API_MAX_JSON_DEPTH`` levels."""

    def to_internal_value(self, data: Any) -> Any:
        limit = conf.get().API_MAX_JSON_DEPTH
        if depth(data, limit) > limit:
            raise serializers.ValidationError(
                f"is nested more than {limit} levels deep (DETFLOW_API_MAX_JSON_DEPTH)", code="too_deep"
            )
        return super().to_internal_value(data)


@extend_schema_field(OpenApiTypes.ANY)
class JSONText(serializers.Field):
    """A JSON value stored as text, shown decoded."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("read_only", True)
        super().__init__(**kwargs)

    def to_representation(self, value: str) -> Any:
        return json.loads(value)


def depth(value: Any, stop: int) -> int:
    """Return how deep ``value`` nests (a scalar is 0, ``[]`` is 1); counting stops past ``stop``."""
    deepest = 0
    level: list[Any] = [value]
    while level and deepest <= stop:
        containers = [v for v in level if isinstance(v, (dict, list))]
        if not containers:
            break
        deepest += 1
        level = [child for c in containers for child in (c.values() if isinstance(c, dict) else c)]
    return deepest
