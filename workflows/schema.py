"""A description of plain data that both checks it and states it as a JSON Schema.

A :class:`Value` tree says what a JSON value may be (its type, bounds, pattern, fields); ``check``
refuses data outside it with a :class:`DefinitionError` naming the field, and ``openapi`` states the
same bounds in OpenAPI 3.0's dialect of JSON Schema. One tree, so the server can enforce no bound
that its schema does not show (``workflows.spec.DEFINITION`` is the tree of a definition).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workflows.errors import DefinitionError

#: JSON types a ``Value`` may have.
TYPES = ("object", "array", "string", "integer", "number", "any")


@dataclass(frozen=True)
class Value:
    """What one JSON value may be; ``where`` in messages is its dotted path (``steps[0].retry``)."""

    type: str
    #: What the value is for, in the schema.
    help: str = ""
    #: The value taken when the field is absent (``None``: no default stated).
    default: Any = None
    #: ``null`` is allowed as well.
    nullable: bool = False
    #: Numbers: inclusive bounds, and an exclusive lower bound; ``unit`` follows them in refusals.
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    unit: str = ""
    #: Strings: length bounds, and a pattern the whole string matches (``pattern_text`` says it in words).
    min_length: int | None = None
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None
    pattern_text: str = ""
    #: Arrays: what each item is, how many there may be (``noun`` names them) and whether they differ.
    items: Value | None = None
    min_items: int | None = None
    max_items: int | None = None
    noun: str = "items"
    unique: bool = False
    #: Objects: their fields (no others are allowed) and the ones that must be present.
    properties: Mapping[str, Value] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    #: Objects whose fields are free (a document of its own, such as a JSON Schema): ``properties``
    #: unused, any field allowed.
    open: bool = False

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"unknown JSON type {self.type!r}")

    def check(self, data: Any, where: str) -> None:
        """Raise :class:`DefinitionError` naming the first field of ``data`` this does not allow."""
        if data is None and self.nullable:
            return
        getattr(self, f"_check_{self.type}")(data, where)

    def _check_any(self, data: Any, where: str) -> None:
        """Any JSON value: the definition as a whole was checked to be JSON."""

    def _check_object(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise DefinitionError(where, "must be an object")
        if self.open:
            return
        unknown = sorted(set(data) - set(self.properties), key=str)
        if unknown:
            raise DefinitionError(_child(where, str(unknown[0])),
                                  f"unknown field; allowed: {', '.join(sorted(self.properties))}")
        for name, value in self.properties.items():
            if name in data:
                value.check(data[name], _child(where, name))
            elif name in self.required:
                raise DefinitionError(_child(where, name), "is required")

    def _check_array(self, data: Any, where: str) -> None:
        if not isinstance(data, list):
            raise DefinitionError(where, f"must be a list of {self.noun}")
        if self.min_items and len(data) < self.min_items:
            raise DefinitionError(where, "must not be empty" if self.min_items == 1
                                  else f"needs at least {self.min_items} {self.noun}")
        if self.max_items is not None and len(data) > self.max_items:
            raise DefinitionError(where, f"at most {self.max_items} {self.noun} are allowed, got {len(data)}")
        if self.items is not None:
            for index, item in enumerate(data):
                self.items.check(item, f"{where}[{index}]")
        if self.unique and len({_key(item) for item in data}) != len(data):
            raise DefinitionError(where, "names the same value twice")

    def _check_string(self, data: Any, where: str) -> None:
        if not isinstance(data, str):
            raise DefinitionError(where, "must be text")
        if self.pattern is not None and not self.pattern.fullmatch(data):
            raise DefinitionError(where, f"must be {self.pattern_text}")
        if len(data) < (self.min_length or 0) or len(data) > (self.max_length or math.inf):
            raise DefinitionError(where, f"must be {_between(self.min_length, self.max_length)} characters")

    def _check_integer(self, data: Any, where: str) -> None:
        if isinstance(data, bool) or not isinstance(data, int):
            raise DefinitionError(where, "must be an integer")
        self._bounds(data, where, "an integer")

    def _check_number(self, data: Any, where: str) -> None:
        try:
            if isinstance(data, bool) or not isinstance(data, int | float):
                raise ValueError
            number = float(data)
        except (OverflowError, ValueError):
            raise DefinitionError(where, "must be a number") from None
        if not math.isfinite(number):
            raise DefinitionError(where, "must be a finite number")
        self._bounds(number, where, "a number")

    def _bounds(self, number: float, where: str, kind: str) -> None:
        low = self.minimum if self.minimum is not None else -math.inf
        high = self.maximum if self.maximum is not None else math.inf
        if not low <= number <= high or (self.above is not None and number <= self.above):
            lower = [f">= {self.minimum:g}"] if self.minimum is not None else []
            lower += [f"> {self.above:g}"] if self.above is not None else []
            upper = [f"<= {self.maximum:g}"] if self.maximum is not None else []
            raise DefinitionError(where, f"must be {kind} {' and '.join(lower + upper)}{self.unit}")

    def openapi(self) -> dict[str, Any]:
        """Return this value's JSON Schema, in OpenAPI 3.0's dialect (``nullable``, a boolean
        ``exclusiveMinimum``)."""
        schema: dict[str, Any] = {} if self.type == "any" else {"type": self.type}
        if self.help:
            schema["description"] = self.help
        if self.default is not None:
            schema["default"] = self.default
        if self.nullable and self.type != "any":  # any value includes null
            schema["nullable"] = True
        if self.above is not None:
            schema.update(minimum=self.above, exclusiveMinimum=True)
        elif self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.type == "number":
            schema["format"] = "double"
        for key, bound in (("minLength", self.min_length), ("maxLength", self.max_length),
                           ("minItems", self.min_items), ("maxItems", self.max_items)):
            if bound is not None:
                schema[key] = bound
        if self.pattern is not None:
            # A JSON Schema pattern searches; anchored, it must match the whole string, as ``check`` does.
            schema["pattern"] = f"^(?:{self.pattern.pattern})$"
        if self.items is not None:
            schema["items"] = self.items.openapi()
        if self.unique:
            schema["uniqueItems"] = True
        if self.type == "object" and self.open:
            schema["additionalProperties"] = True
        elif self.type == "object":
            schema["properties"] = {name: value.openapi() for name, value in self.properties.items()}
            schema["additionalProperties"] = False
            if self.required:
                schema["required"] = list(self.required)
        return schema


def _child(where: str, name: str) -> str:
    return name if where == "definition" else f"{where}.{name}"


def _between(low: int | None, high: int | None) -> str:
    if low and high is not None:
        return f"{low} to {high}"
    return f"at most {high}" if high is not None else f"at least {low}"


def _key(item: Any) -> Any:
    return repr(item) if isinstance(item, dict | list) else (type(item).__name__, item)
