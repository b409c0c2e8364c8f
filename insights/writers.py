"""The two writers of a post-mortem: rules over the fact sheet, and a model behind the ``openai`` client.

Both return an answer of the shape ``insights.postmortem.SCHEMA`` describes; the service validates
it. The model writer raises :class:`WriterFailed` (one line, no secrets) for every way a call can go
wrong, and the service then asks the rules.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Any

# Imported with the module, not on the first call: the import takes most of a second, which the
# first post-mortem of a process would otherwise count as the model's time (its ``took_ms``).
import openai

from detflow_site import conf
from insights import redact
from insights.errors import InvalidAnswer, WriterFailed
from insights.facts import Compensation, FactSheet, Failure, Rollback, Step
from insights.postmortem import SCHEMA
from insights.prompt import Prompt
from insights.wording import WAIT_FAILURES, retry_pattern, rollback_cause, seconds, undo_result, wait_result

#: Error types (the last part of the name) that usually mean bad input or a bug, not an outage.
INPUT_OR_BUG = frozenset({"KeyError", "ValueError", "TypeError", "AttributeError", "IndexError",
                          "AssertionError", "ZeroDivisionError", "UnicodeDecodeError", "JSONDecodeError",
                          "ValidationError", "OutputTooLarge", "OutputNotSerializable"})
#: Error types that usually mean a dependency did not answer.
OUTAGE = frozenset({"ConnectionError", "TimeoutError", "ConnectTimeout", "ReadTimeout",
                    "ConnectionRefusedError", "ConnectionResetError", "ServiceUnavailable",
                    "Unavailable", "HTTPError", "OperationalError"})


class RulesWriter:
    """Writes a post-mortem from the facts alone: the same facts always give the same text."""

    source = "rules"

    def write(self, sheet: FactSheet) -> dict[str, Any]:
        if sheet.status in ("COMPENSATED", "COMPENSATION_FAILED") and sheet.rollback is not None:
            return _rolled_back(sheet, sheet.rollback)
        if sheet.status == "FAILED" and sheet.failure is not None:
            return _failed(sheet, sheet.failure, sheet.steps[sheet.failure.index])
        if sheet.status == "CANCELLED" and sheet.cancellation is not None:
            return _cancelled(sheet)
        return _succeeded(sheet)


def _failed(sheet: FactSheet, f: Failure, step: Step) -> dict[str, Any]:
    if f.kind in WAIT_FAILURES:
        return _failed_wait(sheet, f, step)
    budget = step.budget
    types = Counter(a.error_type for a in budget if a.error_type)
    error = f"{f.error_type}: {_quote(f.message)}"
    short = f"{_short(f.error_type)}: {_quote(f.message)}"
    tried = f"{f.attempts_used} of {f.max_attempts} attempt(s)"
    if f.kind == "permanent":
        summary = (f"FAILED at step {f.step!r}: {short} on attempt {budget[-1].n} is permanent, so "
                   "the step was not retried.")
        cause = (f"The handler {step.handler} raised {error}. A permanent error (PermanentError, "
                 "or a type listed in the step's non_retryable) fails the step at once; the retry "
                 "policy does not apply.")
        confidence = "high"
        actions = [
            ("retry_with_edited_input", f"If the input is at fault, retry {f.step!r} with a "
                                        "corrected input."),
            ("skip", f"If the result of {f.step!r} can be supplied by hand, skip it with that output."),
            ("code_change", f"If {step.handler} should accept this input, change it, then retry."),
        ]
    elif f.kind == "timeout":
        timed_out = sum(1 for a in budget if a.outcome == "timed_out")
        summary = (f"FAILED at step {f.step!r}: {timed_out} of {f.attempts_used} attempt(s) ran past "
                   f"timeout_s={step.timeout_s:g} (StepTimeout); no attempts were left.")
        cause = (f"Attempts of {f.step!r} ran longer than the step's timeout_s={step.timeout_s:g} and "
                 f"were interrupted. {step.handler} is slower than the limit allows for this input, "
                 "or it waits on something that does not answer.")
        if step.baseline and step.baseline.samples:
            cause += (f" In successful runs of this version the step takes {seconds(step.baseline.median_ms)}"
                      f" (median; p95 {seconds(step.baseline.p95_ms)}).")
        confidence = "medium"
        actions = [
            ("code_change", f"Raise timeout_s of {f.step!r} (now {step.timeout_s:g} s) or make "
                            f"{step.handler} faster; call ctx.heartbeat() in long work."),
            ("retry", "If what it waited on was slow only for a while, retry the step."),
        ]
    elif f.kind == "lost":
        lost = [a for a in budget if a.outcome == "lost"]
        workers = sorted({a.worker for a in lost if a.worker})
        summary = (f"FAILED at step {f.step!r}: {len(lost)} of {f.attempts_used} attempt(s) were lost "
                   "because the worker running them stopped before recording an outcome.")
        cause = ("The worker process running the step stopped (crashed, was killed, or stalled past "
                 "its lease) before it recorded an outcome; each attempt was recorded lost (AttemptLost) "
                 f"when its lease ran out, and lost attempts count against max_attempts={f.max_attempts}."
                 + (f" Worker(s): {', '.join(workers)}." if workers else ""))
        confidence = "medium"
        actions = [
            ("retry", "The step itself did not fail: retrying runs it again with a new budget."),
            ("code_change", f"Find why workers stopped while running {step.handler} (memory limits, "
                            "kills, deployments without a graceful stop, code blocked in C)."),
        ]
    else:
        same = len(types) == 1
        summary = f"FAILED at step {f.step!r} after {tried} failed; the last error: {short}."
        if same:
            cause = (f"Every attempt of {f.step!r} failed with the same error type, {f.error_type}, so "
                     f"the cause outlasted the retries (the last: {_quote(f.message)})")
            waited = sum(a.waited_ms or 0 for a in budget)
            cause += f" ({seconds(waited)} of waiting between attempts)." if waited else "."
        else:
            cause = ("The attempts failed in different ways ("
                     + ", ".join(f"{n}x {t}" for t, n in types.most_common()) + f"); the last: {error}.")
        confidence = "medium" if same else "low"
        actions = [
            ("retry", "Retry once the cause of the error is fixed; a retry opens a new attempt budget."),
            ("code_change", f"If it is a bug in {step.handler}, fix it; if the outage was longer than "
                            f"the retries, raise max_attempts (now {f.max_attempts}) or the delays."),
        ]
        if _short(f.error_type) in INPUT_OR_BUG:
            actions.insert(1, ("retry_with_edited_input",
                               "If the input is at fault, retry with a corrected input."))
    actions += _compensate_action(sheet)
    hint = _hint(f.error_type)
    if hint:
        cause += f" {hint}"
    if len(step.attempts) > 1:
        cause += f" Attempts: {retry_pattern(step)}."
    later = (f"Steps after {f.step!r} did not run: {', '.join(f.not_run)}." if f.not_run
             else f"{f.step!r} is the last step.")
    done = sum(1 for s in sheet.steps[: f.index] if s.status in ("SUCCEEDED", "SKIPPED"))
    impact = (f"{later} The outputs of the {done} step(s) before it are stored; a retry or a skip "
              f"resumes at {f.step!r} without running them again.")
    evidence = [(f.seq, f"attempt {budget[-1].n} of {f.step!r} ended {budget[-1].outcome} "
                        f"({f.error_type}) and the step failed for good")]
    for attempt in reversed(budget[:-1]):
        if attempt.end_seq is not None:
            evidence.append((attempt.end_seq, f"attempt {attempt.n} of {f.step!r} ended "
                                              f"{attempt.outcome} ({attempt.error_type}); {attempt.then}"))
    evidence += _operator_evidence(sheet)
    if sheet.terminal_seq is not None:
        evidence.append((sheet.terminal_seq, "the execution FAILED"))
    return _answer(summary, cause, evidence, impact, actions, confidence)


def _failed_wait(sheet: FactSheet, f: Failure, step: Step) -> dict[str, Any]:
    """Say why a step that runs no handler failed: its wait saw no signal in time (on_timeout fail),
    or its sleep's time could not be read."""
    wait = next(w for w in reversed(sheet.waits) if w.end_seq == f.seq)
    later = (f"Steps after {f.step!r} did not run: {', '.join(f.not_run)}." if f.not_run
             else f"{f.step!r} is the last step.")
    if f.kind == "wait_timed_out":
        summary = f"FAILED at step {f.step!r}: {wait_result(wait)}."
        kept = [s for s in sheet.signals if s.taken_by is None]
        cause = (f"No signal {wait.signal!r} reached the execution while {f.step!r} waited for it "
                 f"(timeout_s={wait.timeout_s:g}), and the wait's on_timeout is fail, so the step failed "
                 "with WaitTimedOut. Nothing in detflow failed: whoever was to send the signal did not, "
                 "or sent it to another execution or under another name."
                 if wait.timeout_s is not None else "")
        if kept:
            cause += (" Signals received and never taken: "
                      + ", ".join(f"{s.name!r} from {s.by or 'an unknown sender'}" for s in kept) + ".")
        confidence = "high"
        actions = [
            ("retry", f"Retry {f.step!r} to wait again (a new timeout from the retry); send the signal "
                      f"{wait.signal!r} once it is decided."),
            ("skip", f"If the decision was made elsewhere, skip {f.step!r} with the output the signal "
                     "would have carried."),
            ("code_change", f"If {wait.timeout_s:g} s is too short for the sender, raise timeout_s, or set "
                            "on_timeout to continue (with a default_output) or skip."
             if wait.timeout_s is not None else "Review the wait's timeout_s and on_timeout."),
        ]
    else:
        summary = f"FAILED at step {f.step!r}: {wait_result(wait)}."
        cause = (f"The sleep step {f.step!r} reads its end time from the input or an earlier output, and "
                 f"that value is not a time it can read (SleepUntilInvalid: {_quote(f.message)}); it "
                 "expects an ISO 8601 time or epoch seconds.")
        confidence = "high"
        actions = [
            ("retry_with_edited_input", f"Retry {f.step!r} with an input holding a valid time."),
            ("skip", f"Skip {f.step!r} if the delay no longer matters."),
            ("code_change", "Fix whatever produces the time the sleep reads."),
        ]
    actions += _compensate_action(sheet)
    done = sum(1 for s in sheet.steps[: f.index] if s.status in ("SUCCEEDED", "SKIPPED"))
    impact = (f"{later} The outputs of the {done} step(s) before it are stored; a retry or a skip "
              f"resumes at {f.step!r} without running them again.")
    evidence = [(f.seq, f"the {wait.kind} of {f.step!r} ended {wait.outcome} and the step failed"),
                (wait.start_seq, f"the {wait.kind} of {f.step!r} started"
                 + (f", waiting for signal {wait.signal!r}" if wait.signal else ""))]
    evidence += _operator_evidence(sheet)
    if sheet.terminal_seq is not None:
        evidence.append((sheet.terminal_seq, "the execution FAILED"))
    return _answer(summary, cause, evidence, impact, actions, confidence)


