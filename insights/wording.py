"""The facts of a fact sheet in English: one sentence each, citing the events it rests on.

The rules writer and the prompt both use these sentences; ``retry_pattern`` and ``seconds`` are the
wording the writers reuse for a step's attempts and for a duration.
"""
from __future__ import annotations

from typing import Any

from insights.facts import MIN_SAMPLES, Cancellation, Fact, FactSheet, Failure, Step


def facts(sheet: FactSheet) -> list[Fact]:
    """Return the facts of ``sheet`` in sentences: its outcome first."""
    found = [_outcome(sheet)]
    if sheet.failure:
        found.append(_failure_fact(sheet.failure, sheet.steps[sheet.failure.index]))
    if sheet.cancellation:
        found.append(_cancel_fact(sheet.cancellation))
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
        verb = "retried" if action.action == "retry" else "skipped"
        found.append(Fact("operator_action",
                          f"{action.by or 'an operator'} {verb} step {action.step!r}"
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
    if sheet.status == "FAILED" and sheet.failure:
        f = sheet.failure
        return Fact("outcome", f"FAILED{took}: step {f.step!r} failed for good on attempt "
                    f"{f.attempts_used} of {f.max_attempts}", seqs, f.step)
    if sheet.status == "CANCELLED" and sheet.cancellation:
        return Fact("outcome", f"CANCELLED{took} by {sheet.cancellation.by or 'an operator'}", seqs)
    attempts = sum(len(s.attempts) + s.attempts_omitted for s in sheet.steps)
    ran = sum(1 for s in sheet.steps if s.attempts)
    return Fact("outcome", f"{sheet.status}{took}: {ran} step(s) ran, {attempts} attempt(s) in all", seqs)


def _failure_fact(f: Failure, step: Step) -> Fact:
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


def retry_pattern(step: Step) -> str:
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
