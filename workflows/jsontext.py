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


def lone_surrogate(value: Any, path: str = "") -> tuple[str, str] | None:
    """Return where the first lone surrogate of ``value`` sits (``input.items[2]``, a key's own
    object's path) and what it is, or ``None``: valid JSON (``"\\ud800"``) and a valid Python
    string, but no UTF-8 text, so no store keeps it."""
    if isinstance(value, str):
        return _surrogate_in(value, path, "the text")
    if isinstance(value, dict):
        for key, item in value.items():
            found = (_surrogate_in(key, path, "a key") if isinstance(key, str) else None) \
                or lone_surrogate(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = lone_surrogate(item, f"{path}[{index}]")
            if found:
                return found
    return None


def _surrogate_in(text: str, path: str, what: str) -> tuple[str, str] | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        lone = ascii(text[exc.start])[1:-1]
        return path, f"{what} holds a lone surrogate ({lone}), which is not text: no store can keep it"
    return None


def capped(value: Any, cap: int) -> str:
    """Return the canonical JSON text of ``value`` when its UTF-8 is at most ``cap`` bytes."""
    try:
        text = dumps(value)
    except (TypeError, ValueError) as exc:
        raise NotJSON(f"is not JSON-serialisable: {exc}") from None
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # neither JSON's UTF-8 nor BSON can hold a lone surrogate
        where, reason = lone_surrogate(value) or ("", "holds a lone surrogate")
        raise NotJSON(f"{reason} (at {where or 'the top'}; a file name that is not UTF-8 gives one)") \
            from None
    if size > cap:
        raise JSONTooLarge(size, cap)
    return text
