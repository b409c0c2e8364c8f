"""The file-processing settings: defaults, environment strings, and bad values named."""
from __future__ import annotations

import pytest

from detflow_site import conf


def test_file_settings__defaults() -> None:
    parsed, problems = conf.parse({})
    assert problems == []
    assert (parsed.STORAGE_DIR, parsed.MAX_FILE_BYTES, parsed.MAX_IMAGE_PIXELS, parsed.NOTIFY_URL) == (
        "var/storage", 512 * 1024 * 1024, 40_000_000, None)


def test_file_settings__read_from_environment_strings() -> None:
    parsed, problems = conf.parse({"STORAGE_DIR": " /srv/files ", "MAX_FILE_BYTES": "1048576",
                                   "MAX_IMAGE_PIXELS": "1000000", "NOTIFY_URL": "https://hooks.example/x"})
    assert problems == []
    assert (parsed.STORAGE_DIR, parsed.MAX_FILE_BYTES, parsed.MAX_IMAGE_PIXELS, parsed.NOTIFY_URL) == (
        "/srv/files", 1_048_576, 1_000_000, "https://hooks.example/x")


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("STORAGE_DIR", " ", "must be a directory path"),
    ("MAX_FILE_BYTES", "0", "must be at least 1"),
    ("MAX_FILE_BYTES", "1.5", "must be an integer"),
    ("MAX_IMAGE_PIXELS", "many", "must be an integer"),
    ("NOTIFY_URL", "ftp://x", "must start with http:// or https://"),
])
def test_file_settings__bad_values_are_named(name: str, value: str, reason: str) -> None:
    _, problems = conf.parse({name: value})
    assert len(problems) == 1
    assert problems[0].startswith(f"DETFLOW_{name}={value!r} {reason}")
