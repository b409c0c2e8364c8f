"""No stall from data: every scan run over user text costs about what a plain text of its size costs.

Each hostile input is timed against a plain input of the same length, in the same test, best of 3
runs of each; the ratio must stay within :data:`RATIO`. Before the scans were made linear, several
of these took seconds to minutes (``"a.token" * 571``: 34 s; 64 KiB of ``,"a``: 25.7 s).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from insights import redact, writers
from insights.errors import WriterFailed
from workflows import filetypes
from workflows.jsonscan import JsonError, JsonScan

RATIO = 10
#: Calls per timed run are chosen so that a run of the plain input lasts at least this long.
RUN_S = 0.01
PROSE = "the worker retried the step after the store answered slowly; nothing was lost. "


def plain(size: int) -> str:
    """Return prose of exactly ``size`` characters."""
    return (PROSE * (size // len(PROSE) + 1))[:size]


def best(scan: Callable[[Any], Any], arg: Any, calls: int) -> float:
    """Return the shortest of 3 runs of ``calls`` calls of ``scan(arg)``."""
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(calls):
            scan(arg)
        runs.append(time.perf_counter() - started)
    return min(runs)


def ratio(scan: Callable[[Any], Any], hostile: Any, baseline: Any) -> float:
    """Return how many times longer ``scan`` takes on ``hostile`` than on ``baseline``."""
    started = time.perf_counter()
    scan(baseline)
    once = max(time.perf_counter() - started, 1e-6)
    calls = max(1, int(RUN_S / once))
    return best(scan, hostile, calls) / best(scan, baseline, calls)


#: Inputs that made a pattern of the redaction super-linear, and the size each is cut or grown to.
HOSTILE_TEXTS = {
    "a.token x 571 (the issue's 4 KB)": "a.token" * 571,
    "a.token x 5000 (the issue's 35 KB)": "a.token" * 5000,
    "a.token up to the scan limit": "a.token" * (redact.SCAN_CHARS // 7),
    "name runs: x-password": "x-password" * (redact.SCAN_CHARS // 10),
    "dotted words before ://": "a." * (redact.SCAN_CHARS // 2),
    "dashed run, no upper case": "a-" * (redact.SCAN_CHARS // 2),
    "JWT starts, no dots": "eyJ-" * (redact.SCAN_CHARS // 4),
    "JWT first parts": "eyJaaaaa." * (redact.SCAN_CHARS // 9),
    "open quotes": 'password="' * (redact.SCAN_CHARS // 10),
    "escapes in a quoted value": 'password="' + "\\a" * (redact.SCAN_CHARS // 2 - 5),
    "schemes and spaces": ("token" + " " * 50) * (redact.SCAN_CHARS // 55),
    "PEM headers": "-----BEGIN " * (redact.SCAN_CHARS // 11),
    "header names": "Authorization:" * (redact.SCAN_CHARS // 14),
    "redaction markers": "password=" + "[REDACTED" * (redact.SCAN_CHARS // 9 - 1),
    "hex run": "0123456789abcdef" * (redact.SCAN_CHARS // 16),
    "one long token": "Aa1-" * 50_000,
}


@pytest.mark.parametrize("hostile", HOSTILE_TEXTS.values(), ids=HOSTILE_TEXTS.keys())
def test_redact__hostile_text_costs_at_most_10x_plain_text_of_its_size(hostile: str) -> None:
    assert ratio(redact.text, hostile, plain(len(hostile))) <= RATIO


def test_redact__a_hostile_note_in_an_execution_costs_at_most_10x_a_plain_one() -> None:
    def execution(note: str) -> dict[str, Any]:
        return {"input_json": f'{{"note": "{note}"}}', "steps": [{"error": {"message": note}}]}

    assert ratio(redact.value, execution("a.token" * 500), execution(plain(3500))) <= RATIO


#: Text files that made CSV detection (``csv.Sniffer``) super-linear, 64 KiB each.
HOSTILE_FILES = {
    'the issue\'s ,"a': ',"a',
    "delimiters only": ",;\t|",
    "quotes only": '"',
    "quoted delimiters": '",',
    "empty fields": "a,",
}


@pytest.mark.parametrize("unit", HOSTILE_FILES.values(), ids=HOSTILE_FILES.keys())
def test_detect__hostile_text_file_costs_at_most_10x_a_plain_one_of_its_size(
    tmp_path: Path, unit: str
) -> None:
    """The plain file is one line of prose: the detector reads it to the end of its sample too."""
    size = filetypes.SAMPLE
    hostile, baseline = tmp_path / "hostile.txt", tmp_path / "plain.txt"
    hostile.write_text((unit * size)[:size])
    baseline.write_text(plain(size))

    def detect(path: Path) -> filetypes.Detected:
        return filetypes.detect(path, max_bytes=10 * size, max_pixels=1)

    assert detect(hostile).kind == "text"
    assert ratio(detect, hostile, baseline) <= RATIO


def test_jsonscan__a_long_token_ending_a_piece_costs_at_most_10x_short_ones() -> None:
    def feed(text: str) -> None:
        JsonScan().feed(text)

    size = 200_000
    hostile = "[[" + "1" * size + " "
    baseline = "[[" + "1 " * (size // 2) + " "
    assert ratio(feed, hostile, baseline) <= RATIO


def test_jsonscan__a_long_token_ending_a_piece_is_still_refused() -> None:
    scan = JsonScan()

    with pytest.raises(JsonError, match="unexpected text"):
        scan.feed("[[" + "1" * 2000)


def _answer(content: str) -> Any:
    return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=content, refusal=None))])


def test_model_answer__a_hostile_fence_costs_at_most_10x_a_plain_answer() -> None:
    def parse(content: str) -> None:
        with pytest.raises(WriterFailed, match="not JSON"):
            writers._parse(_answer(content))

    size = 64_000
    assert ratio(parse, "```" + " " * size + "x", "```" + plain(size) + "x") <= RATIO


def test_model_answer__a_fenced_answer_is_still_read() -> None:
    assert writers._parse(_answer('```json\n  {"a": [1]}  \n```')) == {"a": [1]}
    assert writers._parse(_answer("```[2]```")) == [2]
