"""Why an execution is where it is: read-only, from MongoDB, the engine, the Redis lock and the queue.

Nothing here writes. It loads the execution, asks ``decide`` what would happen next, and looks at
what else can hold an execution up: its lock, the lease of a running attempt, whether a Dramatiq
message for it is waiting, and whether any worker is alive. It says whether the execution is
stuck and the safe repair (which is always either waiting, the sweeper, a worker, or an operator).
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from dramatiq.common import dq_name

from detflow_site import conf, services
from executions import slots, store
from executions.engine import (
    Claim,
    Decision,
    ExecutionStatus,
    Expire,
    Finish,
    Idle,
    RecoverLost,
    Resume,
    Rollback,
    Settle,
    StartWait,
    Wait,
    WakeUp,
    decide,
    rollback_plan,
)
from executions.errors import ExecutionNotFound
from executions.events import outcome_fields
from executions.locks import ExecutionLock
from executions.store import now_ms, to_dt, to_ms

#: Queue messages looked at, at most, per queue (the count says when the scan stopped short).
SCAN_LIMIT = 10_000
#: The command that runs one sweep now (against a real MongoDB; in ``rundev`` the sweeper runs in-process).
SWEEP_COMMAND = "python manage.py recover --grace 0"


@dataclass
class Messages:
    """Dramatiq messages for the execution, on the engine's queue and its delay queue."""

    #: Waiting in the queue for a worker.
    queued: int = 0
    #: Fetched by a worker (being handled, or prefetched), not yet acknowledged.
    fetched: int = 0
    #: On the delay queue (a retry), fetched or not.
    delayed: int = 0
    #: When the earliest delayed message is due.
    next_eta: Any = None
    #: How long the oldest queued message has waited for a worker, in milliseconds.
    waited_ms: int | None = None
    #: Messages looked at; ``complete`` is false when the scan stopped at ``SCAN_LIMIT``.
    scanned: int = 0
    complete: bool = True

    @property
    def waiting(self) -> bool:
        return bool(self.queued or self.fetched or self.delayed)


@dataclass
class Diagnosis:
    """What :func:`diagnose` found; ``as_dict()`` is the API's answer."""

    execution_id: str
    status: str
    checked_at: Any
    summary: str = ""
    next: dict[str, Any] = field(default_factory=dict)
    due_at: Any = None
    overdue_ms: int | None = None
    lease: dict[str, Any] | None = None
    lock: dict[str, Any] | None = None
    messages: dict[str, Any] | None = None
    redis: dict[str, Any] = field(default_factory=dict)
    #: For a step with ``max_concurrency`` that is next to run: its limit and the slots held now.
    concurrency: dict[str, Any] | None = None
    stuck: bool = False
    repair: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def diagnose(execution_id: str, now: int | None = None) -> Diagnosis:
    """Return why ``execution_id`` is where it is, and the safe repair if it is stuck."""
    doc = store.load(execution_id)
    if doc is None:
        raise ExecutionNotFound(f"execution {execution_id} does not exist")
    now = now_ms() if now is None else now
    decision = decide(store.to_state(doc), now)
    found = Diagnosis(execution_id, doc["status"], to_dt(now), next=_next(doc, decision))
    due = to_ms(doc.get("due_at"))
    found.due_at = doc.get("due_at")
    found.overdue_ms = max(now - due, 0) if due is not None else None
    found.lease = _lease(doc, now)
    messages = None
    try:
        client = services.redis_client()
        found.lock = _lock(client, execution_id, found.lease)
        found.concurrency = _concurrency(client, doc, decision, now)
        messages = _messages(client, execution_id, now)
        found.messages = asdict(messages)
        found.redis = {"reachable": True, "error": None}
    except Exception as exc:  # Redis down or refusing: say so, the rest still stands
        found.redis = {"reachable": False, "error": f"{type(exc).__name__}: {exc}"}
    _verdict(found, doc, decision, messages)
    return found


