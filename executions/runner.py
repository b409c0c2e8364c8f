"""One step's life in a worker: lock, load, decide, claim, run the handler, record, release, send.

A crash between any two of these is recovered (DESIGN: "One step's life"): before the claim by the
next message or sweep, after the claim by the lease running out, after the outcome by the sweeper
seeing due work. The next message is sent *after* the lock is released, so that it never finds the
lock still held by the worker that sent it.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import bson
import pymongo
from pymongo.errors import PyMongoError

from detflow_site import conf, logs, services
from executions import dispatch, faults, metrics, store, transitions
from executions.engine import Claim, Decision, Finish, RecoverLost, StepStatus, Wait, decide
from executions.followup import count_lost, follow_up
from executions.locks import ExecutionLock
from executions.slots import StepSlot
from executions.store import Snapshot, now_ms, to_dt
from executions.ticker import TICKER, Entry
from workflows import masking, registry
from workflows.context import AttemptLog, StepContext
from workflows.errors import (
    ExecutionOutputsTooLarge,
    LeaseLost,
    OutputNotSerializable,
    OutputTooLarge,
    PermanentError,
)
from workflows.text import storable

logger = logging.getLogger("detflow.worker")

#: Longest traceback and error message stored per attempt, in characters (the tail is kept).
TRACEBACK_CHARS = 8000
MESSAGE_CHARS = 2000
#: How long a message whose step has no free concurrency slot waits before it tries again.
SLOT_WAIT_MS = 250
#: Outcome writes re-read and retry this often when an operator's change moved the version on.
RECORD_TRIES = 5


def worker_id() -> str:
    """Return ``host:pid:thread``, the name a claim records."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


def advance(execution_id: str, worker: str | None = None) -> None:
    """Do what the engine decides for one execution, under its lock."""
    worker = worker or worker_id()
    with logs.bound(execution_id=execution_id, worker=worker, step=None, attempt=None):
        _advance(execution_id, worker)


def _advance(execution_id: str, worker: str) -> None:
    settings = conf.get()
    lease_ms = round(settings.LEASE_S * 1000)
    faults.hit("received", execution_id)
    lock = ExecutionLock(services.redis_client(), execution_id, lease_ms)
    if not lock.acquire():
        # A live holder sees the poke when it releases. A dead one never will: the first to poke
        # comes back when the lock runs out rather than wait for the sweeper (later ones drop out).
        metrics.LOCK_CONTENTION.inc()
        left_ms = lock.holder_ttl_ms() if lock.first_poke else 0
        if left_ms > 0:
            dispatch.send(execution_id, delay_ms=left_ms + 50)
        logger.debug("execution %s is held by another worker; poked it", execution_id)
        return
    faults.hit("locked", execution_id)
    try:
        doc = store.patiently(lambda: store.load_working(execution_id))
        if doc is None:
            lock.release()
            logger.warning("execution %s does not exist; message dropped", execution_id)
            return
        after, finished, decision, wait_ms, now = _run(Snapshot.of(doc), worker, lock, lease_ms)
    except faults.SimulatedCrash:
        raise  # a worker that dies leaves its lock behind: the crash tests need exactly that
    except BaseException:
        # Any other failure (a store that stayed down past every retry) releases the lock: left
        # behind, it would hold the execution's next message off until it expired.
        lock.release()
        raise
    poked = lock.release()
    faults.hit("released", execution_id)
    if after is not None:
        follow_up(after, finished)
    elif wait_ms:
        logger.debug("execution %s waits for a concurrency slot", execution_id)
        dispatch.send(execution_id, delay_ms=wait_ms)
    elif isinstance(decision, Wait) and decision.reason == "retry":
        # Early (a clock ahead of ours, or a duplicate): come back when the retry is due.
        dispatch.send(execution_id, delay_ms=decision.until - now)
    elif poked:
        dispatch.send(execution_id)
    faults.hit("sent", execution_id)