def _cancelled(sheet: FactSheet) -> dict[str, Any]:
    c = sheet.cancellation
    assert c is not None
    who = c.by or "an operator"
    why = f" ({_quote(c.reason)})" if c.reason else ""
    ran = [s.name for s in sheet.steps if any(a.outcome == "succeeded" for a in s.attempts)]
    when = (f"while {', '.join(c.running)} ran" if c.running
            else f"after {', '.join(ran)} had run" if ran else "before any step ran")
    summary = f"CANCELLED by {who}{why} {when}."
    cause = f"{who} cancelled the execution{why}. A cancel is a decision, not a failure."
    for name, outcome, _ in c.ended_after:
        cause += f" The running attempt of {name!r} ended {outcome} after the cancel."
    if sheet.running:
        cause += f" {', '.join(sheet.running)} had no outcome yet when this was written."
    failed = [(s, a) for s in sheet.steps for a in s.attempts if a.outcome in ("failed", "timed_out", "lost")]
    if failed:
        cause += " Before the cancel: " + "; ".join(
            f"{s.name} #{a.n} {a.outcome} ({a.error_type})" for s, a in failed[-3:]) + "."
    impact = (f"Steps never run: {', '.join(c.not_run)}. " if c.not_run else "") + (
        "Steps that finished keep their outputs; a cancelled execution cannot be resumed.")
    evidence = [(c.seq, f"{who} cancelled the execution{why}")]
    for step in sheet.steps:
        if step.name in c.running and step.attempts and step.attempts[-1].claim_seq is not None:
            evidence.append((step.attempts[-1].claim_seq, f"attempt {step.attempts[-1].n} of "
                                                          f"{step.name!r} had started before the cancel"))
    evidence += [(seq, f"{name!r} ended {outcome} after the cancel") for name, outcome, seq in c.ended_after]
    evidence += [(a.end_seq, f"{s.name!r} attempt {a.n} ended {a.outcome} ({a.error_type})")
                 for s, a in failed[-3:] if a.end_seq is not None]
    actions = [("other", "If the work is still needed, start a new execution: a cancelled one "
                         "cannot be retried."), *_compensate_action(sheet)]
    return _answer(summary, cause, evidence, impact, actions, "high")