def _slots(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps, then the compensations (``ExecutionState.slot``'s order), as stored."""
    return [*doc["steps"], *(doc.get("compensations") or [])]


def _undo(doc: dict[str, Any], name: Any) -> str:
    """Return how a summary names the compensation of step ``name``: with its place in the plan."""
    names = [c["name"] for c in doc.get("compensations") or []]
    place = f" ({names.index(name) + 1} of {len(names)})" if name in names else ""
    return f"the compensation of step {name!r}{place}"


def _next(doc: dict[str, Any], decision: Decision) -> dict[str, Any]:
    slots_ = _slots(doc)
    compensating = doc["status"] == ExecutionStatus.COMPENSATING
    if isinstance(decision, Claim):
        return {"action": "compensate" if decision.step >= len(doc["steps"]) else "claim",
                "step": slots_[decision.step]["name"], "attempt": decision.attempt,
                "at": None, "reason": None}
    if isinstance(decision, Wait):
        running = next((s["name"] for s in (doc.get("compensations") or [] if compensating else doc["steps"])
                        if s["status"] in ("RUNNING", "RETRY_WAIT", "WAITING")), None)
        return {"action": "wait", "step": running, "attempt": None, "at": to_dt(decision.until),
                "reason": decision.reason}
    if isinstance(decision, RecoverLost):
        return {"action": "recover_lost", "step": slots_[decision.step]["name"],
                "attempt": slots_[decision.step].get("attempt"), "at": None,
                "reason": outcome_fields(decision.then)["outcome"]}
    if isinstance(decision, Finish):
        return {"action": "finish", "step": None, "attempt": None, "at": None,
                "reason": decision.status.value}
    if isinstance(decision, Rollback):
        return {"action": "rollback", "step": None, "attempt": None, "at": None,
                "reason": ", ".join(doc["steps"][i]["name"] for i in decision.plan)}
    if isinstance(decision, StartWait | Resume | WakeUp):
        action, reason = ("start_wait", None) if isinstance(decision, StartWait) else \
            ("take_signal", doc["signals"][decision.signal]["name"]) if isinstance(decision, Resume) else \
            ("wake", decision.ends)
        return {"action": action, "step": doc["steps"][decision.step]["name"], "attempt": None,
                "at": None, "reason": reason}
    if isinstance(decision, Expire):
        return {"action": "expire", "step": doc["steps"][decision.step]["name"], "attempt": None,
                "at": None, "reason": "deadline"}
    assert isinstance(decision, Idle)
    return {"action": "none", "step": None, "attempt": None, "at": None, "reason": decision.reason}


def _concurrency(client: Any, doc: dict[str, Any], decision: Decision, now: int) -> dict[str, Any] | None:
    if not isinstance(decision, Claim) or decision.step >= len(doc["steps"]):
        return None  # a compensation has no concurrency limit
    limit = doc["definition"]["steps"][decision.step].get("max_concurrency")
    if not limit:
        return None
    held = slots.holders(client, doc["workflow"], doc["steps"][decision.step]["name"], now)
    return {"limit": limit, "held": held, "waiting_for_slot": held >= limit}


def _lease(doc: dict[str, Any], now: int) -> dict[str, Any] | None:
    for step in _slots(doc):
        if step["status"] == "RUNNING":
            current = step.get("current") or {}
            expires = to_ms(step.get("lease_expires_at"))
            beat = to_ms(step.get("heartbeat_at") or current.get("started_at"))
            return {"step": step["name"], "attempt": current.get("n"), "worker": current.get("worker"),
                    "expires_at": step.get("lease_expires_at"),
                    "expired": expires is None or now >= expires,
                    "heartbeat_at": step.get("heartbeat_at"),
                    "since_heartbeat_ms": None if beat is None else max(now - beat, 0)}
    return None


def _lock(client: Any, execution_id: str, lease: dict[str, Any] | None) -> dict[str, Any]:
    ttl = ExecutionLock(client, execution_id, 0).holder_ttl_ms()
    held = ttl != -2
    return {"held": held, "ttl_ms": ttl if ttl >= 0 else None,
            "holder": (lease or {}).get("worker") if held else None}


def _messages(client: Any, execution_id: str, now: int) -> Messages:
    from executions.broker import messages_key, queue_key  # builds the broker: imported when needed

    found = Messages()
    needle = json.dumps(execution_id).encode()
    queue = conf.get().QUEUE
    for name in (queue, dq_name(queue)):
        for message_id, body in client.hscan_iter(messages_key(name), count=500):
            found.scanned += 1
            if found.scanned > SCAN_LIMIT:
                found.complete = False
                break
            if needle not in body:
                continue
            message = json.loads(body)
            if execution_id not in message.get("args", []):
                continue
            if name != queue:
                found.delayed += 1
                eta = message.get("options", {}).get("eta")
                if eta is not None and (found.next_eta is None or eta < to_ms(found.next_eta)):
                    found.next_eta = to_dt(eta)
            elif client.lpos(queue_key(name), message_id) is not None:
                found.queued += 1
                waited = max(now - int(message.get("message_timestamp") or now), 0)
                found.waited_ms = max(found.waited_ms or 0, waited)
            else:
                found.fetched += 1
    return found


def _verdict(found: Diagnosis, doc: dict[str, Any], decision: Decision, messages: Messages | None) -> None:
    grace_ms = round(conf.get().SWEEP_GRACE_S * 1000)
    interval = f"{conf.get().SWEEP_INTERVAL_S:g}"
    sweep = {"action": "sweep", "command": SWEEP_COMMAND,
             "detail": f"the recovery sweeper does this by itself within {interval}s wherever it runs "
                       f"(runworker, rundev); to do it now: {SWEEP_COMMAND}"}
    wait = {"action": "wait", "command": None, "detail": "nothing to do: it moves on by itself"}
    none = {"action": "none", "command": None, "detail": "nothing to do"}
    holds = doc.get("paused") or {}
    held = isinstance(decision, Idle) or (isinstance(decision, Wait) and decision.reason == "deadline")
    if holds and held:
        whose = {"execution": "this execution", "workflow": f"its workflow {doc['workflow']!r}"}
        found.summary = "; ".join(
            f"{whose.get(scope, scope)} was paused by {hold.get('by')!r} ({hold.get('reason')!r}): no "
            "step starts until it is resumed" for scope, hold in sorted(holds.items()))
        how = []
        if "execution" in holds:
            how.append(f"Resume on its page in the admin (POST executions/{doc['_id']}/resume/)")
        if "workflow" in holds:
            how.append(f"resume the workflow (POST workflows/{doc['workflow']}/resume/)")
        found.repair = {"action": "operator", "command": None, "detail": " and ".join(how)}
        return
    if isinstance(decision, Idle):
        found.repair = none
        if doc["status"] == ExecutionStatus.FAILED:
            step = doc.get("failed_step")
            found.summary = f"step {step!r} failed for good; the execution waits for an operator"
            if any(s["name"] == step and (s.get("error") or {}).get("type") == "DeadlineExceeded"
                   for s in doc["steps"]):
                found.summary = (f"the workflow's deadline passed before step {step!r} ended "
                                 "(DeadlineExceeded); the execution waits for an operator (a retry "
                                 "runs without the deadline)")
            detail = (f"retry it (POST executions/{doc['_id']}/retry/, optionally "
                      "with an edited input) or skip it (POST "
                      f"executions/{doc['_id']}/skip/ with an output)")
            if rollback_plan(store.to_state(doc), include_skipped=True):
                detail += (", or undo the steps it completed instead: Compensate on its page in the "
                           f"admin (POST executions/{doc['_id']}/compensate/)")
            found.repair = {"action": "operator", "command": None, "detail": detail}
        elif doc["status"] == ExecutionStatus.COMPENSATION_FAILED:
            step = doc.get("failed_compensation")
            after = [c["name"] for c in doc.get("compensations") or []
                     if c["status"] == "PENDING"]
            found.summary = (f"{_undo(doc, step)} failed for good; the rollback waits for an operator"
                             + (f" (not undone yet: {', '.join(repr(n) for n in after)}, whose "
                                "compensations come after it in the plan)" if after else ""))
            found.repair = {"action": "operator", "command": None,
                            "detail": f"on its page in the admin, 'Retry the compensation of {step}' "
                                      "(a new attempt budget, the same input) or, once the step is "
                                      f"undone by other means, 'Skip the compensation of {step} "
                                      "(undone by hand)'; then the rollback goes on. Over the API: "
                                      f"POST executions/{doc['_id']}/retry/ or POST "
                                      f"executions/{doc['_id']}/skip/ (with no output)"}
        else:
            found.summary = f"the execution is {doc['status']}; nothing more will happen to it"
        return
    if not found.redis.get("reachable"):
        found.summary = ("Redis is unreachable: no message can be sent or received; the state is safe "
                         "in MongoDB and the sweeper resumes the execution once Redis is back")
        found.stuck = isinstance(decision, RecoverLost | Claim | Settle)
        found.repair = {"action": "redis", "command": None,
                        "detail": "bring Redis back; nothing else is needed"}
        return
    assert messages is not None
    lease = found.lease or {}
    compensating = doc["status"] == ExecutionStatus.COMPENSATING
    if isinstance(decision, Wait) and decision.reason == "lease":
        beat = lease.get("since_heartbeat_ms")
        what = _undo(doc, lease.get("step")) if compensating else f"step {lease.get('step')!r}"
        found.summary = (f"{what} attempt {lease.get('attempt')} is running on "
                         f"{lease.get('worker')}; last heartbeat {beat} ms ago; its lease runs until "
                         f"{_iso(found.next.get('at'))}")
        if found.lock and not found.lock["held"]:
            found.summary += ("; its Redis lock is gone (Redis restarted?), the lease in MongoDB "
                              "still fences any other runner")
        found.repair = wait
    elif isinstance(decision, Wait) and decision.reason in ("signal", "sleep"):
        found.summary = _waiting(doc, decision)
        found.repair = wait
        if decision.reason == "signal":
            signal = _waited_for(doc)
            found.repair = {"action": "wait", "command": None,
                            "detail": f"it moves on when the signal {signal!r} comes (POST executions/"
                                      f"{doc['_id']}/signals/{signal}/, or the admin's button on its "
                                      "page) or at its timeout"}
        if not messages.delayed:
            found.summary += "; no delayed message is waiting, the sweeper sends one when it is due"
    elif isinstance(decision, Wait):
        at = _iso(found.next.get("at"))
        name = found.next.get("step")
        found.summary = (f"the rollback waits for the retry of {_undo(doc, name)} at {at}" if compensating
                         else f"step {name!r} waits for its retry at {at}")
        if not messages.delayed:
            found.summary += "; no delayed message is waiting, the sweeper sends one when it is due"
        found.repair = wait
    elif isinstance(decision, RecoverLost):
        found.stuck = True
        what = _undo(doc, lease.get("step")) if compensating else f"step {lease.get('step')!r}"
        found.summary = (f"the lease of {what} attempt {lease.get('attempt')} on "
                         f"{lease.get('worker')} expired at {_iso(lease.get('expires_at'))} (last heartbeat "
                         f"{lease.get('since_heartbeat_ms')} ms ago): its worker died or stalled; the "
                         "attempt is to be recorded lost and retried or failed per the step's policy")
        found.repair = sweep
    elif messages.waiting:
        name = found.next.get("step")
        if found.next.get("action") == "compensate":
            found.summary = (f"the rollback runs {_undo(doc, name)}: it is due and a message for it "
                             "is waiting for a worker")
        else:
            what = (f"step {name!r}" if isinstance(decision, Claim)
                    else f"the {_WAIT_ACTIONS[found.next['action']]} of step {name!r}"
                    if found.next.get("action") in _WAIT_ACTIONS
                    else "the rollback" if isinstance(decision, Rollback) else "the finish")
            found.summary = f"{what} is due and a message for it is waiting for a worker"
        found.repair = wait
        if (messages.waited_ms or 0) >= grace_ms:
            found.stuck = True
            found.summary += (f"; it has waited {messages.waited_ms} ms: no worker is taking messages "
                              f"from the queue {conf.get().QUEUE!r}")
            found.repair = {"action": "start_worker", "command": "python manage.py runworker",
                            "detail": "start a worker on this queue (runworker, or rundev in one process)"}
    elif (found.overdue_ms or 0) >= grace_ms:
        found.stuck = True
        found.summary = (f"due for {found.overdue_ms} ms and no message is waiting for it (lost with "
                         "a Redis flush or a failed send)")
        found.repair = sweep
    else:
        found.summary = "due now; its message is on its way (the sweeper re-sends it after the grace period)"
        if found.next.get("action") == "compensate":
            found.summary = f"the rollback runs {_undo(doc, found.next.get('step'))}: " + found.summary
        found.repair = wait


#: What a worker does for a sleep or a wait, in words.
_WAIT_ACTIONS = {"start_wait": "start", "take_signal": "signal", "wake": "wake-up"}


def _waited_for(doc: dict[str, Any]) -> str:
    step = next(i for i, s in enumerate(doc["steps"]) if s["status"] == "WAITING")
    return str(doc["definition"]["steps"][step]["wait"]["signal"])


def _waiting(doc: dict[str, Any], decision: Wait) -> str:
    """'step 'approval' waits for signal 'approved' until ..., 2 signals kept' (or sleeps until ...)."""
    name = next(s["name"] for s in doc["steps"] if s["status"] == "WAITING")
    until = _iso(to_dt(decision.until))
    if decision.reason == "sleep":
        return f"step {name!r} sleeps until {until}; no worker, lock or lease is held meanwhile"
    kept = [s for s in doc.get("signals") or [] if s.get("consumed_by") is None]
    index = next(i for i, s in enumerate(doc["steps"]) if s["status"] == "WAITING")
    rule = doc["definition"]["steps"][index]["wait"].get("on_timeout", "fail")
    return (f"step {name!r} waits for signal {_waited_for(doc)!r} until {until} (then its on_timeout "
            f"rule applies: {rule}), {len(kept)} signal{'' if len(kept) == 1 else 's'} kept and not "
            "taken; no worker, lock or lease is held meanwhile")


def _iso(value: dt.datetime | None) -> str:
    return "unknown" if value is None else value.isoformat(timespec="milliseconds") + "Z"
