"""What services and operators do to executions: start, cancel, retry, skip, compensate, signal.

Each operator action needs a reason, records who did it and why as an event, and has a dry run
that returns what it would change without changing anything.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from executions import controls, dispatch, engine, metrics, store, transitions
from executions.engine import CANCELLABLE, COMPENSABLE, ExecutionStatus, StepStatus, replay
from executions.errors import (
    ConcurrentChange,
    ExecutionNotFound,
    IdempotencyConflict,
    InvalidArgument,
    OperationNotAllowed,
)
from executions.events import Event
from executions.followup import follow_up
from executions.store import Snapshot, now_ms
from workflows import definitions, inputs, jsontext, masking

#: Largest input accepted at start, in bytes of JSON.
INPUT_CAP_BYTES = 1024 * 1024
#: Re-reads allowed when the execution changes under an action before it is written.
TRIES = 5
#: Largest signal payload, in bytes of JSON.
SIGNAL_CAP_BYTES = 64 * 1024
#: Signals one execution keeps, at most (taken or not).
MAX_SIGNALS = 100
_UNSET: Any = object()


@dataclass
class ActionResult:
    """What an operator action changed (or, in a dry run, would change)."""

    execution_id: str
    action: str
    dry_run: bool
    #: ``{"execution": (old, new), "steps.<name>": (old, new), ...}`` status changes.
    changes: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: The event recorded (or that would be recorded).
    event: dict[str, Any] = field(default_factory=dict)


def start(
    workflow: str, input: Any = None, version: int | None = None,
    idempotency_key: str | None = None, by: str | None = None,
    *, definition: definitions.WorkflowDefinition | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store a new execution and send its first message; return ``(document, created)``.

    ``definition``, when the caller already looked the version up (and checked the input against
    it), is the version started, so that a version registered in between cannot take its place.
    The execution is stored before any message is sent: with Redis down the start still succeeds
    and the sweeper dispatches it later.
    """
    stored = definition if definition is not None else definitions.get(workflow, version)
    input_json = _json(input, "input", INPUT_CAP_BYTES)
    check_input(stored, input)
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 200):
        raise InvalidArgument("idempotency_key", "must be 1 to 200 characters")
    pinned = {"name": stored.name, "version": stored.version,
              "description": stored.description, "steps": definitions.plain_steps(stored)}
    if stored.secret_inputs:
        pinned["secret_inputs"] = list(stored.secret_inputs)
    if stored.on_failure != "stop":
        pinned["on_failure"] = stored.on_failure
    if stored.deadline_s is not None:
        pinned["deadline_s"] = stored.deadline_s
        if stored.on_deadline != "fail":
            pinned["on_deadline"] = stored.on_deadline
    events = engine.created(by, stored.name, stored.version)
    doc, created = transitions.create(pinned, input_json, idempotency_key, now_ms(), events, by)
    if created:
        metrics.EXECUTIONS_STARTED.labels(stored.name).inc()
        doc = _settle_hold(doc, stored.name)
    return doc, created


def check_input(stored: definitions.WorkflowDefinition, input: Any) -> None:
    """Raise :class:`InvalidArgument` naming the path of ``input`` that ``stored``'s input schema
    refuses (none: any input goes)."""
    schema = inputs.loads(stored.input_schema_json)
    if schema is not None and (found := inputs.problem(schema, input)) is not None:
        raise InvalidArgument(found[0], found[1], "schema_mismatch")


