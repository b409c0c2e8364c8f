"""Step times of a stored execution and their percentiles: what the admin and the baselines read."""
from __future__ import annotations

import datetime as dt

from executions.durations import percentile, step_durations

T0 = dt.datetime(2026, 1, 1)


def at(ms: int) -> dt.datetime:
    return T0 + dt.timedelta(milliseconds=ms)


def test_percentile__takes_the_nearest_rank() -> None:
    values = list(range(100, 0, -1))
    assert (percentile(values, 0.5), percentile(values, 0.95), percentile([7], 0.95)) == (50, 95, 7)


def test_step_durations__only_succeeded_steps_with_both_times_from_first_claim_to_success() -> None:
    doc = {"steps": [
        {"name": "a", "status": "SUCCEEDED", "started_at": at(10), "finished_at": at(260)},
        {"name": "b", "status": "FAILED", "started_at": at(300), "finished_at": at(400)},
        {"name": "c", "status": "SUCCEEDED", "started_at": None, "finished_at": at(500)},
        {"name": "d", "status": "RUNNING", "started_at": at(600)},
        {"name": "e", "status": "SUCCEEDED", "started_at": at(700).replace(tzinfo=dt.UTC),
         "finished_at": at(701)},
    ]}

    assert step_durations(doc) == {"a": 250, "e": 1}
    assert step_durations({}) == {}
