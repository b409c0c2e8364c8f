"""Prometheus metrics of the engine, recorded where the work happens and served at ``/metrics``.

In one process (``rundev``, the demo, tests) every metric is in the default registry. Under
``runworker`` every worker process writes its metrics to one directory (``PROMETHEUS_MULTIPROC_DIR``)
that Dramatiq's exposition server (port 9191) serves, these included: ``runworker`` makes a private
one for its process set unless that variable names one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

if TYPE_CHECKING:
    from executions.engine import ExecutionState

#: The variable prometheus_client reads: when set, each process writes its metrics to files there.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def ensure_directory(path: str) -> None:
    """Create the metrics directory ``path`` (mode 0700, parents too) if it does not exist."""
    os.makedirs(path, mode=0o700, exist_ok=True)


def start_set(path: str) -> None:
    """Make ``path`` ready for a process set that starts now: created, and emptied of the files of
    earlier runs (prometheus_client's advice: a dead run's counters would add to the new ones).

    Only this process's own files are kept: it may already have written there.
    """
    ensure_directory(path)
    own = f"_{os.getpid()}.db"
    for stale in Path(path).glob("*.db"):
        if not stale.name.endswith(own):
            stale.unlink(missing_ok=True)


# Each metric without labels opens its file as it is defined, here: the directory must exist first.
if os.environ.get(MULTIPROC_DIR):
    ensure_directory(os.environ[MULTIPROC_DIR])

EXECUTIONS_STARTED = Counter(
    "detflow_executions_started_total", "Executions stored by a start.", ["workflow"]
)
EXECUTIONS_FINISHED = Counter(
    "detflow_executions_finished_total", "Executions that became terminal.", ["workflow", "status"]
)
STEP_ATTEMPTS = Counter(
    "detflow_step_attempts_total", "Step attempts by outcome (succeeded, failed, timed_out, lost).",
    ["workflow", "step", "outcome"],
)
STEP_DURATION = Histogram(
    "detflow_step_duration_seconds", "Duration of step attempts that recorded an outcome.",
    ["workflow", "step"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
QUEUE_LAG = Histogram(
    "detflow_queue_lag_seconds", "From when a step was due to when a worker claimed it.",
    ["workflow"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300),
)
SWEEPER_RECOVERIES = Counter(
    "detflow_sweeper_recoveries_total", "What the sweeper did: lost attempts recorded, messages re-sent.",
    ["kind"],
)
SWEEPER_FAILURES = Counter(
    "detflow_sweeper_failures_total",
    "Executions a sweep could not handle (a store or Redis error); the sweep went on with the others.",
)
LOCK_CONTENTION = Counter(
    "detflow_lock_contention_total", "Messages that found their execution locked by another worker."
)
SLOT_WAITS = Counter(
    "detflow_slot_waits_total", "Claims put off because the step had no free concurrency slot.",
    ["workflow", "step"],
)


def step_label(state: ExecutionState, index: int) -> str:
    """Return the ``step`` label of the step (or compensation: ``<step>:compensate``) at ``index``."""
    name = state.slot(index).name
    return f"{name}:compensate" if state.is_compensation(index) else name