def _run(
    snap: Snapshot | None, worker: str, lock: ExecutionLock, lease_ms: int
) -> tuple[Snapshot | None, bool, Decision | None, int, int]:
    """Run what the engine decides, then go on from the snapshot each write returns while the next
    decision is another step (or the end) and this message's budget lasts: one message, one lock
    and one read carry a run of steps instead of one each. Return the last snapshot written (if
    any), whether the run ended the execution, the last decision, a slot wait and the time."""
    settings = conf.get()
    after: Snapshot | None = None
    finished = False
    decision: Decision | None = None
    wait_ms = now = claims = 0
    while snap is not None:
        execution_id = snap.state.id
        faults.hit("loaded", execution_id)
        now = now_ms()
        decision = decide(snap.state, now)
        if isinstance(decision, Claim):
            if after is not None and (
                claims >= settings.INLINE_STEPS or not lock.fresh() or _worker_stopping()
            ):
                break
            slot = step_slot(snap, decision.step, lease_ms)
            if slot is not None and not slot.acquire(now):
                if after is None:
                    wait_ms = SLOT_WAIT_MS
                    metrics.SLOT_WAITS.labels(snap.doc["workflow"], slot.key.rsplit(":", 1)[-1]).inc()
                break
            try:
                result = run_step(snap, decision, worker, lock, lease_ms, slot)
            finally:
                if slot is not None:
                    slot.release()
            claims += 1
        elif isinstance(decision, RecoverLost):
            result = transitions.record_lost(snap, decision, now)
            if result is not None:
                count_lost(snap, decision.step)
        elif isinstance(decision, Finish):
            result = transitions.finish(snap, decision, now)
        else:
            break
        if result is not None:
            after = result
            finished = finished or result.finished
        snap = result
    return after, finished, decision, wait_ms, now


def _worker_stopping() -> bool:
    """Whether the Dramatiq worker running this thread is shutting down (SIGTERM): a run then
    hands the next step on to a new message instead of claiming it here. Dramatiq's worker
    threads clear ``running`` when their worker stops; any other thread never stops a run."""
    return getattr(threading.current_thread(), "running", True) is False


def step_slot(snap: Snapshot, index: int, lease_ms: int) -> StepSlot | None:
    """Return a slot to take before running step ``index``, or ``None`` if it has no limit."""
    limit = snap.doc["definition"]["steps"][index].get("max_concurrency")
    if not limit:
        return None
    step = snap.state.steps[index].name
    return StepSlot(services.redis_client(), snap.doc["workflow"], step, limit, lease_ms)


def run_step(
    snap: Snapshot, decision: Claim, worker: str, lock: ExecutionLock, lease_ms: int,
    slot: StepSlot | None = None,
) -> Snapshot | None:
    """Claim the step, run its handler, and record the outcome; ``None`` if another writer won."""
    claimed = transitions.claim(snap, decision, worker, now_ms(), lease_ms)
    if claimed is None:
        logger.info("claim of %s step %d lost a race; leaving it", snap.state.id, decision.step)
        return None
    faults.hit("claimed", snap.state.id)
    workflow = snap.doc["workflow"]
    logs.bind(step=snap.state.steps[decision.step].name, attempt=decision.attempt)
    due = store.to_ms(snap.doc.get("due_at"))
    if due is not None:
        metrics.QUEUE_LAG.labels(workflow).observe(max(now_ms() - due, 0) / 1000)
    attempt = Attempt(claimed, decision.step, worker)
    try:
        attempt.run(lock, lease_ms, slot)
        faults.hit("handled", snap.state.id)
        recorded = attempt.record()
    finally:
        if attempt.watchdog is not None:
            attempt.watchdog.finish()
    faults.hit("recorded", snap.state.id)
    return recorded


