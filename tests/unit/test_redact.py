"""Redaction: every secret shape is replaced, everything else is left as it was."""
from __future__ import annotations

import json

import pytest

from insights import redact

#: A key of the shape rest_framework.authtoken makes (``binascii.hexlify(os.urandom(20))``).
KEY = "154f0e8b1f3c2d4a5b6c7d8e9f00112233445566"


@pytest.mark.parametrize(("text", "secret"), [
    ("connect mongodb://admin:s3cr3t@db:27017/app", "s3cr3t"),
    ("redis://:pa55@cache:6379/0 refused", "pa55"),
    ("clone https://ghp_abcdefghijklmnopqrstuvwx12@github.com/x", "ghp_abcdefghijklmnopqrstuvwx12"),
    ("Authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
    ("header Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    ("password=hunter2 user=bob", "hunter2"),
    ("db_password: 'tr0ub4dor&3'", "tr0ub4dor&3"),
    ('{"api_key": "k-123456", "n": 1}', "k-123456"),
    ("?access_token=xyz789&page=2", "xyz789"),
    ("client_secret = abc", "abc"),
    ("key sk-proj-AbCdEf0123456789GhIjKl rejected", "sk-proj-AbCdEf0123456789GhIjKl"),
    ("stripe sk_live_51HxYzAbCdEfGhIj", "sk_live_51HxYzAbCdEfGhIj"),
    ("slack xoxb-1234567890-abcdefghij", "xoxb-1234567890-abcdefghij"),
    ("aws AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("google AIzaSyA1234567890abcdefghijklmnopqrstuv", "AIzaSyA1234567890abcdefghijklmnopqrstuv"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature-123", "eyJhbGciOiJIUzI1NiJ9"),
    ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN\n-----END PRIVATE KEY-----", "MIIEvQIBADAN"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEcut", "MIIEcut"),
    ("random Zx8Qw2Lp9Rt4Yu6Io1Pa3Sd5Fg7Hj0Kl", "Zx8Qw2Lp9Rt4Yu6Io1Pa3Sd5Fg7Hj0Kl"),
    # detflow's own API tokens (DRF: 40 hex digits), and Authorization headers of any scheme.
    (f"Authorization: Token {KEY}", KEY),
    (f"authorization: token {KEY}", KEY),
    (f"TOKEN {KEY.upper()} refused", KEY.upper()),
    (f"bEaReR {KEY}", KEY),
    ("Token abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz"),
    (f"GET /api/v1/executions/ key={KEY}", KEY),
    (f"the key {KEY} was sent", KEY),
    (f"/tokens/{KEY}/", KEY),
    (f'{{"Authorization": "Token {KEY}"}}', KEY),
    (f'{{"headers": {{"authorization": "Bearer {KEY}"}}}}', KEY),
    ("Proxy-Authorization: Negotiate c2VjcmV0 dGlja2V0", "dGlja2V0"),
    ("X-Authorization: Custom s3cr3t-one, next=1", "s3cr3t-one"),
    ("Cookie: sessionid=abc123; csrftoken=def456", "def456"),
    ('password="pa\\"ss word" next', "ss word"),
    ("password='never closed", "never closed"),
    ("x-eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature-123", "eyJhbGciOiJIUzI1NiJ9"),
    ("sqlalchemy+postgresql://app:pw9@db/x", "pw9"),
])
def test_redact__removes_each_secret_shape(text: str, secret: str) -> None:
    redacted = redact.text(text)

    assert secret not in redacted
    assert "[REDACTED" in redacted


@pytest.mark.parametrize("text", [
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "execution 1a631bfe0aa9178782f4768892ffea5c step files.validate",
    "the PNG image is truncated or corrupt (Truncated File Read)",
    "tokens used: 5 of 100; author: alice",
    "https://example.com/path?page=2",
    "ValueError: boom on attempt 3",
    "token expired yesterday; authorized_by: bob",
    "Basic auth failed",
    f"64 hex {KEY}{KEY[:24]} and 32 hex {KEY[:32]}",
])
def test_redact__leaves_ordinary_text_alone(text: str) -> None:
    assert redact.text(text) == text


def test_redact__values_by_key_and_json_text_stays_json() -> None:
    data = {"password": "x", "Token": 12, "nested": [{"apiKey": {"a": 1}, "ok": "mongodb://u:p@h/d"}],
            "input_json": json.dumps({"secret": "s", "n": 1, "url": "https://u:p@h/"}),
            "empty_password": "", "note": None}

    redacted = redact.value(data)

    assert redacted["password"] == "[REDACTED]" and redacted["Token"] == "[REDACTED]"
    assert redacted["nested"] == [{"apiKey": "[REDACTED]", "ok": "mongodb://[REDACTED]@h/d"}]
    assert json.loads(redacted["input_json"]) == {"secret": "[REDACTED]", "n": 1,
                                                  "url": "https://[REDACTED]@h/"}
    assert redacted["empty_password"] == "" and redacted["note"] is None
    assert data["password"] == "x"  # a copy


def test_redact__authorization_keys_are_secret_and_author_is_not() -> None:
    data = {"Authorization": f"Token {KEY}", "headers": {"proxy-authorization": "Basic eA=="},
            "author": "alice", "authored_by": "bob"}

    assert redact.value(data) == {"Authorization": "[REDACTED]",
                                  "headers": {"proxy-authorization": "[REDACTED]"},
                                  "author": "alice", "authored_by": "bob"}


def test_redact__a_redacted_value_is_redacted_once() -> None:
    assert redact.text(f"Authorization: Token {KEY}") == "Authorization: [REDACTED]"
    assert redact.text("dsn=mongodb://u:p@h/db") == "dsn=[REDACTED]"
    assert redact.text("token=Bearer abcdefgh") == "token=[REDACTED] [REDACTED]"


def test_redact__a_long_text_keeps_its_ends_and_says_how_much_was_cut() -> None:
    long = "start password=hunter2 " + "word " * 10_000 + "ValueError: the end"

    redacted = redact.text(long)

    assert len(redacted) <= redact.SCAN_CHARS + 40
    assert redacted.startswith("start password=[REDACTED] word ")
    assert redacted.endswith(" word ValueError: the end")
    kept = redact.cut(long)
    cut = int(kept.split("[... ", 1)[1].split(" characters cut]", 1)[0])
    assert len(kept) - len(f"[... {cut} characters cut]") + cut == len(long)


def test_redact__a_cut_inside_a_secret_drops_the_secret() -> None:
    """Kept in part, the key would be too short to be recognised: the cut drops it whole."""
    half = redact.SCAN_CHARS // 2
    key = "sk-proj-AbCdEf0123456789GhIjKl"
    filler = "x " * half
    head_cut = filler[: half - 13] + key + filler  # the head ends 13 characters into the key
    tail_cut = filler + key + filler[: half - 13]  # the tail starts 13 characters before its end

    for text in (head_cut, tail_cut):
        redacted = redact.text(text)

        assert "characters cut]" in redacted
        assert "sk-proj" not in redacted and "GhIjKl" not in redacted and "AbCdE" not in redacted


def test_redact__a_short_text_is_not_cut() -> None:
    text = "a " * (redact.SCAN_CHARS // 2)

    assert redact.text(text) == text