def _succeeded(sheet: FactSheet) -> dict[str, Any]:
    took = seconds(sheet.duration_ms)
    slow = [s for s in sheet.steps if s.slow and s.baseline and s.elapsed_ms is not None]
    troubled = [(s, a) for s in sheet.steps for a in s.attempts if a.outcome != "succeeded"]
    evidence = []
    if not slow:
        summary = f"SUCCEEDED in {took}; no step was far above its baseline."
        cause = "Nothing failed for good."
        if troubled:
            cause += " Recovered on the way: " + "; ".join(
                f"{s.name}: {retry_pattern(s)}" for s in {s.name: s for s, _ in troubled}.values()) + "."
        evidence = [(a.end_seq, f"{s.name!r} attempt {a.n} ended {a.outcome} ({a.error_type}); "
                                "a later attempt succeeded")
                    for s, a in troubled[:6] if a.end_seq is not None]
        if sheet.terminal_seq is not None:
            evidence.append((sheet.terminal_seq, "the execution SUCCEEDED"))
        return _answer(summary, cause, evidence + _operator_evidence(sheet), "None: every step succeeded.",
                       [], "high")
    step = max(slow, key=lambda s: (s.elapsed_ms or 0) / max(s.baseline.median_ms if s.baseline else 1, 1))
    b = step.baseline
    assert b is not None and step.elapsed_ms is not None
    ratio = step.elapsed_ms / max(b.median_ms, 1)
    summary = (f"SUCCEEDED in {took}, but step {step.name!r} took {seconds(step.elapsed_ms)}: "
               f"{ratio:.1f}x its median of {seconds(b.median_ms)} (p95 {seconds(b.p95_ms)}) over "
               f"{b.samples} recent successful run(s) of version {sheet.workflow_version}.")
    waited = sum(a.waited_ms or 0 for a in step.attempts)
    lost = [a for a in step.attempts if a.outcome == "lost"]
    handler = next((a.handler_ms for a in reversed(step.attempts) if a.outcome == "succeeded"), None)
    if waited and waited * 2 >= step.elapsed_ms - b.median_ms:
        cause = (f"Most of the extra time was spent between attempts: {retry_pattern(step)}.")
        confidence = "medium"
    elif lost:
        cause = (f"{len(lost)} attempt(s) were lost (their worker stopped) and were recovered only "
                 f"when the lease ran out: {retry_pattern(step)}.")
        confidence = "medium"
    else:
        cause = (f"The handler {step.handler} itself ran long"
                 + (f" ({seconds(handler)} in the attempt that succeeded)" if handler is not None else "")
                 + "; the facts do not show why. Its logs and what it waits on are the place to look.")
        confidence = "low"
    others = [s.name for s in slow if s is not step]
    if others:
        cause += f" Also above their baselines: {', '.join(others)}."
    impact = (f"The execution finished about {seconds(step.elapsed_ms - b.median_ms)} later than "
              "usual; no output is missing.")
    if step.first_seq is not None:
        evidence.append((step.first_seq, f"{step.name!r} was first claimed here"))
    if step.last_seq is not None:
        evidence.append((step.last_seq, f"{step.name!r} succeeded here, {seconds(step.elapsed_ms)} later"))
    evidence += [(a.end_seq, f"attempt {a.n} of {step.name!r} ended {a.outcome}")
                 for a in step.attempts if a.outcome != "succeeded" and a.end_seq is not None]
    actions = [("code_change", f"Look into {step.handler}: what it waited on in this run, and whether "
                               "its input was larger than usual.")]
    return _answer(summary, cause, evidence + _operator_evidence(sheet), impact, actions, confidence)


