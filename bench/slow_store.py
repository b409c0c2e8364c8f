"""Throughput on a slow store: steps per second at T worker threads with L injected per store command.

Each repetition runs detflow (steps back to back, the default) and ``detflow-msg`` (a message per
step) twice at the same thread count, as ``bench/throughput.py`` runs them: once as they are (the
ceiling this process reaches when the store costs only its CPU) and once with ``L`` of latency
injected before every command on the executions collection, by the store fault seam of chaos
(``detflow_site.chaos.storefaults``: a ``latency`` rule on every read and write, whose sleep happens
outside the embedded store's lock, as network time would). The commands are counted in the timed
window of the same run: those that carried the latency (the rule's strikes) and every MongoDB
command (``bench/meters.py``; the history collection carries no latency). If the latency of one
thread's commands overlapped perfectly with the other threads' work, the steps per second would
reach the bound ``threads / (latency-carrying commands per step x L)``, or this process's CPU
ceiling, whichever is lower.

The goal is read against that lower figure (``of_lower_of_bound_and_ceiling``), the ceiling being
the steps/s of the same contender at the same thread count without the latency, in the same
repetitions. At 1 ms the bound (about 7,300 steps/s at 16 threads) is far above what one process
does at all here: a py-spy profile of the 16-thread run (``--idle`` and ``--gil``) shows no thread
holding a lock while it sleeps out the latency (the sleep is in the fault seam, before the call
that takes the embedded store's lock), the process using about 0.93 of a core (the GIL), and
the step's CPU (about 1.8 ms: mongomock and the embedded store 37 %, the engine 20 %, Dramatiq
10 %, bson 9 %) setting the rate; the steps/s with 1 ms of latency is the steps/s without it. The
latency bound alone is shown beside (``of_bound``): it is reached when the latency, not the CPU,
is the limit (``--slow-latency-ms 50``).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import meters, stats, throughput
from bench.contenders import Contender


@dataclass
class Slow:
    """One contender's run on the slow store, and the commands of its timed window."""

    run: throughput.Run
    #: Commands that carried the injected latency.
    delayed: int = 0
    #: Every MongoDB command, by name.
    commands: Counter[str] = field(default_factory=Counter)

    @property
    def steps(self) -> int:
        return self.run.executions * self.run.steps


def slow_run(contender: Contender, threads: int, executions: int, steps: int, latency_s: float,
             meter: meters.StoreMeter) -> Slow:
    """Time one run with ``latency_s`` injected before every command on the executions collection."""
    from detflow_site.chaos.storefaults import READS, WRITES, Rule, installed

    counted: dict[str, Any] = {}
    with installed() as faults:
        rule = faults.add(Rule("latency", ops=WRITES | READS, times=None, delay_s=latency_s))

        def window(opening: bool) -> None:
            taken = meter.tally.take()
            if opening:
                counted["struck"] = rule.struck
            else:
                counted["struck"] = rule.struck - counted["struck"]
                counted["commands"] = taken.commands

        run = throughput.timed(contender, threads, executions, steps, window)
    return Slow(run, counted["struck"], counted["commands"])


def measure(
    contenders: Sequence[Contender], threads: int, executions: int, steps: int, repetitions: int,
    latency_s: float, progress: Callable[[str], None],
) -> dict[str, Any]:
    """Run every contender with and without the latency, interleaved; summarize each."""
    plain: dict[str, list[throughput.Run]] = {c.name: [] for c in contenders}
    slow: dict[str, list[Slow]] = {c.name: [] for c in contenders}
    with meters.StoreMeter().installed() as meter:
        for rep in range(repetitions):
            line = []
            for contender in contenders:
                plain[contender.name].append(throughput.timed(contender, threads, executions, steps))
                s = slow_run(contender, threads, executions, steps, latency_s, meter)
                slow[contender.name].append(s)
                line.append(f"{contender.name} {s.run.steps_per_s:,.0f} "
                            f"(no latency {plain[contender.name][-1].steps_per_s:,.0f})")
            progress(f"slow store rep {rep + 1}/{repetitions}, {threads} threads, "
                     f"{latency_s * 1000:g} ms per command: " + ", ".join(line) + " steps/s")
    throughput.reset()
    out = {name: summarize(plain[name], slow[name], threads, latency_s) for name in plain}
    return {
        "threads": threads, "executions": executions, "steps": steps, "repetitions": repetitions,
        "latency_ms": latency_s * 1000, "contenders": out,
        "method": " ".join((__doc__ or "").split()),
    }


def summarize(plain: list[throughput.Run], slow: list[Slow], threads: int, latency_s: float
              ) -> dict[str, Any]:
    steps = sum(s.steps for s in slow)
    delayed = sum(s.delayed for s in slow) / steps
    commands = sum((s.commands for s in slow), Counter())
    bound = threads / (delayed * latency_s)
    rate = stats.median([s.run.steps_per_s for s in slow])
    ceiling = stats.median([r.steps_per_s for r in plain])
    return {
        "steps_per_s": stats.rounded(rate, 1),
        "steps_per_s_runs": [round(s.run.steps_per_s, 1) for s in slow],
        "cpu_ms_per_step": stats.rounded(stats.median(
            [s.run.cpu_seconds / s.steps * 1000 for s in slow])),
        "delayed_commands_per_step": round(delayed, 3),
        "mongodb_commands_per_step": round(commands.total() / steps, 3),
        "mongodb_commands": {k: round(v / steps, 3) for k, v in commands.most_common()},
        "bound_steps_per_s": stats.rounded(bound, 1),
        "of_bound": stats.rounded(rate / bound),
        "no_latency_steps_per_s": stats.rounded(ceiling, 1),
        "no_latency_steps_per_s_runs": [round(r.steps_per_s, 1) for r in plain],
        "no_latency_cpu_ms_per_step": stats.rounded(stats.median(
            [r.cpu_seconds / (r.executions * r.steps) * 1000 for r in plain])),
        "of_ceiling": stats.rounded(stats.paired_ratio(
            [s.run.steps_per_s for s in slow], [r.steps_per_s for r in plain])),
        "of_lower_of_bound_and_ceiling": stats.rounded(rate / min(bound, ceiling)),
    }
