"""Throughput: E chains of S no-op steps on T worker threads, each contender in turn (A B C A B C ...).

A run starts the contender's workers, then times from the first launch to the last chain's end
(launching is inside the window for everyone), then stops the workers: only one contender's
workers run at a time. Between runs the Redis database and the stored executions are emptied.
"""
from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import handlers, meters, stats
from bench.contenders import Contender

#: How long the counted run measures the idle CPU of the process, workers started, in seconds.
IDLE_S = 1.0
#: Longest a run may take before the bench gives up on it, in seconds.
RUN_TIMEOUT_S = 300.0


@dataclass
class Run:
    """One timed run of one contender."""

    contender: str
    threads: int
    executions: int
    steps: int
    seconds: float
    #: CPU seconds of this whole process (every thread) during the run; Redis's own is not included.
    cpu_seconds: float
    #: Commands the Redis server ran during the run, every client (broker included).
    redis_commands: Counter[str] = field(default_factory=Counter)
    #: This process's CPU, in cores, with the workers started and nothing to do (when measured).
    idle_cpu_share: float | None = None

    @property
    def steps_per_s(self) -> float:
        return self.executions * self.steps / self.seconds


def reset() -> None:
    """Empty the Redis database and the stored executions (between runs, workers stopped)."""
    from detflow_site import services
    from executions import store

    services.redis_client().flushdb()
    store.collection().delete_many({})
    handlers.MARKS.clear()


def timed(contender: Contender, threads: int, executions: int, steps: int,
          window: Callable[[bool], None] | None = None, idle_s: float = 0.0) -> Run:
    """Run ``executions`` chains of ``steps`` steps on ``threads`` threads; return the timing.

    ``window``, when given, is called with ``True`` as the timing starts and ``False`` as it ends
    (to count what happens in the timed window alone). With ``idle_s``, this process's CPU is
    measured first over ``idle_s`` seconds with the workers started and nothing to do."""
    from detflow_site import services

    reset()
    contender.start(threads)
    try:
        client = services.redis_client()
        before = meters.server_commands(client)
        idle = None
        if idle_s:
            cpu, started = time.process_time(), time.perf_counter()
            time.sleep(idle_s)
            idle = (time.process_time() - cpu) / (time.perf_counter() - started)
        run = secrets.token_hex(6)
        handlers.FINISH.arm(run, executions)
        if window:
            window(True)
        cpu, started = time.process_time(), time.perf_counter()
        contender.launch(run, executions, steps)
        if not handlers.FINISH.wait(RUN_TIMEOUT_S):
            raise RuntimeError(f"{contender.name}: {handlers.FINISH.done} of {executions} chains "
                               f"finished within {RUN_TIMEOUT_S:g}s")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        if window:
            window(False)
        commands = meters.server_commands(client)
        commands.subtract(before)
    finally:
        contender.stop()
    _check(contender, executions)
    return Run(contender.name, threads, executions, steps, seconds, cpu, +commands, idle)


def _check(contender: Contender, executions: int) -> None:
    if not contender.name.startswith("detflow"):
        return
    from executions import store

    done = store.collection().count_documents({"status": "SUCCEEDED"})
    if done != executions:
        raise RuntimeError(f"detflow: {done} of {executions} executions SUCCEEDED")


def scaling(
    contenders: Sequence[Contender], threads: Sequence[int], executions: int, steps: int,
    repetitions: int, progress: Callable[[str], None], counted_threads: int | None = None,
) -> dict[str, Any]:
    """Steps per second of every contender at every thread count, interleaved; with ratios. With
    ``counted_threads``, one more run of each contender at that count, apart from the timed ones,
    counts the commands per step by kind (:func:`commands_by_kind`)."""
    runs: list[Run] = []
    for rep in range(repetitions):
        for count in threads:
            line = []
            for contender in contenders:
                result = timed(contender, count, executions, steps)
                runs.append(result)
                line.append(f"{contender.name} {result.steps_per_s:,.0f}")
            progress(f"throughput rep {rep + 1}/{repetitions}, {count} thread(s): "
                     + ", ".join(line) + " steps/s")
    out = summarize(runs, [c.name for c in contenders], threads, executions, steps, repetitions)
    if counted_threads is not None:
        out["commands"] = commands_by_kind(contenders, counted_threads, executions, steps)
        out["commands"]["threads"] = counted_threads
    return out


