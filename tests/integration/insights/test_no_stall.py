"""No stall from data: a live server in the same process answers while hostile text is scanned.

Python's ``re`` and ``csv.Sniffer`` hold the GIL for the whole of one call: before the scans were
made linear, one redaction of ``"a.token" * 571`` (34 s) or one CSV detection of 64 KiB of ``,"a``
(25.7 s) froze every thread of the process, ``/healthz`` included.
"""
from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from insights import redact
from workflows import filetypes

#: Requests measured, the pause between them, and the longest answer allowed (seconds).
REQUESTS = 10
PAUSE_S = 0.05
LIMIT_S = 1.0


class Hostile(threading.Thread):
    """Redact the issue's hostile texts and detect a hostile CSV file, over and over, until stopped."""

    def __init__(self, csv_file: Path) -> None:
        super().__init__(daemon=True)
        self.csv_file = csv_file
        self.started_scanning = threading.Event()
        self.stop = threading.Event()
        self.rounds = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.started_scanning.set()
                redact.text("a.token" * 571)
                redact.text("a.token" * 5000)
                redact.value({"input_json": '{"note": "' + "a.token" * 500 + '"}'})
                detected = filetypes.detect(self.csv_file, max_bytes=1 << 20, max_pixels=1)
                assert detected.kind == "text"
                self.rounds += 1
        except BaseException as exc:  # reported by the test, in the main thread
            self.failure = exc


def _get(url: str) -> tuple[int, float]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.monotonic()
    with opener.open(url, timeout=60) as answer:
        answer.read()
        return answer.status, time.monotonic() - started


def test_healthz__answers_within_1_s_while_hostile_text_is_redacted_and_detected(
    live_server: Any, tmp_path: Path
) -> None:
    url = f"{live_server.url}/healthz"
    assert _get(url)[0] == 200  # the first request loads the URL configuration: not measured
    csv_file = tmp_path / "hostile.csv"
    csv_file.write_text((',"a' * filetypes.SAMPLE)[: filetypes.SAMPLE])
    hostile = Hostile(csv_file)
    hostile.start()
    assert hostile.started_scanning.wait(10)

    answers = []
    for _ in range(REQUESTS):
        answers.append(_get(url))
        time.sleep(PAUSE_S)
    rounds_during = hostile.rounds
    still_running = hostile.is_alive()
    hostile.stop.set()
    hostile.join(60)

    assert hostile.failure is None
    assert still_running and rounds_during >= 1  # the scans ran while the requests were answered
    assert [status for status, _ in answers] == [200] * REQUESTS
    slowest = max(took for _, took in answers)
    assert slowest <= LIMIT_S, f"/healthz took {slowest:.2f} s while hostile text was scanned"
