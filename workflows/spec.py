"""Workflow blueprints as frozen dataclasses, parsed from plain data that :data:`DEFINITION` validates.

:data:`DEFINITION` is the one description of a definition: it checks the data here and is the API's
OpenAPI schema of ``POST workflows/``, so the server enforces no bound its schema does not state.
Nothing here touches a database: the engine reads these, and ``definitions`` stores them.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import bson
import bson.errors

from workflows import inputs, jsontext, masking
from workflows.errors import DefinitionError
from workflows.schema import Value

#: Workflow and step names: a letter or digit first, then letters, digits, '.', '_' or '-' (the whole
#: name matches: use ``fullmatch``).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: Longest description.
MAX_DESCRIPTION = 2000
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
#: Longest input path ``secret_inputs`` may name: the longest ``masking.PATH_RE`` matches (8 keys of 64).
MAX_SECRET_PATH = 8 * 64 + 7
#: Longest sleep, and longest wait for a signal, in seconds (a year).
MAX_WAIT_S = 366 * 24 * 3600.0
#: The handler names a sleep and a wait step carry: no handler runs for them (the engine does).
SLEEP_HANDLER = "detflow.sleep"
WAIT_HANDLER = "detflow.wait"
#: What a wait that saw no signal by its timeout does: fail the step (and the execution, as any
#: failure for good), continue with ``default_output`` as the step's output, or skip the step.
ON_TIMEOUT = ("fail", "continue", "skip")
#: Where a sleep's ``until`` takes its time from: the input, or an earlier step's output.
UNTIL_RE = re.compile(r"(input|outputs)(\.[A-Za-z0-9_-]{1,100}){1,9}")
#: A step's ``timeout_s`` when its definition gives none.
DEFAULT_TIMEOUT_S = 60.0
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
    #: An attempt running longer than this is interrupted (its error: ``StepTimeout``).
    timeout_s: float = DEFAULT_TIMEOUT_S
    #: Exception type names (class name or dotted path) that fail the step without a retry.
    non_retryable: tuple[str, ...] = ()
    #: Attempts of this step (all executions of the workflow) running at once, at most; ``None``:
    #: no limit.
    max_concurrency: int | None = None
    #: What undoes this step once it SUCCEEDED, run when its execution is rolled back; ``None``:
    #: nothing to undo.
    compensate: CompensateSpec | None = None
    #: A sleep step: no handler runs, the execution sleeps until a time (``handler`` is
    #: :data:`SLEEP_HANDLER`).
    sleep: SleepSpec | None = None
    #: A wait step: no handler runs, the execution waits for a named signal (``handler`` is
    #: :data:`WAIT_HANDLER`).
    wait: WaitSpec | None = None

    @property
    def kind(self) -> str:
        """``handler``, ``sleep`` or ``wait``."""
        return "sleep" if self.sleep else "wait" if self.wait else "handler"


@dataclass(frozen=True)
class SleepSpec:
    """How long a sleep step sleeps: ``seconds``, or ``until`` the time at a path of the input or
    of an earlier step's output (``input.send_at``, ``outputs.render.send_at``: an ISO 8601 time,
    UTC when it names no offset, or seconds since the epoch)."""

    seconds: float | None = None
    until: str | None = None


@dataclass(frozen=True)
class WaitSpec:
    """What a wait step waits for: the signal ``signal``, for ``timeout_s`` at most."""

    signal: str
    timeout_s: float
    on_timeout: str = "fail"
    #: The step's output when it times out with ``on_timeout: continue``.
    default_output: Any = None


@dataclass(frozen=True)
class CompensateSpec:
    """The handler that undoes a step, with a retry policy and a timeout of its own."""

    handler: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = DEFAULT_TIMEOUT_S
    non_retryable: tuple[str, ...] = ()


#: What an execution does when a step fails for good: ``stop`` (it ends FAILED, an operator may retry
#: or skip the step) or ``compensate`` (the compensations of its completed steps run, newest first).
ON_FAILURE = ("stop", "compensate")
#: What an execution past its deadline does: fail, or roll back its completed steps.
ON_DEADLINE = ("fail", "compensate")
#: Longest deadline of a workflow, in seconds (a year), and longest retention, in days.
MAX_DEADLINE_S = 366 * 86_400
MAX_RETENTION_DAYS = 36_500


@dataclass(frozen=True)
class WorkflowSpec:
    """A workflow blueprint: a name, a description and ordered steps."""

    name: str
    steps: tuple[StepSpec, ...]
    description: str = ""
    #: Input fields (dotted paths) shown as ``[secret]`` everywhere but to handlers.
    secret_inputs: tuple[str, ...] = ()
    #: What a step failing for good leads to: one of :data:`ON_FAILURE`.
    on_failure: str = "stop"
    #: Longest time an execution may take from its start, in seconds (``None``: no deadline), and
    #: what it does past it: one of :data:`ON_DEADLINE`.
    deadline_s: float | None = None
    on_deadline: str = "fail"
    #: Days a finished execution is kept (``None``: the ``DETFLOW_RETENTION_DAYS`` setting).
    retention_days: int | None = None
    #: The JSON Schema a start's input must match (``workflows.inputs``; ``None``: any input).
    input_schema: dict[str, Any] | None = field(default=None, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the plain-data form that :func:`parse_workflow` reads back.

        Fields at their defaults that older definitions lack (``secret_inputs``, ``on_failure``,
        a step's ``max_concurrency`` and ``compensate``) are left out, so that those keep their
        fingerprint.
        """
        data = asdict(self)
        if self.secret_inputs:
            data["secret_inputs"] = list(self.secret_inputs)
        else:
            del data["secret_inputs"]
        if self.on_failure == "stop":
            del data["on_failure"]
        for name, default in (("deadline_s", None), ("on_deadline", "fail"), ("retention_days", None),
                              ("input_schema", None)):
            if data[name] == default:
                del data[name]
        data["steps"] = [_step_dict(step) for step in data["steps"]]
        return data

    def fingerprint(self) -> str:
        """Return a hash of the content, equal for equal definitions."""
        body = {k: v for k, v in self.to_dict().items() if k != "name"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


#: What a definition may hold, every bound its fields have: ``parse_workflow`` checks data against
#: it, and the API's OpenAPI schema is its ``openapi()``. JSON Schema cannot state ``RULES``: they are
#: checked in ``parse_workflow`` and said in the schema's description.
RULES = ("Step names are unique within a definition; each step has exactly one of 'handler', 'sleep' and "
         "'wait' (a sleep has exactly one of 'seconds' and 'until'; only a handler step takes retry, "
         "timeout_s, non_retryable, max_concurrency and compensate); "
         "each handler is a registered one (GET handlers/); "
         "input_schema is valid JSON Schema whose references ('$ref') all point inside it; "
         f"the definition is at most {MAX_DEFINITION_BYTES} bytes of JSON (every execution carries a copy).")
_NAME = Value("string", min_length=1, max_length=100, pattern=NAME_RE,
              pattern_text="1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
_POLICY = RetryPolicy()
_S = " seconds"
RETRY = Value(
    "object", default={}, help="How often the step is tried and how long it waits between attempts.",
    properties={
        "max_attempts": Value("integer", minimum=1, maximum=MAX_ATTEMPTS, default=_POLICY.max_attempts,
                              help="Attempts in one budget, the first included."),
        "initial_delay_s": Value("number", minimum=0, maximum=MAX_DELAY_S, unit=_S,
                                 default=_POLICY.initial_delay_s,
                                 help="Delay after the first failed attempt, in seconds."),
        "multiplier": Value("number", minimum=1, maximum=MAX_MULTIPLIER, default=_POLICY.multiplier,
                            help="Each further delay is the previous one times this."),
        "max_delay_s": Value("number", minimum=0, maximum=MAX_DELAY_S, unit=_S,
                             default=_POLICY.max_delay_s, help="No delay is longer than this, in seconds."),
        "jitter": Value("number", minimum=0, maximum=1, default=_POLICY.jitter,
                        help="Fraction of the delay taken off at most (0: none, 1: up to all of it)."),
    },
)
_HANDLER = Value("string", min_length=1, max_length=MAX_HANDLER_NAME,
                 help="A registered handler (see GET handlers/).")
_TIMEOUT = Value("number", above=0, maximum=MAX_TIMEOUT_S, unit=_S, default=DEFAULT_TIMEOUT_S,
                 help="An attempt running longer than this is interrupted, in seconds.")
_NON_RETRYABLE = Value(
    "array", default=[], max_items=MAX_NON_RETRYABLE, noun="exception type names",
    items=Value("string", min_length=1, max_length=MAX_TYPE_NAME),
    help="Exception type names (class name or dotted path) that fail the step without a retry.")
COMPENSATE = Value(
    "object", required=("handler",),
    help="What undoes this step once it succeeded: run, newest step first, when the execution is "
         "rolled back (on_failure 'compensate', or an operator's compensate); a durable step of its "
         "own, with the idempotency key '<execution id>:<step>:compensate'.",
    properties={"handler": _HANDLER, "retry": RETRY, "timeout_s": _TIMEOUT, "non_retryable": _NON_RETRYABLE},
)
SLEEP = Value(
    "object", help="A sleep step (no handler): the execution sleeps, holding no worker, lock or lease, "
                   "for 'seconds' or until the time at 'until' (exactly one of them).",
    properties={
        "seconds": Value("number", minimum=0, maximum=MAX_WAIT_S, unit=_S, help="How long, in seconds."),
        "until": Value("string", pattern=UNTIL_RE, max_length=1000,
                       pattern_text="a path such as 'input.send_at' or 'outputs.<earlier step>.send_at'",
                       help="A path into the input ('input.send_at') or an earlier step's output "
                            "('outputs.render.send_at') holding an ISO 8601 time (UTC unless it names an "
                            "offset) or seconds since the epoch; a time past wakes at once."),
    },
)
WAIT = Value(
    "object", required=("signal", "timeout_s"),
    help="A wait step (no handler): the execution waits, holding no worker, lock or lease, for the "
         "signal named 'signal' (POST executions/{id}/signals/{name}/), whose payload becomes the "
         "step's output; a signal sent before the wait starts is kept for it.",
    properties={
        "signal": _NAME,
        "timeout_s": Value("number", above=0, maximum=MAX_WAIT_S, unit=_S,
                           help="How long to wait for the signal, in seconds."),
        "on_timeout": Value("string", pattern=re.compile("|".join(ON_TIMEOUT)), default="fail",
                            pattern_text=" or ".join(repr(v) for v in ON_TIMEOUT),
                            help="With no signal by the timeout: 'fail' the step, 'continue' with "
                                 "'default_output' as its output, or 'skip' it."),
        "default_output": Value("any", nullable=True,
                                help="The step's output when it times out with on_timeout 'continue' "
                                     "(any JSON value MongoDB stores: no NUL character in a key, "
                                     "integers within 64 bits)."),
    },
)
STEP = Value(
    "object", required=("name",),
    properties={
        "name": _NAME,
        "handler": _HANDLER,
        "retry": RETRY,
        "timeout_s": _TIMEOUT,
        "non_retryable": _NON_RETRYABLE,
        "max_concurrency": Value("integer", nullable=True, minimum=1, maximum=MAX_CONCURRENCY,
                                 help="Attempts of this step running at once, across every worker; "
                                      "null or absent: no limit."),
        "compensate": COMPENSATE,
        "sleep": SLEEP,
        "wait": WAIT,
    },
)
DEFINITION = Value(
    "object", required=("name", "steps"), help=f"A workflow definition. {RULES}",
    properties={
        "name": _NAME,
        "description": Value("string", max_length=MAX_DESCRIPTION, default=""),
        "steps": Value("array", items=STEP, min_items=1, max_items=MAX_STEPS, noun="steps",
                       help="The steps, run in this order."),
        "on_failure": Value("string", pattern=re.compile("|".join(ON_FAILURE)), default="stop",
                            pattern_text=" or ".join(repr(v) for v in ON_FAILURE),
                            help="When a step fails for good: 'stop' (the execution ends FAILED; an "
                                 "operator may retry or skip the step) or 'compensate' (the "
                                 "compensations of the steps that succeeded run in reverse order; the "
                                 "execution ends COMPENSATED, or COMPENSATION_FAILED)."),
        "deadline_s": Value("number", nullable=True, above=0, maximum=MAX_DEADLINE_S, unit=_S,
                            help="Longest time an execution may take from its start, in seconds; past "
                                 "it the step waiting to start fails with DeadlineExceeded (a running "
                                 "attempt is cut at the deadline as by its timeout). Unset: none."),
        "on_deadline": Value("string", pattern=re.compile("|".join(ON_DEADLINE)), default="fail",
                             pattern_text=" or ".join(repr(v) for v in ON_DEADLINE),
                             help="Past the deadline: 'fail' (the execution ends FAILED) or 'compensate' "
                                  "(its completed steps are rolled back)."),
        "retention_days": Value("integer", nullable=True, minimum=1, maximum=MAX_RETENTION_DAYS,
                                help="Days a finished execution is kept before it is removed (unset: "
                                     "the DETFLOW_RETENTION_DAYS setting)."),
        "input_schema": Value(
            "object", nullable=True, open=True,
            help="A JSON Schema (draft 2020-12 unless its $schema names another) that a start's input "
                 "must match, or a 400 names the path that does not; only references inside it "
                 "('#/...') are allowed. Unset: any input."),
        "secret_inputs": Value(
            "array", default=[], max_items=masking.MAX_PATHS, unique=True, noun="input paths",
            items=Value("string", min_length=1, max_length=MAX_SECRET_PATH, pattern=masking.PATH_RE,
                        pattern_text="a dotted path into the input, such as 'card.number': 1 to 8 keys "
                                     "of letters, digits, '_' or '-'"),
            help="Input fields, by dotted path ('card.number'), shown as [secret] in the API, the admin, "
                 "logs and post-mortems; handlers receive them as given."),
    },
)


def _step_dict(step: dict[str, Any]) -> dict[str, Any]:
    if step.get("sleep"):
        return {"name": step["name"], "handler": SLEEP_HANDLER,
                "sleep": {k: v for k, v in step["sleep"].items() if v is not None}}
    if step.get("wait"):
        wait = {k: v for k, v in step["wait"].items() if not (k == "default_output" and v is None)}
        return {"name": step["name"], "handler": WAIT_HANDLER, "wait": wait}
    out: dict[str, Any] = {k: (list(v) if k == "non_retryable" else v) for k, v in step.items()
                           if not (k in ("max_concurrency", "compensate", "sleep", "wait") and v is None)}
    undo = out.get("compensate")
    if undo:
        out["compensate"] = {**undo, "non_retryable": list(undo["non_retryable"])}
    return out


def parse_workflow(
    data: Any, known_handlers: Callable[[str, str], object] | None = None
) -> WorkflowSpec:
    """Validate plain data into a :class:`WorkflowSpec`; raise :class:`DefinitionError` naming the field.

    ``known_handlers(name, field)`` is called for each step's handler and raises for unknown ones.
    """
    if isinstance(data, Mapping):
        _size(data)
    DEFINITION.check(data, "definition")
    if data.get("input_schema") is not None:
        inputs.check_schema(data["input_schema"])
    steps: list[StepSpec] = []
    seen: set[str] = set()
    for index, raw in enumerate(data["steps"]):
        if raw["name"] in seen:
            raise DefinitionError(f"steps[{index}].name", f"duplicate step name {raw['name']!r}")
        seen.add(raw["name"])
        _kind(raw, index, [s.name for s in steps])
        if known_handlers is not None and "sleep" not in raw and "wait" not in raw:
            known_handlers(raw["handler"], f"steps[{index}].handler")
            if "compensate" in raw:
                known_handlers(raw["compensate"]["handler"], f"steps[{index}].compensate.handler")
        steps.append(_step(raw))
    return WorkflowSpec(name=data["name"], description=data.get("description", ""), steps=tuple(steps),
                        secret_inputs=tuple(data.get("secret_inputs", ())),
                        on_failure=data.get("on_failure", "stop"), deadline_s=data.get("deadline_s"),
                        on_deadline=data.get("on_deadline", "fail"),
                        retention_days=data.get("retention_days"), input_schema=data.get("input_schema"))


def _size(data: Mapping[str, Any]) -> None:
    found = jsontext.lone_surrogate(data)
    if found:
        raise DefinitionError(found[0] or "definition", found[1])
    try:
        jsontext.capped(data, MAX_DEFINITION_BYTES)
    except jsontext.JSONTooLarge as exc:
        raise DefinitionError("definition", f"is {exc.size} bytes of JSON; at most {MAX_DEFINITION_BYTES} "
                              "are allowed (every execution carries a copy)") from None
    except jsontext.NotJSON:
        return  # the fields' own checks say what is wrong


#: The handler name each kind of step without a handler carries.
PSEUDO = {"sleep": SLEEP_HANDLER, "wait": WAIT_HANDLER}
#: Fields only a handler step takes.
HANDLER_ONLY = ("retry", "timeout_s", "non_retryable", "max_concurrency", "compensate")


def _kind(raw: Mapping[str, Any], index: int, earlier: list[str]) -> None:
    """Refuse a step that is not exactly one of a handler, a sleep and a wait, naming the field."""
    where = f"steps[{index}]"
    kinds = [k for k in ("handler", "sleep", "wait") if k in raw]
    # A stored definition (``to_dict``) names the handler a sleep or wait step stands for.
    if kinds in (["handler", "sleep"], ["handler", "wait"]) and raw["handler"] == PSEUDO[kinds[1]]:
        kinds = kinds[1:]
    if not kinds:
        raise DefinitionError(f"{where}.handler", "is required (or make the step a 'sleep' or a 'wait')")
    if len(kinds) != 1:
        raise DefinitionError(where, f"needs exactly one of 'handler', 'sleep' and 'wait', got "
                              f"{' and '.join(kinds)}")
    if kinds[0] != "handler":
        extra = [k for k in HANDLER_ONLY if k in raw]
        if extra:
            raise DefinitionError(f"{where}.{extra[0]}", f"a {kinds[0]} step runs no handler: only a "
                                  "handler step takes retry, timeout_s, non_retryable, max_concurrency "
                                  "and compensate")
    sleep = raw.get("sleep")
    if sleep is not None:
        if ("seconds" in sleep) == ("until" in sleep):
            raise DefinitionError(f"{where}.sleep", "needs exactly one of 'seconds' and 'until'")
        until = sleep.get("until")
        if until is not None and until.startswith("outputs.") and until_step(until, earlier) is None:
            raise DefinitionError(f"{where}.sleep.until", "must name an earlier step's output: "
                                  f"outputs.<one of {', '.join(earlier) or 'no earlier step'}>.<field>")
    wait = raw.get("wait")
    if wait is not None and "default_output" in wait:
        if wait.get("on_timeout", "fail") != "continue":
            raise DefinitionError(f"{where}.wait.default_output", "goes with on_timeout 'continue' only")
        try:
            jsontext.capped(wait["default_output"], MAX_DEFINITION_BYTES)
            bson.encode({"output": wait["default_output"]})  # integers past 64 bits
        except (jsontext.NotJSON, jsontext.JSONTooLarge, OverflowError, bson.errors.InvalidDocument) as exc:
            raise DefinitionError(f"{where}.wait.default_output", f"must be storable JSON: {exc}") from None


def until_step(path: str, steps: list[str]) -> tuple[str, list[str]] | None:
    """Return the step an ``outputs.<step>.<field>`` path names (the longest step name it starts
    with: names may hold dots) and the keys after it; ``None`` when it names none of ``steps``."""
    rest = path[len("outputs."):]
    for name in sorted(steps, key=len, reverse=True):
        if rest.startswith(name + ".") and len(rest) > len(name) + 1:
            return name, rest[len(name) + 1:].split(".")
    return None


def _step(raw: Mapping[str, Any]) -> StepSpec:
    """Build a checked step's spec, defaults filled in."""
    if "sleep" in raw:
        sleep = raw["sleep"]
        seconds = sleep.get("seconds")
        return StepSpec(name=raw["name"], handler=SLEEP_HANDLER, sleep=SleepSpec(
            seconds=None if seconds is None else float(seconds), until=sleep.get("until")))
    if "wait" in raw:
        wait = raw["wait"]
        return StepSpec(name=raw["name"], handler=WAIT_HANDLER, wait=WaitSpec(
            signal=wait["signal"], timeout_s=float(wait["timeout_s"]),
            on_timeout=wait.get("on_timeout", "fail"), default_output=wait.get("default_output")))
    undo = raw.get("compensate")
    return StepSpec(
        name=raw["name"],
        handler=raw["handler"],
        retry=_policy(raw.get("retry", {})),
        timeout_s=float(raw.get("timeout_s", DEFAULT_TIMEOUT_S)),
        non_retryable=tuple(raw.get("non_retryable", ())),
        max_concurrency=raw.get("max_concurrency"),
        compensate=None if undo is None else CompensateSpec(
            handler=undo["handler"], retry=_policy(undo.get("retry", {})),
            timeout_s=float(undo.get("timeout_s", DEFAULT_TIMEOUT_S)),
            non_retryable=tuple(undo.get("non_retryable", ())),
        ),
    )


def _policy(retry: Mapping[str, Any]) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=retry.get("max_attempts", _POLICY.max_attempts),
        **{key: float(retry.get(key, getattr(_POLICY, key)))
           for key in ("initial_delay_s", "multiplier", "max_delay_s", "jitter")},
    )
