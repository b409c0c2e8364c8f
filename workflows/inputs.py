"""Input schemas: a definition's ``input_schema`` (JSON Schema, checked with ``jsonschema``) says what
input its executions take, and a start whose input does not match is refused, naming the path.

A schema is data, never a way to reach anything: only references inside it (``"$ref": "#/..."``)
are allowed, so checking an input never reads a file or a URL. The dialect is the schema's
``$schema`` when it names one ``jsonschema`` knows, and draft 2020-12 otherwise. A refusal names
where in the input it is (``input.card.number``, ``input.items[2]``) and the rule it breaks, never
the value itself, which may be a secret.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.validators import validator_for

from workflows.errors import DefinitionError

#: The dialect of a schema that names none.
DEFAULT = jsonschema.Draft202012Validator
#: Keywords whose value is a URI that a validator could try to resolve.
_REFERENCES = ("$ref", "$dynamicRef", "$recursiveRef")


def check_schema(schema: Any, where: str = "input_schema") -> None:
    """Raise :class:`DefinitionError` naming ``where`` (or a path below it) unless ``schema`` is a
    valid JSON Schema object whose references all point inside it."""
    if not isinstance(schema, dict):
        raise DefinitionError(where, "must be a JSON Schema object, such as {\"type\": \"object\"}")
    for path, ref in _references(schema, where):
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise DefinitionError(path, "only references inside the schema ('#/...') are allowed")
    cls = _dialect(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise DefinitionError(_path(where, exc.path), f"is not valid JSON Schema: {exc.message}") from None


def problem(schema: dict[str, Any], value: Any) -> tuple[str, str] | None:
    """Return ``(path, reason)`` of the first place ``value`` does not match ``schema``, or ``None``."""
    found = jsonschema.exceptions.best_match(_dialect(schema)(schema).iter_errors(value))
    if found is None:
        return None
    return _described(found)


def loads(text: str | None) -> dict[str, Any] | None:
    """Return a stored ``input_schema_json`` decoded (``None`` when the definition has none)."""
    return None if text is None else json.loads(text)


def _dialect(schema: dict[str, Any]) -> Any:
    return validator_for(schema, default=DEFAULT)


def _references(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _REFERENCES:
                yield _path(where, [key]), value
            else:
                yield from _references(value, _path(where, [key]))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _references(item, _path(where, [index]))


def _described(error: ValidationError) -> tuple[str, str]:
    path = list(error.absolute_path)
    rule, value = error.validator, error.validator_value
    instance = error.instance
    if rule == "required" and isinstance(instance, dict):
        missing = next((name for name in value if name not in instance), None)
        if missing is not None:
            return _path("input", [*path, missing]), "is required by the input schema"
    if rule == "additionalProperties" and isinstance(instance, dict):
        allowed = set((error.schema or {}).get("properties", {}))
        extra = next((name for name in instance if name not in allowed), None)
        if extra is not None:
            return _path("input", [*path, extra]), "is not a field the input schema allows"
    if rule == "type":
        kinds = value if isinstance(value, list) else [value]
        return _path("input", path), f"must be {' or '.join(_article(str(k)) for k in kinds)}"
    if rule in ("enum", "const"):
        options = value if rule == "enum" else [value]
        return _path("input", path), f"must be one of {_shown(options)}"
    if isinstance(value, bool | int | float | str) and not isinstance(value, dict):
        return _path("input", path), f"must satisfy {rule}: {_shown([value])[1:-1]}"
    return _path("input", path), f"does not match the input schema ({rule})"


def _path(where: str, parts: Iterable[Any]) -> str:
    text = where
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _article(kind: str) -> str:
    return {"object": "an object", "array": "an array", "integer": "an integer"}.get(kind, f"a {kind}")


def _shown(values: list[Any], limit: int = 200) -> str:
    text = json.dumps(values, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 4] + "...]"
