"""Secrets out of everything a post-mortem is written from: keys, tokens, passwords, connection strings.

Two passes: a mapping's value is replaced whole when its key names a secret (``password``,
``api_key``, ``Authorization``, ...), and every string is scanned for the shapes secrets take in
text (``scheme://user:pass@host``, ``Bearer ...``, ``token=...``, PEM private keys, the prefixes of
well-known API keys, long random-looking strings). It errs on the side of redacting: a redacted
word costs a post-mortem little, a leaked key costs a rotation. Plain prose that happens to contain
a secret without any of these shapes ("the password is hunter2") cannot be recognised.
"""
from __future__ import annotations

import json
import re
from typing import Any

REDACTED = "[REDACTED]"

#: A mapping key or an assignment name that holds a secret.
_SECRET_NAME = (
    r"pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
    r"|credentials?|auth(?!or)|cookie|session[_-]?(?:id|key)|signature|dsn|connection[_-]?string"
)
_SECRET_KEY = re.compile(_SECRET_NAME, re.IGNORECASE)



def _assignment(match: re.Match[str]) -> str:
    quote = match[0][len(match[1]):][:1]
    return match[1] + (quote + REDACTED + quote if quote in ("'", '"') else REDACTED)


_PATTERNS: list[tuple[re.Pattern[str], Any]] = [
    # PEM private keys, whole (or to the end of a cut text).
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)"),
     "[REDACTED PRIVATE KEY]"),
    # The user information of any URL: mongodb://user:pass@host, https://token@host.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#@]+@"), r"\1" + REDACTED + "@"),
    # HTTP authorization schemes.
    (re.compile(r"(?i)\b(bearer|basic|digest)\s+[A-Za-z0-9\-._~+/]{6,}=*"), r"\1 " + REDACTED),
    # name=value, name: value, "name": "value", with a name that holds a secret.
    (re.compile(r"(?i)([\"']?\b[\w.\-]*(?:" + _SECRET_NAME + r")[\w.\-]*[\"']?\s*[:=]\s*)"
                r"(?:\"[^\"]*\"|'[^']*'|[^\s,;&\"'}\])]+)"), _assignment),
    # Well-known key formats: OpenAI, Stripe, GitHub, Slack, AWS, Google; JSON Web Tokens.
    (re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{16,}"), REDACTED),
    (re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}"), REDACTED),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"), REDACTED),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"), REDACTED),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"), REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}"), REDACTED),
    # Long random-looking strings: 32+ characters mixing upper case, lower case and digits
    # (lower-case hex, such as SHA-256 digests and execution ids, is left alone).
    (re.compile(r"\b(?=[A-Za-z0-9_\-]*[A-Z])(?=[A-Za-z0-9_\-]*[a-z])(?=[A-Za-z0-9_\-]*[0-9])"
                r"[A-Za-z0-9_\-]{32,}"), REDACTED),
]


def text(value: str) -> str:
    """Return ``value`` with every secret-shaped part replaced by ``[REDACTED]``."""
    for pattern, replacement in _PATTERNS:
        value = pattern.sub(replacement, value)
    return value


def secret_key(name: str) -> bool:
    """Tell whether a mapping key names a secret."""
    return bool(_SECRET_KEY.search(name))


def value(data: Any) -> Any:
    """Return a copy of ``data`` with secrets redacted: by key in mappings, by shape in strings.

    A string under a key ending in ``_json`` (the stored form of inputs and outputs) is parsed and
    redacted as the JSON value it holds, then written back as JSON.
    """
    if isinstance(data, str):
        return text(data)
    if isinstance(data, dict):
        return {k: _item(k, v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [value(item) for item in data]
    return data


def _item(key: Any, data: Any) -> Any:
    if not isinstance(key, str):
        return value(data)
    if secret_key(key) and data not in (None, ""):
        return REDACTED
    if key.endswith("_json") and isinstance(data, str):
        try:
            parsed = json.loads(data)
        except ValueError:
            return text(data)
        return json.dumps(value(parsed), ensure_ascii=False)
    return value(data)
