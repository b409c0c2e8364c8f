"""The fault schedule: which faults hit which execution, step and moment, drawn from a seed.

Pure: the same seed and options always give the same schedule (``describe()`` compares equal).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from executions.faults import POINTS

#: Store faults (``detflow_site.chaos.storefaults``): an error before one of an execution's fenced
#: writes is applied or after it was (an ambiguous write), and, for every call while they last, an
#: election (``NotWritablePrimary``), a fixed latency, and latency spikes.
STORE_EXECUTION_KINDS = ("store_before", "store_after")
STORE_GLOBAL_KINDS = ("store_election", "store_latency", "store_spike")
STORE_KINDS = STORE_EXECUTION_KINDS + STORE_GLOBAL_KINDS
#: Faults planted in one execution (by its index in the run).
EXECUTION_KINDS = ("crash", "retryable", "permanent", "hang", "pause", "duplicate", "late",
                   *STORE_EXECUTION_KINDS)
#: Faults that hit the whole system at a moment of the run.
GLOBAL_KINDS = ("redis_kill", "redis_flush", *STORE_GLOBAL_KINDS)
KINDS = EXECUTION_KINDS + GLOBAL_KINDS
#: Names that stand for several kinds (``--faults store,crash``).
GROUPS = {"store": STORE_KINDS}
#: Faults a handler injects itself (the rest come from the runner's crash points or the nemesis).
HANDLER_KINDS = ("retryable", "permanent", "hang", "pause")


@dataclass(frozen=True)
class Fault:
    """One planned fault."""

    kind: str
    #: Index of the execution in the run (``None`` for a global fault).
    execution: int | None = None
    #: Index of the step it hits (handler faults).
    step: int | None = None
    #: Crash point (``crash``) and which pass through it, counted per execution from 1; for
    #: ``store_before`` and ``store_after``, which of the execution's fenced writes is struck first.
    point: str | None = None
    nth: int = 1
    #: Seconds after the workers start (nemesis faults).
    at_s: float = 0.0
    #: Repetitions: failing runs (``retryable``), extra messages (``duplicate``), fenced writes
    #: struck in a row (``store_before``, ``store_after``), one call in ``count`` (``store_spike``).
    count: int = 1
    #: Delay of a late message, a store call's latency (``store_latency``) or spike, in seconds.
    delay_s: float = 0.0
    #: How long an election, a latency or spikes last, in seconds.
    duration_s: float = 0.0


@dataclass(frozen=True)
class Schedule:
    """Every fault of one run."""

    seed: int
    executions: int
    steps: int
    faults: tuple[Fault, ...]

    def for_execution(self, index: int) -> list[Fault]:
        return [f for f in self.faults if f.execution == index]

    def describe(self) -> list[dict[str, Any]]:
        """Return the schedule as plain data (what ``--json`` prints, what tests compare)."""
        return [{k: v for k, v in asdict(f).items() if v not in (None, 0, 0.0)} for f in self.faults]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for fault in self.faults:
            counts[fault.kind] = counts.get(fault.kind, 0) + 1
        return counts


def expand(kinds: tuple[str, ...]) -> tuple[str, ...]:
    """Return ``kinds`` with each group name replaced by its kinds, in order, each once; raise
    ``ValueError`` naming any unknown kind."""
    unknown = sorted(set(kinds) - set(KINDS) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}, "
                         f"and {', '.join(GROUPS)} for {', '.join(f'every {g}_* kind' for g in GROUPS)}")
    named = [k for kind in kinds for k in GROUPS.get(kind, (kind,))]
    return tuple(dict.fromkeys(named))


def plan(
    seed: int, executions: int, steps: int, kinds: tuple[str, ...] = KINDS, rate: float = 0.5
) -> Schedule:
    """Draw a schedule: every chosen kind at least once (when there are executions enough), then
    each further execution gets one fault with probability ``rate``."""
    kinds = expand(kinds)
    rng = random.Random(seed)
    local = [k for k in EXECUTION_KINDS if k in kinds]
    faults: list[Fault] = []
    order = list(range(executions))
    rng.shuffle(order)
    for position, index in enumerate(order):
        if position < len(local):
            kind = local[position]
        elif local and rng.random() < rate:
            kind = rng.choice(local)
        else:
            continue
        faults.append(_draw(rng, kind, index, steps))
    for kind in GLOBAL_KINDS:
        if kind in kinds:
            faults.append(_draw_global(rng, kind))
    faults.sort(key=lambda f: (f.execution if f.execution is not None else -1, f.kind, f.at_s))
    return Schedule(seed=seed, executions=executions, steps=steps, faults=tuple(faults))


def _draw(rng: random.Random, kind: str, index: int, steps: int) -> Fault:
    if kind == "crash":
        point = rng.choice(POINTS)
        return Fault(kind, index, point=point, nth=rng.randint(1, steps))
    if kind in HANDLER_KINDS:
        count = rng.randint(1, 2) if kind == "retryable" else 1
        return Fault(kind, index, step=rng.randrange(steps), count=count)
    if kind in STORE_EXECUTION_KINDS:
        # A step's claim and its outcome are a fenced write each: any of them, once or twice.
        return Fault(kind, index, nth=rng.randint(1, 2 * steps), count=rng.randint(1, 2))
    if kind == "duplicate":
        return Fault(kind, index, count=rng.randint(2, 6), at_s=round(rng.uniform(0.0, 2.0), 3))
    return Fault(kind, index, at_s=round(rng.uniform(0.0, 1.5), 3),
                 delay_s=round(rng.uniform(1.0, 3.0), 3))


def _draw_global(rng: random.Random, kind: str) -> Fault:
    at_s = round(rng.uniform(1.0, 4.0), 3)
    if kind == "store_election":
        # Shorter than a lease less a renewal interval (``run.check`` holds the run to it): an
        # outcome written during one is late, never lost.
        return Fault(kind, at_s=at_s, duration_s=round(rng.uniform(2.0, 5.0), 3))
    if kind == "store_latency":
        return Fault(kind, at_s=at_s, delay_s=round(rng.uniform(0.001, 0.005), 4),
                     duration_s=round(rng.uniform(3.0, 8.0), 3))
    if kind == "store_spike":
        return Fault(kind, at_s=at_s, delay_s=round(rng.uniform(0.3, 1.0), 3),
                     count=rng.randint(20, 50), duration_s=round(rng.uniform(3.0, 8.0), 3))
    return Fault(kind, at_s=at_s)
