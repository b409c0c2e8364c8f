"""Workflow blueprints as frozen dataclasses, parsed and validated from plain data.

Nothing here touches a database: the engine reads these, and ``definitions`` stores them.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from workflows import masking
from workflows.errors import DefinitionError

#: Workflow and step names: a letter or digit first, then letters, digits, '.', '_' or '-'.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: Bounds that keep one execution document far below MongoDB's 16 MB limit.
MAX_STEPS = 200
MAX_ATTEMPTS = 100
MAX_TIMEOUT_S = 24 * 3600.0
MAX_DELAY_S = 7 * 24 * 3600.0
MAX_MULTIPLIER = 1000.0
MAX_CONCURRENCY = 10_000
#: Exception type names one step's ``non_retryable`` may list, and the longest name.
MAX_NON_RETRYABLE = 50
MAX_TYPE_NAME = 200
#: Longest handler name.
MAX_HANDLER_NAME = 200
#: Largest definition, in bytes of JSON: every execution carries a copy of its definition.
MAX_DEFINITION_BYTES = 256 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """How often a step is tried and how long it waits between attempts."""

    #: Attempts in one budget, the first included.
    max_attempts: int = 3
    #: Delay after the first failed attempt, in seconds.
    initial_delay_s: float = 1.0
    #: Each further delay is the previous one times this.
    multiplier: float = 2.0
    #: No delay is longer than this, in seconds.
    max_delay_s: float = 60.0
    #: Fraction of the delay taken off at most, derived from a hash (0: none, 1: up to all of it).
    jitter: float = 0.1


@dataclass(frozen=True)
class StepSpec:
    """One step of a workflow: which handler runs, how it is retried, how long it may take."""

    name: str
    handler: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: An attempt running longer than this fails with ``StepTimeout``.
    timeout_s: float = 60.0
    #: Exception type names (class name or dotted path) that fail the step without a retry.
    non_retryable: tuple[str, ...] = ()
    #: Attempts of this step (all executions of the workflow) running at once, at most; ``None``:
    #: no limit.
    max_concurrency: int | None = None


@dataclass(frozen=True)
class WorkflowSpec:
    """A workflow blueprint: a name, a description and ordered steps."""

    name: str
    steps: tuple[StepSpec, ...]
    description: str = ""
    #: Input fields (dotted paths) shown as ``[secret]`` everywhere but to handlers.
    secret_inputs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the plain-data form that :func:`parse_workflow` reads back."""
        data = asdict(self)
        if self.secret_inputs:
            data["secret_inputs"] = list(self.secret_inputs)
        else:
            del data["secret_inputs"]  # absent, so that definitions without any keep their fingerprint
        data["steps"] = [
            {k: (list(v) if k == "non_retryable" else v) for k, v in step.items()
             if not (k == "max_concurrency" and v is None)}
            for step in data["steps"]
        ]
        return data

    def fingerprint(self) -> str:
        """Return a hash of the content, equal for equal definitions."""
        body = {k: v for k, v in self.to_dict().items() if k != "name"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def parse_workflow(
    data: Any, known_handlers: Callable[[str, str], object] | None = None
) -> WorkflowSpec:
    """Validate plain data into a :class:`WorkflowSpec`; raise :class:`DefinitionError` naming the field.

    ``known_handlers(name, field)`` is called for each step's handler and raises for unknown ones.
    """
    data = _mapping(data, "definition")
    _only(data, "definition", {"name", "description", "steps", "secret_inputs"})
    _size(data)
    name = _name(data.get("name"), "name")
    description = data.get("description", "")
    if not isinstance(description, str) or len(description) > 2000:
        raise DefinitionError("description", "must be text of at most 2000 characters")
    steps_data = data.get("steps")
    if not isinstance(steps_data, list):
        raise DefinitionError("steps", "must be a list of steps")
    if not steps_data:
        raise DefinitionError("steps", "a workflow needs at least one step")
    if len(steps_data) > MAX_STEPS:
        raise DefinitionError("steps", f"at most {MAX_STEPS} steps are allowed, got {len(steps_data)}")
    steps: list[StepSpec] = []
    seen: set[str] = set()
    for index, raw in enumerate(steps_data):
        spec = _step(raw, f"steps[{index}]", known_handlers)
        if spec.name in seen:
            raise DefinitionError(f"steps[{index}].name", f"duplicate step name {spec.name!r}")
        seen.add(spec.name)
        steps.append(spec)
    return WorkflowSpec(name=name, description=description, steps=tuple(steps),
                        secret_inputs=_secret_inputs(data.get("secret_inputs", [])))


def _size(data: Mapping[str, Any]) -> None:
    try:
        size = len(json.dumps(data, ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError):
        return  # the fields' own checks say what is wrong
    if size > MAX_DEFINITION_BYTES:
        raise DefinitionError("definition", f"is {size} bytes of JSON; at most {MAX_DEFINITION_BYTES} "
                              "are allowed (every execution carries a copy)")


def _secret_inputs(raw: Any) -> tuple[str, ...]:
    where = "secret_inputs"
    if not isinstance(raw, list) or len(raw) > masking.MAX_PATHS:
        raise DefinitionError(where, f"must be a list of at most {masking.MAX_PATHS} input paths")
    for index, path in enumerate(raw):
        if not isinstance(path, str) or not masking.PATH_RE.fullmatch(path):
            raise DefinitionError(f"{where}[{index}]", "must be a dotted path into the input, such as "
                                  "'card.number': 1 to 8 keys of letters, digits, '_' or '-'")
    if len(set(raw)) != len(raw):
        raise DefinitionError(where, "names a path twice")
    return tuple(raw)


def _step(raw: Any, where: str, known_handlers: Callable[[str, str], object] | None) -> StepSpec:
    raw = _mapping(raw, where)
    _only(raw, where, {"name", "handler", "retry", "timeout_s", "non_retryable", "max_concurrency"})
    name = _name(raw.get("name"), f"{where}.name")
    handler = raw.get("handler")
    if not isinstance(handler, str) or not handler or len(handler) > MAX_HANDLER_NAME:
        raise DefinitionError(f"{where}.handler", "must name a registered handler")
    if known_handlers is not None:
        known_handlers(handler, f"{where}.handler")
    timeout = _number(raw.get("timeout_s", 60.0), f"{where}.timeout_s")
    if timeout <= 0 or timeout > MAX_TIMEOUT_S:
        raise DefinitionError(f"{where}.timeout_s", f"must be > 0 and <= {MAX_TIMEOUT_S:g} seconds")
    non_retryable = raw.get("non_retryable", [])
    if not isinstance(non_retryable, list) or not all(
        isinstance(t, str) and 0 < len(t) <= MAX_TYPE_NAME for t in non_retryable
    ):
        raise DefinitionError(f"{where}.non_retryable", "must be a list of exception type names "
                              f"of at most {MAX_TYPE_NAME} characters")
    if len(non_retryable) > MAX_NON_RETRYABLE:
        raise DefinitionError(f"{where}.non_retryable",
                              f"at most {MAX_NON_RETRYABLE} exception type names are allowed")
    limit = raw.get("max_concurrency")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CONCURRENCY
    ):
        raise DefinitionError(
            f"{where}.max_concurrency", f"must be an integer between 1 and {MAX_CONCURRENCY}"
        )
    return StepSpec(
        name=name,
        handler=handler,
        retry=_retry(raw.get("retry", {}), f"{where}.retry"),
        timeout_s=timeout,
        non_retryable=tuple(non_retryable),
        max_concurrency=limit,
    )


def _retry(raw: Any, where: str) -> RetryPolicy:
    raw = _mapping(raw, where)
    _only(raw, where, {"max_attempts", "initial_delay_s", "multiplier", "max_delay_s", "jitter"})
    defaults = RetryPolicy()
    attempts = raw.get("max_attempts", defaults.max_attempts)
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        raise DefinitionError(f"{where}.max_attempts", "must be an integer")
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise DefinitionError(f"{where}.max_attempts", f"must be between 1 and {MAX_ATTEMPTS}")
    values = {}
    for key in ("initial_delay_s", "multiplier", "max_delay_s", "jitter"):
        values[key] = _number(raw.get(key, getattr(defaults, key)), f"{where}.{key}")
    for key in ("initial_delay_s", "max_delay_s"):
        if values[key] < 0:
            raise DefinitionError(f"{where}.{key}", "must not be negative")
        if values[key] > MAX_DELAY_S:
            raise DefinitionError(f"{where}.{key}", f"must be at most {MAX_DELAY_S:g} seconds")
    if not 1 <= values["multiplier"] <= MAX_MULTIPLIER:
        raise DefinitionError(f"{where}.multiplier", f"must be between 1 and {MAX_MULTIPLIER:g}")
    if not 0 <= values["jitter"] <= 1:
        raise DefinitionError(f"{where}.jitter", "must be between 0 and 1")
    return RetryPolicy(max_attempts=attempts, **values)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DefinitionError(where, "must be an object")
    return value


def _only(data: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise DefinitionError(
            f"{where}.{unknown[0]}" if where != "definition" else unknown[0],
            f"unknown field; allowed: {', '.join(sorted(allowed))}",
        )


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DefinitionError(where, "must not be empty")
    if not NAME_RE.match(value):
        raise DefinitionError(
            where, "must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def _number(value: Any, where: str) -> float:
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError
        number = float(value)
    except (OverflowError, ValueError):
        raise DefinitionError(where, "must be a number") from None
    if not math.isfinite(number):
        raise DefinitionError(where, "must be a finite number")
    return number
