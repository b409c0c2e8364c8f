"""The facts of a fact sheet in English: one sentence each, citing the events it rests on.

The rules writer and the prompt both use these sentences; ``retry_pattern`` and ``seconds`` are the
wording the writers reuse for a step's (or a compensation's) attempts and for a duration,
``rollback_cause`` and ``undo_result`` for why a rollback ran and how each compensation ended,
``wait_result`` for how a sleep or a wait ended.
"""
from __future__ import annotations

from typing import Any

from insights.facts import (
    MIN_SAMPLES,
    Cancellation,
    Compensation,
    Fact,
    FactSheet,
    Failure,
    Rollback,
    Step,
    Wait,
)


def facts(sheet: FactSheet) -> list[Fact]:
    """Return the facts of ``sheet`` in sentences: its outcome first."""
    found = [_outcome(sheet)]
    if sheet.failure:
        found.append(_failure_fact(sheet.failure, sheet.steps[sheet.failure.index]))
    if sheet.cancellation:
        found.append(_cancel_fact(sheet.cancellation))
    if sheet.rollback:
        found += _rollback_facts(sheet.rollback)
    elif sheet.undoable:
        found.append(Fact("undoable", "no rollback was asked for; an operator's compensate would undo, "
                          f"newest first: {', '.join(sheet.undoable)}", _seqs([sheet.terminal_seq])))
    for wait in sheet.waits:
        found.append(Fact("sleep" if wait.kind == "sleep" else "wait", wait_result(wait), wait.seqs,
                          wait.step))
    kept = [s for s in sheet.signals if s.taken_by is None]
    if kept:
        found.append(Fact("signals_not_taken", f"{len(kept)} signal(s) received and not taken by any step: "
                          + "; ".join(f"{s.name!r} from {s.by or 'an unknown sender'}"
                                      + (f" ({_clip(s.reason, 80)!r})" if s.reason else "") for s in kept),
                          tuple(s.seq for s in kept)))
    for step in sheet.steps:
        if len(step.attempts) > 1 or any(a.outcome not in ("succeeded", "running") for a in step.attempts):
            found.append(Fact("retry_pattern", f"step {step.name!r}: {retry_pattern(step)}",
                              _seqs(a.end_seq for a in step.attempts), step.name))
    lost = [(s, a) for s in sheet.steps for a in s.attempts if a.outcome == "lost"]
    if lost:
        found.append(Fact(
            "lost_attempts",
            f"{len(lost)} attempt(s) lost ({', '.join(f'{s.name} #{a.n}' for s, a in lost)}): their "
            "workers stopped before recording an outcome, and each was recorded lost when its "
            "lease ran out",
            _seqs(a.end_seq for _, a in lost)))
    for action in sheet.operator:
        found.append(Fact("operator_action", operator_action(action.action, action.by, action.step)
                          + (f" ({action.reason!r})" if action.reason else ""),
                          (action.seq,), action.step))
    for step in sheet.steps:
        if step.elapsed_ms is not None:
            found.append(Fact("duration", f"step {step.name!r} took {seconds(step.elapsed_ms)}"
                              + _against(step), step.seqs, step.name))
    if sheet.slowest:
        step = next(s for s in sheet.steps if s.name == sheet.slowest)
        share = (f" of {seconds(sheet.duration_ms)} in all" if sheet.duration_ms else "")
        found.append(Fact("slowest_step", f"the slowest step was {step.name!r}: "
                          f"{seconds(step.elapsed_ms)}{share}", step.seqs, step.name))
    for step in sheet.steps:
        if step.slow and step.baseline and step.elapsed_ms is not None:
            waited = sum(a.waited_ms or 0 for a in step.attempts)
            found.append(Fact(
                "slow_step",
                f"step {step.name!r} is far above its baseline: {seconds(step.elapsed_ms)} against a "
                f"median of {seconds(step.baseline.median_ms)} "
                f"({step.elapsed_ms / max(step.baseline.median_ms, 1):.1f}x) and a p95 of "
                f"{seconds(step.baseline.p95_ms)}"
                + (f"; {seconds(waited)} of it waiting between attempts" if waited else ""),
                step.seqs, step.name))
    for name in sheet.running:
        step = next(s for s in sheet.steps if s.name == name)
        found.append(Fact("still_running", f"step {name!r} attempt {step.attempts[-1].n} had no "
                          "outcome yet when these facts were computed",
                          _seqs([step.attempts[-1].claim_seq]), name))
    return found


