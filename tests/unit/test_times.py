"""Stored times: naive UTC datetimes and integer milliseconds, one conversion for every reader."""
from __future__ import annotations

import datetime as dt

from detflow_site.times import naive_utc, to_dt, to_ms


def test_naive_utc__an_aware_time_is_converted_and_a_naive_one_kept() -> None:
    aware = dt.datetime(2026, 1, 1, 14, 30, 0, 250_000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    naive = dt.datetime(2026, 1, 1, 12, 30, 0, 250_000)

    assert naive_utc(aware) == naive and naive_utc(aware).tzinfo is None
    assert naive_utc(naive) is naive


def test_to_ms__an_aware_and_a_naive_time_of_the_same_instant_give_the_same_milliseconds() -> None:
    naive = dt.datetime(2026, 1, 1, 12, 30, 0, 250_000)

    assert to_ms(naive.replace(tzinfo=dt.UTC)) == to_ms(naive) == 1_767_270_600_250
    assert to_dt(to_ms(naive)) == naive
    assert to_ms(None) is None and to_dt(None) is None