@dataclass
class Attempt:
    """One attempt of one step: its context, its watchdog, its outcome."""

    snap: Snapshot
    index: int
    worker: str
    started_ms: int = field(default_factory=now_ms)
    output_json: str | None = None
    error: BaseException | None = None
    timed_out: bool = False
    log: AttemptLog | None = None
    #: The secret input values this attempt's texts (log, error, traceback) are scrubbed of.
    secrets: set[str] = field(default_factory=set)
    #: Renews the lease from the claim until the outcome is recorded (or given up).
    watchdog: Watchdog | None = None

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.snap.doc["definition"]["steps"][self.index]

    @property
    def fence(self) -> int:
        return self.snap.version

    def context(self, heartbeat: Any) -> StepContext:
        doc = self.snap.doc
        step = self.snap.state.steps[self.index]
        stored = doc["steps"][self.index]
        ids = {"execution_id": doc["_id"], "step": step.name, "attempt": step.attempt,
               "worker": self.worker}
        given = json.loads(stored.get("input_json") or doc["input_json"])
        self.secrets = masking.values(given, masking.paths_of(doc))
        self.log = AttemptLog(conf.get().LOG_LINES_CAP, ids, self.secrets)
        return StepContext(
            execution_id=doc["_id"],
            workflow=doc["workflow"],
            workflow_version=doc["workflow_version"],
            step=step.name,
            attempt=step.attempt,
            idempotency_key=f"{doc['_id']}:{step.name}",
            input=given,
            outputs=Outputs(doc["steps"][: self.index]),
            fencing_token=self.fence,
            log=self.log,
            _heartbeat=heartbeat,
        )

    def run(self, lock: ExecutionLock, lease_ms: int, slot: StepSlot | None = None) -> None:
        """Run the handler under the step's timeout, with the lease renewed while it runs."""
        timeout_s = float(self.spec["timeout_s"])
        watchdog = Watchdog(self, lock, lease_ms, timeout_s, slot)
        ctx = self.context(watchdog.beat)
        self.watchdog = watchdog
        try:
            handler = registry.get_handler(self.spec["handler"])
            watchdog.start()
            try:
                result = handler(ctx)
            finally:
                watchdog.settle()  # no interrupt from here on; the lease is renewed until recorded
            if time.monotonic() > watchdog.deadline:
                raise TimeoutInterrupt()
            self.output_json = _encode_output(result)
            total = store.data_bytes(self.snap.doc, self.index, output=self.output_json)
            if total > store.DATA_BYTES:
                self.output_json = None
                raise ExecutionOutputsTooLarge(total, store.DATA_BYTES)
        except TimeoutInterrupt:
            self.timed_out = True
        except Exception as exc:  # the handler's failure, whatever it is, is the attempt's outcome
            self.error = exc

    def record(self) -> Snapshot | None:
        """Store the outcome; drop it if a successor claimed the step meanwhile (fencing)."""
        snap = self.snap
        for _ in range(RECORD_TRIES):
            now = now_ms()
            record = self._record(now)
            try:
                if self.output_json is not None:
                    result = transitions.record_success(snap, self.index, self.output_json, record, now)
                else:
                    error_type, message, permanent = self._failure()
                    result = transitions.record_failure(
                        snap, self.index, error_type, message, permanent, record, now
                    )
            except PyMongoError as exc:  # down past every retry: the lease's expiry recovers it
                logger.error("outcome of %s step %d not recorded, the store failed (%s: %s); the "
                             "lease will recover it", snap.state.id, self.index, type(exc).__name__, exc)
                return None
            if result is not None:
                self._count(record)
                return result
            doc = store.load_working(snap.state.id)
            current = (doc or {}).get("steps", [{}] * (self.index + 1))[self.index]
            if (
                doc is None
                or current.get("status") != StepStatus.RUNNING.value
                or (current.get("current") or {}).get("fence") != self.fence
            ):
                logger.warning(
                    "outcome of %s step %d attempt fenced %d dropped: the claim is no longer "
                    "current", snap.state.id, self.index, self.fence,
                )
                return None
            snap = Snapshot.of(doc)
        logger.error("outcome of %s step %d not recorded after %d tries; the lease will recover it",
                     snap.state.id, self.index, RECORD_TRIES)
        return None

    def _count(self, record: dict[str, Any]) -> None:
        workflow, step = self.snap.doc["workflow"], self.snap.state.steps[self.index].name
        metrics.STEP_ATTEMPTS.labels(workflow, step, record["outcome"]).inc()
        metrics.STEP_DURATION.labels(workflow, step).observe(record["duration_ms"] / 1000)

    def _failure(self) -> tuple[str, str, bool]:
        if self.timed_out:
            return "StepTimeout", f"attempt ran past timeout_s={self.spec['timeout_s']:g}", False
        exc = self.error
        assert exc is not None
        names = _type_names(type(exc))
        non_retryable = set(self.spec.get("non_retryable") or ())
        permanent = isinstance(exc, PermanentError) or bool(non_retryable & names)
        message = storable(masking.scrub(str(exc), self.secrets))
        return _type_name(type(exc)), message[:MESSAGE_CHARS], permanent

    def _record(self, now: int) -> dict[str, Any]:
        step = self.snap.state.steps[self.index]
        record: dict[str, Any] = {
            "n": step.attempt, "worker": self.worker, "fence": self.fence,
            "started_at": to_dt(self.started_ms), "ended_at": to_dt(now),
            "duration_ms": now - self.started_ms,
        }
        if self.output_json is not None:
            record["outcome"] = "succeeded"
        else:
            error_type, message, _ = self._failure()
            record.update(outcome="timed_out" if self.timed_out else "failed",
                          error_type=error_type, message=message)
            if self.error is not None:
                text = masking.scrub("".join(traceback.format_exception(self.error)), self.secrets)
                record["traceback"] = storable(text)[-TRACEBACK_CHARS:]
        if self.log is not None:
            record["logs"] = self.log.lines
            record["logs_dropped"] = self.log.dropped
        return bounded_record(record, store.record_bytes(len(self.snap.state.steps)))


