"""What a chaos run on worker processes did and found: its kills, recoveries and the checker's verdict."""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from detflow_site import conf, services
from detflow_site.chaos import checker
from detflow_site.chaos.checker import UNDO_SUFFIX
from detflow_site.chaos.schedule import Schedule

if TYPE_CHECKING:
    from detflow_site.chaos.fleet import FleetOptions


def rollback_counts(schedule: Schedule, findings: checker.Findings, struck: int) -> dict[str, int]:
    """Return what the run's rollbacks did: planned, started, compensations named, attempts
    claimed and recorded lost; ``struck``: the crashes (or kills) that fell in them."""
    return {"planned": len(schedule.rollbacks), "started": findings.rollbacks,
            "compensations": findings.compensations,
            "compensation_attempts": findings.compensation_attempts,
            "compensation_attempts_lost": findings.lost_compensations, "struck": struck}


def rollback_line(counts: dict[str, int]) -> str:
    return (f"rollbacks: {counts['started']} started of {counts['planned']} planned, "
            f"{counts['compensations']} compensations, {counts['compensation_attempts']} compensation "
            f"attempts ({counts['compensation_attempts_lost']} recorded lost)")


def pause_counts(schedule: Schedule, nemesis: Counter[str], findings: checker.Findings) -> dict[str, int]:
    """Return what the run's pauses did: planned and set (by the nemesis, ``Nemesis.pauses``) and
    the holds the histories show (``findings``)."""
    planned = schedule.counts()
    return {"planned": planned.get("pause_execution", 0), "paused": nemesis["paused"],
            "refused": nemesis["refused"], "failed": nemesis["failed"], "resumed": nemesis["resumed"],
            "ended_while_paused": nemesis["ended while paused"],
            "workflow_pauses_planned": planned.get("pause_workflow", 0),
            "workflows_paused": nemesis["workflows paused"],
            "workflows_resumed": nemesis["workflows resumed"],
            "workflow_holds": findings.holds["workflow"], "holds_lifted": nemesis["holds lifted"],
            "execution_holds": findings.holds["execution"], "resumes": findings.resumes,
            "attempts_ended_while_held": findings.ended_while_held}


def pause_line(counts: dict[str, int]) -> str:
    return (f"pauses: {counts['paused']} executions paused of {counts['planned']} planned "
            f"({counts['refused']} refused: ended already"
            + (f"; {counts['failed']} failed" if counts["failed"] else "")
            + f"), {counts['resumed']} resumed "
            f"({counts['ended_while_paused']} ended while paused); workflow pauses: "
            f"{counts['workflow_pauses_planned']} planned, {counts['workflows_paused']} workflows paused "
            f"and {counts['workflows_resumed']} resumed, {counts['workflow_holds']} holds set on "
            f"executions, {counts['holds_lifted']} lifted by the resumes (the rest by a worker or the "
            f"sweeper); {counts['attempts_ended_while_held']} attempts ended while held")


@dataclass
class KillRecord:
    """One SIGKILL: which worker and pids, when, the attempts it left RUNNING and their recoveries."""

    number: int
    slot: int
    #: The killed group: ``runworker`` first, then Dramatiq's master and worker process.
    pids: list[int]
    at_ms: int
    #: ``(execution id, step, attempt)`` RUNNING in the killed processes.
    running: list[tuple[str, str, int]]
    #: Milliseconds from the kill to each running step's next claim (``None``: never claimed again).
    recovered_ms: list[int | None] = field(default_factory=list)
    #: The backoff the retry policy set for each running step once it was recorded lost: part of
    #: its recovery time, not of the time recovery took.
    backoff_ms: list[int] = field(default_factory=list)

    #: Milliseconds from the kill to the sweeper's record of each running attempt lost.
    lost_ms: list[int | None] = field(default_factory=list)

    def waits(self) -> list[int]:
        """Each running step's recovery less its backoff: lease, sweep, message and claim."""
        return [t - b for t, b in zip(self.recovered_ms, self.backoff_ms, strict=True) if t is not None]

    def as_dict(self, started_ms: int) -> dict[str, Any]:
        return {"number": self.number, "at_s": round((self.at_ms - started_ms) / 1000, 2),
                "worker": self.slot, "pid": self.pids[0], "pids": self.pids,
                "running": len(self.running),
                "attempts": [{"execution_id": e, "step": s, "attempt": a, "recovered_ms": t,
                              "recorded_lost_ms": lost, "backoff_ms": b}
                             for (e, s, a), t, lost, b in zip(self.running, self.recovered_ms,
                                                              self.lost_ms, self.backoff_ms,
                                                              strict=True)],
                "max_recovery_ms": max(self.waits(), default=None)}


