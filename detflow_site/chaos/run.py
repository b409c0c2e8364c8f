"""A chaos run: start N executions with planted faults, run them on this process's worker
threads while the nemesis strikes, drain, and check.

A share of the executions (``Options.rollbacks``) runs the rolling-back workflow: the same steps,
each but one naming a compensation, ``on_failure: compensate``, and one step that fails for good,
so that their compensations run under the same faults. A share of the others (``Options.waits``)
runs the sleeping and waiting workflow: a sleep and a wait for the signal ``go`` after the first
step (``detflow_site.chaos.waits`` sends the signals and loses wake-ups). The nemesis pauses a share
of the executions (``Options.pauses``) and every chaos workflow for a while, through the operator
actions, and resumes them.

Crash points, pauses and broken mechanisms act on this process's threads only: run chaos with no
other worker consuming the queue.
"""
from __future__ import annotations

import dataclasses
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import PyMongoError

from detflow_site import conf, services
from detflow_site.chaos import checker, handlers
from detflow_site.chaos.nemesis import Nemesis
from detflow_site.chaos.report import pause_counts, pause_line, rollback_counts, rollback_line
from detflow_site.chaos.schedule import (
    HANDLER_KINDS,
    KINDS,
    STORE_EXECUTION_KINDS,
    STORE_KINDS,
    Fault,
    Schedule,
    compensated,
    expand,
    plan,
)
from detflow_site.chaos.storefaults import Rule, StoreFaults, installed
from detflow_site.chaos.waits import SIGNAL, LostWakeups, Signaller, dropping
from detflow_site.chaos.waits import send as send_signal
from executions import faults, operations, store
from executions.engine import TERMINAL
from executions.workers import WorkerPool
from workflows import definitions

#: The chaos workflow's name, and the rolling-back one's.
WORKFLOW = "chaos"
ROLLBACK_WORKFLOW = "chaos-rollback"
WAIT_WORKFLOW = "chaos-wait"
WORKFLOWS = (WORKFLOW, ROLLBACK_WORKFLOW, WAIT_WORKFLOW)
#: The waiting workflow's sleep, and its wait's timeout (then it continues with a default output).
NAP_S = 0.5
WAIT_TIMEOUT_S = 10.0
#: Where the waiting workflow's wait step is (after the first step and the sleep).
WAIT_INDEX = 2
#: A step's timeout; a planted hang sleeps three times as long.
TIMEOUT_S = 2.0


@dataclass
class Options:
    executions: int = 200
    steps: int = 5
    threads: int = 8
    seed: int = 0
    faults: tuple[str, ...] = KINDS
    drain_timeout: float = 180.0
    #: Test-only: safety mechanisms switched off to show that the checker notices.
    broken: tuple[str, ...] = ()
    deduplicate: bool = True
    #: Share of the executions that roll back (a step of theirs fails for good).
    rollbacks: float = 0.25
    #: Share of the others that sleep and wait for a signal.
    waits: float = 0.25
    #: Share of the executions an operator pauses for a while (``pause_execution``).
    pauses: float = 0.05
    #: Seconds each step works (half before its side effect, half after), so that executions are
    #: still running when timed faults (pauses) come.
    work_s: float = 0.0