def _outcome(sheet: FactSheet) -> Fact:
    took = f" after {seconds(sheet.duration_ms)}" if sheet.duration_ms is not None else ""
    seqs = _seqs([sheet.terminal_seq])
    if sheet.rollback and sheet.status in ("COMPENSATED", "COMPENSATION_FAILED"):
        r = sheet.rollback
        text = f"{sheet.status}{took}: rolled back {rollback_cause(r)}; "
        undone, skipped = r.having("undone"), r.having("skipped")
        text += f"{len(undone)} of {len(r.compensations)} compensation(s) undid their step"
        if skipped:
            text += f", {len(skipped)} skipped by an operator"
        for undo in r.having("failed"):
            text += f"; the compensation of {undo.step!r} failed for good"
        return Fact("outcome", text, _seqs([sheet.terminal_seq, r.seq]), r.cause_step)
    if sheet.status == "FAILED" and sheet.failure and sheet.failure.kind in WAIT_FAILURES:
        f = sheet.failure
        wait = next(w for w in reversed(sheet.waits) if w.end_seq == f.seq)
        return Fact("outcome", f"FAILED{took}: {wait_result(wait)}", _seqs([sheet.terminal_seq, f.seq]),
                    f.step)
    if sheet.status == "FAILED" and sheet.failure:
        f = sheet.failure
        return Fact("outcome", f"FAILED{took}: step {f.step!r} failed for good on attempt "
                    f"{f.attempts_used} of {f.max_attempts}", seqs, f.step)
    if sheet.status == "CANCELLED" and sheet.cancellation:
        return Fact("outcome", f"CANCELLED{took} by {sheet.cancellation.by or 'an operator'}", seqs)
    attempts = sum(len(s.attempts) + s.attempts_omitted for s in sheet.steps)
    ran = sum(1 for s in sheet.steps if s.attempts)
    return Fact("outcome", f"{sheet.status}{took}: {ran} step(s) ran, {attempts} attempt(s) in all", seqs)


#: The failures of a step that ran no handler: a wait that timed out, a sleep that could not start.
WAIT_FAILURES = ("wait_timed_out", "sleep_refused")


def wait_result(w: Wait) -> str:
    """Say how a sleep or a wait ended: ``step 'approval' waited 2 s for signal 'approved', none
    came: on_timeout fail``, ``... took signal 'approved' from ann after 1.20 s ('ok')``."""
    waited = seconds(w.waited_ms)
    if w.kind == "sleep":
        if w.outcome == "woke":
            return f"step {w.step!r} slept {waited} and woke as planned"
        if w.outcome == "refused":
            return f"step {w.step!r} could not sleep: {_clip(w.message or '', 200)!r}"
        if w.outcome == "cancelled":
            return f"step {w.step!r} was asleep when the execution was cancelled, after {waited}"
        return f"step {w.step!r} was still asleep when these facts were computed"
    what = f"signal {w.signal!r}"
    if w.outcome == "signalled":
        text = (f"step {w.step!r} waited {waited} for {what} and took the one {w.signal_by or 'someone'} "
                "sent")
        if w.signal_reason:
            text += f" ({_clip(w.signal_reason, 120)!r})"
        if w.signal_ms is not None and w.started_ms is not None:
            sent = w.signal_ms - w.started_ms
            text += (f", {seconds(sent)} after the wait started" if sent >= 0
                     else f", {seconds(-sent)} before the wait started (kept until then)")
        return text + "; its payload is the step's output"
    if w.outcome == "timed_out":
        limit = f"{w.timeout_s:g} s" if w.timeout_s is not None else waited
        rule = w.on_timeout or "fail"
        then = {"fail": "the step failed", "continue": "the step succeeded with its default_output",
                "skip": "the step was skipped"}.get(rule, f"the step ended {w.ends}")
        return f"step {w.step!r} waited {limit} for {what}, none came: on_timeout {rule} ({then})"
    if w.outcome == "cancelled":
        return f"step {w.step!r} was waiting for {what} when the execution was cancelled, after {waited}"
    return f"step {w.step!r} was still waiting for {what} when these facts were computed"