@dataclass
class FleetReport:
    options: FleetOptions
    schedule: Schedule
    sweep_interval_s: float
    slack_s: float
    #: When the workers were started (``store.now_ms()``); kill times count from it.
    started_ms: int = 0
    duration_s: float = 0.0
    injected: Counter[str] = field(default_factory=Counter)
    kills: list[KillRecord] = field(default_factory=list)
    kills_skipped: int = 0
    worker_starts: int = 0
    #: Workers that stopped without being killed: their exit status and output's end.
    unexpected_exits: list[str] = field(default_factory=list)
    sweeps: dict[str, int] = field(default_factory=dict)
    effects: int = 0
    succeeded_steps: int = 0
    succeeded_compensations: int = 0
    findings: checker.Findings = field(default_factory=checker.Findings)

    @property
    def bound_ms(self) -> int:
        return round((self.options.lease_s + self.sweep_interval_s + self.slack_s) * 1000)

    def kills_in_rollbacks(self) -> int:
        """Count the kills that left a compensation RUNNING."""
        return sum(1 for k in self.kills if any(name.endswith(UNDO_SUFFIX) for _, name, _ in k.running))

    def recoveries(self) -> list[int]:
        """Every recovery less its retry backoff, fastest first (what the bound holds to)."""
        return sorted(t for k in self.kills for t in k.waits())

    @property
    def ok(self) -> bool:
        times = self.recoveries()
        return not self.findings.violations and not self.unexpected_exits and \
            (not times or times[-1] <= self.bound_ms)

    def as_dict(self) -> dict[str, Any]:
        planned = self.schedule.counts()
        times = self.recoveries()
        never = sum(1 for k in self.kills for t in k.recovered_ms if t is None)
        return {
            "seed": self.options.seed, "executions": self.options.executions,
            "steps": self.options.steps, "processes": self.options.processes,
            "threads": self.options.threads, "lease_s": self.options.lease_s,
            "sweep_interval_s": self.sweep_interval_s, "sweep_grace_s": conf.get().SWEEP_GRACE_S,
            "in_flight": self.options.in_flight_limit(),
            "duration_s": round(self.duration_s, 2),
            "store": services.store_description(), "redis": services.redis_description(),
            "faults": {k: {"planned": planned.get(k, 0), "injected": self.injected.get(k, 0)}
                       for k in self.options.faults},
            "kills": {"planned": self.options.kill_count(), "done": len(self.kills),
                      "skipped": self.kills_skipped, "worker_starts": self.worker_starts,
                      "list": [k.as_dict(self.started_ms) for k in self.kills]},
            "unexpected_exits": self.unexpected_exits,
            "recovery_ms": {"count": len(times), "p50": round(statistics.median(times)) if times else None,
                            "max": times[-1] if times else None, "bound": self.bound_ms,
                            "never_claimed_again": never},
            "statuses": dict(self.findings.statuses),
            "rollbacks": rollback_counts(self.schedule, self.findings, self.kills_in_rollbacks()),
            "side_effects": {"committed": self.effects, "succeeded_steps": self.succeeded_steps,
                             "succeeded_compensations": self.succeeded_compensations},
            "lost_attempts_recorded": self.findings.lost_attempts,
            "sweeper": self.sweeps,
            "violations": [str(v) for v in self.findings.violations],
            "ok": self.ok,
        }

    def lines(self) -> list[str]:
        data = self.as_dict()
        kills, rec = data["kills"], data["recovery_ms"]
        out = [f"chaos run on processes: seed {data['seed']}, {data['executions']} executions x "
               f"{data['steps']} steps on {data['processes']} worker processes x {data['threads']} "
               f"threads, {data['duration_s']}s; store: {data['store']}",
               f"lease {data['lease_s']:g}s, sweep every {data['sweep_interval_s']:g}s (due work "
               f"re-sent after {data['sweep_grace_s']:g}s), at most "
               f"{data['in_flight']} executions unfinished at once",
               "faults (planned / injected):"]
        out += [f"  {kind:<14} {v['planned']:>5} / {v['injected']}" for kind, v in data["faults"].items()]
        out.append(f"SIGKILLs: {kills['done']} of {kills['planned']} planned"
                   + (f" ({kills['skipped']} not done: the work ended first)" if kills["skipped"] else "")
                   + f"; worker processes started {kills['worker_starts']} times")
        for kill in kills["list"]:
            times = [f"{a['recovered_ms']}" + (f" ({a['backoff_ms']} backoff)" if a["backoff_ms"] else "")
                     for a in kill["attempts"] if a["recovered_ms"] is not None]
            recovered = f", recovered in {', '.join(times)} ms" if times else ""
            out.append(f"  #{kill['number']:<3} at {kill['at_s']:>7.2f}s worker {kill['worker']} pids "
                       f"{','.join(map(str, kill['pids']))}: {kill['running']} RUNNING{recovered}")
        out.append(f"recovery, kill to the step's next claim less its retry backoff (ms): "
                   f"n={rec['count']} p50={rec['p50']} max={rec['max']} "
                   f"(bound: lease + sweep + {self.slack_s:g}s = {rec['bound']})"
                   + (f"; {n} never claimed again" if (n := rec["never_claimed_again"]) else ""))
        out.append("final statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(data["statuses"].items())))
        out.append(rollback_line(data["rollbacks"])
                   + f"; kills with a compensation RUNNING {data['rollbacks']['struck']}")
        effects = data["side_effects"]
        out.append(f"side effects committed: {effects['committed']} for {effects['succeeded_steps']} "
                   f"succeeded steps and {effects['succeeded_compensations']} succeeded compensations; "
                   f"lost attempts recorded: {data['lost_attempts_recorded']}")
        for exit_ in self.unexpected_exits:
            out.append(f"worker exited on its own: ...{exit_[-800:]}")
        if self.findings.violations:
            out.append(f"violations: {len(self.findings.violations)}")
            out += [f"  {v}" for v in self.findings.violations[:50]]
        else:
            out.append("violations: none")
        return out
