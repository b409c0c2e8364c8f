"""The payments demo: orders through the ``payments`` workflow against a real payment gateway on
127.0.0.1, with declines after the charge (rolled back: refund, then release), a gateway outage, lost
answers, a planned refund refusal (COMPENSATION_FAILED, left to an operator) and a worker crash inside
a compensation; then the gateway's own ledger is checked.

``manage.py demo --workflow payments`` is a thin wrapper over :func:`run`, which tests call directly.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from django.conf import settings as django_settings
from django.test.utils import override_settings

from detflow_site import services
from detflow_site.chaos import checker
from detflow_site.demo import balance
from detflow_site.demo.gateway import Gateway
from detflow_site.demo.ledger import Faults
from detflow_site.demo.run import DEMO_SETTINGS, DemoError, quiet_logs
from executions import audit, diagnosis, faults, operations, store
from executions.engine import TERMINAL
from workflows.builtin import ensure_payments
from workflows.payments import PAYMENTS

#: Most orders one run takes.
MAX_ORDERS = 2000
#: Requests the gateway outage answers 503, in a row.
OUTAGE_REQUESTS = 3


@dataclass(frozen=True)
class Plan:
    """Which orders meet which trouble (deterministic: by position, no randomness)."""

    orders: list[str]
    declined: set[str]
    refused: set[str]
    #: The declined order whose worker crashes in its refund, after the gateway applied it.
    crash: str
    fail_first: dict[str, set[str]]
    lose_first: dict[str, set[str]]

    @classmethod
    def of(cls, count: int) -> Plan:
        if not 5 <= count <= MAX_ORDERS:
            raise DemoError(f"--orders must be 5 to {MAX_ORDERS}, got {count}")
        orders = [f"order-{n:04d}" for n in range(1, count + 1)]
        declined = orders[4::5]  # every fifth order's capture is declined, after the charge went through
        refused = {declined[-1]} if len(declined) > 1 else set()
        others = [o for o in orders if o not in declined]
        return cls(orders=orders, declined=set(declined), refused=refused, crash=declined[0],
                   fail_first={"charge": set(others[2::7])},
                   lose_first={"reserve": {others[1]}, "refund": set(declined[1:2]) - refused})

    def expected(self, order: str) -> str:
        if order in self.refused:
            return "COMPENSATION_FAILED"
        return "COMPENSATED" if order in self.declined else "SUCCEEDED"

    def faults(self) -> Faults:
        return Faults(declines=set(self.declined), refund_refusals=set(self.refused),
                      fail_first=self.fail_first, lose_first=self.lose_first)


def run(
    out: TextIO, orders: int = 20, threads: int = 4, as_json: bool = False, timeout_s: float = 300.0,
    explain: Callable[[str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the payments demo and print its table (or only the JSON summary); return the summary."""
    if threads < 1:
        raise DemoError("--threads must be at least 1")
    plan = Plan.of(orders)
    ids: dict[str, str] = {}
    gateway = Gateway(plan.faults(), seed=7)
    url = gateway.start()
    try:
        summary = _run(out, plan, gateway, url, ids, threads, as_json, timeout_s, explain)
    finally:
        gateway.stop()
    out.write(json.dumps(summary, indent=2) + "\n" if as_json else "\n".join(table(summary)) + "\n")
    return summary


def _run(
    out: TextIO, plan: Plan, gateway: Gateway, url: str, ids: dict[str, str], threads: int,
    as_json: bool, timeout_s: float, explain: Callable[[str], dict[str, Any]] | None,
) -> dict[str, Any]:
    from executions.workers import WorkerPool

    def requests() -> int:
        return sum(gateway.ledger.to_json()["requests"].values())

    with quiet_logs():
        overrides = {**django_settings.DETFLOW, **DEMO_SETTINGS, "PAYMENTS_URL": url}
        with override_settings(DETFLOW=overrides):
            definition = ensure_payments()
            if not as_json:
                out.write(_header(plan, definition.version, url))
            faults.install_seam()  # before the workers start: every message runs on the watched names
            # The crash first, alone: its count of handler runs (reserve, charge, the declined
            # capture, then the refund) is not disturbed by the outage.
            ids[plan.crash] = _start(plan.crash)
            faults.arm("handled", execution_id=ids[plan.crash], skip=3)
            pool = WorkerPool(threads=threads).start()
            try:
                _wait(lambda: bool(faults.fired), timeout_s, "the worker crash inside the refund")
                received = requests()
                gateway.outage(requests=OUTAGE_REQUESTS)
                for order in plan.orders:
                    if order != plan.crash:
                        ids[order] = _start(order)
                _wait(lambda: requests() >= received + OUTAGE_REQUESTS, timeout_s, "the outage")
                docs = _watch(out, plan, ids, timeout_s, quiet=as_json)
                ledger = gateway.ledger.to_json()
                summary = summarize(plan, ids, docs, ledger, explain)
            finally:
                pool.stop()
                faults.disarm()
    summary["gateway"] = url
    return summary


