"""Judge a payment gateway's ledger (the JSON of ``GET /ledger``): is it balanced, and how did each
order end? Pure functions: the demo and the tests call them on a ledger they fetched."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any


def orders(ledger: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Return how each order in ``ledger`` ended: its reservation's and charge's status, its receipt,
    whether its capture was declined and its refund refused, and ``state``: ``completed`` (captured,
    receipt issued), ``rolled_back`` (everything held was given back: charge refunded or never made,
    reservation released), or ``unbalanced`` (anything else: money or stock still held, or a receipt
    missing)."""
    found: dict[str, dict[str, Any]] = {}

    def entry(order: str) -> dict[str, Any]:
        return found.setdefault(order, {"reservation": None, "charge": None, "receipt": None,
                                        "declined": False, "refund_refused": False,
                                        "state": "unbalanced"})

    for record in ledger["reservations"].values():
        entry(record["order_id"])["reservation"] = record["status"]
    for record in ledger["charges"].values():
        entry(record["order_id"])["charge"] = record["status"]
        entry(record["order_id"])["declined"] |= record["declined"]
    for record in ledger["receipts"].values():
        entry(record["order_id"])["receipt"] = record["id"]
    for refusal in ledger["refused"]:
        if refusal["error"] == "refund_refused" and refusal["order_id"] in found:
            found[refusal["order_id"]]["refund_refused"] = True
    for state in found.values():
        if state["reservation"] == state["charge"] == "captured" and state["receipt"]:
            state["state"] = "completed"
        elif state["reservation"] in (None, "released") and state["charge"] in (None, "refunded") \
                and not state["receipt"]:
            state["state"] = "rolled_back"
    return found


def check(ledger: Mapping[str, Any], excused: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Judge a ledger: ``{name: {"ok": bool, "detail": why}}``, every check true for a balanced one.

    ``excused`` names orders whose unsettled charge or reservation is expected (a planned refund
    refusal the caller saw fail): the two ``*_settled`` checks skip them and say so.
    """
    skip = set(excused)
    charges, reservations, receipts = ledger["charges"], ledger["reservations"], ledger["receipts"]
    per_order: dict[str, Counter[str]] = {}
    for noun, table in (("reservation", reservations), ("charge", charges), ("receipt", receipts)):
        for record in table.values():
            per_order.setdefault(record["order_id"], Counter())[noun] += 1
    refused = ledger["refused"]
    unknown = [r for r in refused if r["status"] == 404]
    conflicts = [r for r in refused if r["status"] == 409]
    early_release = [r for r in conflicts if r["operation"] == "release"]
    applied: dict[tuple[str, str], int] = {}
    for event in ledger["events"]:
        applied.setdefault((event["order_id"], event["operation"]), event["seq"])
    reversed_wrongly = sorted(order for (order, op), seq in applied.items()
                              if op == "release" and (order, "refund") in applied
                              and applied[(order, "refund")] > seq)
    mismatched = sorted(c["id"] for c in charges.values()
                        if reservations.get(c["reservation_id"], {}).get("amount_cents") != c["amount_cents"]
                        or reservations[c["reservation_id"]]["order_id"] != c["order_id"])
    results = {
        "charges_settled": _offenders(
            [f"{c['id']} ({c['order_id']}) is {c['status']}" for c in charges.values()
             if c["status"] not in ("captured", "refunded") and c["order_id"] not in skip],
            "every charge ends captured or refunded", skip),
        "reservations_settled": _offenders(
            [f"{r['id']} ({r['order_id']}) is {r['status']}" for r in reservations.values()
             if r["status"] not in ("captured", "released") and r["order_id"] not in skip],
            "every reservation ends captured or released", skip),
        "captures_match": _offenders(
            [f"{c['id']} is captured, its reservation {c['reservation_id']} is "
             f"{reservations[c['reservation_id']]['status']}" for c in charges.values()
             if c["status"] == "captured" and reservations[c["reservation_id"]]["status"] != "captured"],
            "a captured charge's reservation is captured"),
        "amounts_match": _offenders([f"charge {cid}" for cid in mismatched],
                                    "each charge is for its reservation's order and amount"),
        "effects_applied_once": _offenders(
            [f"key {k!r} applied {v['effects']} times" for k, v in ledger["keys"].items()
             if v["effects"] > 1],
            "no idempotency key's effect was applied twice"),
        "one_of_each_per_order": _offenders(
            [f"order {order}: {n} {noun}s" for order, counts in sorted(per_order.items())
             for noun, n in counts.items() if n > 1],
            "at most one reservation, charge and receipt per order (a second one means a handler "
            "sent a new idempotency key for the same effect)"),
        "no_unknown_ids": _offenders(
            [f"{r['operation']} {r['path']}: {r['message']}" for r in unknown],
            "no refund, release, capture or receipt named a charge or reservation that never existed"),
        "no_release_after_capture": _offenders(
            [f"{r['path']}: {r['message']}" for r in early_release]
            + [f"order {order}: released before refunded" for order in reversed_wrongly],
            "no release was asked for while the reservation's charge was not refunded (a rollback "
            "refunds, then releases)"),
        "no_out_of_order_request": _offenders(
            [f"{r['operation']} {r['path']}: {r['message']}" for r in conflicts],
            "no request was refused as out of order (409)"),
        "receipts_for_captured_charges": _offenders(
            [f"{r['id']} for {r['charge_id']} ({charges.get(r['charge_id'], {}).get('status')})"
             for r in receipts.values() if charges.get(r["charge_id"], {}).get("status") != "captured"],
            "every receipt is for a charge that stays captured"),
    }
    return results


def _offenders(found: list[str], rule: str, excused: set[str] | None = None) -> dict[str, Any]:
    note = f" (excused: {', '.join(sorted(excused))})" if excused else ""
    if not found:
        return {"ok": True, "detail": rule + note}
    shown = "; ".join(found[:10]) + (f"; and {len(found) - 10} more" if len(found) > 10 else "")
    return {"ok": False, "detail": f"{rule}{note}: {shown}"}


def failed(results: Mapping[str, Mapping[str, Any]]) -> Iterator[str]:
    """Yield ``name: detail`` for each check in ``results`` that is false."""
    for name, result in results.items():
        if not result["ok"]:
            yield f"{name}: {result['detail']}"
