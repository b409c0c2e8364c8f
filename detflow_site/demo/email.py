"""The e-mail demo: messages through the ``email`` workflow to a real SMTP server on 127.0.0.1, with
the server down for a few seconds mid-run (the sends retry), a delivery report for each message
once the server holds it, one bounce, one report that never comes (the wait times out and goes on
with its default) and one message that waits for an approval; then the server's mailbox is checked.

``manage.py demo --workflow email`` is a thin wrapper over :func:`run`, which tests call directly.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from django.conf import settings as django_settings
from django.test.utils import override_settings

from detflow_site import services
from detflow_site.demo.run import DEMO_SETTINGS, DemoError, quiet_logs
from detflow_site.demo.smtp import SmtpServer
from executions import audit, operations, store
from executions.engine import TERMINAL
from workflows import definitions
from workflows import email as workflow

#: Most messages one run takes.
MAX_MESSAGES = 1000
#: Seconds the SMTP server stays down mid-run.
OUTAGE_S = 2.0
#: The demo's own definitions: the built-in steps, with waits short enough for a demo (the engine
#: reads a wait's timeout from the definition, not the input).
DEMO = "email-demo"
DEMO_APPROVED = "email-demo-approved"
DELIVERY_TIMEOUT_S = 5.0
APPROVAL_TIMEOUT_S = 60.0
#: The body every message is rendered from (data: ``$name`` placeholders, nothing evaluated).
TEMPLATE = "Hello $name,\n\nyour order $order ships today.\n\n-- detflow\n"
BOUNCE = {"status": "bounced", "reason": "550 5.1.1 mailbox unavailable"}
DELIVERED = {"status": "delivered"}


@dataclass(frozen=True)
class Plan:
    """Which message meets which trouble (by position, no randomness)."""

    messages: list[str]
    #: Started before the outage (the rest start while the server is down).
    early: list[str]
    bounced: str
    silent: str
    approved: str

    @classmethod
    def of(cls, count: int) -> Plan:
        if not 5 <= count <= MAX_MESSAGES:
            raise DemoError(f"--messages must be 5 to {MAX_MESSAGES}, got {count}")
        messages = [f"message-{n:04d}" for n in range(1, count + 1)]
        return cls(messages=messages, early=messages[:max(2, count // 4)], approved=messages[0],
                   bounced=messages[2], silent=messages[3])

    def expected(self, message: str) -> str:
        return {self.bounced: "bounced", self.silent: "unknown"}.get(message, "delivered")

    def report(self, message: str) -> dict[str, Any] | None:
        """The delivery report the demo signals once the server holds the message (``None``: none)."""
        return {self.bounced: BOUNCE, self.silent: None}.get(message, DELIVERED)


def run(out: TextIO, messages: int = 50, threads: int = 4, as_json: bool = False,
        timeout_s: float = 120.0) -> dict[str, Any]:
    """Run the e-mail demo and print its table (or only the JSON summary); return the summary."""
    if threads < 1:
        raise DemoError("--threads must be at least 1")
    plan = Plan.of(messages)
    server = SmtpServer()
    server.start()
    try:
        summary = _run(out, plan, server, threads, as_json, timeout_s)
    finally:
        server.stop()
    out.write(json.dumps(summary, indent=2) + "\n" if as_json else "\n".join(table(summary)) + "\n")
    return summary


def _run(out: TextIO, plan: Plan, server: SmtpServer, threads: int, as_json: bool,
         timeout_s: float) -> dict[str, Any]:
    from executions.workers import WorkerPool

    ids: dict[str, str] = {}
    reported: set[str] = set()
    approval: dict[str, Any] = {}
    with quiet_logs(), override_settings(DETFLOW={**django_settings.DETFLOW, **DEMO_SETTINGS,
                                                  "SMTP_URL": server.url}):
        plain, _ = ensure_demo()
        if not as_json:
            out.write(_header(plan, plain.version, server.url))
        pool = WorkerPool(threads=threads).start()
        restart = threading.Timer(OUTAGE_S, server.start)
        try:
            for message in plan.early:
                ids[message] = _start(plan, message)
            # All but the approval's message (it waits) are in before the server goes down.
            _wait(lambda: len(server.mailbox) >= len(plan.early) - 1, timeout_s, "the first messages")
            server.stop()  # the rest start while the server refuses connections: their sends retry
            restart.start()  # meanwhile the reports of the messages held go on
            for message in plan.messages:
                if message not in ids:
                    ids[message] = _start(plan, message)
            deadline = time.monotonic() + timeout_s
            shown = -1
            while True:
                _report(plan, server, ids, reported)
                if not approval and _waiting(ids[plan.approved], "approval"):
                    approval = _approve(ids[plan.approved], server)
                docs = {d["_id"]: d for d in store.collection().find({"_id": {"$in": list(ids.values())}})}
                done = sum(1 for d in docs.values() if d["status"] in TERMINAL and not d.get("due_at"))
                if not as_json and done != shown:
                    out.write(f"  {done}/{len(ids)} messages finished, {len(server.mailbox)} in the "
                              "mailbox\n")
                    out.flush()
                    shown = done
                if done == len(ids):
                    break
                if time.monotonic() > deadline:
                    raise DemoError(f"messages still running after {timeout_s:g} s; is another worker "
                                    "consuming the same queue?")
                time.sleep(0.05)
        finally:
            restart.cancel()
            if restart.is_alive():
                restart.join()
            pool.stop()
        loaded = {message: store.load(ids[message]) for message in plan.messages}
    summary = summarize(plan, loaded, server, approval)
    summary["smtp"] = server.url
    return summary


def ensure_demo() -> tuple[Any, Any]:
    """Register the demo's definitions (the built-in steps with short waits); return them."""
    plain = workflow.definition(DEMO, delivery_timeout_s=DELIVERY_TIMEOUT_S)
    approved = workflow.definition(DEMO_APPROVED, approval=True, delivery_timeout_s=DELIVERY_TIMEOUT_S,
                                   approval_timeout_s=APPROVAL_TIMEOUT_S)
    return definitions.register(plain)[0], definitions.register(approved)[0]


