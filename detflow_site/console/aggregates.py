"""The numbers the admin shows: the dashboard and the statistics of each workflow version.

Each is computed by a few index-backed queries, each bounded (a time range, a ``limit``, or a
capped count), and kept briefly in Django's cache (django-redis), so that a busy admin index costs
MongoDB one round of queries per ``CACHE_S`` rather than one per load.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from typing import Any

from django.core.cache import cache

from detflow_site import conf
from executions import store
from executions.durations import STEP_FIELDS, percentile, step_durations
from executions.engine import TERMINAL, ExecutionStatus, backoff_ms
from executions.store import now_ms, to_dt, to_ms
from workflows import definitions
from workflows.spec import RetryPolicy

#: Seconds an aggregate stays in the cache.
CACHE_S = 15
DASHBOARD_KEY = "detflow:admin:dashboard"
#: The dashboard's window.
WINDOW = dt.timedelta(hours=24)
#: Newest SUCCEEDED executions of the window whose step times make the slowest-steps table.
STEP_SAMPLE = 500
#: Workflows in the failure-rate table, at most, and slow steps shown.
WORKFLOWS_SHOWN = 50
SLOW_STEPS_SHOWN = 10
#: Counts stop here (shown as "10000+"): no request counts a whole collection.
COUNT_CAP = 10_000
#: Stuck executions listed on the dashboard.
STUCK_SHOWN = 10
#: Newest SUCCEEDED executions of a version whose durations make its median and p95.
DURATION_SAMPLE = 200
#: Versions of a workflow with statistics, newest first.
VERSIONS_SHOWN = 20


def dashboard() -> dict[str, Any]:
    """Return the dashboard's aggregates, from the cache when they are fresh there."""
    found = cache.get(DASHBOARD_KEY)
    if found is None:
        found = _dashboard(now_ms())
        cache.set(DASHBOARD_KEY, found, CACHE_S)
    return found


def _dashboard(now: int) -> dict[str, Any]:
    at = to_dt(now)
    assert at is not None
    since = at - WINDOW
    executions = store.collection()
    recent = {"$gte": since}
    by_status = {s.value: executions.count_documents({"status": s.value, "created_at": recent},
                                                     limit=COUNT_CAP)
                 for s in ExecutionStatus}
    rates = []
    for stored in definitions.latest_versions()[:WORKFLOWS_SHOWN]:
        total = executions.count_documents({"workflow": stored.name, "created_at": recent}, limit=COUNT_CAP)
        failed = executions.count_documents(
            {"workflow": stored.name, "status": "FAILED", "created_at": recent}, limit=COUNT_CAP)
        rates.append({"workflow": stored.name, "total": total, "failed": failed,
                      "rate": failed / total if total else None})
    rates.sort(key=lambda r: (-(r["rate"] or 0), r["workflow"]))
    grace = dt.timedelta(seconds=conf.get().SWEEP_GRACE_S)
    overdue = {"due_at": {"$lt": at - grace}}
    stuck = list(executions.find(overdue, {"workflow": 1, "workflow_version": 1, "status": 1, "due_at": 1})
                 .sort("due_at", 1).limit(STUCK_SHOWN))
    return {
        "since": since, "computed_at": at, "by_status": by_status, "failure_rates": rates,
        "slow_steps": _slow_steps(since),
        "stuck": stuck, "stuck_count": executions.count_documents(overdue, limit=COUNT_CAP) if stuck else 0,
        "count_cap": COUNT_CAP, "sample": STEP_SAMPLE,
    }


def _slow_steps(since: dt.datetime) -> list[dict[str, Any]]:
    rows = (store.collection()
            .find({"status": "SUCCEEDED", "created_at": {"$gte": since}}, {"workflow": 1, **STEP_FIELDS})
            .sort([("created_at", -1), ("_id", -1)]).limit(STEP_SAMPLE))
    durations: dict[tuple[str, str], list[int]] = defaultdict(list)
    for row in rows:
        for name, ms in step_durations(row).items():
            durations[(row["workflow"], name)].append(ms)
    ranked = sorted(durations.items(), key=lambda item: -percentile(item[1], 0.95))
    return [{"workflow": w, "step": s, "runs": len(ms), "p95_ms": percentile(ms, 0.95),
             "median_ms": percentile(ms, 0.5)} for (w, s), ms in ranked[:SLOW_STEPS_SHOWN]]


def version_stats(name: str) -> list[dict[str, Any]]:
    """Return per version of ``name`` (newest first): executions by status, success rate, median
    and p95 duration of its newest successful runs (cached)."""
    key = f"detflow:admin:workflow:{name}"
    found = cache.get(key)
    if found is None:
        found = [_version(name, stored.version) for stored in definitions.versions(name)[:VERSIONS_SHOWN]]
        cache.set(key, found, CACHE_S)
    return found


def _version(name: str, version: int) -> dict[str, Any]:
    executions = store.collection()
    by_status = {s.value: executions.count_documents(
        {"workflow": name, "workflow_version": version, "status": s.value}, limit=COUNT_CAP)
        for s in ExecutionStatus}
    # A rolled-back execution has finished too, and not with success.
    finished = sum(by_status[s.value] for s in TERMINAL)
    rows = (executions.find({"workflow": name, "workflow_version": version, "status": "SUCCEEDED"},
                            {"created_at": 1, "finished_at": 1})
            .sort([("created_at", -1), ("_id", -1)]).limit(DURATION_SAMPLE))
    durations = [to_ms(r["finished_at"]) - to_ms(r["created_at"])  # type: ignore[operator]
                 for r in rows if r.get("finished_at")]
    return {"version": version, "by_status": by_status, "total": sum(by_status.values()),
            "success_rate": by_status["SUCCEEDED"] / finished if finished else None,
            "median_ms": percentile(durations, 0.5) if durations else None,
            "p95_ms": percentile(durations, 0.95) if durations else None,
            "sample": len(durations), "count_cap": COUNT_CAP}


def worst_case_s(step: dict[str, Any]) -> float:
    """Return the longest a step may take under its policy: every attempt running to its timeout,
    with the longest delay before each retry (queueing and lease recovery not included). A sleep
    takes its seconds, a wait its timeout_s; a sleep until a time read from the data counts 0 (it
    has no bound the definition knows)."""
    if "sleep" in step:
        return float(step["sleep"].get("seconds", 0))
    if "wait" in step:
        return float(step["wait"]["timeout_s"])
    policy = dataclasses.replace(RetryPolicy(**step["retry"]), jitter=0.0)
    delays = sum(backoff_ms(policy, "", step["name"], used, used) for used in range(1, policy.max_attempts))
    return policy.max_attempts * float(step["timeout_s"]) + delays / 1000