def _settle_hold(doc: dict[str, Any], workflow: str) -> dict[str, Any]:
    """Make a new execution's hold agree with its workflow's pause, read after the insert, then
    send its first message (none while it is held).

    Read after the insert, not before: a pause set before that read holds the execution before any
    message is sent (a fenced ``paused`` event after ``created``); one set after it finds the
    execution stored, and the worker holds it at its first step boundary as it would any running
    one. A resume that comes between that read and the hold is caught by reading again; one read in
    the common case (not paused), where a read before the insert and one after would make two."""
    changed = False
    hold: dict[str, Any] | None = None
    for _ in range(TRIES):
        now_paused = controls.paused(workflow)
        if (hold is None) == (now_paused is None):
            break
        changed = True
        with contextlib.suppress(OperationNotAllowed):
            if now_paused is not None:
                pause(doc["_id"], now_paused["by"], now_paused["reason"], scope="workflow")
            else:
                resume(doc["_id"], "detflow", "the workflow was resumed while this execution started",
                       scope="workflow")
        hold = now_paused
    current = (store.load(doc["_id"]) or doc) if changed else doc
    if "workflow" not in (current.get("paused") or {}):
        dispatch.send(doc["_id"])
    return current


def cancel(execution_id: str, by: str, reason: str, dry_run: bool = False,
           bulk: str | None = None) -> ActionResult:
    """Cancel an execution: no further step starts; a running attempt may still finish.
    ``bulk``: the bulk operation doing it (recorded in the event and on the execution)."""

    def plan(snap: Snapshot) -> list[Event]:
        if snap.state.status not in CANCELLABLE:
            raise OperationNotAllowed(
                f"execution {execution_id} is {snap.state.status}; only PENDING or RUNNING "
                "executions can be cancelled"
            )
        _once(snap, bulk)
        return engine.cancelled(by, reason, bulk)

    return _act(execution_id, "cancel", by, reason, dry_run, plan)


def pause(execution_id: str, by: str, reason: str, dry_run: bool = False, scope: str = "execution",
          bulk: str | None = None) -> ActionResult:
    """Pause an execution: no further step, wait or compensation starts (a running attempt may
    finish) until it is resumed. ``scope`` ``workflow``: the hold of a paused workflow."""

    def plan(snap: Snapshot) -> list[Event]:
        if snap.state.status not in engine.PAUSABLE:
            raise OperationNotAllowed(f"execution {execution_id} is {snap.state.status}; only a PENDING, "
                                      "RUNNING or COMPENSATING execution can be paused")
        if scope in snap.state.holds:
            raise OperationNotAllowed(f"execution {execution_id} is paused already"
                                      + (" by its workflow" if scope == "workflow" else ""))
        return engine.paused(scope, by, reason, bulk)

    return _act(execution_id, "pause", by, reason, dry_run, plan)


def resume(execution_id: str, by: str, reason: str, dry_run: bool = False, scope: str = "execution",
           bulk: str | None = None) -> ActionResult:
    """Lift an execution's pause (of ``scope``): it goes on where it stopped, unless its workflow's
    pause still holds it."""

    def plan(snap: Snapshot) -> list[Event]:
        if scope not in snap.state.holds:
            held = " (its workflow's pause holds it: resume the workflow)" \
                if snap.state.holds and scope == "execution" else ""
            raise OperationNotAllowed(f"execution {execution_id} is not paused"
                                      + (" by its workflow" if scope == "workflow" else "") + held)
        return engine.unpaused(scope, by, reason, bulk)

    return _act(execution_id, "resume", by, reason, dry_run, plan)


@dataclass(frozen=True)
class WorkflowPause:
    """A workflow's pause as an operator sees it."""

    workflow: str
    paused: bool
    by: str | None = None
    reason: str | None = None
    #: Executions whose holds a resume lifted (the rest, if a crash cut it short, the sweeper lifts).
    released: int = 0


def pause_workflow(workflow: str, by: str, reason: str) -> WorkflowPause:
    """Pause ``workflow``: new executions stay PENDING, running ones stop at their next step
    boundary (a running attempt finishes). Workers of other processes see it within
    ``controls.REFRESH_S``."""
    check_reason(by, reason)
    definitions.get(workflow)  # WorkflowNotFound
    if not controls.set_paused(workflow, by, reason):
        raise OperationNotAllowed(f"workflow {workflow!r} is paused already")
    return WorkflowPause(workflow, True, by, reason)


