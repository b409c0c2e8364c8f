"""How a stored post-mortem is shown: the API's body, and lines of plain text for a terminal."""
from __future__ import annotations

from typing import Any

#: Where an operator takes each suggested action (the API; the admin has the same buttons).
HOW = {
    "retry": "POST /api/v1/executions/{id}/retry/",
    "retry_with_edited_input": "POST /api/v1/executions/{id}/retry/ with an \"input\"",
    "skip": "POST /api/v1/executions/{id}/skip/ with an \"output\"",
    "cancel": "POST /api/v1/executions/{id}/cancel/",
    "compensate": "POST /api/v1/executions/{id}/compensate/",
}
#: The same on a COMPENSATION_FAILED execution: a retry or a skip acts on its failed compensation.
HOW_COMPENSATION = {
    "retry": "POST /api/v1/executions/{id}/retry/ (the failed compensation)",
    "skip": "POST /api/v1/executions/{id}/skip/ without an \"output\" (the failed compensation)",
}


def represent(record: dict[str, Any], current: bool) -> dict[str, Any]:
    """Return a stored post-mortem as the API shows it; ``current``: the execution has not changed
    since it was written."""
    execution_id = record["execution_id"]
    how = {**HOW, **HOW_COMPENSATION} if record["execution_status"] == "COMPENSATION_FAILED" else HOW
    return {
        "execution_id": execution_id,
        "workflow": record["workflow"],
        "workflow_version": record["workflow_version"],
        "execution_status": record["execution_status"],
        "execution_version": record["execution_version"],
        "current": current,
        "source": record["source"],
        "summary": record["summary"],
        "root_cause": record["root_cause"],
        "evidence": [{"event_seq": e["event_seq"], "shows": e["shows"]} for e in record["evidence"]],
        "impact": record["impact"],
        "suggested_actions": [
            {"action": a["action"], "detail": a["detail"],
             "how": how[a["action"]].format(id=execution_id) if a["action"] in how else None}
            for a in record["suggested_actions"]
        ],
        "confidence": record["confidence"],
        "dropped_evidence": list(record.get("dropped_evidence") or []),
        "fallback": record.get("fallback") or None,
        "facts": record.get("facts") or {},
        "created_at": record["created_at"],
        "took_ms": record.get("took_ms"),
    }


def lines(data: dict[str, Any]) -> list[str]:
    """Return a represented post-mortem as plain-text lines."""
    head = (f"post-mortem of {data['execution_id']} ({data['workflow']} v{data['workflow_version']}, "
            f"{data['execution_status']}), written by {data['source']}")
    out = [head]
    if data.get("fallback"):
        out.append(f"  ({data['fallback']['writer']} was not used: {data['fallback']['reason']})")
    if not data["current"]:
        out.append("  (the execution changed since; this describes it as it was)")
    out += ["", f"summary: {data['summary']}", f"root cause: {data['root_cause']}",
            f"impact: {data['impact']}", f"confidence: {data['confidence']}", "", "evidence:"]
    out += [f"  event {e['event_seq']}: {e['shows']}" for e in data["evidence"]] or ["  none"]
    out += ["", "suggested actions:"]
    out += [f"  {a['action'].replace('_', ' ')}: {a['detail']}" + (f"  [{a['how']}]" if a["how"] else "")
            for a in data["suggested_actions"]] or ["  none"]
    return out