def _start(plan: Plan, message: str) -> str:
    n = int(message.rsplit("-", 1)[1])
    data = {"to": f"user{n}@example.com", "subject": "Order $order ships today", "template": TEMPLATE,
            "vars": {"name": f"User {n}", "order": f"A-{n:04d}"}}
    name = DEMO_APPROVED if message == plan.approved else DEMO
    doc, _ = operations.start(name, data, idempotency_key=message, by="demo")
    return str(doc["_id"])


def mid_of(execution_id: str) -> str:
    """The Message-ID the execution's send step sends under."""
    return workflow.message_id(f"{execution_id}:send")


def _report(plan: Plan, server: SmtpServer, ids: dict[str, str], reported: set[str]) -> None:
    """Signal the delivery report of each message the server holds now, once."""
    for message, execution_id in ids.items():
        if message in reported or server.mailbox.get(mid_of(execution_id)) is None:
            continue
        reported.add(message)
        payload = plan.report(message)
        if payload is not None:
            operations.signal(execution_id, "delivery", payload, by="demo", reason="delivery report",
                              idempotency_key=f"report:{message}")


def _waiting(execution_id: str, step_name: str) -> bool:
    doc = store.load(execution_id) or {"steps": []}
    return any(s["name"] == step_name and s["status"] == "WAITING" for s in doc["steps"])


def _approve(execution_id: str, server: SmtpServer) -> dict[str, Any]:
    """Approve the message that waits for it; note whether the server held it before."""
    held_before = server.mailbox.get(mid_of(execution_id)) is not None
    at = time.time()
    operations.signal(execution_id, "approved", {"approved": True}, by="demo", reason="one approval")
    return {"held_before": held_before, "at": at}


