"""The one timer thread that runs every watchdog's ticks."""
from __future__ import annotations

import threading
import time

from executions.ticker import Ticker


def test_ticker__calls_each_callback_once_in_the_order_of_their_times() -> None:
    ticker = Ticker("test-ticker")
    calls: list[str] = []
    done = threading.Event()
    now = time.monotonic()

    ticker.schedule(now + 0.06, lambda: (calls.append("late"), done.set()))
    ticker.schedule(now + 0.02, lambda: calls.append("early"))
    ticker.schedule(now - 1, lambda: calls.append("overdue"))

    assert done.wait(5)
    assert calls == ["overdue", "early", "late"]
    assert ticker.pending() == 0


def test_ticker__a_cancelled_callback_never_runs() -> None:
    ticker = Ticker("test-ticker")
    calls: list[str] = []
    done = threading.Event()
    now = time.monotonic()

    entry = ticker.schedule(now + 0.02, lambda: calls.append("cancelled"))
    ticker.schedule(now + 0.05, done.set)
    ticker.cancel(entry)
    ticker.cancel(entry)  # twice is harmless

    assert done.wait(5)
    assert calls == []


def test_ticker__many_cancelled_entries_are_dropped_without_waiting_for_their_time() -> None:
    ticker = Ticker("test-ticker")
    far = time.monotonic() + 3600
    entries = [ticker.schedule(far, lambda: None) for _ in range(200)]

    for entry in entries[:150]:
        ticker.cancel(entry)

    assert ticker.pending() == 50
    assert len(ticker._heap) < 200  # compacted, not kept for an hour


def test_ticker__a_failing_callback_does_not_stop_the_others() -> None:
    ticker = Ticker("test-ticker")
    done = threading.Event()
    now = time.monotonic()

    def fail() -> None:
        raise RuntimeError("renewal blew up")

    ticker.schedule(now, fail)
    ticker.schedule(now + 0.02, done.set)

    assert done.wait(5)