def commands_by_kind(contenders: Sequence[Contender], threads: int, executions: int, steps: int
                     ) -> dict[str, Any]:
    """Per step, each contender's MongoDB commands (reads, writes, by name) and its Redis commands
    outside the broker (the engine's own client, by kind: lock set, lock release, poke, slot...),
    counted in one run apart from the timed ones (the meters cost CPU, which the timed runs must
    not pay); and before it, this process's CPU with the contender's workers started and nothing to
    do (``idle_cpu_share``, in cores: their polling, heartbeats). Raw Dramatiq and Celery store
    nothing and have no client beside their broker's: their counts are zero by construction, and
    their every Redis command is the broker's (the throughput's ``redis_commands_per_step``,
    server-side)."""
    total = executions * steps
    found: dict[str, Any] = {}
    with meters.StoreMeter().installed() as store_meter, meters.RedisMeter().installed() as redis_meter:
        for contender in contenders:
            tallies: list[tuple[meters.Tally, meters.Tally]] = []

            def window(opening: bool, tallies: list[tuple[meters.Tally, meters.Tally]] = tallies
                       ) -> None:
                tallies.append((store_meter.tally.take(), redis_meter.tally.take()))

            run = timed(contender, threads, executions, steps, window, idle_s=IDLE_S)
            mongo, redis = tallies[-1]
            found[contender.name] = per_step(mongo, redis, total)
            found[contender.name]["idle_cpu_share"] = stats.rounded(run.idle_cpu_share or 0.0)
    reset()
    return {"contenders": found, "executions": executions, "steps": steps,
            "method": "one more run per contender with the meters installed (bench/meters.py), "
                      "the counts of its timed window per step"}


def per_step(mongo: meters.Tally, redis: meters.Tally, steps: int) -> dict[str, Any]:
    """MongoDB reads, writes and commands by name, and engine Redis commands by kind, per step."""
    split = meters.mongo_split(mongo.commands)
    return {
        "mongodb_per_step": round(mongo.total / steps, 3),
        "mongodb_reads_per_step": round(split["reads"] / steps, 3),
        "mongodb_writes_per_step": round(split["writes"] / steps, 3),
        "mongodb": {k: round(v / steps, 3) for k, v in mongo.commands.most_common()},
        "engine_redis_per_step": round(redis.total / steps, 3),
        "engine_redis": {k: round(v / steps, 3) for k, v in redis.kinds.most_common()},
    }


def cpu_ratios(per_step: dict[str, list[float]]) -> dict[str, float | None]:
    """detflow's CPU per step over each other contender's: the median of the per-repetition
    ratios (lower is better), the runs of one repetition paired."""
    out = {}
    for ours in (n for n in per_step if n.startswith("detflow")):
        for other in (n for n in per_step if not n.startswith("detflow")):
            out[f"{ours}/{other}"] = stats.rounded(stats.paired_ratio(per_step[ours], per_step[other]))
    return out


def summarize(
    runs: list[Run], names: Sequence[str], threads: Sequence[int], executions: int, steps: int,
    repetitions: int,
) -> dict[str, Any]:
    by_threads: dict[str, Any] = {}
    for count in threads:
        mine = {name: [r for r in runs if r.threads == count and r.contender == name] for name in names}
        entry: dict[str, Any] = {}
        for name, rs in mine.items():
            steps_total = executions * steps
            redis_total: Counter[str] = sum((r.redis_commands for r in rs), Counter())
            entry[name] = {
                "steps_per_s": stats.rounded(stats.median([r.steps_per_s for r in rs]), 1),
                "steps_per_s_runs": [round(r.steps_per_s, 1) for r in rs],
                "cpu_ms_per_step": stats.rounded(
                    stats.median([r.cpu_seconds / steps_total * 1000 for r in rs])),
                "redis_commands_per_step": stats.rounded(
                    redis_total.total() / (steps_total * len(rs)), 2),
                "redis_commands": {k: round(v / (steps_total * len(rs)), 2)
                                   for k, v in redis_total.most_common()},
            }
        ratios = {}
        for ours in (n for n in names if n.startswith("detflow")):
            for other in (n for n in names if not n.startswith("detflow")):
                ratios[f"{ours}/{other}"] = stats.rounded(stats.paired_ratio(
                    [r.steps_per_s for r in mine[ours]], [r.steps_per_s for r in mine[other]]))
        entry["ratios"] = ratios
        entry["cpu_ratios"] = cpu_ratios(
            {name: [r.cpu_seconds / (executions * steps) for r in rs] for name, rs in mine.items()})
        by_threads[str(count)] = entry
    return {"executions": executions, "steps": steps, "repetitions": repetitions,
            "threads": list(threads), "by_threads": by_threads,
            "method": "steps/s = E*S / (first launch .. last chain done), median of the repetitions; "
                      "ratios: median of the per-repetition ratios (contenders run back to back); "
                      "CPU: this process's CPU time (all threads: the workers, the launcher, "
                      "mongomock; time.process_time) per step, and its ratios (lower is better); "
                      "Redis commands: "
                      "INFO commandstats of the server, every client, per step"}