def resume_workflow(workflow: str, by: str, reason: str) -> WorkflowPause:
    """Resume ``workflow``: each execution its pause holds goes on (one fenced event each)."""
    check_reason(by, reason)
    definitions.get(workflow)
    if not controls.set_resumed(workflow, by, reason):
        raise OperationNotAllowed(f"workflow {workflow!r} is not paused")
    return WorkflowPause(workflow, False, by, reason, release_workflows(workflow))


#: Holds lifted per read while a resume runs.
RELEASE_BATCH = 500


def release_workflows(workflow: str | None = None) -> int:
    """Lift the holds of resumed workflows (of ``workflow``, or of every one a crash left half
    resumed: the sweeper calls this) from their executions; return how many were lifted."""
    lifted = 0
    for control in controls.releasing(workflow):
        name, pending = control["_id"], control["release"]
        while True:
            ids = controls.held(name, RELEASE_BATCH)
            for execution_id in ids:
                with contextlib.suppress(OperationNotAllowed, ExecutionNotFound):  # lifted meanwhile
                    resume(execution_id, pending["by"], pending["reason"], scope="workflow")
                    lifted += 1
            if len(ids) < RELEASE_BATCH or controls.paused(name) is not None:
                break
        if controls.paused(name) is None:
            controls.released(name, pending["at"])
    return lifted


def retry(
    execution_id: str, by: str, reason: str, input: Any = _UNSET, dry_run: bool = False,
    bulk: str | None = None,
) -> ActionResult:
    """Retry a FAILED execution from its failed step with a new attempt budget (or, in a
    COMPENSATION_FAILED execution, its failed compensation: the rollback goes on).

    ``input``, when given, replaces the input of that step alone; the difference is recorded.
    ``bulk``: the bulk operation doing it (recorded in the event and on the execution).
    """

    def plan(snap: Snapshot) -> list[Event]:
        _once(snap, bulk)
        if snap.state.status is ExecutionStatus.COMPENSATION_FAILED:
            if input is not _UNSET:
                raise InvalidArgument("input", "a compensation runs with its step's input; it takes no "
                                               "input of its own")
            return engine.compensation_retried(snap.state, _failed_compensation(snap), by, reason, bulk)
        index = _failed_step(snap, "retried")
        input_json = diff = None
        if input is not _UNSET:
            stored = json.loads(snap.doc["steps"][index].get("input_json") or snap.doc["input_json"])
            # A secret shown masked and left as it was keeps its value.
            input_json = _json(masking.unmask(input, stored, masking.paths_of(snap.doc)), "input",
                               INPUT_CAP_BYTES)
            _fits(snap, index, "input", input_json)
            diff = bounded_diff(json_diff(stored, json.loads(input_json)))
        return engine.retried(snap.state, index, by, reason, jsontext.dumps(diff or []), input_json, bulk)

    return _act(execution_id, "retry", by, reason, dry_run, plan)


def skip(
    execution_id: str, by: str, reason: str, output: Any = None, step: str | None = None,
    dry_run: bool = False,
) -> ActionResult:
    """Skip the failed step with ``output`` standing in for its result, and go on (or, in a
    COMPENSATION_FAILED execution, skip its failed compensation: its step stays undone by
    detflow, the operator having seen to it, and the rollback goes on; ``output`` is refused)."""

    def plan(snap: Snapshot) -> list[Event]:
        if snap.state.status is ExecutionStatus.COMPENSATION_FAILED:
            k = _failed_compensation(snap)
            name = snap.state.compensations[k].name
            if step is not None and step != name:
                raise InvalidArgument("step", f"the failed compensation is {name!r}'s, not {step!r}'s")
            if output is not None:
                raise InvalidArgument("output", "a skipped compensation has no output")
            return engine.compensation_skipped(snap.state, k, by, reason)
        index = _failed_step(snap, "skipped")
        name = snap.state.steps[index].name
        if step is not None and step != name:
            raise InvalidArgument("step", f"step {step!r} has not failed; the failed step is {name!r}")
        from detflow_site import conf

        output_json = _json(output, "output", conf.get().OUTPUT_CAP_BYTES)
        _fits(snap, index, "output", output_json)
        return engine.skipped(snap.state, index, by, reason, output_json)

    return _act(execution_id, "skip", by, reason, dry_run, plan)


