"""The JSON parser: DRF's, with a size limit and a nesting limit checked before decoding.

DRF reads a JSON body whole through Django, which refuses one over ``DATA_UPLOAD_MAX_MEMORY_SIZE``
(the settings keep that at least ``DETFLOW_API_MAX_BODY_BYTES``); both answer 413.
"""
from __future__ import annotations

import json
import re
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

from detflow_site import conf
from detflow_site.errors import InvalidArgument, PayloadTooLarge
from workflows import jsontext

#: Bodies nested deeper than this are refused before decoding (Python's decoder recurses). Fields
#: holding JSON values have their own, lower limit (``DETFLOW_API_MAX_JSON_DEPTH``) and name the field.
PARSE_DEPTH = 512

_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
#: A surrogate written as an escape: the only way one reaches a body decoded from UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JSONParser(parsers.JSONParser):
    """Parse a JSON body of at most ``DETFLOW_API_MAX_BODY_BYTES``; NaN and Infinity are refused."""

    def parse(self, stream: Any, media_type: str | None = None,
              parser_context: dict[str, Any] | None = None) -> Any:
        limit = conf.get().API_MAX_BODY_BYTES
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise too_large(len(raw), limit)
        encoding = (parser_context or {}).get("encoding") or "utf-8"
        try:
            text = raw.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            raise ParseError(f"the body is not valid {encoding} text") from None
        if nesting(text, PARSE_DEPTH) > PARSE_DEPTH:
            raise ParseError(f"JSON parse error - the body is nested deeper than {PARSE_DEPTH} levels")
        try:
            value = json.loads(text, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        # From UTF-8 a lone surrogate comes only as an escape; another charset (utf-7, say) can
        # decode to one directly.
        utf8 = encoding.lower().replace("_", "-") in ("utf-8", "utf8")
        if _SURROGATE_ESCAPE.search(text) or (not utf8 and not text.isascii()):
            refuse_lone_surrogates(value)
        return value


def refuse_lone_surrogates(value: Any) -> None:
    """Raise ``InvalidArgument`` naming the first string (or key) of ``value`` that holds a lone
    surrogate (``jsontext.lone_surrogate``). A pair of escapes that makes one character is decoded
    to it and passes."""
    found = jsontext.lone_surrogate(value)
    if found:
        where, reason = found
        raise InvalidArgument(where or "body", reason, code="invalid_text")


def nesting(text: str, stop: int) -> int:
    """Return how deep the brackets of JSON ``text`` nest (counting stops past ``stop``)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if match[0] in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > stop:
                break
    return deepest


def too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is {size} bytes; at most {limit} are accepted "
                           "(DETFLOW_API_MAX_BODY_BYTES)")


def content_length(meta: Any) -> int:
    """Return the request's declared ``Content-Length`` (0 when absent or not a number)."""
    try:
        return max(int(meta.get("CONTENT_LENGTH") or 0), 0)
    except (TypeError, ValueError):
        return 0


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")