def _start(order: str) -> str:
    amount = 1000 + sum(map(ord, order)) % 9000
    doc, _ = operations.start(PAYMENTS, {"order_id": order, "amount_cents": amount},
                              idempotency_key=order, by="demo")
    return str(doc["_id"])


def _wait(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise DemoError(f"waited {timeout_s:g} s for {what}; is another worker consuming the same queue?")
        time.sleep(0.05)


def _watch(out: TextIO, plan: Plan, ids: dict[str, str], timeout_s: float, quiet: bool) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    shown = -1
    while True:
        found = {d["_id"]: d for d in store.collection().find({"_id": {"$in": list(ids.values())}})}
        done = sum(1 for d in found.values() if d["status"] in TERMINAL and not d.get("due_at"))
        if not quiet and done != shown:
            out.write(f"  {done}/{len(ids)} orders finished\n")
            out.flush()
            shown = done
        if done == len(ids):
            return {order: store.load(ids[order]) for order in plan.orders}
        if time.monotonic() > deadline:
            raise DemoError(f"orders still running after {timeout_s:g} s; is another worker consuming the "
                            "same queue?")
        time.sleep(0.1)


def summarize(
    plan: Plan, ids: dict[str, str], docs: dict[str, Any], ledger: dict[str, Any],
    explain: Callable[[str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return the machine-readable summary, with the demo's checks."""
    states = balance.orders(ledger)
    rows = []
    for order in plan.orders:
        doc = docs[order]
        row = {
            "order": order, "id": doc["_id"], "status": doc["status"], "expected": plan.expected(order),
            "steps": {s["name"]: {"status": s["status"], "attempts": s["attempt"]} for s in doc["steps"]},
            "compensations": [{"step": c["name"], "status": c["status"], "attempts": c["attempt"]}
                              for c in doc.get("compensations") or []],
            "ledger": states.get(order, {}).get("state"),
            "lost_attempts": sum(1 for e in doc["events"] if e["type"].endswith("attempt_lost")),
        }
        if doc["status"] == "COMPENSATION_FAILED":
            repair = diagnosis.diagnose(doc["_id"]).repair or {}
            row["operator_action"] = repair.get("detail") if repair.get("action") == "operator" else None
        if explain is not None and doc["status"] != "SUCCEEDED":
            row["postmortem"] = explain(doc["_id"])
        rows.append(row)
    return {"workflow": PAYMENTS, "orders": rows, "store": services.store_description(),
            "redis": services.redis_description(), "ledger": _ledger_summary(ledger),
            "checks": checks(plan, ids, docs, rows, ledger)}


def checks(
    plan: Plan, ids: dict[str, str], docs: dict[str, Any], rows: list[dict[str, Any]],
    ledger: dict[str, Any],
) -> list[dict[str, Any]]:
    """Check the outcome against the plan and the gateway's own ledger; ``{"ok", "check"}`` items."""
    found: list[dict[str, Any]] = []

    def check(ok: bool, text: str) -> None:
        found.append({"ok": bool(ok), "check": text})

    ended = [r for r in rows if r["status"] == r["expected"]]
    counts = {s: sum(1 for r in rows if r["expected"] == s)
              for s in ("SUCCEEDED", "COMPENSATED", "COMPENSATION_FAILED")}
    check(len(ended) == len(rows), f"{len(ended)} of {len(rows)} orders ended as planned: "
          f"{counts['SUCCEEDED']} SUCCEEDED, {counts['COMPENSATED']} COMPENSATED (declined after the "
          f"charge: refunded, then released), {counts['COMPENSATION_FAILED']} COMPENSATION_FAILED (a "
          "planned refund refusal)")
    results = balance.check(ledger, excused=plan.refused)
    bad = list(balance.failed(results))
    check(not bad, "the gateway's ledger balances: every charge captured or refunded, every reservation "
          "captured or released, no effect applied twice" + (f"; failed: {', '.join(bad)}" if bad else "")
          + (f" (excused: the refused refund of {', '.join(sorted(plan.refused))})" if plan.refused else ""))
    agree = {"SUCCEEDED": "completed", "COMPENSATED": "rolled_back", "COMPENSATION_FAILED": "unbalanced"}
    matching = [r for r in rows if agree.get(r["status"]) == r["ledger"]]
    check(len(matching) == len(rows), f"{len(matching)} of {len(rows)} orders: the gateway's record agrees "
          "with the execution (completed, rolled back, or held for an operator)")
    undone = sorted(plan.declined - plan.refused)
    ordered = [o for o in undone if _undone_newest_first(docs[o])]
    held = [o for o in plan.refused if not any(e["type"] == "compensation_claimed" and e["step"] == "reserve"
                                               for e in docs[o]["events"])]
    check(len(ordered) == len(undone) and len(held) == len(plan.refused),
          f"{len(ordered)} of {len(undone)} rolled-back orders were undone newest step first (the refund "
          "before the release), each compensation committed once; the release of the order whose refund "
          "was refused never started")
    key = f"{ids[plan.crash]}:charge:compensate"
    crash = ledger["keys"].get(key, {})
    crashed_row = next(r for r in rows if r["order"] == plan.crash)
    check(crash.get("requests", 0) >= 2 and crash.get("effects") == 1 and crashed_row["lost_attempts"] >= 1
          and crashed_row["status"] == "COMPENSATED",
          f"{plan.crash}: the worker crashed inside its refund after the gateway applied it; the refund "
          f"ran again under the same key ({crash.get('requests', 0)} requests, {crash.get('effects', 0)} "
          "applied) and the rollback finished")
    lost = [k for k, v in ledger["keys"].items() if v["requests"] >= 2 and v["effects"] == 1]
    check(len(lost) >= 1 + len(plan.lose_first.get("reserve", ())),
          f"{len(lost)} request(s) sent again under their key after a lost answer or a crash, each "
          "applied once")
    retried = [r for r in rows if any(s["attempts"] > 1 for s in r["steps"].values())]
    check(len(retried) >= 1 and all(r["status"] == r["expected"] for r in retried),
          f"the gateway outage ({OUTAGE_REQUESTS} requests answered 503) and the first-request failures "
          f"were retried through: {len(retried)} order(s) needed a second attempt of a step")
    offered = [r for r in rows if r["status"] == "COMPENSATION_FAILED" and r.get("operator_action")]
    check(len(offered) == len(plan.refused), f"{len(offered)} of {len(plan.refused)} COMPENSATION_FAILED "
          "order(s) offer an operator action (retry the compensation, or skip it once refunded by hand)")
    divergent = [r["order"] for r in rows if audit.verify(docs[r["order"]])]
    check(not divergent, f"every history replays through the engine ({len(rows)} executions, "
          f"{len(divergent)} divergent)")
    violations = [v for r in rows for v in checker.check_history(docs[r["order"]])]
    check(not violations, f"the chaos checker finds {len(violations)} violation(s) in the histories "
          "(strict order, attempts within budget, one runner, rollbacks newest first and each "
          "compensation committed once, none for a step that never succeeded)"
          + (f": {violations[0]}" if violations else ""))
    return found


def _undone_newest_first(doc: dict[str, Any]) -> bool:
    """The rollback's events: the refund's claims and success, then the release's, once each."""
    seen = [(e["type"], e["step"]) for e in doc["events"]
            if e["type"] in ("compensation_claimed", "compensation_succeeded")]
    succeeded = [step for kind, step in seen if kind == "compensation_succeeded"]
    first_release = next((i for i, (_, step) in enumerate(seen) if step == "reserve"), len(seen))
    refund_done = next((i for i, item in enumerate(seen) if item == ("compensation_succeeded", "charge")), -1)
    return succeeded == ["charge", "reserve"] and refund_done < first_release


def _ledger_summary(ledger: dict[str, Any]) -> dict[str, Any]:
    return {"requests": ledger["requests"], "effects": ledger["effects"],
            "refused": len(ledger["refused"])}


def _header(plan: Plan, version: int, url: str) -> str:
    lines = [
        f"detflow demo: {len(plan.orders)} orders through {PAYMENTS} v{version} "
        "(reserve -> charge -> capture -> receipt; rollback: refund, then release)",
        f"  store: {services.store_description()}",
        f"  redis: {services.redis_description()}",
        f"  payment gateway: {url} (a real HTTP server in this process)",
        f"  injected: {len(plan.declined)} capture(s) declined after the charge: "
        + ", ".join(sorted(plan.declined)),
        f"  injected: the worker running {plan.crash}'s refund crashes after the gateway applied it",
        f"  injected: a gateway outage ({OUTAGE_REQUESTS} requests answered 503), first-request failures "
        "and lost answers",
    ]
    if plan.refused:
        lines.append(f"  injected: the gateway refuses to refund {', '.join(sorted(plan.refused))} "
                     "(it ends COMPENSATION_FAILED, left to an operator)")
    return "\n".join(lines) + "\n\n"


def table(summary: dict[str, Any]) -> list[str]:
    """Return the summary as lines: a row per order, then the checks."""
    lines = [f"  {'order':<11} {'status':<20} {'attempts of each step':<40} {'rollback':<34} gateway"]
    for row in summary["orders"]:
        steps = " ".join(f"{name}:{s['attempts']}" for name, s in row["steps"].items())
        undo = ", ".join(f"{c['step']} {c['status'].lower()}" for c in row["compensations"]) or "-"
        lines.append(f"  {row['order']:<11} {row['status']:<20} {steps:<40} {undo:<34} {row['ledger']}")
        if row.get("operator_action"):
            lines.append(f"    operator: {row['operator_action']}")
    lines.append("")
    for item in summary["checks"]:
        lines.append(f"  [{'ok' if item['ok'] else 'FAILED'}] {item['check']}")
    return lines
