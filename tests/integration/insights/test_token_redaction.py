"""detflow's own API tokens and Authorization headers never reach the model a post-mortem is written by."""
from __future__ import annotations

import json
from typing import Any

from executions import roles
from insights import service
from tests.integration.insights.support import FakeModel, failed


def _forms(token: str) -> list[str]:
    """Return the ways a token can appear in a request body: as it is, upper case, JSON-escaped."""
    return [token, token.upper(), json.dumps(token)[1:-1]]


def test_tokens__api_tokens_in_input_logs_and_errors_never_reach_the_model(
    db: None, define: Any, model: FakeModel
) -> None:
    keys = [roles.grant(f"operator-{n}", roles.OPERATORS) for n in range(6)]
    assert len(set(keys)) == 6 and all(len(key) == 40 for key in keys)
    doc = failed(define, handler="insights.says", input={
        "Authorization": f"Token {keys[0]}",
        "headers": {"authorization": f"Bearer {keys[1]}", "Proxy-Authorization": f"token {keys[5]}"},
        "line": f"GET /api/v1/executions/ with Authorization: Token {keys[2]}; retry key {keys[3]}",
        "error": f"the API refused TOKEN {keys[4].upper()} (401)",
    })
    stored = json.dumps(doc, default=str)
    assert all(key in stored.lower() for key in keys)  # the execution holds every one of them
    model.answer = {
        "summary": "The first step was refused.", "root_cause": "The API answered 401.",
        "evidence": [{"event_seq": doc["events"][-1]["seq"], "shows": "the failure"}],
        "impact": "The second step did not run.",
        "suggested_actions": [{"action": "retry_with_edited_input", "detail": "Use a valid token."}],
        "confidence": "medium",
    }

    record = service.postmortem(doc["_id"])
    service.postmortem(doc["_id"], regenerate=True)

    assert record["source"] == "llm:test-model"
    assert len(model.raw) == 2
    sent = [raw.decode() for raw in model.raw]
    sent += [request["path"] + json.dumps(request["headers"]) for request in model.requests]
    leaked = [n for n, key in enumerate(keys) for text in sent for form in _forms(key) if form in text]
    assert leaked == [], f"tokens sent to the model: {sorted(set(leaked))}"
    assert "[REDACTED]" in sent[0]
    shown = json.dumps(service.find(doc["_id"]), default=str)
    assert not [n for n, key in enumerate(keys) if key in shown.lower()]
