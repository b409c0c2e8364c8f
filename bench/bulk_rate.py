"""Bulk retry dispatch rate: N FAILED executions (each a wait that timed out, so no handler runs),
a dry run's count checked against N, then one bulk retry run in this process (``bulk.run``, as the
``detflow.bulk`` actor runs it) with the worker stopped, so that the rate is the operation's own:
each execution's fenced retry and its message sent, per second of wall time, over the whole run.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.contenders import Detflow
from bench.throughput import RUN_TIMEOUT_S, reset

WORKFLOW = "bench-bulk"


def _failed(count: int, threads: int, progress: Callable[[str], None]) -> None:
    from executions import operations, store
    from workflows import definitions

    definitions.register({"name": WORKFLOW, "description": "bench: a wait that times out and fails",
                          "steps": [{"name": "w", "wait": {"signal": "never", "timeout_s": 0.001}}]})
    detflow = Detflow()
    detflow.start(threads)
    try:
        for n in range(count):
            operations.start(WORKFLOW, {"n": n})
        deadline = time.monotonic() + RUN_TIMEOUT_S * 10
        failed = {"workflow": WORKFLOW, "status": "FAILED"}
        while (done := store.collection().count_documents(failed)) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"bulk bench: only {done} of {count} executions failed in time")
            time.sleep(0.2)
    finally:
        detflow.stop()
    progress(f"bulk: {count:,} FAILED executions stored")


def measure(count: int, threads: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Return the dry run's count and the bulk retry's rate over ``count`` FAILED executions."""
    from detflow_site.api import filters
    from executions import bulk

    reset()
    _failed(count, threads, progress)
    query = filters.parse({"workflow": WORKFLOW, "status": "FAILED"}).filter
    planned = bulk.plan("retry", query)
    op = bulk.store_op("retry", query, "bench", "bench")
    started = time.monotonic()
    done = bulk.run(op["_id"]) or {}
    seconds = time.monotonic() - started
    rate = done.get("acted", 0) / seconds if seconds else 0.0
    progress(f"bulk: dry run counted {planned['count']:,}; retried {done.get('acted', 0):,} in "
             f"{seconds:.1f} s ({rate:,.0f}/s)")
    return {"executions": count, "dry_run_count": planned["count"], "count_exact": planned["count"] == count,
            "acted": done.get("acted"), "status": done.get("status"), "seconds": round(seconds, 2),
            "per_s": round(rate, 1), "throttle_per_s": bulk.RATE,
            "method": " ".join((__doc__ or "").split())}
