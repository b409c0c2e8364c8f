"""Secret inputs: the input fields a definition names in ``secret_inputs``, masked wherever shown.

A definition may name fields of its input as secret by dotted path (``"card.number"``; a path that
meets a list applies to each of its items). Handlers receive them as they were given; everything
that shows an execution (the API, the admin, post-mortems and their prompts) shows ``[secret]``
in their place, and the text a handler writes (log lines, error messages, tracebacks) has their
values replaced by ``[secret]`` before it is stored or logged. Pure functions on plain data.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: What a secret value is shown as.
MASK = "[secret]"
#: Most secret input paths one definition may name.
MAX_PATHS = 50
#: A path: 1 to 8 dot-separated keys of 1 to 64 letters, digits, '_' or '-'.
PATH_RE = re.compile(r"[A-Za-z0-9_-]{1,64}(?:\.[A-Za-z0-9_-]{1,64}){0,7}")
#: Shortest value scrubbed from text: a shorter one would blank out ordinary words and numbers.
MIN_SCRUB_CHARS = 4
#: Keys of an execution document whose JSON text is masked by path rather than scrubbed.
_BY_PATH = frozenset({"input_json", "input_diff_json"})

Paths = Sequence[str]


def paths_of(doc: Mapping[str, Any]) -> tuple[str, ...]:
    """Return the secret input paths of a stored execution (its pinned definition's)."""
    return tuple((doc.get("definition") or {}).get("secret_inputs") or ())


def mask(value: Any, paths: Paths) -> Any:
    """Return a copy of ``value`` with the value at each path replaced by ``[secret]``."""
    for path in paths:
        value = _mask_at(value, path.split("."))
    return value


def _mask_at(value: Any, keys: list[str]) -> Any:
    if not keys:
        return MASK
    if isinstance(value, list):
        return [_mask_at(item, keys) for item in value]
    if isinstance(value, dict) and keys[0] in value:
        return {**value, keys[0]: _mask_at(value[keys[0]], keys[1:])}
    return value


def values(value: Any, paths: Paths) -> set[str]:
    """Return the secret values found at ``paths``, as the text they would appear as."""
    found: set[str] = set()
    for path in paths:
        _collect(value, path.split("."), found)
    return {text for text in found if len(text) >= MIN_SCRUB_CHARS}


def _collect(value: Any, keys: list[str], found: set[str]) -> None:
    if isinstance(value, list):
        for item in value:
            _collect(item, keys, found)
    elif not keys:
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found.add(json.dumps(value))
        elif isinstance(value, dict):
            found.add(json.dumps(value, ensure_ascii=False))
            for item in value.values():
                _collect(item, [], found)
    elif isinstance(value, dict) and keys[0] in value:
        _collect(value[keys[0]], keys[1:], found)


def unmask(new: Any, old: Any, paths: Paths) -> Any:
    """Return ``new`` with each ``[secret]`` left at a secret path replaced by the value in ``old``.

    An operator who edits an input shown masked and leaves a secret as it was keeps its value.
    """
    for path in paths:
        new = _unmask_at(new, old, path.split("."))
    return new


def _unmask_at(new: Any, old: Any, keys: list[str]) -> Any:
    if not keys:
        return old if new == MASK else new
    if isinstance(new, dict) and isinstance(old, dict) and keys[0] in new and keys[0] in old:
        return {**new, keys[0]: _unmask_at(new[keys[0]], old[keys[0]], keys[1:])}
    return new


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Return ``text`` with every occurrence of each secret value replaced by ``[secret]``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def execution(doc: dict[str, Any]) -> dict[str, Any]:
    """Return an execution document as it may be shown: secret inputs masked, their values scrubbed
    from every text it holds (the document itself is not changed)."""
    paths = paths_of(doc)
    if not paths:
        return doc
    secrets = secret_values(doc)
    return {key: _shown(key, item, paths, secrets) for key, item in doc.items()}


def event(doc: Mapping[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    """Return one event of an execution (``doc`` holds its definition and inputs) as it may be shown."""
    paths = paths_of(doc)
    if not paths:
        return recorded
    shown: dict[str, Any] = _shown(None, recorded, paths, secret_values(doc))
    return shown


#: The fields of an execution that :func:`execution` and :func:`event` need, as a projection.
PROJECTION = {"definition.secret_inputs": 1, "input_json": 1, "steps.input_json": 1}


def secret_values(doc: Mapping[str, Any]) -> set[str]:
    """Return the secret values of an execution: those of its input and of each step's own input."""
    paths = paths_of(doc)
    inputs = [doc.get("input_json")] + [s.get("input_json") for s in doc.get("steps") or []]
    found: set[str] = set()
    for text in inputs:
        if isinstance(text, str):
            found |= values(json.loads(text), paths)
    return found


def _shown(key: Any, value: Any, paths: Paths, secrets: set[str]) -> Any:
    if key == "definition":
        return value
    if key in _BY_PATH and isinstance(value, str):
        parsed = json.loads(value)
        shown = diff(parsed, paths) if key == "input_diff_json" else mask(parsed, paths)
        return json.dumps(shown, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {k: _shown(k, v, paths, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(None, v, paths, secrets) for v in value]
    return value


def diff(changes: Any, paths: Paths) -> Any:
    """Mask the old and new values of a retry's input difference (``/a/b`` paths) at secret paths."""
    if not isinstance(changes, list):
        return changes
    shown = []
    for change in changes:
        if not isinstance(change, dict) or not isinstance(change.get("path"), str):
            shown.append(change)
            continue
        where = [p for p in change["path"].split("/") if p]
        change = dict(change)
        for path in paths:
            keys = path.split(".")
            for side in ("old", "new"):
                if side not in change:
                    continue
                if where[: len(keys)] == keys:  # the change is at or inside a secret
                    change[side] = MASK
                elif keys[: len(where)] == where:  # a secret is inside the changed value
                    change[side] = _mask_at(change[side], keys[len(where):])
        shown.append(change)
    return shown
