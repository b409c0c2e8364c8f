"""Latency at low load: one chain in flight at a time, from one step's end to the next step's start.

Every contender is measured the same way, from its step bodies: the gap between step i's body
returning and step i+1's body starting (what a user's handler sees). For detflow the issue's own
definition is measured too: from the moment step i's outcome write returned (SUCCEEDED is stored)
to the moment step i+1's claim write returned (RUNNING is stored), by wrapping
``transitions.commit`` in this process (the writes of a ``StepSucceeded`` and a ``StepClaimed``).

No-op steps flatter a Dramatiq worker: its consumer polls Redis with a backoff that grows while
nothing arrives, up to the worker's idle timeout (``worker_timeout``), so the gap after a step
that took a while is measured too.
"""
from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bench import handlers, stats
from bench.contenders import DRAMATIQ_WORKER_TIMEOUT_MS, Contender
from bench.throughput import RUN_TIMEOUT_S, reset

#: Steps that take a while: how long each sleeps, how many chains of how many steps.
BUSY_STEP_S = 0.25
BUSY_CHAINS = 2
BUSY_STEPS = 4


@contextlib.contextmanager
def write_marks() -> Iterator[tuple[dict[tuple[str, int], float], dict[tuple[str, int], float]]]:
    """Note when each outcome and each claim write of detflow returned, by (execution, step)."""
    from executions import transitions
    from executions.events import StepClaimed, StepSucceeded

    outcomes: dict[tuple[str, int], float] = {}
    claims: dict[tuple[str, int], float] = {}
    real_commit = transitions.commit

    def commit(snap: Any, events: Any, now: int) -> Any:
        result = real_commit(snap, events, now)
        if result is not None and events:
            if isinstance(events[0], StepClaimed):
                claims[(snap.state.id, events[0].step_index)] = time.perf_counter()
            elif isinstance(events[0], StepSucceeded):
                outcomes[(snap.state.id, events[0].step_index)] = time.perf_counter()
        return result

    transitions.commit = commit  # type: ignore[assignment]
    try:
        yield outcomes, claims
    finally:
        transitions.commit = real_commit  # type: ignore[assignment]


def gaps(marks: list[tuple[str, int, float, float]]) -> list[float]:
    """Return the gaps, in ms, between each step body's end and the next one's start."""
    by_chain: dict[str, dict[int, tuple[float, float]]] = {}
    for chain, index, started, ended in marks:
        by_chain.setdefault(chain, {})[index] = (started, ended)
    found = []
    for steps in by_chain.values():
        for index in sorted(steps):
            if index + 1 in steps:
                found.append((steps[index + 1][0] - steps[index][1]) * 1000)
    return found


def one_by_one(contender: Contender, chains: int, steps: int, sleep_s: float = 0.0) -> list[str]:
    """Run ``chains`` chains one after the other; return their run ids."""
    runs = []
    for _ in range(chains):
        run = secrets.token_hex(6)
        handlers.FINISH.arm(run, 1)
        contender.launch(run, 1, steps, sleep_s)
        if not handlers.FINISH.wait(RUN_TIMEOUT_S):
            raise RuntimeError(f"{contender.name}: a chain did not finish within {RUN_TIMEOUT_S:g}s")
        runs.append(run)
    return runs


def measure(
    contenders: Sequence[Contender], threads: int, chains: int, steps: int, repetitions: int,
    progress: Callable[[str], None], busy_s: float = BUSY_STEP_S, busy_chains: int = BUSY_CHAINS,
) -> dict[str, Any]:
    """Step-to-step latency percentiles of each contender, interleaved repetitions."""
    samples: dict[str, list[list[float]]] = {c.name: [] for c in contenders}
    busy: dict[str, list[list[float]]] = {c.name: [] for c in contenders}
    writes: list[list[float]] = []
    for rep in range(repetitions):
        line = []
        for contender in contenders:
            reset()
            contender.start(threads)
            try:
                time.sleep(0.2)  # let the consumers reach their idle polling, as at low load
                with write_marks() as (outcomes, claims):
                    runs = one_by_one(contender, chains, steps)
                slow = one_by_one(contender, busy_chains, BUSY_STEPS, busy_s) if busy_chains else []
            finally:
                contender.stop()
            found = [g for run in runs for g in gaps(handlers.marks_of(run))]
            samples[contender.name].append(found)
            busy[contender.name].append([g for run in slow for g in gaps(handlers.marks_of(run))])
            if contender.name == "detflow":
                writes.append([(claims[(eid, i + 1)] - t) * 1000 for (eid, i), t in outcomes.items()
                               if (eid, i + 1) in claims])
            line.append(f"{contender.name} p50 {stats.percentile(found, 50):.1f} ms")
        progress(f"latency rep {rep + 1}/{repetitions}: " + ", ".join(line))
    result: dict[str, Any] = {
        "threads": threads, "chains_per_repetition": chains, "steps": steps,
        "repetitions": repetitions,
        "method": "one chain in flight at a time; gap from a step body's end to the next step "
                  "body's start (all contenders); for detflow also from the outcome write's return "
                  "to the next claim write's return. Percentiles over every repetition's samples; "
                  "per-repetition p50s alongside",
        "contenders": {},
    }
    for name, reps in samples.items():
        result["contenders"][name] = _summary(reps)
    if writes:
        result["detflow_outcome_to_claim"] = _summary(writes)
    if busy_chains:
        result["after_busy_step"] = {
            "step_s": busy_s, "chains_per_repetition": busy_chains, "steps": BUSY_STEPS,
            "method": "the same, with steps that sleep step_s: an idle Dramatiq consumer backs off "
                      "up to the worker's idle timeout while a step runs",
            "worker_timeout_ms": DRAMATIQ_WORKER_TIMEOUT_MS,
            "contenders": {name: _summary(reps) for name, reps in busy.items()},
        }
    return result


def _summary(reps: list[list[float]]) -> dict[str, Any]:
    pooled = [g for rep in reps for g in rep]
    return {
        "samples": len(pooled),
        "p50_ms": stats.rounded(stats.percentile(pooled, 50), 2),
        "p95_ms": stats.rounded(stats.percentile(pooled, 95), 2),
        "p99_ms": stats.rounded(stats.percentile(pooled, 99), 2),
        "max_ms": stats.rounded(max(pooled, default=float("nan")), 2),
        "p50_ms_per_repetition": [stats.rounded(stats.percentile(rep, 50), 2) for rep in reps],
    }
