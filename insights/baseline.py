"""Step baselines: how long each step took in the recent successful executions of a workflow version.

One query per (workflow, version), served by the ``(workflow, workflow_version, status, -created_at,
-id)`` index of the executions collection, and reused for ``CACHE_S``: a median over the last
``RUNS`` runs moves slowly, and the embedded store, which has no indexes, scans the whole collection
per query.
"""
from __future__ import annotations

import statistics
import threading
import time

from executions import store
from executions.durations import STEP_FIELDS, percentile, step_durations
from insights.facts import Baseline

#: Successful executions a baseline reads, newest first.
RUNS = 50
#: How long the samples of a workflow version are reused, in seconds.
CACHE_S = 30.0

_cache: dict[tuple[str, int], tuple[float, list[tuple[str, dict[str, int]]]]] = {}
_guard = threading.Lock()


def step_baselines(workflow: str, version: int, exclude: str | None = None) -> dict[str, Baseline]:
    """Return each step's baseline by name, leaving the execution ``exclude`` out of it."""
    per_step: dict[str, list[int]] = {}
    for execution_id, durations in _samples(workflow, version):
        if execution_id == exclude:
            continue
        for name, ms in durations.items():
            per_step.setdefault(name, []).append(ms)
    return {name: summarize(values) for name, values in per_step.items()}


def summarize(values: list[int]) -> Baseline:
    """Return the median and the (nearest-rank) 95th percentile of ``values``."""
    return Baseline(median_ms=round(statistics.median(values)), p95_ms=percentile(values, 0.95),
                    samples=len(values))


def forget() -> None:
    """Drop every cached sample (tests, and after a bulk change of the store)."""
    with _guard:
        _cache.clear()


def _samples(workflow: str, version: int) -> list[tuple[str, dict[str, int]]]:
    key = (workflow, version)
    now = time.monotonic()
    with _guard:
        cached = _cache.get(key)
    if cached is not None and cached[0] > now:
        return cached[1]
    cursor = (
        store.collection()
        .find({"workflow": workflow, "workflow_version": version, "status": "SUCCEEDED"},
              STEP_FIELDS)
        .sort([("created_at", -1)])
        .limit(RUNS + 1)  # one more, in case the execution being explained is among them
    )
    samples = [(str(doc["_id"]), step_durations(doc)) for doc in cursor]
    with _guard:
        _cache[key] = (now + CACHE_S, samples)
    return samples
