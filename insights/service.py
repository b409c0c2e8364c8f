"""Post-mortems: read a finished execution, compute its facts, have them written up, store an Insight.

Reads the executions collection (one ``find_one``, and the baseline query) and writes the insights
collection only (DESIGN invariant 8). With ``OPENAI_API_KEY`` set a model writes the post-mortem;
without it, or when the call fails, times out or answers something invalid, the rules write it and
the Insight says why (``fallback``).

The model is spent deliberately: only the automatic writer (:func:`on_finished`) and an explicit
write (:func:`postmortem`: regenerate, the demo) may ask it, each call counted against
``DETFLOW_INSIGHTS_MODEL_CALLS_PER_HOUR`` in Redis; a read (:func:`shown`: the API's GET, the admin)
writes at most a rule-based post-mortem. A write never replaces the post-mortem of a later version
of the execution; any later version replaces it: an execution that finishes again (an operator's
retry, or a rollback of a FAILED or CANCELLED execution that ends COMPENSATED) gets a post-mortem
of its new end.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import redis.exceptions
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from detflow_site import conf, services
from executions import store
from executions.engine import TERMINAL
from executions.errors import ExecutionNotFound
from insights import baseline, fold, prompt, redact
from insights.errors import NotFinished, WriterFailed
from insights.facts import FactSheet
from insights.models import Insight
from insights.postmortem import PostMortem, validate
from insights.writers import LLMWriter, RulesWriter
from workflows import masking

logger = logging.getLogger("detflow.insights")

_TERMINAL = frozenset(s.value for s in TERMINAL)

#: ``fallback.reason`` of a post-mortem the rules wrote on a read although a model is configured;
#: the automatic writer replaces it with the model's when the execution finishes.
ON_READ = ("written when it was read: the model is asked only when an execution finishes or on "
           "regenerate; the rules wrote this")
#: When a post-mortem can be written, as the refusals say.
WRITTEN_ONCE = ("a post-mortem is written once it is SUCCEEDED, FAILED or CANCELLED (or, rolled back, "
                "COMPENSATED or COMPENSATION_FAILED)")
#: ``fallback.reason`` of a post-mortem the rules wrote on a read while the automatic writer was
#: asking the model: the model's replaces it when it answers.
WHILE_WRITING = ("written when it was read, while the model was writing it; the model's replaces this "
                 "when it answers")
#: Redis key an automatic writer holds while it asks the model (its value: the execution version),
#: so that a second writer of the same finish (a duplicate message) does not ask it again.
WRITING_KEY = "detflow:insights:writing:{execution_id}"
#: Redis key counting the model calls of one clock hour (``{window}``: hours since the epoch).
BUDGET_KEY = "detflow:insights:model-calls:{window}"
#: How long a window's counter outlives its hour, in seconds.
BUDGET_TTL_S = 2 * 3600


def collection() -> Collection:
    """Return the insights collection (its indexes: ``manage.py ensure_indexes``)."""
    return Insight._get_collection()


def find(execution_id: str) -> dict[str, Any] | None:
    """Return the stored post-mortem of an execution, or ``None``."""
    return collection().find_one({"execution_id": execution_id})


def postmortem(execution_id: str, regenerate: bool = False) -> dict[str, Any]:
    """Return the post-mortem of a finished execution, writing it first (by the model, within its
    budget) when there is none yet, when the execution changed since it was written, when the rules
    wrote it on a read, or when ``regenerate``."""
    doc = _load(execution_id)
    if doc["status"] not in _TERMINAL:
        raise NotFinished(f"execution {execution_id} is {doc['status']}; {WRITTEN_ONCE}")
    existing = find(execution_id)
    if existing is not None and not regenerate and _current(existing, doc):
        return existing
    return write(doc)


def shown(execution_id: str) -> tuple[dict[str, Any], bool]:
    """Return the post-mortem to show and whether it describes the execution as it is now.

    A finished execution without an up-to-date one gets it written by the rules: a read never asks
    the model. An execution running again (an operator retried it) shows the one of its earlier
    finish, if there is one.
    """
    doc = _load(execution_id)
    existing = find(execution_id)
    if doc["status"] in _TERMINAL:
        if existing is not None and existing["execution_version"] >= doc["version"]:
            return existing, True
        return write(doc, model=False, reason=WHILE_WRITING if _writing(doc) else ON_READ), True
    if existing is None:
        raise NotFinished(f"execution {execution_id} is {doc['status']}; {WRITTEN_ONCE}")
    return existing, False


def on_finished(execution_id: str, settle: bool = True) -> str:
    """Write the post-mortem an execution that just finished needs; return what was done.

    ``settling``: a cancelled execution still has a running attempt (with ``settle``, come back
    later); ``current``: its post-mortem is up to date; ``unremarkable``: it succeeded with every
    step near its baseline and has no post-mortem of an earlier finish to bring up to date.
    """
    doc = store.patiently(lambda: store.load(execution_id))  # an election is waited out
    if doc is None:
        return "gone"
    if doc["status"] not in _TERMINAL:
        return "not finished"
    if settle and any(s.get("status") == "RUNNING" for s in doc["steps"]):
        return "settling"
    existing = find(execution_id)
    if existing is not None and _current(existing, doc):
        return "current"
    sheet, redacted = _sheet(doc)
    if not sheet.notable and (existing is None or existing["execution_version"] >= doc["version"]):
        return "unremarkable"
    claim = _claim(doc)
    if claim is None:
        return "being written"
    try:
        # Read again under the claim: a writer that held it a moment ago may have stored it since.
        existing = find(execution_id)
        if existing is not None and _current(existing, doc):
            return "current"
        _store(doc, sheet, redacted, model=True)
    finally:
        claim()
    return "written"


def write(doc: dict[str, Any], model: bool = True, reason: str = "") -> dict[str, Any]:
    """Write and store the post-mortem of a stored execution document; return the stored record.

    ``model``: a configured model may write it (one call of the hour's budget); otherwise the rules
    do, and a stored post-mortem of the same execution version is kept rather than replaced.
    ``reason``: why the rules wrote it although a model is configured (default :data:`ON_READ`).
    """
    sheet, redacted = _sheet(doc)
    return _store(doc, sheet, redacted, model=model, reason=reason or ON_READ)


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
    redacted = redact.value(masking.execution(doc))
    baselines = baseline.step_baselines(doc["workflow"], doc["workflow_version"], exclude=doc["_id"])
    return fold.compute(redacted, baselines), redacted


def _current(existing: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Whether a stored post-mortem needs no new write by a writer that may ask the model."""
    if existing["execution_version"] < doc["version"]:
        return False
    on_read = (existing.get("fallback") or {}).get("reason") in (ON_READ, WHILE_WRITING)
    return not (on_read and LLMWriter.configured() is not None)


#: Deletes a claim only while it is still the caller's.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def claim_ms() -> int:
    """How long an automatic writer's claim lasts: longer than its model call may take."""
    return round((2 * conf.get().INSIGHTS_TIMEOUT_S + 10) * 1000)


def _claim(doc: dict[str, Any]) -> Callable[[], None] | None:
    """Claim the writing of ``doc``'s post-mortem by the model; return the release, or ``None`` when
    another writer holds the claim. Without a model, or without Redis (whose budget then refuses
    the call), there is nothing to claim."""
    if LLMWriter.configured() is None:
        return lambda: None
    key = WRITING_KEY.format(execution_id=doc["_id"])
    token = f"{doc['version']}:{secrets.token_hex(8)}"
    client = services.redis_client()
    try:
        if not client.set(key, token, nx=True, px=claim_ms()):
            return None
    except redis.exceptions.RedisError:
        return lambda: None

    def release() -> None:
        # Compare and delete at once: a claim that ran out may be another writer's by now. Without
        # Redis it runs out by itself.
        with contextlib.suppress(redis.exceptions.RedisError):
            client.eval(_RELEASE, 1, key, token)
    return release


def _writing(doc: dict[str, Any]) -> bool:
    """Whether an automatic writer is asking the model for ``doc``'s version now."""
    if LLMWriter.configured() is None:
        return False
    try:
        held = services.redis_client().get(WRITING_KEY.format(execution_id=doc["_id"]))
    except redis.exceptions.RedisError:
        return False
    return isinstance(held, bytes) and held.split(b":")[0] == str(doc["version"]).encode()


def _budget_refusal() -> str | None:
    """Count one model call against this hour's budget; return why it may not be made, or ``None``.

    One ``INCR`` in a transaction with its ``EXPIRE``: atomic across processes. Without Redis
    the call is refused: a budget that cannot be counted is not spent.
    """
    limit = conf.get().INSIGHTS_MODEL_CALLS_PER_HOUR
    if limit == 0:
        return "DETFLOW_INSIGHTS_MODEL_CALLS_PER_HOUR is 0: the model is never asked; the rules wrote this"
    key = BUDGET_KEY.format(window=int(time.time() // 3600))
    try:
        with services.redis_client().pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, BUDGET_TTL_S)
            calls = int(pipe.execute()[0])
    except redis.exceptions.RedisError:
        return "the model budget cannot be counted (Redis does not answer); the rules wrote this"
    if calls > limit:
        return f"the model budget of {limit} calls per hour is spent; the rules wrote this"
    return None


def _author(sheet: FactSheet, redacted: dict[str, Any], model_allowed: bool, reason: str = ON_READ
            ) -> tuple[PostMortem, str, dict[str, str]]:
    """Return the validated post-mortem, who wrote it, and why a configured model did not."""
    model = LLMWriter.configured()
    fallback: dict[str, str] = {}
    if model is not None:
        refusal = _budget_refusal() if model_allowed else reason
        if refusal is not None:
            fallback = {"writer": model.source, "reason": refusal}
        else:
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


def _store(doc: dict[str, Any], sheet: FactSheet, redacted: dict[str, Any], model: bool,
           reason: str = ON_READ) -> dict[str, Any]:
    started = time.monotonic()
    answer, source, fallback = _author(sheet, redacted, model, reason)
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
    return _save(record, replace_same=model)


def _save(record: dict[str, Any], replace_same: bool) -> dict[str, Any]:
    """Store ``record`` unless the stored post-mortem is of a later execution version (or, without
    ``replace_same``, of the same one); return the post-mortem that is stored afterwards."""
    version = record["execution_version"]
    query = {"execution_id": record["execution_id"],
             "execution_version": {"$lte" if replace_same else "$lt": version}}
    try:
        collection().replace_one(query, record, upsert=True)
        stored = True
    except DuplicateKeyError:  # one is stored that the guard keeps, or a concurrent writer inserted
        stored = collection().replace_one(query, record).matched_count == 1
    record.pop("_id", None)
    if stored:
        return record
    kept = find(record["execution_id"])
    if kept is None:  # deleted in between: nothing newer to keep
        return _save(record, replace_same)
    logger.info("post-mortem of %s for version %s not stored: the stored one is of version %s",
                record["execution_id"], version, kept["execution_version"])
    kept.pop("_id", None)
    return kept