def _failure_fact(f: Failure, step: Step) -> Fact:
    if f.kind in WAIT_FAILURES:
        rest = f"; steps not run: {', '.join(f.not_run)}" if f.not_run else ""
        what = ("waited for a signal that did not come in time, and its on_timeout is fail"
                if f.kind == "wait_timed_out" else "is a sleep whose time could not be read")
        return Fact("failing_step", f"step {f.step!r} ({step.handler}) failed with {f.error_type}: "
                    f"{f.message!r}: it ran no handler, it {what}{rest}", (f.seq,), f.step)
    why = {
        "permanent": "the error is permanent (a PermanentError, or a type listed in the step's "
                     "non_retryable), so it was not retried",
        "retries_exhausted": f"every attempt of its budget (max_attempts={f.max_attempts}) failed",
        "timeout": f"the last attempt of its budget (max_attempts={f.max_attempts}) ran past "
                   f"timeout_s={step.timeout_s:g}",
        "lost": f"the last attempt of its budget (max_attempts={f.max_attempts}) was lost: its "
                "worker stopped before recording an outcome",
    }[f.kind]
    rest = f"; steps not run: {', '.join(f.not_run)}" if f.not_run else ""
    return Fact("failing_step", f"step {f.step!r} (handler {step.handler}) failed with {f.error_type}: "
                f"{f.message!r} on attempt {f.attempts_used}; {why}{rest}", (f.seq,), f.step)


def _cancel_fact(c: Cancellation) -> Fact:
    text = f"cancelled by {c.by or 'an operator'}" + (f" ({c.reason!r})" if c.reason else "")
    text += (f" while step(s) {', '.join(c.running)} ran" if c.running
             else " before any step was running")
    for step, outcome, seq in c.ended_after:
        text += f"; {step} ended {outcome} after the cancel (event {seq})"
    if c.not_run:
        text += f"; steps never run: {', '.join(c.not_run)}"
    return Fact("cancelled", text, (c.seq, *(seq for _, _, seq in c.ended_after)))


def rollback_cause(r: Rollback) -> str:
    """Say why and at whose request: ``after step 'capture' failed for good (PermanentError:
    'declined'), at the request of ops ('order withdrawn')``."""
    if r.cause_step is not None:
        text = (f"after step {r.cause_step!r} failed for good "
                f"({short(r.cause_type)}: {_clip(r.cause_message, 120)!r})")
    elif r.cause_type == "Cancelled":
        text = "after the execution was cancelled"
    else:
        text = f"for {_clip(r.cause_message, 120)!r}" if r.cause_message else "at an operator's request"
    if r.by is None:
        return text + ", as the workflow's on_failure: compensate says"
    return text + f", at the request of {r.by}" + (f" ({_clip(r.reason, 120)!r})" if r.reason else "")


def undo_result(undo: Compensation) -> str:
    """Say how one compensation ended, in a clause: ``undone by payments.refund on attempt 1 of 3``."""
    if undo.outcome == "undone":
        last = undo.attempts[-1].n if undo.attempts else 1
        if undo.budget_base:
            return (f"undone by {undo.handler} on attempt {last - undo.budget_base} of "
                    f"{undo.max_attempts} of the budget an operator's retry opened ({last} in all)")
        return f"undone by {undo.handler} on attempt {last} of {undo.max_attempts}"
    if undo.outcome == "skipped":
        return (f"its compensation was skipped by {undo.by or 'an operator'}"
                + (f" ({_clip(undo.reason or '', 120)!r})" if undo.reason else "")
                + ": detflow did not undo it")
    if undo.outcome == "failed":
        return (f"its compensation ({undo.handler}) failed for good with "
                f"{short(undo.error_type or 'Error')}: {_clip(undo.message or '', 120)!r} after "
                f"{len(undo.budget)} attempt(s) of max_attempts={undo.max_attempts}: it is not undone, "
                "an operator must retry or skip it")
    if undo.outcome == "not_reached":
        return "not undone: the rollback stopped before its compensation ran"
    return f"its compensation is {undo.status}"


