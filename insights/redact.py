"""Secrets out of everything a post-mortem is written from: keys, tokens, passwords, connection strings.

Two passes: a mapping's value is replaced whole when its key names a secret (``password``,
``api_key``, ``Authorization``, ...), and every string is scanned for the shapes secrets take in
text (``scheme://user:pass@host``, ``Bearer ...``, ``Token ...``, ``token=...``, an
``Authorization:`` header line, PEM private keys, the prefixes of well-known API keys, detflow's
own API tokens (40 hexadecimal digits standing alone), long random-looking strings). It errs on the
side of redacting: a redacted word costs a post-mortem little, a leaked key costs a rotation. Plain
prose that happens to contain a secret without any of these shapes ("the password is hunter2")
cannot be recognised. SHA-256 digests (64 hex digits) and execution ids (32) are left alone; a
40-digit one (a Git commit, say) is redacted like a token.

Cost: every pattern is linear in the text it scans (possessive or bounded runs, no unbounded run
nested around an alternation, every run that can fail anchored where its characters start), and a
string longer than :data:`SCAN_CHARS` is cut first: its first and last ``SCAN_CHARS / 2``
characters are kept (the end of a traceback is what explains it) and the middle becomes
``[... N characters cut]``. Each cut moves to the nearest whitespace, so that a secret the cut falls
in is dropped rather than kept in part.
"""
from __future__ import annotations

import json
import re
from typing import Any

REDACTED = "[REDACTED]"
#: Longest string scanned whole; a longer one keeps its first and last half of this.
SCAN_CHARS = 16 * 1024

#: A mapping key or an assignment name that holds a secret ("author" is not one, "authorization" is).
_SECRET_NAME = (
    r"pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
    r"|credentials?|authorization|auth(?!or)|cookie|session[_-]?(?:id|key)|signature|dsn"
    r"|connection[_-]?string"
)
_SECRET_KEY = re.compile(_SECRET_NAME, re.IGNORECASE)
#: A name, optionally quoted, then ``:`` or ``=``. A name starts where a run of name characters
#: does (the lookbehind), so that each run is read once and not again from each of its positions.
_NAME = r"(?<![\w.\-])[\"']?+(?=[\w.\-]*?(?:{names}))[\w.\-]++[\"']?+\s*+[:=]\s*+"
#: A quoted value (escapes included; it ends at its quote, a line break or the end of the text).
_QUOTED = r"\"(?:[^\"\\\n]|\\.)*+\"?|'(?:[^'\\\n]|\\.)*+'?"
_SPACE = re.compile(r"\s")


def _assignment(match: re.Match[str]) -> str:
    quote = match[0][len(match[1]):][:1]
    return match[1] + (quote + REDACTED + quote if quote in ("'", '"') else REDACTED)


_PATTERNS: list[tuple[re.Pattern[str], Any]] = [
    # PEM private keys, whole (or to the end of a cut text).
    (re.compile(r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----[\s\S]*?"
                r"(?:-----END [A-Z ]{0,40}PRIVATE KEY-----|\Z)"),
     "[REDACTED PRIVATE KEY]"),
    # The user information of any URL: mongodb://user:pass@host, https://token@host.
    (re.compile(r"(?i)(?<=[a-z0-9+.\-])://[^\s/?#@]++@"), "://" + REDACTED + "@"),
    # HTTP authorization schemes, in any case; ``Token`` (DRF's) takes a longer credential, so that
    # "token expired" stays prose.
    (re.compile(r"(?i)\b(bearer|basic|digest)\s++[A-Za-z0-9\-._~+/]{6,}+=*+"), r"\1 " + REDACTED),
    (re.compile(r"(?i)\b(token)\s++[A-Za-z0-9\-._~+/]{20,}+=*+"), r"\1 " + REDACTED),
    # Header lines whose whole value is a credential, spaces included: Authorization: Custom x y.
    (re.compile(r"(?i)(" + _NAME.format(names="authorization|cookie") + r")(?!\[REDACTED)"
                r"(?:" + _QUOTED + r"|(?:\[REDACTED\]|[^\r\n\"',}\]])++)"), _assignment),
    # name=value, name: value, "name": "value", with a name that holds a secret.
    (re.compile(r"(?i)(" + _NAME.format(names=_SECRET_NAME) + r")(?!\[REDACTED)"
                r"(?:" + _QUOTED + r"|(?:\[REDACTED\]|[^\s,;&\"'}\])])++)"), _assignment),
    # Well-known key formats: OpenAI, Stripe, GitHub, Slack, AWS, Google.
    (re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{16,}+"), REDACTED),
    (re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}+"), REDACTED),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}+|github_pat_[A-Za-z0-9_]{20,}+)"), REDACTED),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}+"), REDACTED),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"), REDACTED),
    # JSON Web Tokens. The first part is matched even without the other two, so that a run that is
    # no token is read once (``_jwt`` keeps it); the other parts are what makes one.
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{5,}+(\.[A-Za-z0-9_\-]{5,}+\.[A-Za-z0-9_\-]{5,}+)?"),
     lambda m: REDACTED if m[1] else m[0]),
    # detflow's API tokens (rest_framework.authtoken: 40 hex digits), standing alone.
    (re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{40}(?![0-9A-Za-z])"), REDACTED),
    # Long random-looking strings: 32+ characters mixing upper case, lower case and digits
    # (lower-case hex, such as SHA-256 digests and execution ids, is left alone).
    (re.compile(r"(?<![A-Za-z0-9_\-])(?=[A-Za-z0-9_\-]*[A-Z])(?=[A-Za-z0-9_\-]*[a-z])"
                r"(?=[A-Za-z0-9_\-]*[0-9])[A-Za-z0-9_\-]{32,}+"), REDACTED),
]


def text(value: str) -> str:
    """Return ``value`` with every secret-shaped part replaced by ``[REDACTED]``, cut to
    :data:`SCAN_CHARS` first when it is longer."""
    value = cut(value)
    for pattern, replacement in _PATTERNS:
        value = pattern.sub(replacement, value)
    return value


def cut(value: str, limit: int = SCAN_CHARS) -> str:
    """Return ``value`` whole if it has at most ``limit`` characters, else its first and last
    ``limit / 2`` (each cut moved to whitespace) around ``[... N characters cut]``."""
    if len(value) <= limit:
        return value
    half = limit // 2
    head, tail = value[:half], value[-half:]
    if not value[half].isspace():
        head = head[: max(head.rfind(c) for c in " \t\r\n") + 1]
    if not value[-half - 1].isspace():
        space = _SPACE.search(tail)
        tail = tail[space.start():] if space else ""
    return f"{head}[... {len(value) - len(head) - len(tail)} characters cut]{tail}"


def secret_key(name: str) -> bool:
    """Tell whether a mapping key names a secret."""
    return bool(_SECRET_KEY.search(name[:SCAN_CHARS]))


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