class Outputs(Mapping[str, Any]):
    """Earlier steps' outputs by name, each parsed from JSON on first access."""

    def __init__(self, steps: list[dict[str, Any]]) -> None:
        self._raw = {s["name"]: s["output_json"] for s in steps if "output_json" in s}
        self._parsed: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._parsed:
            self._parsed[name] = json.loads(self._raw[name])
        return self._parsed[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


class TimeoutInterrupt(BaseException):
    """Raised inside a handler that ran past its ``timeout_s`` (a BaseException, so that a handler's
    ``except Exception`` does not swallow it)."""


class Watchdog:
    """Renews the lease and the lock while a handler runs; interrupts it at its deadline.

    Its ticks run in the process's one ticker thread (``executions.ticker``), every third of the
    lease. An interrupt cannot stop C code or a blocking system call; the watchdog then stops
    renewing, the lease runs out, and the sweeper records the attempt lost.
    """

    def __init__(
        self, attempt: Attempt, lock: ExecutionLock, lease_ms: int, timeout_s: float,
        slot: StepSlot | None = None,
    ):
        self.attempt = attempt
        self.lock = lock
        self.slot = slot
        self.lease_ms = lease_ms
        self.interval = max(lease_ms / 3000, 0.05)
        self.deadline = time.monotonic() + timeout_s
        self.target = threading.get_ident()
        self.lost = False
        self._done = False
        #: The handler returned: renewals go on, the timeout no longer applies.
        self._settled = False
        self._entry: Entry | None = None
        self._guard = threading.Lock()

    def start(self) -> None:
        """Start watching (from the handler's thread, which an interrupt is raised in)."""
        self._next(time.monotonic())

    def _next(self, now: float, paused: bool = False) -> None:
        at = now + self.interval if paused or self._settled else min(now + self.interval, self.deadline)
        with self._guard:
            if not self._done:
                self._entry = TICKER.schedule(at, self._tick)

    def _tick(self) -> None:
        if self._done:
            return
        now = time.monotonic()
        if faults.paused(self.attempt.snap.state.id):
            self._next(now, paused=True)
            return
        if now >= self.deadline and not self._settled:
            with self._guard:
                if not self._done and not self._settled:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(self.target), ctypes.py_object(TimeoutInterrupt)
                    )
            return
        # The renewal's I/O runs in the renewal pool: a slow write never holds the ticker, which
        # keeps every other attempt's renewals and timeouts.
        renewals().submit(self._renew_then_next)

    def _renew_then_next(self) -> None:
        try:
            self._renew()
        finally:
            self._next(time.monotonic())

    def _renew(self) -> bool:
        """Renew the lease in MongoDB (what counts), then the lock and the slot in Redis.

        The MongoDB write may take a third of the lease at most (pymongo's client-side timeout): a
        renewal that cannot land by then is worth less than the next one."""
        execution_id = self.attempt.snap.state.id
        try:
            with pymongo.timeout(self.interval):
                renewed = transitions.renew_lease(
                    execution_id, self.attempt.index, self.attempt.fence, now_ms(), self.lease_ms
                )
        except Exception as exc:  # the store is down: try again next beat; the lease decides
            logger.warning("lease renewal of %s failed: %s", execution_id, exc)
            return not self.lost
        if not renewed:
            self.lost = True
            return False
        try:
            if not self.lock.renew():
                logger.info("lock of %s expired while its handler ran", execution_id)
            if self.slot is not None:
                self.slot.renew(now_ms())
        except Exception as exc:  # Redis down: the lock is for efficiency only, the fence holds
            logger.warning("lock renewal of %s failed: %s", execution_id, exc)
        return True

    def beat(self) -> None:
        """Renew now, on the handler's request; raise ``LeaseLost`` if a successor owns the step."""
        if self.lost or not self._renew():
            raise LeaseLost("this attempt's claim is no longer current; stop and return")

    def settle(self) -> None:
        """The handler returned or raised: interrupt it no more, but keep the lease alive while
        its outcome is written (a write may wait out a failover)."""
        with self._guard:
            self._settled = True

    def finish(self) -> None:
        """Stop renewing: the outcome is recorded, or given up."""
        with self._guard:
            self._done = True
            TICKER.cancel(self._entry)


