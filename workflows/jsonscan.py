"""A streaming check of JSON structure, fed text in chunks, that never holds the whole document.

It checks what truncation and most corruption break (brackets that balance and match, strings
that end, scalars that are numbers, ``true``, ``false`` or ``null``, nothing after the value) and
collects the top-level keys of an object (or counts the items of an array). It is not a full
grammar check: a missing ``:`` or ``,`` between two values passes.
"""
from __future__ import annotations

import json
import re

#: Top-level keys kept; the rest are counted.
KEYS_KEPT = 100
#: Longest key text kept, and the longest scalar accepted (a longer one is not JSON anyway).
KEY_CHARS = 200
SCALAR_CHARS = 1000

_OUTSIDE = re.compile(r'["{}\[\],:]')
_INSIDE = re.compile(r'["\\]')
_SCALAR = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")
_PAIRS = {"}": "{", "]": "["}
#: Below the top level: a stretch of whole strings and anything but brackets and quotes.
_RUN = re.compile(r'(?:[^"{}\[\]]++|"(?:[^"\\]++|\\.)*+")*+', re.DOTALL)
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
#: A token (what is not a string, space, ',' or ':') that is not a whole JSON scalar.
_BAD_TOKEN = re.compile(r'(?<![^\s,:"])(?!(?:' + _SCALAR.pattern + r')(?![^\s,:"]))[^\s,:"]+')
#: The last token of a piece. It starts where a token does (the lookbehind), so that a long token
#: followed by a space is read once, not once from each of its characters.
_TAIL = re.compile(r'(?<![^\s,:"{}\[\]])[^\s,:"{}\[\]]++\Z')


class JsonError(ValueError):
    """The text is not JSON; the message says where and why, in words."""


class JsonScan:
    """Feed text with :meth:`feed`, then call :meth:`close`; read ``root``, ``keys``, ``items``."""

    def __init__(self) -> None:
        #: ``"object"`` or ``"array"`` once the first bracket is seen.
        self.root: str | None = None
        #: The top-level object's keys, in order (at most ``KEYS_KEPT``).
        self.keys: list[str] = []
        #: Top-level keys of an object, or items of an array, counted in full.
        self.items = 0
        self._stack: list[str] = []
        self._in_string = False
        self._escape = False
        self._key: list[str] | None = None
        self._expect_key = False
        self._done = False
        self._item_open = False
        self._carry = ""
        self._offset = 0

    def feed(self, text: str) -> None:
        """Scan the next piece of the document."""
        text = self._carry + text
        start = self._offset - len(self._carry)
        self._carry = ""
        runs: list[tuple[int, int]] = []
        stack = self._stack
        i, n = 0, len(text)
        while i < n:
            if self._escape:
                self._escape = False
                self._capture(text[i])
                i += 1
            elif self._in_string:
                match = _INSIDE.search(text, i)
                end = match.start() if match else n
                self._capture(text[i:end])
                if match is None:
                    break
                if match.group() == "\\":
                    self._escape = True
                    self._capture("\\")
                else:
                    self._end_string()
                i = match.end()
            elif len(stack) >= 2:
                # Below the top level only brackets matter: skip whole strings and scalars in C,
                # and check the scalars of all the runs at once below.
                run = _RUN.match(text, i)
                end = run.end() if run else i  # it always matches, the empty string at least
                if end == n:
                    tail = _TAIL.search(text, i)
                    cut = tail.start() if tail else n
                    runs.append((i, cut))
                    self._carry = text[cut:]  # the last token may go on in the next piece
                    break
                runs.append((i, end))
                char = text[end]
                if char == '"':  # a string this piece does not finish
                    self._in_string = True
                    self._key = None
                elif char in "{[":
                    stack.append(char)
                elif stack[-1] == _PAIRS[char]:
                    stack.pop()
                else:
                    raise JsonError(f"a {char!r} near character {start + end} closes nothing that is open")
                i = end + 1
            else:
                match = _OUTSIDE.search(text, i)
                if match is None:
                    self._carry = text[i:].lstrip()
                    break
                self._scalar(text[i:match.start()], start + i)
                self._structure(match.group(), start + match.start())
                i = match.end()
        if len(self._carry) > SCALAR_CHARS:
            raise JsonError(f"unexpected text near character {start + n - len(self._carry)}")
        self._check_runs(text, runs, start)
        self._offset = start + n

    def _check_runs(self, text: str, runs: list[tuple[int, int]], start: int) -> None:
        """Check every scalar in the runs skipped below the top level (one pass; rescan on error)."""
        if not runs or not _BAD_TOKEN.search(_STRING.sub('""', " ".join(text[a:b] for a, b in runs))):
            return
        for a, b in runs:
            # Blank the strings out keeping their length, so that the position is exact.
            bad = _BAD_TOKEN.search(_STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', text[a:b]))
            if bad:
                raise JsonError(f"{bad.group()[:40]!r} near character {start + a + bad.start()} "
                                "is not a JSON value")

    def close(self) -> None:
        """Say the document ended; raise :class:`JsonError` if it ended too soon."""
        self._scalar(self._carry, self._offset - len(self._carry))
        if self._in_string:
            raise JsonError("the text ends inside a string: the file looks truncated")
        if self._stack:
            raise JsonError(f"the text ends with {len(self._stack)} bracket(s) still open: "
                            "the file looks truncated")
        if not self._done:
            raise JsonError("there is no JSON object or array in it")

    def _scalar(self, segment: str, at: int) -> None:
        value = segment.strip()
        if not value:
            return
        at += len(segment) - len(segment.lstrip())
        if self._done or not self._stack:
            raise JsonError(f"unexpected text after the JSON value, near character {at}")
        if not _SCALAR.fullmatch(value):
            raise JsonError(f"{value[:40]!r} near character {at} is not a JSON value")
        self._value_starts()

    def _structure(self, char: str, at: int) -> None:
        if self._done:
            raise JsonError(f"unexpected {char!r} after the JSON value, near character {at}")
        if char in "{[":
            if not self._stack:
                self.root = "object" if char == "{" else "array"
            else:
                self._value_starts()
            self._stack.append(char)
            self._expect_key = char == "{" and len(self._stack) == 1
        elif char in "}]":
            if not self._stack or self._stack[-1] != _PAIRS[char]:
                raise JsonError(f"a {char!r} near character {at} closes nothing that is open")
            self._stack.pop()
            self._done = not self._stack
        elif not self._stack:
            raise JsonError(f"unexpected {char!r} near character {at}")
        elif char == '"':
            self._in_string = True
            top_key = self._expect_key and len(self._stack) == 1
            self._key = [] if top_key else None
            if not top_key:
                self._value_starts()
        elif char == "," and len(self._stack) == 1:
            self._expect_key = self._stack[0] == "{"
            self._item_open = False
        elif char == ":" and len(self._stack) == 1:
            self._expect_key = False

    def _value_starts(self) -> None:
        # An item of the top-level array is counted when its value starts (a comma alone is not).
        if self._stack == ["["] and not self._item_open:
            self.items += 1
            self._item_open = True

    def _capture(self, text: str) -> None:
        if self._key is not None and len(self._key) < KEY_CHARS:
            self._key.append(text[: KEY_CHARS - len(self._key)])

    def _end_string(self) -> None:
        self._in_string = False
        if self._key is not None:
            raw = "".join(self._key)
            self._key = None
            self.items += 1
            if len(self.keys) < KEYS_KEPT:
                try:
                    self.keys.append(json.loads(f'"{raw}"'))
                except ValueError:
                    self.keys.append(raw)
