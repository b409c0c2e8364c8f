"""Signal to next step claimed, at low load: one execution at a time waits for its signal (its
wait step WAITING, nothing held), the bench sends it with ``operations.signal``, and measures from
the call to the next step's claim (its ``step_claimed`` event's time, written by the worker).

Both times are the wall clock of this machine (the event's at millisecond precision, as stored).
The worker is the bench's detflow contender (a Dramatiq worker in this process, the engine's idle
consumer backing off up to its idle timeout between messages, as at low load); the signal's
message is a new one, sent by ``operations.signal`` once the signal is stored.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench import stats
from bench.contenders import DRAMATIQ_WORKER_TIMEOUT_MS, Detflow
from bench.throughput import RUN_TIMEOUT_S, reset

WORKFLOW = "bench-signal"
SIGNAL = "go"
#: The wait's timeout: nothing times out during the bench.
TIMEOUT_S = 3600


def register() -> str:
    from workflows import definitions

    definitions.register({"name": WORKFLOW, "description": "bench: a wait for a signal, then a step",
                          "steps": [{"name": "approval", "wait": {"signal": SIGNAL, "timeout_s": TIMEOUT_S}},
                                    {"name": "s1", "handler": "bench.noop"}]})
    return WORKFLOW


def _until(predicate: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.001)
    raise RuntimeError(f"signal bench: {what} did not happen within {RUN_TIMEOUT_S:g}s")


def one(run: str) -> float:
    """Start one execution, wait until it waits, signal it; return the ms to the next claim."""
    from executions import operations, store

    started, _ = operations.start(WORKFLOW, {"run": run})
    eid = started["_id"]
    _until(lambda: (d := store.load_working(eid)) and d["steps"][0]["status"] == "WAITING", "the wait")
    time.sleep(0.05)  # the consumer backs off while nothing comes, as at low load
    sent_ms = time.time() * 1000
    operations.signal(eid, SIGNAL, {"ok": True}, by="bench")
    doc = _until(lambda: (d := store.load(eid)) and d["status"] == "SUCCEEDED" and d, "the next step")
    claimed = next(e for e in doc["events"] if e["type"] == "step_claimed" and e["step_index"] == 1)
    return float(store.to_ms(claimed["at"]) or 0) - sent_ms


def measure(samples: int, threads: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Return the signal-to-claim percentiles over ``samples`` executions, one at a time."""
    reset()
    register()
    detflow = Detflow()
    detflow.start(threads)
    found: list[float] = []
    try:
        time.sleep(0.2)  # let the consumers reach their idle polling
        for n in range(samples):
            found.append(one(f"signal-{n}"))
            if (n + 1) % 50 == 0:
                progress(f"signal -> next claim: {n + 1}/{samples}, p50 "
                         f"{stats.percentile(found, 50):.1f} ms")
    finally:
        detflow.stop()
    return {
        "samples": len(found), "threads": threads,
        "p50_ms": stats.rounded(stats.percentile(found, 50), 1),
        "p95_ms": stats.rounded(stats.percentile(found, 95), 1),
        "max_ms": stats.rounded(max(found, default=float("nan")), 1),
        "worker_timeout_ms": DRAMATIQ_WORKER_TIMEOUT_MS,
        "method": " ".join((__doc__ or "").split()),
    }
