"""Chaos on real worker processes: N ``manage.py runworker`` processes over the shared store,
SIGKILLed on a seeded schedule and started again, checked by the same checker.

Each worker is ``runworker --processes 1 --no-sweeper``, its own session: a kill is SIGKILL to its
whole group (``runworker``, Dramatiq's master and its worker process) at once, as a machine losing
power; nothing of it runs a ``finally``. The sweeper runs here, in the process that is never
killed, every ``SWEEP_INTERVAL_S``. Faults that reach other processes are planned beside the kills:
the handler's (in the execution's input) and extra or late messages (through the broker, at the
execution's start). Executions are started as earlier ones finish, at most ``in_flight`` at once, so
that a recovered step never waits behind a backlog: its recovery is the lease and a sweep. Starts
keep pace with the kills (a share of the executions per kill), so that every kill falls inside the
work. One kill at a time: a kill waits until the steps the last one left RUNNING are claimed again,
for its victim and a peer to be ready, and up to ``AIM_S`` for its victim to hold a RUNNING attempt.
A share of the executions rolls back (``FleetOptions.rollbacks``, as ``run`` does), so kills fall in
compensations too: a RUNNING compensation is named ``<step>:compensate`` in the kill's record.
"""
from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo.errors import PyMongoError

from detflow_site import conf, services
from detflow_site.chaos import checker, handlers
from detflow_site.chaos.checker import UNDO_SUFFIX
from detflow_site.chaos.report import FleetReport, KillRecord
from detflow_site.chaos.run import TIMEOUT_S, handler_faults, register_all, target, workflow_of
from detflow_site.chaos.schedule import HANDLER_KINDS, Schedule, plan
from detflow_site.processes import Child, manage_command
from executions import dispatch, operations, store
from executions.engine import TERMINAL
from executions.sweeper import Sweeper

#: Fault kinds that reach worker processes from here (crash points, pauses, store and Redis
#: faults act on one process's threads or on shared services: SIGKILL stands for the crashes).
KINDS = ("retryable", "permanent", "hang", "duplicate", "late")
#: How often the sweeper of a fleet run looks for expired leases and due work, in seconds.
SWEEP_INTERVAL_S = 1.0
#: What a worker process logs once it consumes (Dramatiq's own line).
READY = "is ready for action"
#: Longest a due kill waits for its victim to hold a RUNNING attempt, in seconds.
AIM_S = 2.0
#: What starting a worker process takes, as a first guess, in seconds (kills wait for it).
STARTUP_GUESS_S = 4.0
#: Seconds of slack over lease + sweep interval a recovery may take (message, lock, claim).
RECOVERY_SLACK_S = 2.0


