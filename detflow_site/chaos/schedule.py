"""The fault schedule: which faults hit which execution, step and moment, drawn from a seed.

A share of the executions (``plan(..., rollbacks=...)``) rolls back: one of their steps fails for
good on every run, so the compensations of the steps before it run, newest first. The faults drawn
for such an execution are then aimed at its rollback half the time: a crash at a pass (a store
fault at a write) that falls among its compensations', a handler fault at a compensation
(``undo``), so that every kind strikes compensations as it strikes steps.

A share of the others (``plan(..., waits=...)``) sleeps and waits: after their first step, a short
sleep and a wait for the signal ``go`` (``WaitPlan``). The run sends each one's signal before the
wait starts (``early``), once it waits (``during``), while a crash planted in its first step has
struck it and no worker has recovered it yet (``crash``), or never (``none``: it times out); a third
of the sent ones are sent twice with the same Idempotency-Key. ``lost_wakeup`` drops the delayed
message that would wake a WAITING step (the sleep's end, the wait's timeout), once or twice, so
that only the sweeper can wake it. Their other faults are drawn as for any execution.

Operators' pauses go through the real operations (``executions.operations``) from the nemesis:
``pause_execution`` pauses a share of the executions (``plan(..., pauses=...)``, at least one), each
at a drawn moment for a drawn time, then resumes it; ``pause_workflow`` pauses every chaos workflow
at a moment of the run for a while, then resumes them (its workers hold each execution at its next
step boundary, the resume lifts the holds). Both are drawn apart too.

Pure: the same seed and options always give the same schedule (``describe()`` compares equal).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
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
#: Operators' pauses (through ``executions.operations``), each lifted after ``duration_s``: of one
#: execution, and of every chaos workflow at once.
PAUSE_KINDS = ("pause_execution", "pause_workflow")
#: Faults that hit the whole system at a moment of the run.
GLOBAL_KINDS = ("redis_kill", "redis_flush", *STORE_GLOBAL_KINDS, "pause_workflow")
#: Faults planted in an execution that sleeps and waits (drawn apart, so that adding them changed
#: no other execution's faults).
WAIT_KINDS = ("lost_wakeup",)
KINDS = EXECUTION_KINDS + GLOBAL_KINDS + WAIT_KINDS + ("pause_execution",)
#: When the run sends a waiting execution's signal.
SIGNAL_MODES = ("early", "during", "crash", "none")
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
    #: Seconds after the workers start (nemesis faults; a pause's, when it is set).
    at_s: float = 0.0
    #: Repetitions: failing runs (``retryable``), extra messages (``duplicate``), fenced writes
    #: struck in a row (``store_before``, ``store_after``), one call in ``count`` (``store_spike``).
    count: int = 1
    #: Delay of a late message, a store call's latency (``store_latency``) or spike, in seconds.
    delay_s: float = 0.0
    #: How long an election, a latency, spikes or a pause last, in seconds.
    duration_s: float = 0.0
    #: A handler fault that hits the compensation of step ``step`` instead of the step.
    undo: bool = False


@dataclass(frozen=True)
class WaitPlan:
    """How the run signals one execution that sleeps and waits."""

    execution: int
    #: ``early``, ``during``, ``crash`` or ``none`` (``SIGNAL_MODES``).
    mode: str
    #: Sent a second time with the same Idempotency-Key and payload.
    duplicate: bool = False


@dataclass(frozen=True)
class Schedule:
    """Every fault of one run."""

    seed: int
    executions: int
    steps: int
    faults: tuple[Fault, ...]
    #: ``(execution index, step index)``: the executions that roll back, and the step that fails
    #: for good in each (every step before it has run; those with a compensation are undone).
    rollbacks: tuple[tuple[int, int], ...] = ()
    #: The executions that sleep and wait, and how each is signalled.
    waits: tuple[WaitPlan, ...] = ()

    def wait_plan(self, index: int) -> WaitPlan | None:
        """Return how execution ``index`` is signalled (``None``: it neither sleeps nor waits)."""
        return next((w for w in self.waits if w.execution == index), None)

    def fails_at(self, index: int) -> int | None:
        """Return the step that fails for good in execution ``index`` (``None``: it does not roll back)."""
        return dict(self.rollbacks).get(index)

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


def compensated(steps: int) -> tuple[int, ...]:
    """Return the steps of the rolling-back workflow that name a compensation: all but the second
    when there are three or more (a rollback then passes over a step it has nothing to undo for)."""
    return tuple(i for i in range(steps) if steps < 3 or i != 1)


def plan(
    seed: int, executions: int, steps: int, kinds: tuple[str, ...] = KINDS, rate: float = 0.5,
    rollbacks: float = 0.0, waits: float = 0.25, pauses: float = 0.05,
) -> Schedule:
    """Draw a schedule: every chosen kind at least once (when there are executions enough), then
    each further execution gets one fault with probability ``rate``; a share ``rollbacks`` of the
    executions (at least one when it is above 0 and there are two steps) rolls back, a share
    ``waits`` of the others sleeps and waits, a share ``pauses`` of them all (at least one) is
    paused (``pause_execution``). The faults of the others are the same with or without
    rollbacks, waits and pauses (but a crash planted in a waiting execution signalled during a
    crash strikes its first step)."""
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
        if kind in kinds and kind not in PAUSE_KINDS:
            faults.append(_draw_global(rng, kind))
    chosen = _draw_rollbacks(random.Random(f"rollbacks-{seed}"), executions, steps, rollbacks)
    aim = random.Random(f"rollback-faults-{seed}")
    faults = [_aim_at_rollback(aim, f, chosen[f.execution], steps) if f.execution in chosen else f
              for f in faults]
    waiting = _draw_waits(random.Random(f"waits-{seed}"), executions, set(chosen), waits,
                          {f.execution for f in faults if f.kind == "crash" and f.execution is not None},
                          "lost_wakeup" in kinds)
    plans = tuple(w for w, _ in waiting)
    crash_first = {w.execution for w in plans if w.mode == "crash"}
    faults = [replace(f, nth=1) if f.kind == "crash" and f.execution in crash_first else f for f in faults]
    faults += [f for _, f in waiting if f is not None]
    faults += _draw_pauses(seed, executions, pauses, kinds)
    faults.sort(key=lambda f: (f.execution if f.execution is not None else -1, f.kind, f.at_s))
    return Schedule(seed=seed, executions=executions, steps=steps, faults=tuple(faults),
                    rollbacks=tuple(sorted(chosen.items())), waits=plans)


def _draw_waits(
    rng: random.Random, executions: int, rolling_back: set[int], share: float, crashing: set[int],
    lose: bool,
) -> list[tuple[WaitPlan, Fault | None]]:
    """Return the executions that sleep and wait (at least one when ``share`` is above 0 and one
    does not roll back): how each is signalled (``crash`` for one with a crash planted: the crash
    strikes its first step), and its ``lost_wakeup`` fault, if any (half of them, at least one)."""
    if share <= 0:
        return []
    # The same draws for every execution, rolling back or not: the others' plans do not change
    # with the rollbacks.
    draws = [(rng.random(), rng.choice(("early", "during", "during", "none")), rng.random(),
              rng.random(), rng.randint(1, 2)) for _ in range(executions)]
    others = [i for i in range(executions) if i not in rolling_back]
    chosen = [i for i in others if draws[i][0] < share] or others[:1]
    drawn = []
    for i in chosen:
        _, drawn_mode, dup, lose_r, count = draws[i]
        mode = "crash" if i in crashing else drawn_mode
        plan = WaitPlan(i, mode, duplicate=mode != "none" and dup < 1 / 3)
        lost = Fault("lost_wakeup", i, count=count) if lose and lose_r < 0.5 else None
        drawn.append((plan, lost))
    if lose and drawn and not any(f for _, f in drawn):
        drawn[0] = (drawn[0][0], Fault("lost_wakeup", drawn[0][0].execution, count=1))
    return drawn


def _draw_pauses(seed: int, executions: int, share: float, kinds: tuple[str, ...]) -> list[Fault]:
    """Return the pauses: of a share of the executions (at least one, drawn), each set in the run's
    first 0.3 s (every other one) or 0.3 to 2 s into it, for 0.5 to 2.5 s; of the workflows, set 0.5 to 3 s
    into the run for 1 to 3 s."""
    drawn = []
    if "pause_execution" in kinds and executions > 0:
        rng = random.Random(f"pauses-{seed}")
        chosen = sorted(rng.sample(range(executions), min(executions, max(1, round(share * executions)))))
        # Half of them at the start, while nearly every execution waits or runs its first step;
        # the others later, when some have ended already (their pause is refused).
        drawn += [Fault("pause_execution", i, at_s=round(rng.uniform(0.0, 0.3) if k % 2 == 0
                                                         else rng.uniform(0.3, 2.0), 3),
                        duration_s=round(rng.uniform(0.5, 2.5), 3)) for k, i in enumerate(chosen)]
    if "pause_workflow" in kinds:
        rng = random.Random(f"workflow-pause-{seed}")
        drawn.append(Fault("pause_workflow", at_s=round(rng.uniform(0.5, 3.0), 3),
                           duration_s=round(rng.uniform(1.0, 3.0), 3)))
    return drawn


def _draw_rollbacks(rng: random.Random, executions: int, steps: int, share: float) -> dict[int, int]:
    """Return, for each execution that rolls back, the step that fails for good (never the first:
    something is always there to undo)."""
    if share <= 0 or steps < 2 or executions < 1:
        return {}
    chosen = {i: rng.randrange(1, steps) for i in range(executions) if rng.random() < share}
    return chosen or {0: rng.randrange(1, steps)}


def _aim_at_rollback(rng: random.Random, fault: Fault, fails_at: int, steps: int) -> Fault:
    """Aim a fault of a rolling-back execution at its compensations half the time; keep it among
    the steps that run otherwise."""
    undone = [i for i in compensated(steps) if i < fails_at]
    claims = fails_at + 1  # the claims before the rollback starts (no retries)
    slots = claims + len(undone)
    at_rollback = rng.random() < 0.5
    if fault.kind == "crash":
        nth = rng.randint(claims + 1, slots) if at_rollback else min(fault.nth, claims)
        return replace(fault, nth=nth)
    if fault.kind in STORE_EXECUTION_KINDS:  # a claim and an outcome each: two fenced writes a slot
        nth = rng.randint(2 * claims + 1, 2 * slots) if at_rollback else min(fault.nth, 2 * claims)
        return replace(fault, nth=nth)
    if fault.kind in HANDLER_KINDS:
        if at_rollback:
            return replace(fault, step=rng.choice(undone), undo=True)
        return replace(fault, step=min(fault.step or 0, fails_at))
    return fault


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