def _rollback_facts(r: Rollback) -> list[Fact]:
    found = [Fact("rollback", f"rolled back {rollback_cause(r)}; the plan, newest step first: "
                  + (", ".join(r.plan) or "nothing to undo"), _seqs([r.seq]), r.cause_step)]
    for undo in r.compensations:
        found.append(Fact("compensation", f"step {undo.step!r}: {undo_result(undo)}",
                          _seqs([undo.seq] if undo.seq is not None else [r.seq]), undo.step))
        if len(undo.attempts) > 1 or any(a.outcome not in ("succeeded", "running") for a in undo.attempts):
            found.append(Fact("compensation_retry_pattern",
                              f"the compensation of {undo.step!r}: {retry_pattern(undo)}",
                              _seqs(a.end_seq for a in undo.attempts), undo.step))
    return found


def operator_action(action: str, by: str | None, step: str) -> str:
    """Say an operator's action: ``alice retried step 'a'``, ``bob skipped the compensation of 'b'``."""
    verb = "retried" if action.startswith("retry") else "skipped"
    what = f"the compensation of {step!r}" if action.endswith("_compensation") else f"step {step!r}"
    return f"{by or 'an operator'} {verb} {what}"


def short(error_type: str) -> str:
    """Return an error type without its module: ``PermanentError``."""
    return error_type.rsplit(".", 1)[-1]


def retry_pattern(step: Step | Compensation) -> str:
    """Describe a step's attempts in one line: each outcome, the delays, the time spent waiting."""
    parts = []
    for a in step.attempts:
        what = {"succeeded": "succeeded", "running": "had no outcome yet",
                "lost": "lost (its worker stopped)"}.get(a.outcome)
        if what is None:
            what = f"{a.error_type}: {_clip(a.message or '', 80)!r}"
        if a.then == "retry" and a.retry_delay_ms is not None:
            what += f", retry after {seconds(a.retry_delay_ms)}"
        elif a.then == "failed":
            what += ", failed for good"
        parts.append(f"#{a.n} {what}")
    total = len(step.attempts) + step.attempts_omitted
    waited = sum(a.waited_ms or 0 for a in step.attempts)
    text = f"{total} attempt(s) (max_attempts={step.max_attempts}"
    text += f", a new budget from attempt {step.budget_base + 1})" if step.budget_base else ")"
    if step.attempts_omitted:
        text += f", the first {step.attempts_omitted} not shown"
    text += ": " + "; ".join(parts)
    if waited:
        text += f"; {seconds(waited)} spent waiting between attempts"
    return text


def _against(step: Step) -> str:
    b = step.baseline
    if b is None or b.samples == 0:
        return "; no successful run of this version to compare with"
    text = (f"; baseline of this version: median {seconds(b.median_ms)}, p95 {seconds(b.p95_ms)} "
            f"over {b.samples} successful run(s)")
    if step.elapsed_ms is not None and b.median_ms > 0:
        text += f" ({step.elapsed_ms / b.median_ms:.1f}x the median)"
    if b.samples < MIN_SAMPLES:
        text += f"; too few runs (fewer than {MIN_SAMPLES}) to call it slow"
    return text


def seconds(ms: int | None) -> str:
    """Return a duration in milliseconds as ``'850 ms'``, ``'1.25 s'`` or ``'12.5 s'``."""
    if ms is None:
        return "an unknown time"
    if ms < 1000:
        return f"{ms} ms"
    return f"{ms / 1000:.2f} s" if ms < 10_000 else f"{ms / 1000:.1f} s"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _seqs(values: Any) -> tuple[int, ...]:
    return tuple(v for v in values if isinstance(v, int))