def _rolled_back(sheet: FactSheet, r: Rollback) -> dict[str, Any]:
    """Say what the rollback undid, what it could not, and what an operator can do about the rest."""
    undone, skipped = r.having("undone"), r.having("skipped")
    failed, unreached = r.having("failed"), r.having("not_reached")
    summary = f"{sheet.status}: rolled back {rollback_cause(r)}"
    summary += ": undone " + (", ".join(
        f"{u.step!r} ({u.handler}, {_attempts(u)})" for u in undone) if undone else "nothing")
    if skipped:
        summary += "; compensation skipped by an operator: " + ", ".join(
            f"{u.step!r} ({u.by or 'an operator'}" + (f": {_quote(u.reason, 80)})" if u.reason else ")")
            for u in skipped)
    for u in failed:
        left = [u.step] + [n.step for n in unreached]
        summary += (f"; the compensation of {u.step!r} ({u.handler}) failed for good: "
                    f"{_short(u.error_type or 'Error')}: {_quote(u.message, 120)}, so "
                    + " and ".join(repr(n) for n in left)
                    + f" {'is' if len(left) == 1 else 'are'} not undone; an operator must retry or skip it")
    summary += "."
    f, c = sheet.failure, sheet.cancellation
    if f is not None and f.step == r.cause_step and f.kind in WAIT_FAILURES:
        wait = next(w for w in reversed(sheet.waits) if w.end_seq == f.seq)
        cause = f"The rollback undoes the failure of {f.step!r}: {wait_result(wait)}."
    elif f is not None and f.step == r.cause_step:
        step = sheet.steps[f.index]
        cause = (f"The rollback undoes the failure of {f.step!r}: {step.handler} raised {f.error_type}: "
                 f"{_quote(f.message)} on attempt {f.attempts_used} of {f.max_attempts}, "
                 + ("a permanent error." if f.kind == "permanent" else
                    "and no attempts were left."))
    elif c is not None:
        cause = (f"The rollback undoes a cancelled execution: {c.by or 'an operator'} cancelled it"
                 + (f" ({_quote(c.reason)})." if c.reason else "."))
    else:
        cause = (f"The rollback undoes {r.cause_step or 'the execution'}: {r.cause_type}: "
                 f"{_quote(r.cause_message)}.")
    if r.by is None:
        cause += (" The workflow's on_failure is compensate, so the rollback started as soon as the step "
                  "failed for good.")
    else:
        cause += (f" {r.by} asked for the rollback" + (f" ({_quote(r.reason)})" if r.reason else "")
                  + " after the execution had ended.")
    cause += " Compensations run newest step first, each after the one before it: " + ", ".join(
        f"{u.step!r} {u.outcome.replace('_', ' ')}" for u in r.compensations) + "."
    for u in failed:
        cause += f" {u.step!r}: {undo_result(u)}; {_why_undo_failed(u)}"
        hint = _hint(u.error_type or "")
        if hint:
            cause += f" {hint}"
    for u in r.compensations:
        if len(u.attempts) > 1:
            cause += f" Attempts of the compensation of {u.step!r}: {retry_pattern(u)}."
    kept = [s.name for s in sheet.steps if s.status in ("SUCCEEDED", "SKIPPED") and s.name not in r.plan]
    never = [s.name for s in sheet.steps if s.status in ("PENDING", "CANCELLED") and not s.attempts]
    if failed:
        impact = ("Not undone: " + ", ".join(
            f"{u.step!r} ({'its compensation failed for good' if u.outcome == 'failed' else 'not reached'})"
            for u in failed + unreached)
                  + ": their effects stay in place until an operator retries or skips the "
                  f"compensation of {failed[0].step!r}; the rollback then goes on.")
        if undone:
            impact += f" Undone: {', '.join(repr(u.step) for u in undone)}."
    else:
        impact = (f"Undone: {', '.join(repr(u.step) for u in undone)}." if undone
                  else "Nothing was undone by detflow.")
        if skipped:
            impact += (" Not undone by detflow (an operator skipped the compensation): "
                       + ", ".join(repr(u.step) for u in skipped) + ".")
        impact += " The execution is final: it cannot be retried or rolled back again."
    if kept:
        impact += f" Steps that ran and have no compensation keep their effects: {', '.join(kept)}."
    if never:
        impact += f" Never run: {', '.join(never)}."
    evidence: list[tuple[int, str]] = []
    if r.seq is not None:
        evidence.append((r.seq, ("the rollback started (on_failure: compensate)" if r.by is None
                                 else f"{r.by} started the rollback") + f"; plan: {', '.join(r.plan)}"))
    if f is not None and f.step == r.cause_step:
        evidence.append((f.seq, f"{f.step!r} failed for good ({f.error_type}): the cause of the rollback"))
    elif c is not None:
        evidence.append((c.seq, f"{c.by or 'an operator'} cancelled the execution"))
    for u in r.compensations:
        if u.seq is None:
            continue
        evidence.append((u.seq, {
            "undone": f"the compensation of {u.step!r} succeeded: {u.step!r} is undone",
            "skipped": f"{u.by or 'an operator'} skipped the compensation of {u.step!r}",
            "failed": f"attempt {u.attempts[-1].n if u.attempts else '?'} of the compensation of "
                      f"{u.step!r} ended {u.attempts[-1].outcome if u.attempts else 'failed'} "
                      f"({u.error_type}) and the compensation failed for good",
        }.get(u.outcome, f"the compensation of {u.step!r} is {u.status}")))
    evidence += _operator_evidence(sheet)
    if sheet.terminal_seq is not None:
        evidence.append((sheet.terminal_seq, "every compensation succeeded or was skipped: the execution "
                         "is COMPENSATED" if sheet.status == "COMPENSATED" else
                         "a compensation failed for good: the execution is COMPENSATION_FAILED"))
    actions: list[tuple[str, str]] = []
    for u in failed:
        rest = [n.step for n in unreached]
        actions += [
            ("retry", f"Once what made the compensation of {u.step!r} fail is fixed, retry it: it runs "
                      f"{u.handler} again with a new budget of {u.max_attempts} attempt(s)"
                      + (f", then the rollback goes on with {', '.join(rest)}." if rest else ".")),
            ("skip", f"If {u.step!r} was undone by hand, skip its compensation (no output): the rollback "
                     "goes on" + (f" with {', '.join(rest)}." if rest else " and ends COMPENSATED.")),
            ("code_change", f"If {u.handler} cannot undo {u.step!r} this way, change it or its retry "
                            f"policy (max_attempts={u.max_attempts})."),
        ]
    if not failed:
        actions.append(("other", "Nothing is left to undo; if the work is still needed, start a new "
                                 "execution."))
        if f is not None and f.step == r.cause_step and _short(f.error_type) in INPUT_OR_BUG:
            actions.append(("code_change", f"{f.error_type} in {f.step!r} usually comes from the input or "
                                           "a bug: fix it so that later executions do not roll back."))
    permanent = all(u.budget and u.budget[-1].permanent for u in failed)
    confidence = "high" if permanent else "medium"
    return _answer(summary, cause, evidence, impact, actions, confidence)