@dataclass(frozen=True)
class PlannedCompensation:
    """One compensation of a rollback's plan, in the order it runs."""

    step: str
    step_index: int
    handler: str
    #: The step's status, and its output (as the API and the admin show it: secrets masked).
    status: str
    output: Any


def compensate(
    execution_id: str, by: str, reason: str, dry_run: bool = False, include_skipped: bool = False,
) -> tuple[ActionResult, list[PlannedCompensation]]:
    """Roll back a FAILED or CANCELLED execution: run the compensations of its steps that
    SUCCEEDED (and, with ``include_skipped``, that an operator SKIPPED), newest first. Returns the
    action and its plan; a dry run returns both and changes nothing."""
    planned: list[PlannedCompensation] = []

    def plan(snap: Snapshot) -> list[Event]:
        state = snap.state
        if state.status not in COMPENSABLE:
            raise OperationNotAllowed(
                f"execution {execution_id} is {state.status}; only a FAILED or CANCELLED execution "
                "can be compensated")
        running = [s.name for s in state.steps if s.status is StepStatus.RUNNING]
        if running:
            raise OperationNotAllowed(f"step {running[0]!r} of execution {execution_id} is still running; "
                                      "compensate once its attempt has ended")
        order = engine.rollback_plan(state, include_skipped=include_skipped)
        if not order:
            raise OperationNotAllowed(f"execution {execution_id} has nothing to undo: no step that "
                                      "succeeded" + (" or was skipped" if include_skipped else "")
                                      + " names a compensation")
        specs, secrets = snap.doc["definition"]["steps"], masking.secret_values(snap.doc)
        planned[:] = [PlannedCompensation(
            step=state.steps[i].name, step_index=i, handler=specs[i]["compensate"]["handler"],
            status=state.steps[i].status.value, output=_shown_output(snap.doc["steps"][i], secrets))
            for i in order]
        cause = _cause(snap)
        return engine.rollback(state, order, by, reason, cause)

    result = _act(execution_id, "compensate", by, reason, dry_run, plan)
    return result, planned


def _shown_output(stored: dict[str, Any], secrets: set[str]) -> Any:
    """A step's output as a plan shows it: secret values scrubbed from its texts, and a number
    that is a secret's value shown as the mask (scrubbing the JSON text instead could break it)."""
    text = stored.get("output_json")
    return None if text is None else _scrubbed(json.loads(text), secrets)


def _scrubbed(value: Any, secrets: set[str]) -> Any:
    if not secrets:
        return value
    if isinstance(value, str):
        return masking.scrub(value, secrets)
    if isinstance(value, dict):
        return {_scrubbed(k, secrets): _scrubbed(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v, secrets) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool) and str(value) in secrets:
        return masking.MASK
    return value


@dataclass(frozen=True)
class SignalResult:
    """A signal as stored: its place among the execution's signals, and whether this call stored
    it (``False``: the same ``key`` came before, and nothing changed)."""

    execution_id: str
    name: str
    signal_index: int
    created: bool
    #: The step that took it, when one did (``None``: kept until a wait for it starts).
    consumed_by: str | None