def _wait(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise DemoError(f"waited {timeout_s:g} s for {what}; is another worker consuming the same queue?")
        time.sleep(0.05)


def _output(doc: dict[str, Any], step_name: str) -> Any:
    step = next(s for s in doc["steps"] if s["name"] == step_name)
    return json.loads(step["output_json"]) if step.get("output_json") else None


def summarize(
    plan: Plan, docs: dict[str, Any], server: SmtpServer, approval: dict[str, Any],
) -> dict[str, Any]:
    """Return the machine-readable summary, with the demo's checks."""
    rows = []
    for message in plan.messages:
        doc = docs[message]
        mid = mid_of(doc["_id"])
        record = _output(doc, "record") or {}
        rows.append({
            "message": message, "id": doc["_id"], "workflow": doc["workflow"], "status": doc["status"],
            "steps": {s["name"]: {"status": s["status"], "attempts": s["attempt"]} for s in doc["steps"]},
            "message_id": mid, "result": record.get("result"), "expected": plan.expected(message),
            "in_mailbox": server.mailbox.get(mid) is not None, "handed": server.mailbox.handed(mid),
        })
    return {"workflow": workflow.EMAIL, "messages": rows, "store": services.store_description(),
            "redis": services.redis_description(),
            "mailbox": {"held": len(server.mailbox), "handed": sum(r["handed"] for r in rows)},
            "checks": checks(plan, docs, rows, server, approval)}


def checks(plan: Plan, docs: dict[str, Any], rows: list[dict[str, Any]], server: SmtpServer,
           approval: dict[str, Any]) -> list[dict[str, Any]]:
    """Check the outcome against the plan and the SMTP server's mailbox; ``{"ok", "check"}`` items."""
    found: list[dict[str, Any]] = []

    def check(ok: bool, text: str) -> None:
        found.append({"ok": bool(ok), "check": text})

    by = {r["message"]: r for r in rows}
    ended = [r for r in rows if r["status"] == "SUCCEEDED" and r["result"] == r["expected"]]
    check(len(ended) == len(rows), f"{len(ended)} of {len(rows)} messages SUCCEEDED and recorded as planned: "
          f"{len(rows) - 2} delivered, 1 bounced, 1 unknown")
    once = [r for r in rows if r["in_mailbox"]]
    handed = sum(r["handed"] for r in rows)
    ours = {r["message_id"] for r in rows}
    stray = [h.message_id for h in server.mailbox.held() if h.message_id not in ours]
    check(len(once) == len(rows) and len(server.mailbox) == len(rows) and not stray,
          f"the SMTP server's mailbox holds each of the {len(rows)} messages exactly once by Message-ID "
          f"({len(server.mailbox)} held; {handed} handed over, {handed - len(server.mailbox)} duplicate(s) "
          "dropped)")
    bounced = by[plan.bounced]
    check(bounced["result"] == "bounced" and _output(docs[plan.bounced], "delivery") == BOUNCE,
          f"{plan.bounced}: its delivery report said bounced, and it is recorded bounced")
    silent = docs[plan.silent]
    timed_out = [e for e in silent["events"] if e["type"] == "wait_ended" and e["step"] == "delivery"
                 and e["outcome"] == "timed_out"]
    check(bool(timed_out) and _output(silent, "delivery") == workflow.UNKNOWN
          and by[plan.silent]["result"] == "unknown",
          f"{plan.silent}: no report came; its wait timed out after {DELIVERY_TIMEOUT_S:g} s and continued "
          f"with {json.dumps(workflow.UNKNOWN)}, recorded unknown")
    approved = docs[plan.approved]
    held = server.mailbox.get(by[plan.approved]["message_id"])
    kinds = [(e["type"], e.get("step"), e.get("name")) for e in approved["events"]]
    signalled = kinds.index(("signal_received", None, "approved")) if ("signal_received", None,
                                                                      "approved") in kinds else len(kinds)
    claimed = next((i for i, k in enumerate(kinds) if k[:2] == ("step_claimed", "send")), -1)
    check(bool(approval) and not approval["held_before"] and held is not None and held.at > approval["at"]
          and signalled < claimed, f"{plan.approved}: waited for its approval; sent only after the signal "
          "'approved' (not in the mailbox before it, the send claimed after it)")
    retried = [r for r in rows if r["steps"]["send"]["attempts"] > 1]
    check(len(retried) >= 1 and all(r["in_mailbox"] for r in retried),
          f"the SMTP server was down {OUTAGE_S:g} s: {len(retried)} send(s) were refused a connection and "
          "retried through, each message held once")
    divergent = [r["message"] for r in rows if audit.verify(docs[r["message"]])]
    check(not divergent, f"every history replays through the engine ({len(rows)} executions, "
          f"{len(divergent)} divergent)")
    return found


def _header(plan: Plan, version: int, url: str) -> str:
    return "\n".join([
        f"detflow demo: {len(plan.messages)} messages through {workflow.EMAIL} v{version} "
        "(render -> send -> wait for the delivery report -> record)",
        f"  store: {services.store_description()}",
        f"  redis: {services.redis_description()}",
        f"  SMTP server: {url} (aiosmtpd in this process; it drops a Message-ID it holds already)",
        f"  injected: the SMTP server stops for {OUTAGE_S:g} s after the first {len(plan.early)} messages",
        f"  injected: {plan.bounced} bounces; {plan.silent}'s report never comes (its wait times out after "
        f"{DELIVERY_TIMEOUT_S:g} s)",
        f"  {plan.approved} waits for the signal 'approved' before it is sent",
    ]) + "\n\n"


def table(summary: dict[str, Any]) -> list[str]:
    """Return the summary as lines: a row per message, then the checks."""
    lines = [f"  {'message':<13} {'status':<10} {'result':<10} {'attempts of each step':<46} Message-ID"]
    for row in summary["messages"]:
        steps = " ".join(f"{name}:{s['attempts']}" for name, s in row["steps"].items())
        lines.append(f"  {row['message']:<13} {row['status']:<10} {row['result'] or '-':<10} {steps:<46} "
                     f"{row['message_id']}")
    lines.append("")
    for item in summary["checks"]:
        lines.append(f"  [{'ok' if item['ok'] else 'FAILED'}] {item['check']}")
    return lines