@dataclass
class Report:
    """What a chaos run did and found."""

    options: Options
    schedule: Schedule
    duration_s: float = 0.0
    injected: Counter[str] = field(default_factory=Counter)
    recoveries: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[int] = field(default_factory=list)
    #: The slowest recovery: crash point, execution id, milliseconds.
    slowest: tuple[str, str, int] | None = None
    #: Store calls the store faults struck, by mode (``before``, ``after``, ``not_primary``,
    #: ``latency``; ``spike``: the latency calls that were spikes).
    store_calls: dict[str, int] = field(default_factory=dict)
    #: Crashes that fell in an execution's rollback (after its rollback started).
    crashes_in_rollbacks: int = 0
    #: Signals sent (by how), duplicates, refusals, and wake-ups lost.
    signals: Counter[str] = field(default_factory=Counter)
    lost_wakeups: int = 0
    #: What the nemesis's pauses did (``Nemesis.pauses``).
    pauses: Counter[str] = field(default_factory=Counter)
    findings: checker.Findings = field(default_factory=checker.Findings)

    @property
    def ok(self) -> bool:
        return not self.findings.violations

    def latency(self) -> dict[str, Any]:
        values = sorted(self.latencies_ms)
        if not values:
            return {"count": 0, "p50": None, "p95": None, "max": None}
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        slowest = None if self.slowest is None else (
            f"{self.slowest[2]} ms after a crash at {self.slowest[0]!r} in {self.slowest[1]}")
        return {"count": len(values), "p50": round(statistics.median(values)), "p95": p95,
                "max": values[-1], "slowest": slowest}

    def as_dict(self) -> dict[str, Any]:
        planned = self.schedule.counts()
        return {
            "seed": self.options.seed, "executions": self.options.executions,
            "steps": self.options.steps, "threads": self.options.threads,
            "spare_threads_for_pauses": self.schedule.counts().get("pause", 0),
            "duration_s": round(self.duration_s, 2),
            "store": services.store_description(), "redis": services.redis_url(),
            "faults": {k: {"planned": planned.get(k, 0), "injected": self.injected.get(k, 0)}
                       for k in self.options.faults},
            "store_calls_struck": dict(sorted(self.store_calls.items())),
            "statuses": dict(self.findings.statuses),
            "rollbacks": rollback_counts(self.schedule, self.findings, self.crashes_in_rollbacks),
            "waits": self.wait_counts(),
            "pauses": pause_counts(self.schedule, self.pauses, self.findings),
            "recoveries": self.recoveries,
            "recovery_latency_ms": self.latency(),
            "violations": [str(v) for v in self.findings.violations],
            "ok": self.ok,
        }

    def wait_counts(self) -> dict[str, int]:
        """Return what the waiting executions did: from the histories (``findings``) and the run."""
        f, sent = self.findings, self.signals
        return {"executions": len(self.schedule.waits), "sleeps": f.sleeps, "waits": f.waits,
                "signals_sent": sent["signals sent"], "sent_early": sent["sent early"],
                "sent_during_crash": sent["sent crash"], "duplicates": sent["duplicates"],
                "refused": sent["refused (execution ended)"], "signals_stored": f.signals,
                "signals_taken": f.signals_taken, "timeouts": f.timeouts,
                "lost_wakeups": self.lost_wakeups}

    def lines(self) -> list[str]:
        data = self.as_dict()
        out = [f"chaos run: seed {data['seed']}, {data['executions']} executions x {data['steps']} "
               f"steps on {data['threads']} threads (+{data['spare_threads_for_pauses']} for pauses), "
               f"{data['duration_s']}s; store: {data['store']}",
               "faults (planned / injected):"]
        out += [f"  {kind:<16} {v['planned']:>5} / {v['injected']}" for kind, v in data["faults"].items()]
        if data["store_calls_struck"]:
            out.append("store calls struck: " + ", ".join(
                f"{k} {v}" for k, v in data["store_calls_struck"].items()))
        out.append("final statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(data["statuses"].items())))
        out.append(rollback_line(data["rollbacks"]) + f"; crashes in them {self.crashes_in_rollbacks}")
        w = data["waits"]
        out.append(f"waits: {w['executions']} executions; {w['sleeps']} sleeps and {w['waits']} waits "
                   f"started, {w['signals_sent']} signals sent ({w['sent_early']} before the wait, "
                   f"{w['sent_during_crash']} during a crash), {w['duplicates']} duplicates "
                   f"(same key), {w['signals_stored']} stored, {w['signals_taken']} taken, "
                   f"{w['timeouts']} timeouts, {w['lost_wakeups']} wake-ups lost")
        out.append(pause_line(data["pauses"]))
        out.append("recoveries: " + ", ".join(f"{k} {v}" for k, v in data["recoveries"].items()))
        lat = data["recovery_latency_ms"]
        out.append(f"recovery latency, crash to next claim (ms): n={lat['count']} p50={lat['p50']} "
                   f"p95={lat['p95']} max={lat['max']}")
        if lat.get("slowest"):
            out.append(f"  slowest: {lat['slowest']}")
        if self.ok:
            out.append("violations: none")
        else:
            out.append(f"violations: {len(self.findings.violations)}")
            out += [f"  {v}" for v in self.findings.violations[:50]]
        return out


def prepare(options: Options) -> Schedule:
    """Return the run's schedule; raise ``ValueError`` for an unknown kind or an election too long
    for the lease (one must end while the claims it catches still hold, so that it loses nothing)."""
    schedule = plan(options.seed, options.executions, options.steps, expand(options.faults),
                    rollbacks=options.rollbacks, waits=options.waits, pauses=options.pauses)
    lease_s = conf.get().LEASE_S
    # The last renewal before an election may be a renewal interval (a third of the lease) old,
    # and the write that follows it waits up to a backoff step more.
    longest = lease_s * 2 / 3 - store.MAX_BACKOFF_S - 1
    for fault in schedule.faults:
        if fault.kind == "store_election" and fault.duration_s > longest:
            raise ValueError(
                f"a {fault.duration_s}s election needs DETFLOW_LEASE_S of at least "
                f"{(fault.duration_s + store.MAX_BACKOFF_S + 1) * 1.5:g} (it is {lease_s:g}); "
                "raise it, or leave store_election out of --faults")
    return schedule


def run(options: Options, progress: Callable[[str], None] | None = None) -> Report:
    """Run chaos as ``options`` say and return the checked report."""
    say = progress or (lambda _line: None)
    options = dataclasses.replace(options, faults=expand(options.faults))
    schedule = prepare(options)
    report = Report(options=options, schedule=schedule)
    run_id = f"{options.seed}-{secrets.token_hex(4)}"
    faults.disarm()
    faults.install_seam()  # before any worker runs: every message then passes the crash points
    for mechanism in options.broken:
        faults.break_(mechanism)
    handlers.DEDUPLICATE["enabled"] = options.deduplicate
    # Every use of the executions collection goes through the store seam for the whole run.
    lost = LostWakeups({})
    with installed(StoreFaults(seed=options.seed)) as seam, dropping(lost):
        ids, planted = _start(options, schedule, run_id, seam, report.signals)
        lost.left = {ids[f.execution]: f.count for f in schedule.faults
                     if f.kind == "lost_wakeup" and f.execution is not None}
        say(f"started {len(ids)} executions; {len(schedule.faults)} faults planned")
        started = time.monotonic()
        # A paused runner stands for a stopped process, whose threads stop with it while the
        # other processes carry on; here every runner is a thread of one pool, so each planned
        # pause gets a spare thread. Without them, as many pauses at once as threads stall the
        # pool until the pauses give up (steps run back to back reach many pauses at once).
        pauses = schedule.counts().get("pause", 0)
        pool = WorkerPool(threads=options.threads + pauses).start()
        nemesis = Nemesis(schedule, ids, seam, WORKFLOWS)
        nemesis.start()
        signaller = Signaller(schedule, ids, WAIT_INDEX)
        signaller.start()
        try:
            nemesis.join(timeout=options.drain_timeout)  # every planned fault strikes, even late ones
            _drain(ids, options.drain_timeout, say)
        finally:
            nemesis.stop()
            signaller.stop()
            seam.clear()
            pool.stop()
            report.duration_s = time.monotonic() - started
            fired = list(faults.fired)
            faults.disarm()
            handlers.DEDUPLICATE["enabled"] = True
    report.store_calls = dict(seam.injected)
    report.signals.update(signaller.counts)
    report.lost_wakeups = sum(lost.lost.values())
    report.pauses = nemesis.pauses
    docs = [store.with_history(d) for d in store.collection().find({"_id": {"$in": ids}})]
    runs = list(handlers.ledger().find({"run": run_id}))
    kinds = {ids[i]: {f.kind for f in schedule.for_execution(i)} for i in range(len(ids))}
    report.findings = checker.check(docs, runs, handlers.effects().find({"run": run_id}), kinds)
    report.injected = _injected(fired, nemesis, runs, schedule, ids)
    report.injected.update(_struck(planted + nemesis.rules))
    report.injected["lost_wakeup"] = len(lost.lost)
    recoveries = _recoveries(fired, docs)
    report.latencies_ms = [latency for latency, _ in recoveries]
    report.crashes_in_rollbacks = _in_rollbacks(fired, docs)
    if recoveries:
        latency, crash = max(recoveries, key=lambda r: r[0])
        report.slowest = (crash.point, crash.execution_id or "?", latency)
    totals = pool.sweeper.totals if pool.sweeper else Counter()
    report.recoveries = {"lost attempts recorded": report.findings.lost_attempts,
                         "messages re-sent by the sweeper": totals["resent"] + totals["lost"]}
    return report


def _start(
    options: Options, schedule: Schedule, run_id: str, seam: StoreFaults, signals: Counter[str],
) -> tuple[list[str], list[tuple[Fault, Rule]]]:
    """Start the run's executions with their planted faults: the handler's in its input, crash
    points armed, store rules added to ``seam``; send the signals planned ``early`` (before any
    worker runs, so before their wait starts). Return the ids and the store rules by fault."""
    settings = conf.get()
    versions = register_all(options.steps)
    pause_s = settings.LEASE_S * 3 + settings.SWEEP_INTERVAL_S + settings.SWEEP_GRACE_S + 10
    ids: list[str] = []
    rules: list[tuple[Fault, Rule]] = []
    for index in range(options.executions):
        planted = handler_faults(schedule, index)
        chaos = {"run": run_id, "faults": planted, "hang_s": TIMEOUT_S * 3, "pause_s": pause_s,
                 **({"work_s": options.work_s} if options.work_s else {})}
        workflow = workflow_of(schedule, index, chaos)
        doc, _ = operations.start(workflow, {"chaos": chaos}, version=versions[workflow], by="chaos")
        ids.append(doc["_id"])
        for fault in schedule.for_execution(index):
            if fault.kind == "crash" and fault.point:
                faults.arm(fault.point, execution_id=doc["_id"], skip=fault.nth - 1)
            elif fault.kind in STORE_EXECUTION_KINDS:
                # The nth of the execution's version-matched writes (claims, outcomes, the end)
                # and the ``count - 1`` after it fail before or after they are applied.
                rule = Rule(fault.kind.removeprefix("store_"), ops=frozenset({"update_one"}),
                            times=fault.count, skip=fault.nth - 1, execution_id=doc["_id"], fenced=True)
                rules.append((fault, seam.add(rule)))
        wait = schedule.wait_plan(index)
        if wait is not None and wait.mode == "early":
            while not send_signal(doc["_id"], wait, signals):  # no store fault strikes yet
                time.sleep(0.1)
            signals["sent early"] += 1
    return ids, rules


#: The retry policy of every chaos step and compensation.
RETRY = {"max_attempts": 6, "initial_delay_s": 0.2, "multiplier": 2, "max_delay_s": 2, "jitter": 0.2}


def register(steps: int, rollback: bool = False) -> Any:
    """Register (or find) the chaos workflow with ``steps`` steps (with ``rollback``, the
    rolling-back one: the steps ``schedule.compensated`` names have a compensation)."""
    undo = {"handler": handlers.UNDO_HANDLER, "timeout_s": TIMEOUT_S, "retry": RETRY}
    stored, _ = definitions.register({
        "name": ROLLBACK_WORKFLOW if rollback else WORKFLOW,
        "description": "detflow's chaos workflow: every step records its runs and side effect"
                       + ("; a failure for good rolls back" if rollback else ""),
        "steps": [{"name": f"step-{i + 1}", "handler": handlers.HANDLER, "timeout_s": TIMEOUT_S,
                   "retry": RETRY, **({"compensate": undo} if rollback and i in compensated(steps) else {})}
                  for i in range(steps)],
        **({"on_failure": "compensate"} if rollback else {}),
    })
    return stored


def register_waiting(steps: int) -> Any:
    """Register (or find) the sleeping and waiting chaos workflow: the ``steps`` chaos steps with a
    sleep of ``NAP_S`` and a wait for the signal ``go`` after the first (a timed-out wait continues
    with a default output)."""
    handler_steps = [
        {"name": f"step-{i + 1}", "handler": handlers.HANDLER, "timeout_s": TIMEOUT_S, "retry": RETRY}
        for i in range(steps)]
    waiting = [{"name": "nap", "sleep": {"seconds": NAP_S}},
               {"name": "approval", "wait": {"signal": SIGNAL, "timeout_s": WAIT_TIMEOUT_S,
                                             "on_timeout": "continue",
                                             "default_output": {"timed_out": True}}}]
    stored, _ = definitions.register({
        "name": WAIT_WORKFLOW,
        "description": "detflow's chaos workflow that sleeps and waits for a signal after its first step",
        "steps": [handler_steps[0], *waiting, *handler_steps[1:]],
    })
    return stored


def register_all(steps: int) -> dict[str, int]:
    """Register the chaos workflows; return the version of each by name."""
    return {WORKFLOW: register(steps).version, ROLLBACK_WORKFLOW: register(steps, rollback=True).version,
            WAIT_WORKFLOW: register_waiting(steps).version}


def handler_faults(schedule: Schedule, index: int) -> list[dict[str, Any]]:
    """Return the faults execution ``index``'s handlers inject (its input's ``chaos.faults``)."""
    return [{"kind": f.kind, "step": f.step, "count": f.count, **({"undo": True} if f.undo else {})}
            for f in schedule.for_execution(index) if f.kind in HANDLER_KINDS]


def workflow_of(schedule: Schedule, index: int, chaos: dict[str, Any]) -> str:
    """Return the workflow execution ``index`` runs; one that rolls back gets its failing step in
    ``chaos`` (``fail_at``)."""
    fails_at = schedule.fails_at(index)
    if fails_at is None:
        return WAIT_WORKFLOW if schedule.wait_plan(index) is not None else WORKFLOW
    chaos["fail_at"] = fails_at
    return ROLLBACK_WORKFLOW


def target(fault: Fault) -> str:
    """Return the ledger name of what a handler fault hits: a step, or its compensation."""
    return f"step-{(fault.step or 0) + 1}" + (checker.UNDO_SUFFIX if fault.undo else "")


def _drain(ids: list[str], timeout_s: float, say: Callable[[str], None]) -> None:
    deadline = time.monotonic() + timeout_s
    last = 0.0
    while time.monotonic() < deadline:
        # Unfinished chaos executions (runs do not overlap): no $in over every id, which
        # mongomock would check against each stored document on every poll.
        try:
            left = store.collection().count_documents(
                {"workflow": {"$in": list(WORKFLOWS)},
                 "$or": [{"status": {"$nin": [s.value for s in TERMINAL]}},
                         {"due_at": {"$exists": True}}]}
            )
        except PyMongoError:  # an election the nemesis holds: ask again
            time.sleep(0.1)
            continue
        done = len(ids) - left
        if done == len(ids):
            return
        if time.monotonic() - last >= 2:
            say(f"  {done}/{len(ids)} executions finished")
            last = time.monotonic()
        time.sleep(0.1)
    say(f"drain timed out after {timeout_s:g}s")


def _injected(fired: list[faults.Fired], nemesis: Nemesis, runs: list[dict[str, Any]],
              schedule: Schedule, ids: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    counts["crash"] = sum(1 for f in fired if f.execution_id in set(ids))
    counts.update(i.kind for i in nemesis.injected
                  if not i.detail.startswith(("failed", "refused")) and i.kind not in STORE_KINDS)
    first_runs = {(r["execution_id"], r["step"]) for r in runs}
    for fault in schedule.faults:
        hit = None if fault.execution is None else (ids[fault.execution], target(fault))
        if fault.kind in HANDLER_KINDS and hit in first_runs:
            counts[fault.kind] += 1
    return counts


def _struck(rules: list[tuple[Fault, Rule]]) -> Counter[str]:
    """Count the store faults that struck at least one call (spikes: that spiked one)."""
    return Counter(fault.kind for fault, rule in rules
                   if (rule.spiked if fault.kind == "store_spike" else rule.struck) > 0)


def _recoveries(fired: list[faults.Fired], docs: list[dict[str, Any]]) -> list[tuple[int, faults.Fired]]:
    """Pair each crash with the time to the next claim in its execution (none: nothing was left)."""
    claims: dict[str, list[int]] = {}
    for doc in docs:
        claims[doc["_id"]] = sorted(store.to_ms(e["at"]) or 0 for e in doc["events"]
                                    if e["type"] in ("step_claimed", "compensation_claimed"))
    latencies = []
    for crash in fired:
        later = [at for at in claims.get(crash.execution_id or "", []) if at >= crash.at_ms]
        if later:
            latencies.append((later[0] - crash.at_ms, crash))
    return latencies


def _in_rollbacks(fired: list[faults.Fired], docs: list[dict[str, Any]]) -> int:
    """Count the crashes that fell in a rollback: after its execution's rollback started."""
    started = {doc["_id"]: store.to_ms(e["at"]) or 0 for doc in docs for e in doc["events"]
               if e["type"] == "rollback_started"}
    return sum(1 for crash in fired
               if crash.execution_id in started and crash.at_ms >= started[crash.execution_id])
