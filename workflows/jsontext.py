"""JSON text as detflow stores it: canonical, and measured in UTF-8 bytes against a cap.

Inputs, outputs, edited inputs and definitions are stored as JSON text so that any JSON value is
kept exactly; each has a cap in bytes. :func:`capped` is the one encoding that checks it: a value
that has no such text (not JSON, NaN, a lone surrogate) raises :class:`NotJSON`, a text past the
cap :class:`JSONTooLarge`, and each caller turns them into its own error.
"""
from __future__ import annotations

import json
from typing import Any


class NotJSON(ValueError):
    """A value has no JSON text detflow can store; the message says why."""


class JSONTooLarge(ValueError):
    """A value's JSON text is larger than its cap."""

    def __init__(self, size: int, cap: int) -> None:
        super().__init__(f"is {size} bytes of JSON; the cap is {cap}")
        self.size = size
        self.cap = cap


def dumps(value: Any) -> str:
    """Return the canonical JSON text detflow stores for inputs and outputs."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def capped(value: Any, cap: int) -> str:
    """Return the canonical JSON text of ``value`` when its UTF-8 is at most ``cap`` bytes."""
    try:
        text = dumps(value)
    except (TypeError, ValueError) as exc:
        raise NotJSON(f"is not JSON-serialisable: {exc}") from None
    try:
        size = len(text.encode())
    except UnicodeEncodeError as exc:  # neither JSON's UTF-8 nor BSON can hold a lone surrogate
        raise NotJSON(f"holds text that is not valid Unicode (a lone surrogate at character {exc.start}, "
                      "as a file name that is not UTF-8 gives)") from None
    if size > cap:
        raise JSONTooLarge(size, cap)
    return text