def _attempts(u: Compensation) -> str:
    n = len(u.attempts) + u.attempts_omitted
    return f"{n} attempt{'s' if n != 1 else ''}"


def _why_undo_failed(u: Compensation) -> str:
    last = u.budget[-1] if u.budget else None
    if last is None:
        return "no attempt of it is recorded."
    if last.permanent:
        return ("the error is permanent (a PermanentError, or a type in its non_retryable), so it was "
                "not retried.")
    if last.outcome == "timed_out":
        return f"its last attempt ran past timeout_s={u.timeout_s:g}."
    if last.outcome == "lost":
        return "its last attempt was lost: its worker stopped before recording an outcome."
    return f"every attempt of its budget (max_attempts={u.max_attempts}) failed."


def _compensate_action(sheet: FactSheet) -> list[tuple[str, str]]:
    if not sheet.undoable:
        return []
    return [("compensate", "To undo what the execution did instead of finishing it, compensate it: "
                           f"{', '.join(repr(n) for n in sheet.undoable)} would be undone, newest first.")]


def _operator_evidence(sheet: FactSheet) -> list[tuple[int, str]]:
    evidence = []
    for a in sheet.operator:
        what = f"the compensation of {a.step!r}" if a.action.endswith("_compensation") else repr(a.step)
        verb = "retried" if a.action.startswith("retry") else "skipped"
        evidence.append((a.seq, f"{a.by or 'an operator'} {verb} {what}"
                         + (f" ({_quote(a.reason)})" if a.reason else "")))
    return evidence