def signal(
    execution_id: str, name: str, payload: Any = None, by: str = "", reason: str = "",
    idempotency_key: str | None = None,
) -> SignalResult:
    """Send the signal ``name`` to an execution: a wait step for it takes it now, or when the wait
    starts; its ``payload`` becomes that step's output. With an ``idempotency_key`` already sent for
    this signal, nothing changes and the first signal is returned (another payload: refused)."""
    if not by:
        raise InvalidArgument("by", "the acting user is required")
    if not isinstance(reason, str) or len(reason) > 1000:
        raise InvalidArgument("reason", "must be text of at most 1000 characters")
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 200):
        raise InvalidArgument("idempotency_key", "must be 1 to 200 characters")
    payload_json = _json(payload, "payload", SIGNAL_CAP_BYTES)
    for _ in range(TRIES):
        doc = store.load_working(execution_id)
        if doc is None:
            raise ExecutionNotFound(f"execution {execution_id} does not exist")
        waits = {s["wait"]["signal"] for s in doc["definition"]["steps"] if "wait" in s}
        if name not in waits:
            raise InvalidArgument("name", f"no step of this execution waits for signal {name!r}; "
                                  "it waits for: " + (", ".join(sorted(waits)) or "no signal"))
        stored = doc.get("signals") or []
        if idempotency_key is not None:
            for k, seen in enumerate(stored):
                if seen["name"] == name and seen.get("key") == idempotency_key:
                    if seen["payload_json"] != payload_json:
                        raise IdempotencyConflict(f"Idempotency-Key {idempotency_key!r} was used for "
                                                  f"signal {name!r} with another payload; use a new key "
                                                  "for a new signal")
                    return SignalResult(execution_id, name, k, False, seen.get("consumed_by"))
        snap = Snapshot.of(doc)
        if snap.state.status in engine.SETTLED or snap.state.status is ExecutionStatus.CANCELLED:
            raise OperationNotAllowed(f"execution {execution_id} is {snap.state.status}; a signal "
                                      "goes to an execution that has not finished")
        if len(stored) >= MAX_SIGNALS:
            raise OperationNotAllowed(f"execution {execution_id} holds {MAX_SIGNALS} signals, the most "
                                      "one execution keeps")
        # Counted twice: the signal keeps it, and the step that takes it keeps it as its output.
        total = store.data_bytes(doc, -1) + 2 * len(payload_json.encode())
        if total > store.DATA_BYTES:
            raise InvalidArgument("payload", f"would take this execution's outputs, inputs and signals "
                                  f"to {total} bytes of JSON together; the cap is {store.DATA_BYTES}")
        events = engine.signalled(snap.state, name, idempotency_key, by, reason, payload_json)
        after = transitions.commit(snap, events, now_ms())
        if after is not None:
            follow_up(after)
            return SignalResult(execution_id, name, len(stored), True, None)
    raise ConcurrentChange(f"execution {execution_id} changed {TRIES} times while the signal was sent")


def _cause(snap: Snapshot) -> tuple[str | None, str, str]:
    """Return what an operator's rollback undoes the execution for: its failed step's last error,
    or its cancellation."""
    index = engine.failed_step(snap.state)
    if index is not None:
        stored = snap.doc["steps"][index]
        error = stored.get("error") or {}
        return stored["name"], error.get("type", ""), error.get("message", "")
    return None, "Cancelled", "the execution was cancelled"


def _failed_compensation(snap: Snapshot) -> int:
    k = engine.failed_compensation(snap.state)
    if k is None:
        raise OperationNotAllowed(f"execution {snap.state.id} has no failed compensation")
    return k


def _act(
    execution_id: str, action: str, by: str, reason: str, dry_run: bool,
    plan: Callable[[Snapshot], list[Event]],
) -> ActionResult:
    """Check the request, build the action's events from the stored state (``plan``), and write
    them unless this is a dry run: the answer of a dry run and of the write is the same event."""
    check_reason(by, reason)
    for _ in range(TRIES):
        doc = store.load_working(execution_id)
        if doc is None:
            raise ExecutionNotFound(f"execution {execution_id} does not exist")
        snap = Snapshot.of(doc)
        events = plan(snap)
        result = ActionResult(execution_id, action, dry_run, _changes(snap, events),
                              events[0].fields())
        if dry_run:
            return result
        after = transitions.commit(snap, events, now_ms())
        if after is not None:
            follow_up(after)
            return result
    raise ConcurrentChange(f"execution {execution_id} changed {TRIES} times while {action} was tried")


def _once(snap: Snapshot, bulk: str | None) -> None:
    """Refuse a bulk operation's second action on one execution (checked inside the fenced write)."""
    if bulk is not None and bulk in (snap.doc.get("bulk_operations") or ()):
        raise OperationNotAllowed(f"execution {snap.state.id} was acted on by bulk operation {bulk} already")


