"""Post-mortems: read a finished execution, compute its facts, have them written up, store an Insight.

Reads the executions collection (one ``find_one``, and the baseline query) and writes the insights
collection only (DESIGN invariant 8). With ``OPENAI_API_KEY`` set a model writes the post-mortem;
without it, or when the call fails, times out or answers something invalid, the rules write it and
the Insight says why (``fallback``).
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from detflow_site import conf
from executions import store
from executions.engine import TERMINAL
from executions.errors import ExecutionNotFound
from insights import baseline, facts, prompt, redact
from insights.errors import NotFinished, WriterFailed
from insights.facts import FactSheet
from insights.models import Insight
from insights.postmortem import PostMortem, validate
from insights.writers import LLMWriter, RulesWriter

logger = logging.getLogger("detflow.insights")

_TERMINAL = frozenset(s.value for s in TERMINAL)


def collection() -> Collection:
    """Return the insights collection (indexes are ensured on first use)."""
    return Insight._get_collection()


def find(execution_id: str) -> dict[str, Any] | None:
    """Return the stored post-mortem of an execution, or ``None``."""
    return collection().find_one({"execution_id": execution_id})


def postmortem(execution_id: str, regenerate: bool = False) -> dict[str, Any]:
    """Return the post-mortem of a finished execution, writing it first when there is none yet, when
    the execution changed since it was written, or when ``regenerate``."""
    doc = _load(execution_id)
    if doc["status"] not in _TERMINAL:
        raise NotFinished(f"execution {execution_id} is {doc['status']}; a post-mortem is written once "
                          "it is SUCCEEDED, FAILED or CANCELLED")
    existing = find(execution_id)
    if existing is not None and not regenerate and existing["execution_version"] == doc["version"]:
        return existing
    return write(doc)


def shown(execution_id: str) -> tuple[dict[str, Any], bool]:
    """Return the post-mortem to show and whether it describes the execution as it is now.

    A finished execution's is written first if needed (:func:`postmortem`); an execution running
    again (an operator retried it) shows the one of its earlier finish, if there is one.
    """
    doc = _load(execution_id)
    if doc["status"] in _TERMINAL:
        return postmortem(execution_id), True
    existing = find(execution_id)
    if existing is None:
        raise NotFinished(f"execution {execution_id} is {doc['status']}; a post-mortem is written once "
                          "it is SUCCEEDED, FAILED or CANCELLED")
    return existing, False


def on_finished(execution_id: str, settle: bool = True) -> str:
    """Write the post-mortem an execution that just finished needs; return what was done.

    ``settling``: a cancelled execution still has a running attempt (with ``settle``, come back
    later); ``current``: its post-mortem is up to date; ``unremarkable``: it succeeded with every
    step near its baseline and has no earlier post-mortem to bring up to date.
    """
    doc = store.load(execution_id)
    if doc is None:
        return "gone"
    if doc["status"] not in _TERMINAL:
        return "not finished"
    if settle and any(s.get("status") == "RUNNING" for s in doc["steps"]):
        return "settling"
    existing = find(execution_id)
    if existing is not None and existing["execution_version"] == doc["version"]:
        return "current"
    sheet, redacted = _sheet(doc)
    if existing is None and not sheet.notable:
        return "unremarkable"
    _store(doc, sheet, redacted)
    return "written"


def write(doc: dict[str, Any]) -> dict[str, Any]:
    """Write and store the post-mortem of a stored execution document; return the stored record."""
    sheet, redacted = _sheet(doc)
    return _store(doc, sheet, redacted)


def compact(record: dict[str, Any]) -> dict[str, Any]:
    """Return the short form the demo prints: who wrote it, what, why, the evidence, what to do."""
    return {
        "source": record["source"],
        "summary": record["summary"],
        "root_cause": record["root_cause"],
        "evidence": [{"event_seq": e["event_seq"], "shows": e["shows"]} for e in record["evidence"]],
        "suggested_actions": [{"action": a["action"], "detail": a["detail"]}
                              for a in record["suggested_actions"]],
    }


def _load(execution_id: str) -> dict[str, Any]:
    doc = store.load(execution_id) if isinstance(execution_id, str) and execution_id else None
    if doc is None:
        raise ExecutionNotFound(f"execution {execution_id} does not exist")
    return doc


def _sheet(doc: dict[str, Any]) -> tuple[FactSheet, dict[str, Any]]:
    redacted = redact.value(doc)
    baselines = baseline.step_baselines(doc["workflow"], doc["workflow_version"], exclude=doc["_id"])
    return facts.compute(redacted, baselines), redacted


def _author(sheet: FactSheet, redacted: dict[str, Any]) -> tuple[PostMortem, str, dict[str, str]]:
    """Return the validated post-mortem, who wrote it, and why a configured model did not."""
    model = LLMWriter.configured()
    fallback: dict[str, str] = {}
    if model is not None:
        try:
            text = prompt.build(sheet, redacted, conf.get().INSIGHTS_PROMPT_CHARS)
            answer = validate(model.write(text), sheet.event_seqs, sheet.status)
            return answer, model.source, fallback
        except WriterFailed as exc:
            fallback = {"writer": model.source, "reason": str(exc)}
            logger.warning("post-mortem of %s: %s failed (%s); the rules write it",
                           sheet.execution_id, model.source, exc)
    rules = RulesWriter()
    return validate(rules.write(sheet), sheet.event_seqs, sheet.status), rules.source, fallback


def _store(doc: dict[str, Any], sheet: FactSheet, redacted: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    answer, source, fallback = _author(sheet, redacted)
    record = {
        "execution_id": doc["_id"],
        "workflow": doc["workflow"],
        "workflow_version": doc["workflow_version"],
        "execution_status": doc["status"],
        "execution_version": doc["version"],
        "source": source,
        **answer.as_dict(),
        "fallback": fallback,
        "facts": sheet.as_dict(),
        "created_at": dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0),
        "took_ms": round((time.monotonic() - started) * 1000),
    }
    try:
        collection().replace_one({"execution_id": doc["_id"]}, record, upsert=True)
    except DuplicateKeyError:  # two writers upserted at once; the other inserted: replace its record
        collection().replace_one({"execution_id": doc["_id"]}, record)
    record.pop("_id", None)
    return record