def _answer(summary: str, cause: str, evidence: list[tuple[int, str]], impact: str,
            actions: list[tuple[str, str]], confidence: str) -> dict[str, Any]:
    return {"summary": summary, "root_cause": cause,
            "evidence": [{"event_seq": seq, "shows": shows} for seq, shows in evidence],
            "impact": impact,
            "suggested_actions": [{"action": a, "detail": d} for a, d in actions],
            "confidence": confidence}


def _hint(error_type: str) -> str:
    name = _short(error_type)
    if name == "OutputTooLarge":
        return "The handler returned more than DETFLOW_OUTPUT_CAP_BYTES of JSON."
    if name == "OutputNotSerializable":
        return "The handler returned a value that JSON cannot encode."
    if name in INPUT_OR_BUG:
        return f"A {name} usually comes from the input or a bug in the handler, not from an outage."
    if name in OUTAGE:
        return f"A {name} usually means a dependency did not answer."
    return ""


def _short(error_type: str) -> str:
    return error_type.rsplit(".", 1)[-1]


def _quote(text: str | None, limit: int = 200) -> str:
    text = " ".join((text or "").split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "\u2026")


class LLMWriter:
    """Asks an OpenAI-compatible endpoint for a post-mortem in structured output."""

    def __init__(self, model: str, timeout_s: float, api_key: str, base_url: str | None = None) -> None:
        self.model = model
        self.timeout_s = timeout_s
        self._api_key = api_key
        self.base_url = base_url
        self.source = f"llm:{model}"

    @classmethod
    def configured(cls) -> LLMWriter | None:
        """Return the writer ``OPENAI_API_KEY`` (and ``OPENAI_BASE_URL``) configure, or ``None``."""
        key = os.environ.get("OPENAI_API_KEY", "").strip()
        if not key:
            return None
        settings = conf.get()
        return cls(settings.INSIGHTS_MODEL, settings.INSIGHTS_TIMEOUT_S, key,
                   os.environ.get("OPENAI_BASE_URL", "").strip() or None)

    def write(self, prompt: Prompt) -> Any:
        """Return the model's answer, parsed from JSON; raise :class:`WriterFailed` on any failure."""
        client = openai.OpenAI(api_key=self._api_key, base_url=self.base_url,
                               timeout=self.timeout_s, max_retries=0)
        schema = {"type": "json_schema",
                  "json_schema": {"name": "postmortem", "strict": True, "schema": SCHEMA}}
        try:
            with client:
                try:
                    response = self._ask(client, prompt, schema)
                except openai.BadRequestError as exc:
                    if not re.search(r"response_format|json_schema", str(exc), re.IGNORECASE):
                        raise
                    # An endpoint without JSON-schema output: ask for a JSON object; the schema is
                    # in the instructions, and the answer is validated all the same.
                    response = self._ask(client, prompt, {"type": "json_object"})
        except openai.APITimeoutError:
            raise WriterFailed(f"no answer within DETFLOW_INSIGHTS_TIMEOUT_S={self.timeout_s:g} s")
        except openai.APIStatusError as exc:
            raise WriterFailed(f"the endpoint answered HTTP {exc.status_code}: {_reason(exc)}")
        except openai.APIConnectionError as exc:
            raise WriterFailed(f"cannot reach the endpoint: {_reason(exc)}")
        except openai.OpenAIError as exc:
            raise WriterFailed(f"the call failed: {_reason(exc)}")
        return _parse(response)

    def _ask(self, client: Any, prompt: Prompt, response_format: dict[str, Any]) -> Any:
        return client.chat.completions.create(model=self.model, messages=prompt.messages(),
                                              response_format=response_format)


def _parse(response: Any) -> Any:
    try:
        message = response.choices[0].message
    except (AttributeError, IndexError, TypeError):
        raise InvalidAnswer("the answer has no message")
    if getattr(message, "refusal", None):
        raise InvalidAnswer(f"the model refused: {_reason(message.refusal)}")
    content = message.content
    if not isinstance(content, str) or not content.strip():
        raise InvalidAnswer("the answer is empty")
    text = content.strip()
    # Possessive, and one greedy run: a lazy run between two whitespace runs is cubic in the answer.
    fenced = re.fullmatch(r"```(?:json)?+\s*+(.*)```", text, re.DOTALL)
    try:
        return json.loads(fenced[1].rstrip() if fenced else text)
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(f"the answer is not JSON ({exc.msg} at character {exc.pos})")
    except RecursionError:
        raise InvalidAnswer("the answer is nested too deeply")


def _reason(value: Any) -> str:
    text = " ".join(str(getattr(value, "message", None) or value).split())
    return redact.text(text)[:200]
