"""The diagnosis' repair in the admin's own terms: the button of the page to press, not the API call.

``executions.diagnosis`` speaks to every client, so its repair names API calls
(``POST executions/<id>/retry/``). An execution's page in the admin has a button for each of those
calls; this says which one, by the label the page gives it, and leaves the API's text as it is.
"""
from __future__ import annotations

import re
from typing import Any

from executions.engine import ExecutionStatus

#: An API call in a repair's text, with the parenthesis around it when it has one.
_EXECUTION_CALL = re.compile(
    r"\(?POST executions/[^/\s]+/(?P<action>[a-z]+)/(?:[^/\s)]+/)?(?P<rest>[^)]*)\)?")
_WORKFLOW_CALL = re.compile(r"\(?POST workflows/[^/\s]+/(?P<action>[a-z]+)/\)?")


def text(repair: dict[str, Any], doc: dict[str, Any], buttons: list[tuple[str, str]], can_act: bool) -> str:
    """Return ``repair`` (a diagnosis' ``repair``) said as the admin page of ``doc`` does it:
    ``buttons`` are the page's actions (name, label); a viewer is told what an operator presses."""
    labels = dict(buttons)
    press = "press" if can_act else "an operator presses"
    detail = str(repair.get("detail") or "")
    if repair.get("action") == "operator":
        paused = doc.get("paused") or {}
        if paused and doc["status"] not in (ExecutionStatus.FAILED, ExecutionStatus.COMPENSATION_FAILED):
            how = []
            if "execution" in paused and "resume" in labels:
                how.append(f"{press} “{labels['resume']}” above")
            if "workflow" in paused:
                then = "then " if how else ""
                how.append(f"{then}resume its workflow: “Resume” on the workflow's page")
            if how:
                return " and ".join(how)
        if doc["status"] == ExecutionStatus.FAILED and "retry" in labels:
            found = (f"{press} “{labels['retry']}” above (its form holds the failed step's input: edit it "
                     "to retry with another)")
            if "skip" in labels:
                found += f" or “{labels['skip']}” (with the output the next steps read)"
            if "compensate" in labels:
                found += f", or “{labels['compensate']}” to undo the steps it completed instead"
            return found
        if doc["status"] == ExecutionStatus.COMPENSATION_FAILED and "retry" in labels:
            found = f"{press} “{labels['retry']}” above (a new attempt budget, the same input)"
            if "skip" in labels:
                found += f" or, once the step is undone by other means, “{labels['skip']}”"
            return found + "; then the rollback goes on"
    return _buttons_for_calls(detail, labels, press)


def _buttons_for_calls(detail: str, labels: dict[str, str], press: str) -> str:
    """Return ``detail`` with each API call it names replaced by the page's button for it."""

    def execution_call(match: re.Match[str]) -> str:
        action = match.group("action")
        signal = action == "signals"
        label = labels.get("signal" if signal else action)
        if label is None:
            return f"(the {action} action)"
        if signal:  # the API's text names the admin's button after the call
            return f"({press} “{label}” above)" if can_act else "(an operator sends it from this page)"
        return f"({press} “{label}” above{match.group('rest').rstrip()})"

    def workflow_call(match: re.Match[str]) -> str:
        return f"(“{match.group('action').capitalize()}” on the workflow's page)"

    can_act = press == "press"
    found = _EXECUTION_CALL.sub(execution_call, detail)
    found = _WORKFLOW_CALL.sub(workflow_call, found)
    return found.replace("(on its page in the admin) ", "").replace(" on its page in the admin", "")
