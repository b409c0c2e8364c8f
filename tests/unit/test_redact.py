"""Redaction: every secret shape is replaced, everything else is left as it was."""
from __future__ import annotations

import json

import pytest

from insights import redact


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