def bounded_record(record: dict[str, Any], cap: int) -> dict[str, Any]:
    """Return the attempt record cut to ``cap`` bytes: its oldest log lines dropped (and counted)
    first, then the head of its traceback, then the tail of its message."""
    if len(bson.encode(record)) <= cap:
        return record
    record = dict(record)
    lines = list(record.get("logs") or [])
    while lines and len(bson.encode({**record, "logs": lines})) > cap:
        cut = max(len(lines) // 4, 1)
        record["logs_dropped"] = record.get("logs_dropped", 0) + cut
        lines = lines[cut:]
    record["logs"] = lines
    while record.get("traceback") and len(bson.encode(record)) > cap:
        text = record["traceback"]
        record["traceback"] = "...\n" + text[len(text) // 4 + 4:] if len(text) > 64 else ""
    while len(record.get("message") or "") > 80 and len(bson.encode(record)) > cap:
        record["message"] = record["message"][: len(record["message"]) * 3 // 4] + "..."
    return record


#: Threads that renew leases, per process (a forked child makes its own).
RENEWAL_THREADS = 8
_renewal_pool: tuple[int, ThreadPoolExecutor] | None = None
_renewal_guard = threading.Lock()


def renewals() -> ThreadPoolExecutor:
    """Return this process's pool of lease-renewal threads."""
    global _renewal_pool
    with _renewal_guard:
        if _renewal_pool is None or _renewal_pool[0] != os.getpid():
            _renewal_pool = (os.getpid(), ThreadPoolExecutor(RENEWAL_THREADS, "detflow-renewal"))
        return _renewal_pool[1]


def _encode_output(result: Any) -> str:
    try:
        text = transitions.dumps(result)
    except (TypeError, ValueError) as exc:
        raise OutputNotSerializable(f"output is not JSON-serialisable: {exc}") from exc
    try:
        size = len(text.encode())
    except UnicodeEncodeError as exc:  # a lone surrogate: neither JSON's UTF-8 nor BSON can hold it
        raise OutputNotSerializable(
            "output holds text that is not valid Unicode (a lone surrogate at character "
            f"{exc.start}, as a file name that is not UTF-8 gives): decode such names with "
            "errors='replace' or os.fsencode them first") from None
    cap = conf.get().OUTPUT_CAP_BYTES
    if size > cap:
        raise OutputTooLarge(size, cap)
    return text


def _type_name(kind: type) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _type_names(kind: type) -> set[str]:
    names: set[str] = set()
    for base in kind.__mro__:
        names.update((base.__qualname__, f"{base.__module__}.{base.__qualname__}"))
    return names