@dataclass
class FleetOptions:
    processes: int = 2
    threads: int = 8
    executions: int = 500
    steps: int = 5
    seed: int = 0
    faults: tuple[str, ...] = KINDS
    #: SIGKILLs planned; ``None``: one per 22 executions, at least 3.
    kills: int | None = None
    #: Seconds each step works (half before its side effect, half after): steps are RUNNING when
    #: a kill strikes, and the work keeps pace with kills a restart holds back.
    work_s: float = 0.1
    #: Mean seconds between two kills (a worker process takes seconds to start again).
    kill_interval_s: float = 4.0
    #: The workers' lease (``DETFLOW_LEASE_S`` of their environment), in seconds.
    lease_s: float = 5.0
    #: Executions unfinished at once; ``None``: half the threads of all workers but one (while one
    #: starts again nothing waits in the queue, and threads a planted hang holds are spare, so a
    #: recovered step's message is taken at once).
    in_flight: int | None = None
    drain_timeout: float = 300.0
    #: Share of the executions that roll back (a step of theirs fails for good).
    rollbacks: float = 0.25

    def kill_count(self) -> int:
        return self.kills if self.kills is not None else max(3, self.executions // 22)

    def in_flight_limit(self) -> int:
        if self.in_flight is not None:
            return self.in_flight
        return max(1, self.threads // 2) * max(1, self.processes - 1)


def check(options: FleetOptions) -> None:
    """Raise ``ValueError`` with one line for options a fleet run cannot take."""
    for name in ("processes", "threads", "executions", "steps"):
        if getattr(options, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    other = sorted(set(options.faults) - set(KINDS))
    if other:
        raise ValueError(f"--processes runs the fault kinds {', '.join(KINDS)} beside its SIGKILLs; "
                         f"{', '.join(other)} act inside one process: run them without --processes")
    if options.kill_count() < 0 or options.kill_count() >= options.executions:
        raise ValueError("--kills must be at least 0 and fewer than --executions")
    if not 0 <= options.work_s <= TIMEOUT_S / 2:
        raise ValueError(f"--step-work must be between 0 and {TIMEOUT_S / 2:g} seconds (the step timeout "
                         f"is {TIMEOUT_S:g}s)")
    if not 0.5 <= options.kill_interval_s <= 600:
        raise ValueError("--kill-interval must be between 0.5 and 600 seconds")
    if not 0.5 <= options.lease_s <= 600:
        raise ValueError("--lease must be between 0.5 and 600 seconds")
    if options.in_flight_limit() < 1:
        raise ValueError("--in-flight must be at least 1")


@dataclass(frozen=True)
class PlannedKill:
    """Kill worker ``slot`` ``gap_s`` after the kill before it (after the start, for the first)."""

    gap_s: float
    slot: int


def plan_kills(seed: int, kills: int, processes: int, interval_s: float) -> list[PlannedKill]:
    """Draw the kills from the seed: gaps of 0.5 to 1.5 ``interval_s``, each on a drawn worker."""
    rng = random.Random(f"kills-{seed}")
    return [PlannedKill(round(rng.uniform(0.5, 1.5) * interval_s, 3), rng.randrange(processes))
            for _ in range(kills)]


@dataclass
class Worker:
    """One ``runworker`` slot: started again after each kill."""

    index: int
    environ: dict[str, str]
    directory: Path
    threads: int
    child: Child | None = None
    starts: int = 0
    exits: list[str] = field(default_factory=list)

    def start(self) -> None:
        metrics = self.directory / f"metrics-{self.index}"
        metrics.mkdir(exist_ok=True)
        environ = {**self.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        command = manage_command("runworker", "--processes", "1", "--threads", str(self.threads),
                                 "--no-sweeper")
        self.child = Child.start(command, environ, self.directory)
        self.starts += 1

    def ready(self) -> bool:
        return self.child is not None and self.child.process.poll() is None and \
            self.child.log.count(READY) > 0

    def exited(self) -> bool:
        """Tell whether the worker stopped without being killed (its output kept); start it again."""
        if self.child is None or self.child.process.poll() is None:
            return False
        self.exits.append(f"exit {self.child.process.returncode}: {self.child.log.tail(1500)}")
        self.start()
        return True


def run(options: FleetOptions, say: Callable[[str], None]) -> FleetReport:
    """Run chaos on ``options.processes`` worker processes and return the checked report."""
    check(options)
    if services.is_embedded_store():
        raise ValueError("chaos on worker processes needs a store they share: DETFLOW_MONGODB_URL")
    settings = conf.get()
    # (No waits on worker processes yet: nothing here sends their signals or counts their steps,
    # which commit no side effect.)
    schedule = plan(options.seed, options.executions, options.steps, options.faults,
                    rollbacks=options.rollbacks, waits=0.0)
    kills = plan_kills(options.seed, options.kill_count(), options.processes, options.kill_interval_s)
    run_id = f"{options.seed}-{secrets.token_hex(4)}"
    versions = register_all(options.steps)
    report = FleetReport(options, schedule, SWEEP_INTERVAL_S, RECOVERY_SLACK_S)
    directory = Path(tempfile.mkdtemp(prefix="detflow-chaos-workers-"))
    modules = ",".join(dict.fromkeys((*settings.HANDLER_MODULES, handlers.__name__)))
    environ = {**os.environ, "DETFLOW_MONGODB_URL": settings.MONGODB_URL or "",
               "DETFLOW_MONGODB_DB": settings.MONGODB_DB, "DETFLOW_REDIS_URL": services.redis_url(),
               "DETFLOW_HANDLER_MODULES": modules, "DETFLOW_LEASE_S": f"{options.lease_s:g}",
               "PYTHONUNBUFFERED": "1", "dramatiq_prom_host": "127.0.0.1", "dramatiq_prom_port": "0"}
    workers = [Worker(i, environ, directory, options.threads) for i in range(options.processes)]
    sweeper = Sweeper(interval_s=SWEEP_INTERVAL_S)
    say(f"{options.processes} worker processes (runworker --processes 1 --threads {options.threads}) "
        f"on {services.store_description()}; lease {options.lease_s:g}s, sweeper here every "
        f"{SWEEP_INTERVAL_S:g}s; {len(kills)} SIGKILLs planned")
    started = time.monotonic()
    report.started_ms = store.now_ms()
    try:
        for worker in workers:
            worker.start()
        sweeper.start()
        ids = _drive(options, schedule, kills, versions, run_id, workers, report, say)
    finally:
        sweeper.stop()
        for worker in workers:
            if worker.child is not None:
                worker.child.stop(timeout_s=options.lease_s + 5)
        shutil.rmtree(directory, ignore_errors=True)
    report.duration_s = time.monotonic() - started
    report.worker_starts = sum(w.starts for w in workers)
    report.unexpected_exits = [e for w in workers for e in w.exits]
    report.sweeps = dict(sweeper.totals)
    _check(report, ids, run_id)
    return report


def _drive(options: FleetOptions, schedule: Schedule, kills: list[PlannedKill], versions: dict[str, int],
           run_id: str, workers: list[Worker], report: FleetReport,
           say: Callable[[str], None]) -> list[str]:
    """Start the executions as room frees up, kill on schedule, until every one has finished."""
    ids: list[str] = []
    in_flight: set[str] = set()
    limit = options.in_flight_limit()
    deadline = None
    spacing = options.executions / (len(kills) + 1)
    #: The time between kills so far (a first guess: the planned gap and a worker's start).
    gaps = [kills[0].gap_s + STARTUP_GUESS_S] if kills else []
    last_said = last_kill = time.monotonic()
    aiming = 0.0  # since when the next kill waits for its victim to run a step
    while True:
        for worker in workers:
            if worker.exited():
                say(f"  worker {worker.index} exited on its own (...{worker.exits[-1][-600:]}); "
                    "started again")
        with contextlib.suppress(PyMongoError):  # a store that hiccups: look again next turn
            in_flight = _unfinished(in_flight)
        # A share of the executions per kill, started evenly over the time kills take (a killed
        # worker takes seconds to start again): every kill falls inside steady work.
        if kills:
            share = min(1.0, (time.monotonic() - last_kill) / (sum(gaps) / len(gaps)))
            cap = min(options.executions, round(spacing * (len(report.kills) + 1 + share)))
            if time.monotonic() >= last_kill + kills[0].gap_s:  # a kill waits: keep its work up
                cap = max(cap, len(ids) - len(in_flight) + limit // 2)
            cap = min(cap, round(spacing * (len(report.kills) + 1.5)))
        else:
            cap = options.executions
        while len(ids) < cap and len(in_flight) < limit:
            execution_id = _start(schedule, len(ids), versions, run_id, options.work_s, report)
            ids.append(execution_id)
            in_flight.add(execution_id)
        # A kill waits for its victim and a peer to be ready: a kill hits a working process,
        # and a worker is there to take its steps over.
        if kills and time.monotonic() >= last_kill + kills[0].gap_s and _recovered(report.kills[-1:]):
            victim = workers[kills[0].slot]
            others = [w for w in workers if w is not victim]
            if victim.ready() and (not others or any(w.ready() for w in others)):
                aiming = aiming or time.monotonic()
            if aiming and (_running(victim, in_flight) or time.monotonic() - aiming > AIM_S):
                aiming = 0.0
                record = _kill(victim, len(report.kills) + 1, in_flight)
                report.kills.append(record)
                kills.pop(0)
                gaps.append(time.monotonic() - last_kill)
                last_kill = time.monotonic()
                say(f"  kill {record.number}: SIGKILL worker {record.slot} (pids "
                    f"{', '.join(map(str, record.pids))}) with {len(record.running)} attempt(s) "
                    f"RUNNING; started again")
        if len(ids) == options.executions and not in_flight:
            report.kills_skipped = len(kills)
            return ids
        if len(ids) == options.executions and deadline is None:
            deadline = time.monotonic() + options.drain_timeout
        if deadline is not None and time.monotonic() > deadline:
            say(f"drain timed out after {options.drain_timeout:g}s with {len(in_flight)} unfinished")
            report.kills_skipped = len(kills)
            return ids
        if time.monotonic() - last_said >= 5:
            say(f"  {len(ids) - len(in_flight)}/{options.executions} executions finished, "
                f"{len(in_flight)} running, {len(report.kills)} kill(s)")
            last_said = time.monotonic()
        time.sleep(0.1)


def _unfinished(ids: set[str]) -> set[str]:
    if not ids:
        return set()
    found = store.collection().find(
        {"_id": {"$in": sorted(ids)}, "$or": [{"status": {"$nin": [s.value for s in TERMINAL]}},
                                              {"due_at": {"$exists": True}}]}, {"_id": 1})
    return {doc["_id"] for doc in found}


def _start(schedule: Schedule, index: int, versions: dict[str, int], run_id: str, work_s: float,
           report: FleetReport) -> str:
    """Start execution ``index`` with its handler faults in its input, then send its extra messages."""
    mine = schedule.for_execution(index)
    chaos = {"run": run_id, "faults": handler_faults(schedule, index), "hang_s": TIMEOUT_S * 3,
             "work_s": work_s}
    workflow = workflow_of(schedule, index, chaos)
    doc, _ = operations.start(workflow, {"chaos": chaos}, version=versions[workflow], by="chaos")
    for fault in mine:
        if fault.kind == "duplicate":
            sent = sum(dispatch.send(doc["_id"]) for _ in range(fault.count))
            report.injected["duplicate"] += sent > 0
        elif fault.kind == "late":
            report.injected["late"] += dispatch.send(doc["_id"], delay_ms=round(fault.delay_s * 1000))
    return str(doc["_id"])


def _kill(worker: Worker, number: int, in_flight: set[str]) -> KillRecord:
    """SIGKILL the worker's group, note the attempts it held RUNNING, and start it again."""
    assert worker.child is not None
    pids = worker.child.group()
    at_ms = store.now_ms()
    worker.child.kill()
    # A write the dead process had sent is applied (or not) by now; nothing else can claim its
    # steps before their leases run out.
    time.sleep(0.3)
    running = _held(pids, in_flight)
    worker.start()
    return KillRecord(number, worker.index, pids, at_ms, running)


def _recovered(last: list[KillRecord]) -> bool:
    """Tell whether every step the last kill left RUNNING was claimed again (or its execution
    ended): one kill at a time, so that no kill takes an earlier one's recovery message with it."""
    running = [r for kill in last for r in kill.running]
    if not running:
        return True
    try:
        docs = {d["_id"]: d for d in store.collection().find(
            {"_id": {"$in": sorted({r[0] for r in running})}},
            {"steps": 1, "compensations": 1, "status": 1})}
    except PyMongoError:
        return False
    for execution_id, name, attempt in running:
        doc = docs.get(execution_id)
        if doc is None or doc["status"] in {s.value for s in TERMINAL}:
            continue
        if any(slot_name == name and s.get("attempt", 0) <= attempt for slot_name, s in _slots(doc)):
            return False
    return True


def _slots(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Return the stored steps and compensations, each with the name its ledger runs carry."""
    return [(s["name"], s) for s in doc.get("steps") or ()] + [
        (c["name"] + UNDO_SUFFIX, c) for c in doc.get("compensations") or ()]


def _running(worker: Worker, in_flight: set[str]) -> bool:
    """Tell whether the worker holds a RUNNING attempt (a store that hiccups: no)."""
    if worker.child is None:
        return False
    try:
        return bool(_held(worker.child.group(), in_flight))
    except PyMongoError:
        return False


def _held(pids: list[int], in_flight: set[str]) -> list[tuple[str, str, int]]:
    """Return ``(execution id, step, attempt)`` of the attempts RUNNING in processes ``pids``."""
    running = []
    owners = {str(pid) for pid in pids}
    for doc in store.collection().find(
            {"_id": {"$in": sorted(in_flight)}, "status": {"$in": ["RUNNING", "COMPENSATING"]}},
            {"steps": 1, "compensations": 1}):
        for name, step in _slots(doc):
            owner = (step.get("lease_owner") or "").split(":")
            if step.get("status") == "RUNNING" and len(owner) > 1 and owner[1] in owners:
                running.append((doc["_id"], name, int(step.get("attempt", 0))))
    return running


#: A claim and a lost attempt, of a step or of a compensation.
CLAIMS = ("step_claimed", "compensation_claimed")
LOST = ("attempt_lost", "compensation_attempt_lost")


def _named(event: dict[str, Any]) -> str:
    """Return the ledger name of the step (or compensation) ``event`` is about."""
    return event["step"] + (UNDO_SUFFIX if event["type"].startswith("compensation_") else "")


def _check(report: FleetReport, ids: list[str], run_id: str) -> None:
    """Read every execution, its ledger runs and effects, and check them; time the recoveries."""
    docs = [store.with_history(d) for d in store.collection().find({"_id": {"$in": ids}})]
    runs = list(handlers.ledger().find({"run": run_id}))
    effects = list(handlers.effects().find({"run": run_id}))
    killed = {str(pid) for kill in report.kills for pid in kill.pids}
    position = {execution_id: index for index, execution_id in enumerate(ids)}
    planned: dict[str, set[str]] = {}
    for doc in docs:
        kinds = planned.setdefault(
            doc["_id"], {f.kind for f in report.schedule.for_execution(position[doc["_id"]])})
        # An attempt recorded lost whose worker was SIGKILLed lost its outcome to the kill.
        if any(e["type"] in LOST and (e.get("worker") or "::").split(":")[1] in killed
               for e in doc["events"]):
            kinds.add("crash")
    report.findings = checker.check(docs, runs, effects, planned)
    report.effects = len(effects)
    report.succeeded_steps = sum(1 for d in docs for s in d["steps"] if s["status"] == "SUCCEEDED")
    report.succeeded_compensations = sum(1 for d in docs for c in d.get("compensations") or ()
                                         if c["status"] == "SUCCEEDED")
    first_runs = {(r["execution_id"], r["step"]) for r in runs}
    by_id = {d["_id"]: d for d in docs}
    for index, execution_id in enumerate(ids):
        for fault in report.schedule.for_execution(index):
            if fault.kind in HANDLER_KINDS and (execution_id, target(fault)) in first_runs:
                report.injected[fault.kind] += 1
    for kill in report.kills:
        for execution_id, name, attempt in kill.running:
            events = by_id.get(execution_id, {}).get("events", [])
            claims = [store.to_ms(e["at"]) or 0 for e in events
                      if e["type"] in CLAIMS and _named(e) == name and e["attempt"] > attempt]
            kill.recovered_ms.append(min(claims) - kill.at_ms if claims else None)
            # What the retry policy made the step wait once it was recorded lost (a backoff).
            lost = [e for e in events
                    if e["type"] in LOST and _named(e) == name and e["attempt"] == attempt]
            retry_at = store.to_ms(lost[0].get("next_retry_at")) if lost else None
            kill.backoff_ms.append(max(0, retry_at - (store.to_ms(lost[0]["at"]) or 0))
                                   if lost and retry_at else 0)
            kill.lost_ms.append((store.to_ms(lost[0]["at"]) or 0) - kill.at_ms if lost else None)
