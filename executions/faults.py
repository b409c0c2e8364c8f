"""Crash injection at the boundaries of a step's life, for the crash-point and chaos tests.

A no-op unless a test arms a point. An armed point raises :class:`SimulatedCrash` there, which
escapes the worker the way a crash would: the lock and the lease are left behind and the message
is gone, so only the recovery paths can finish the execution.
"""
from __future__ import annotations

import threading

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


class SimulatedCrash(Exception):
    """Raised at an armed point: the worker 'dies' there."""


_armed: dict[str, int] = {}
_guard = threading.Lock()


def arm(point: str, times: int = 1) -> None:
    """Crash the next ``times`` passes through ``point``."""
    if point not in POINTS:
        raise ValueError(f"unknown crash point {point!r}; known: {', '.join(POINTS)}")
    with _guard:
        _armed[point] = _armed.get(point, 0) + times


def disarm() -> None:
    """Disarm every point."""
    with _guard:
        _armed.clear()


def hit(point: str) -> None:
    """Pass through ``point``; crash if it is armed."""
    if not _armed:
        return
    with _guard:
        left = _armed.get(point, 0)
        if left <= 0:
            return
        _armed[point] = left - 1
    raise SimulatedCrash(point)
