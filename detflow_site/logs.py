"""Log records that carry the execution, step, attempt and worker they belong to.

The runner binds those ids for the duration of its work (:func:`bound`); :class:`ContextFilter`
copies them onto every record logged meanwhile, from any logger; :class:`JsonFormatter` writes one
JSON object per line (``DETFLOW_LOG_FORMAT=json``).
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
from collections.abc import Iterator
from typing import Any

#: The ids every record logged by the engine carries (``None`` outside an execution's work).
FIELDS = ("execution_id", "step", "attempt", "worker")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "detflow_log_context", default=None
)


@contextlib.contextmanager
def bound(**ids: Any) -> Iterator[None]:
    """Attach ``ids`` (some of :data:`FIELDS`) to every record logged in this block."""
    token = _context.set({**(_context.get() or {}), **ids})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**ids: Any) -> None:
    """Add ``ids`` to the current block's (see :func:`bound`)."""
    current = _context.get()
    if current is not None:
        current.update(ids)


class ContextFilter(logging.Filter):
    """Copy the bound ids onto each record (a record's own ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound_ids = _context.get() or {}
        for name in FIELDS:
            if not hasattr(record, name):
                setattr(record, name, bound_ids.get(name))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ids, and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            entry[name] = getattr(record, name, None)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class PlainFormatter(logging.Formatter):
    """The usual line, with the ids in brackets when there are any."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{n}={getattr(record, n)}" for n in FIELDS if getattr(record, n, None))
        return f"{line} [{ids}]" if ids else line
