"""Fault injection for the crash-point tests and chaos runs: no-ops unless a test arms them.

- Crash points: an armed point raises :class:`SimulatedCrash` there, which escapes the worker the
  way a crash would: the lock and the lease are left behind and the message is gone, so only the
  recovery paths can finish the execution.
- Pauses: a paused execution's watchdog neither renews the lease nor interrupts the handler, as if
  the worker's process had stopped (a long GC pause, SIGSTOP); the lock and the lease run out.
- Broken builds: ``break_("fence")`` drops the ``version`` condition from every write, so that a
  test can show the chaos checker catching what the fence prevents.

No module of the engine calls this one. Each switch acts at a seam: the crash points at the
runner's (``executions.seams``, installed by the first :func:`arm`), the pauses at the watchdog's
set of frozen executions (``executions.watchdog.PAUSED``), the broken fence at the store's fenced
write (``executions.store.fence_broken``).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

#: The boundaries of one step's life, in order (DESIGN: "One step's life").
POINTS = (
    "received",  #: the message was received
    "locked",  #: the execution's Redis lock was acquired
    "loaded",  #: its state was loaded from MongoDB
    "claimed",  #: the step was claimed (RUNNING, lease, attempt n)
    "handled",  #: the handler returned or raised; nothing recorded yet
    "recorded",  #: the outcome was recorded
    "released",  #: the lock was released
    "sent",  #: the next message was sent
)
#: Safety mechanisms a test may switch off to prove that the checks notice.
BREAKABLE = ("fence",)


class SimulatedCrash(Exception):
    """Raised at an armed point: the worker 'dies' there."""


@dataclass
class _Arm:
    times: int
    skip: int


@dataclass(frozen=True)
class Fired:
    """A crash that happened: where, in which execution, when (epoch milliseconds)."""

    point: str
    execution_id: str | None
    at_ms: int


_armed: dict[tuple[str, str | None], _Arm] = {}
#: Every crash raised since the last :func:`disarm`.
fired: list[Fired] = []
_guard = threading.Lock()


def arm(point: str, times: int = 1, execution_id: str | None = None, skip: int = 0) -> None:
    """Crash ``times`` passes through ``point`` after letting ``skip`` pass (of one execution's
    passes when ``execution_id`` is given, of any otherwise)."""
    if point not in POINTS:
        raise ValueError(f"unknown crash point {point!r}; known: {', '.join(POINTS)}")
    install_seam()
    with _guard:
        key = (point, execution_id)
        current = _armed.get(key)
        _armed[key] = _Arm(times + (current.times if current else 0), skip)


def install_seam() -> None:
    """Route the runner's boundaries through the crash points from now on (the first :func:`arm`
    does it; a run that arms while workers run calls it before they start, so that no message in
    flight began on the unwatched names). It loads the worker, so only tests and chaos call it."""
    from executions import seams

    seams.install(_watch)


def _watch(point: str, execution_id: str | None) -> None:
    hit(point, execution_id)  # looked up at each pass: a test may spy on ``hit``


def disarm() -> None:
    """Disarm every point, resume every pause, mend every broken mechanism, forget crashes."""
    from executions import store, watchdog

    with _guard:
        _armed.clear()
        watchdog.PAUSED.clear()
        store.fence_broken = False
        fired.clear()


def hit(point: str, execution_id: str | None = None) -> None:
    """Pass through ``point``; crash if it is armed (for this execution or for any)."""
    if not _armed:
        return
    with _guard:
        for key in ((point, execution_id), (point, None)):
            arm_ = _armed.get(key)
            if arm_ is None:
                continue
            if arm_.skip > 0:
                arm_.skip -= 1
                return
            arm_.times -= 1
            if arm_.times <= 0:
                del _armed[key]
            fired.append(Fired(point, execution_id, time.time_ns() // 1_000_000))
            break
        else:
            return
    raise SimulatedCrash(point)


def pause(execution_id: str) -> None:
    """Freeze the watchdog of the execution's running attempt (no renewal, no interrupt)."""
    from executions import watchdog

    with _guard:
        watchdog.PAUSED.add(execution_id)


def resume(execution_id: str) -> None:
    from executions import watchdog

    with _guard:
        watchdog.PAUSED.discard(execution_id)


def break_(mechanism: str) -> None:
    """Switch a safety mechanism off (tests of the checkers only)."""
    if mechanism not in BREAKABLE:
        raise ValueError(f"unknown mechanism {mechanism!r}; known: {', '.join(BREAKABLE)}")
    from executions import store

    with _guard:
        store.fence_broken = True