def check_reason(by: str, reason: str) -> None:
    """Refuse an operator action without a reason (or with one over 1000 characters), or by nobody."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidArgument("reason", "a reason is required")
    if len(reason) > 1000:
        raise InvalidArgument("reason", "must be at most 1000 characters")
    if not by:
        raise InvalidArgument("by", "the acting user is required")


def _failed_step(snap: Snapshot, verb: str) -> int:
    if snap.state.status is not ExecutionStatus.FAILED:
        raise OperationNotAllowed(
            f"execution {snap.state.id} is {snap.state.status}; only a FAILED execution can be {verb}"
        )
    index = engine.failed_step(snap.state)
    if index is None:
        raise OperationNotAllowed(f"execution {snap.state.id} has no failed step")
    return index


def _changes(snap: Snapshot, events: list[Event]) -> dict[str, tuple[str, str]]:
    after = replay(snap.state, [event.fields() for event in events])
    changes = {}
    if after.status is not snap.state.status:
        changes["execution"] = (snap.state.status.value, after.status.value)
    for old, new in zip(snap.state.steps, after.steps, strict=True):
        if old.status is not new.status:
            changes[f"steps.{old.name}"] = (old.status.value, new.status.value)
    if len(snap.state.compensations) == len(after.compensations):
        for old, new in zip(snap.state.compensations, after.compensations, strict=True):
            if old.status is not new.status:
                changes[f"compensations.{old.name}"] = (old.status.value, new.status.value)
    else:  # a rollback starts
        for new in after.compensations:
            changes[f"compensations.{new.name}"] = ("", new.status.value)
    return changes


def _fits(snap: Snapshot, index: int, name: str, text: str) -> None:
    """Refuse an edited input or a skip's output that would take the execution's outputs and edited
    inputs together past ``store.DATA_BYTES``."""
    total = (store.data_bytes(snap.doc, index, output=text) if name == "output"
             else store.data_bytes(snap.doc, index, input=text))
    if total > store.DATA_BYTES:
        raise InvalidArgument(name, f"would take this execution's outputs and edited inputs to {total} "
                              f"bytes of JSON together; the cap is {store.DATA_BYTES}")


#: Largest input difference a retry's event records, in bytes of JSON; a larger one is recorded
#: by its paths alone (the new input itself is the step's).
DIFF_BYTES = 4096


def bounded_diff(diff: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return ``diff`` as a retry's event records it: whole when small, else its paths alone, cut
    to ``DIFF_BYTES`` with a count of the changes left out."""
    if len(jsontext.dumps(diff).encode()) <= DIFF_BYTES:
        return diff
    paths = [{"path": str(c["path"])[:200], "op": c["op"], "values": "omitted"} for c in diff]
    kept: list[dict[str, Any]] = []
    size = 2
    for change in paths:
        size += len(jsontext.dumps(change).encode()) + 1
        if size > DIFF_BYTES - 64:
            break
        kept.append(change)
    if len(kept) < len(paths):
        kept.append({"path": "", "op": "more", "count": len(paths) - len(kept)})
    return kept


def _json(value: Any, name: str, cap: int) -> str:
    try:
        return jsontext.capped(value, cap)
    except jsontext.NotJSON as exc:
        raise InvalidArgument(name, str(exc)) from None
    except jsontext.JSONTooLarge as exc:
        raise InvalidArgument(name, str(exc)) from None


def json_diff(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """Return the changes from ``old`` to ``new`` as ``{"path", "old", "new"}`` items."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}/{key}"
            if key not in old:
                changes.append({"path": sub, "op": "add", "new": new[key]})
            elif key not in new:
                changes.append({"path": sub, "op": "remove", "old": old[key]})
            else:
                changes.extend(json_diff(old[key], new[key], sub))
        return changes
    if old == new and type(old) is type(new):
        return []
    return [{"path": path or "/", "op": "replace", "old": old, "new": new}]
