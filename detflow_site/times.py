"""Times as detflow stores them: naive UTC datetimes (BSON dates, which keep milliseconds), and
integer milliseconds since the epoch, which the engine works in; a stored time round-trips exactly.

Pure: the one place where a datetime, aware or naive, becomes naive UTC.
"""
from __future__ import annotations

import datetime as dt
import time

_EPOCH = dt.datetime(1970, 1, 1)
_MS = dt.timedelta(milliseconds=1)


def now_ms() -> int:
    """Return the wall clock in integer milliseconds."""
    return time.time_ns() // 1_000_000


def naive_utc(value: dt.datetime) -> dt.datetime:
    """Return ``value`` as a naive UTC datetime: an aware one converted, a naive one as it is."""
    return value if value.tzinfo is None else value.astimezone(dt.UTC).replace(tzinfo=None)


def to_dt(ms: int | None) -> dt.datetime | None:
    """Return the naive UTC datetime for ``ms`` (``None`` stays ``None``)."""
    return None if ms is None else _EPOCH + dt.timedelta(milliseconds=ms)


def to_ms(value: dt.datetime | None) -> int | None:
    """Return integer milliseconds for a stored datetime (naive UTC or aware)."""
    return None if value is None else (naive_utc(value) - _EPOCH) // _MS
