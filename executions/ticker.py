"""One timer thread per process for every running attempt's watchdog.

A thread per attempt cost a thread start and stop for each step (a quarter of a no-op step's time);
one thread with a heap of due times does the same work. A callback runs in this thread, so it must
be short: the ticker only keeps time. A watchdog's callback hands its lease renewal (a MongoDB update,
then a Redis script) to the renewal pool (``executions.watchdog.renewals``) or raises a timeout in its
handler's thread, so one slow renewal never delays another attempt's renewal or timeout.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("detflow.worker")


class Entry:
    """A scheduled call; :meth:`Ticker.cancel` drops its callback (the entry stays until due)."""

    __slots__ = ("at", "callback", "seq")

    def __init__(self, at: float, seq: int, callback: Callable[[], None]) -> None:
        self.at = at
        self.seq = seq
        self.callback: Callable[[], None] | None = callback

    def __lt__(self, other: Entry) -> bool:
        return (self.at, self.seq) < (other.at, other.seq)


class Ticker:
    """Calls each scheduled callback once, at its time (``time.monotonic()``), in one thread."""

    def __init__(self, name: str = "detflow-ticker") -> None:
        self.name = name
        self._heap: list[Entry] = []
        self._cancelled = 0
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def schedule(self, at: float, callback: Callable[[], None]) -> Entry:
        """Call ``callback`` at ``at`` (or as soon after as the thread gets to it)."""
        entry = Entry(at, next(self._seq), callback)
        with self._cond:
            self._ensure_running()
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: Entry | None) -> None:
        """Drop ``entry``'s callback if it has not run yet."""
        if entry is None:
            return
        with self._cond:
            if entry.callback is None:
                return
            entry.callback = None
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e.callback is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def pending(self) -> int:
        """Return how many callbacks wait to run."""
        with self._cond:
            return sum(1 for e in self._heap if e.callback is not None)

    def _ensure_running(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        if self._pid != os.getpid():  # a forked child: the parent's entries are not ours to run
            self._heap, self._cancelled = [], 0
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    left = self._heap[0].at - time.monotonic()
                    if left <= 0:
                        entry = heapq.heappop(self._heap)
                        callback, entry.callback = entry.callback, None
                        if callback is None:
                            self._cancelled = max(self._cancelled - 1, 0)
                            continue
                        break
                    self._cond.wait(left)
            try:
                callback()
            except Exception:  # one callback's failure must not stop the others' heartbeats
                logger.exception("a watchdog tick failed")


#: The process's ticker.
TICKER = Ticker()
