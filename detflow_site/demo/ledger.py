"""The payment gateway's ledger: reservations, charges, receipts, and the rules that move them.

Every mutating request carries an idempotency key: the same key with the same request gets the first
answer and applies nothing again; the same key with another request is refused (422). Every answer
but a 5xx is kept under its key. Ids are derived from the seed and the key, so that a rerun gives
the same ids. :class:`Faults` says what goes wrong on purpose, for which orders, deterministically.

A reservation is ``held``, then ``captured`` (its charge was captured) or ``released``; a charge is
``authorized``, then ``captured`` or ``refunded`` (an authorized or a captured one). A release is
refused (409) while the reservation's charge is authorized or captured: a rollback refunds first.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Operations, as the ledger counts them.
OPERATIONS = ("reserve", "release", "charge", "capture", "refund", "receipt")
#: Longest Idempotency-Key, in characters.
MAX_KEY_CHARS = 255
#: Longest order id, in characters.
MAX_ORDER_ID = 128
_ACTION = re.compile(r"^/(reservations|charges)/([A-Za-z0-9_]{1,64})/(release|capture|refund)$")
_ROUTES = {("reservations", "release"): "release", ("charges", "capture"): "capture",
           ("charges", "refund"): "refund"}
_CREATE = {"/reservations": "reserve", "/charges": "charge", "/receipts": "receipt"}


class Refusal(Exception):
    """An answer other than success: an HTTP status, an error code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Faults:
    """What the gateway does wrong, on purpose, and for which orders."""

    #: Orders whose capture is answered 402 ``declined`` (a permanent failure; the charge stays authorized).
    declines: set[str] = field(default_factory=set)
    #: Orders whose refund is answered 403 ``refund_refused``, every time (an unrecoverable compensation).
    refund_refusals: set[str] = field(default_factory=set)
    #: Operation -> orders whose first request of it is answered 503 before anything is applied.
    fail_first: dict[str, set[str]] = field(default_factory=dict)
    #: Operation -> orders whose first request of it is applied, then its connection closed unanswered.
    lose_first: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def seeded(cls, seed: int, order_ids: Iterable[str], *, declines: int = 0, refund_refusals: int = 0,
               fail_first: Mapping[str, int] | None = None,
               lose_first: Mapping[str, int] | None = None) -> Faults:
        """Pick, by ``seed``, the orders each fault hits: ``declines`` orders are declined, and
        ``refund_refusals`` of those (only a rolled-back order asks for a refund) refused their refund;
        ``fail_first``/``lose_first`` give a count of orders per operation."""
        orders = sorted(order_ids)
        rng = random.Random(seed)
        declined = rng.sample(orders, declines)
        return cls(
            declines=set(declined), refund_refusals=set(rng.sample(declined, refund_refusals)),
            fail_first={op: set(rng.sample(orders, n)) for op, n in (fail_first or {}).items()},
            lose_first={op: set(rng.sample(orders, n)) for op, n in (lose_first or {}).items()},
        )

    def to_json(self) -> dict[str, Any]:
        return {"declines": sorted(self.declines), "refund_refusals": sorted(self.refund_refusals),
                "fail_first": {op: sorted(ids) for op, ids in self.fail_first.items()},
                "lose_first": {op: sorted(ids) for op, ids in self.lose_first.items()}}


class Ledger:
    """The gateway's state and rules, behind one lock; :meth:`handle` answers one request."""

    def __init__(self, faults: Faults, seed: int) -> None:
        self.faults = faults
        self.seed = seed
        self._lock = threading.Lock()
        self.reservations: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.receipts: dict[str, dict[str, Any]] = {}
        #: Idempotency key -> the request it was first used for, counts, and the answer kept.
        self.keys: dict[str, dict[str, Any]] = {}
        self.requests: Counter[str] = Counter()
        self.effects: Counter[str] = Counter()
        #: Applied effects, in order.
        self.events: list[dict[str, Any]] = []
        #: Answers 4xx to a request, in order (replays of a kept answer are not repeated here).
        self.refused: list[dict[str, Any]] = []
        self._outage_requests = 0
        self._outage_until: float | None = None
        self._failed: set[tuple[str, str]] = set()
        self._lost: set[tuple[str, str]] = set()

    # -- faults -----------------------------------------------------------------------------------

    def outage(self, requests: int | None = None, seconds: float | None = None) -> None:
        """Answer 503 to the next ``requests`` mutating requests, or to all of them for ``seconds``."""
        with self._lock:
            if requests is not None:
                self._outage_requests = int(requests)
            if seconds is not None:
                self._outage_until = time.monotonic() + float(seconds)

    def end_outage(self) -> None:
        with self._lock:
            self._outage_requests, self._outage_until = 0, None

    def _in_outage(self) -> bool:
        if self._outage_requests > 0:
            self._outage_requests -= 1
            return True
        return self._outage_until is not None and time.monotonic() < self._outage_until

    def control(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Change the faults: ``declines``/``refund_refusals`` (order ids, added), ``fail_first``/
        ``lose_first`` ({operation: [order ids]}, added), ``outage`` ({"requests": n} or
        {"seconds": s}; {} ends it); return the faults now set. Raise ``ValueError`` on a bad body."""
        unknown = set(body) - {"declines", "refund_refusals", "fail_first", "lose_first", "outage"}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        window = body.get("outage")
        if window is not None and not (isinstance(window, dict) and set(window) <= {"requests", "seconds"}
                                       and all(isinstance(v, int | float) for v in window.values())):
            raise ValueError('outage must be {"requests": n}, {"seconds": s} or {}')
        declines = _strings(body.get("declines", []), "declines")
        refusals = _strings(body.get("refund_refusals", []), "refund_refusals")
        firsts: dict[str, dict[str, list[str]]] = {}
        for name in ("fail_first", "lose_first"):
            given = body.get(name, {})
            if not isinstance(given, dict) or not set(given) <= set(OPERATIONS):
                raise ValueError(f"{name} must map operations ({', '.join(OPERATIONS)}) to order ids")
            firsts[name] = {op: _strings(ids, name) for op, ids in given.items()}
        with self._lock:
            self.faults.declines.update(declines)
            self.faults.refund_refusals.update(refusals)
            for name, given in firsts.items():
                for op, ids in given.items():
                    getattr(self.faults, name).setdefault(op, set()).update(ids)
            faults = self.faults.to_json()
        if window:
            self.outage(window.get("requests"), window.get("seconds"))
        elif window is not None:
            self.end_outage()
        return faults

    # -- requests ---------------------------------------------------------------------------------

    def handle(self, path: str, key: str | None, body: dict[str, Any]) -> tuple[int, dict[str, Any], bool]:
        """Answer one mutating request: (status, body, drop the connection unanswered)."""
        with self._lock:
            operation = _operation(path)
            if operation is None:
                return 404, error("not_found", f"no route POST {path}"), False
            self.requests[operation] += 1
            if key and len(key) > MAX_KEY_CHARS:
                return 400, error("bad_request", f"an Idempotency-Key is at most {MAX_KEY_CHARS} "
                                  "characters"), False
            fingerprint = hashlib.sha256(json.dumps([path, body], sort_keys=True).encode()).hexdigest()
            entry = self.keys.setdefault(key, {
                "operation": operation, "path": path, "fingerprint": fingerprint, "requests": 0,
                "effects": 0, "status": None, "answer": None}) if key else None
            if entry is not None:
                entry["requests"] += 1
            if self._in_outage():
                return 503, error("unavailable", "the gateway is in an outage; nothing was applied"), False
            if entry is None or key is None:
                return 400, error("idempotency_key_required", "send an Idempotency-Key header"), False
            if entry["fingerprint"] != fingerprint:
                return 422, error("idempotency_key_reused", f"key {key!r} was used for another "
                                  f"request ({entry['operation']} {entry['path']})"), False
            if entry["answer"] is not None:
                return entry["status"], entry["answer"], False
            order = self._order_of(operation, path, body)
            if order is not None and (operation, order) not in self._failed \
                    and order in self.faults.fail_first.get(operation, ()):
                self._failed.add((operation, order))
                return 503, error("unavailable", f"first {operation} of order {order}: planned "
                                  "failure; nothing was applied"), False
            try:
                status, answer = self._apply(operation, path, key, body)
            except Refusal as refusal:
                status, answer = refusal.status, error(refusal.code, refusal.message)
                self.refused.append({"seq": len(self.refused) + 1, "operation": operation, "path": path,
                                     "key": key, "order_id": order, "status": status,
                                     "error": refusal.code, "message": refusal.message})
            else:
                entry["effects"] += 1
                self.effects[operation] += 1
                self.events.append({"seq": len(self.events) + 1, "operation": operation, "key": key,
                                    "order_id": order, "id": answer["id"]})
            entry["status"], entry["answer"] = status, answer
            if order is None or (operation, order) in self._lost \
                    or order not in self.faults.lose_first.get(operation, ()):
                return status, answer, False
            self._lost.add((operation, order))
            return status, answer, True

    def _order_of(self, operation: str, path: str, body: dict[str, Any]) -> str | None:
        if operation in ("reserve", "charge", "receipt"):
            order = body.get("order_id")
            return order if isinstance(order, str) else None
        match = _ACTION.match(path)
        table = self.reservations if operation == "release" else self.charges
        record = table.get(match.group(2)) if match else None
        return record["order_id"] if record else None

    def _new_id(self, prefix: str, key: str) -> str:
        return f"{prefix}_{hashlib.sha256(f'{self.seed}:{key}'.encode()).hexdigest()[:16]}"

    def _apply(self, operation: str, path: str, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if operation == "reserve":
            order, amount = _order_id(body), _amount(body)
            rid = self._new_id("res", key)
            self.reservations[rid] = {"id": rid, "order_id": order, "amount_cents": amount,
                                      "status": "held", "charge_id": None}
            return 201, _reservation(self.reservations[rid])
        if operation == "charge":
            order, amount = _order_id(body), _amount(body)
            reservation = self._find(self.reservations, body.get("reservation_id"), "reservation", order)
            if reservation["status"] != "held" or reservation["charge_id"] is not None:
                raise Refusal(409, "conflict", f"reservation {reservation['id']} is {reservation['status']}"
                              + (f" and charged by {reservation['charge_id']}" if reservation["charge_id"]
                                 else "") + "; a charge needs a held, uncharged reservation")
            if amount != reservation["amount_cents"]:
                raise Refusal(400, "bad_request", f"amount_cents {amount} is not the reserved "
                              f"{reservation['amount_cents']}")
            cid = self._new_id("ch", key)
            self.charges[cid] = {"id": cid, "order_id": order, "reservation_id": reservation["id"],
                                 "amount_cents": amount, "status": "authorized", "declined": False}
            reservation["charge_id"] = cid
            return 201, _charge(self.charges[cid])
        if operation == "receipt":
            order = _order_id(body)
            charge = self._find(self.charges, body.get("charge_id"), "charge", order)
            if charge["status"] != "captured":
                raise Refusal(409, "conflict", f"charge {charge['id']} is {charge['status']}; a receipt "
                              "needs a captured charge")
            rcid = self._new_id("rc", key)
            self.receipts[rcid] = {"id": rcid, "order_id": order, "charge_id": charge["id"],
                                   "amount_cents": charge["amount_cents"]}
            return 201, {"id": rcid, "receipt_id": rcid, "order_id": order, "charge_id": charge["id"]}
        match = _ACTION.match(path)
        assert match is not None
        claimed = body.get("order_id")
        if operation == "release":
            reservation = self._find(self.reservations, match.group(2), "reservation", claimed)
            return 200, self._release(reservation)
        charge = self._find(self.charges, match.group(2), "charge", claimed)
        return 200, (self._capture(charge) if operation == "capture" else self._refund(charge))

    def _release(self, reservation: dict[str, Any]) -> dict[str, Any]:
        charge = self.charges.get(reservation["charge_id"] or "")
        if reservation["status"] == "released":
            raise Refusal(409, "conflict", f"reservation {reservation['id']} is released already")
        if charge is not None and charge["status"] != "refunded":
            raise Refusal(409, "conflict", f"reservation {reservation['id']} is {reservation['status']} "
                          f"and its charge {charge['id']} is {charge['status']}: refund the charge "
                          "before releasing the reservation")
        reservation["status"] = "released"
        return _reservation(reservation)

    def _capture(self, charge: dict[str, Any]) -> dict[str, Any]:
        if charge["status"] != "authorized":
            raise Refusal(409, "conflict", f"charge {charge['id']} is {charge['status']}; only an "
                          "authorized charge is captured")
        if charge["order_id"] in self.faults.declines:
            charge["declined"] = True
            raise Refusal(402, "declined", f"the card was declined for order {charge['order_id']}")
        charge["status"] = "captured"
        self.reservations[charge["reservation_id"]]["status"] = "captured"
        return _charge(charge)

    def _refund(self, charge: dict[str, Any]) -> dict[str, Any]:
        if charge["order_id"] in self.faults.refund_refusals:
            raise Refusal(403, "refund_refused", f"the refund of charge {charge['id']} (order "
                          f"{charge['order_id']}) is refused: settle it by hand")
        if charge["status"] == "refunded":
            raise Refusal(409, "conflict", f"charge {charge['id']} is refunded already")
        charge["status"] = "refunded"
        return _charge(charge)

    def _find(self, table: dict[str, dict[str, Any]], rid: Any, noun: str, order: Any) -> dict[str, Any]:
        record = table.get(rid) if isinstance(rid, str) else None
        if record is None:
            raise Refusal(404, "not_found", f"no {noun} {rid!r}")
        if order is not None and order != record["order_id"]:
            raise Refusal(400, "bad_request", f"{noun} {rid} belongs to order {record['order_id']}, "
                          f"not {order!r}")
        return record

    def to_json(self) -> dict[str, Any]:
        """Return the whole ledger as JSON-ready data."""
        with self._lock:
            return json.loads(json.dumps({
                "reservations": self.reservations, "charges": self.charges, "receipts": self.receipts,
                "requests": {op: self.requests[op] for op in OPERATIONS},
                "effects": {op: self.effects[op] for op in OPERATIONS},
                "keys": {k: {n: v[n] for n in ("operation", "path", "requests", "effects", "status")}
                         for k, v in self.keys.items()},
                "events": self.events, "refused": self.refused, "faults": self.faults.to_json(),
            }))


def _operation(path: str) -> str | None:
    if path in _CREATE:
        return _CREATE[path]
    match = _ACTION.match(path)
    return _ROUTES.get((match.group(1), match.group(3))) if match else None


def _order_id(body: dict[str, Any]) -> str:
    order = body.get("order_id")
    if not isinstance(order, str) or not 0 < len(order) <= MAX_ORDER_ID:
        raise Refusal(400, "bad_request", f"order_id must be a string of 1 to {MAX_ORDER_ID} characters")
    return order


def _amount(body: dict[str, Any]) -> int:
    amount = body.get("amount_cents")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise Refusal(400, "bad_request", "amount_cents must be a positive integer")
    return amount


def _reservation(record: dict[str, Any]) -> dict[str, Any]:
    return {"id": record["id"], "reservation_id": record["id"], "order_id": record["order_id"],
            "amount_cents": record["amount_cents"], "status": record["status"]}


def _charge(record: dict[str, Any]) -> dict[str, Any]:
    return {"id": record["id"], "charge_id": record["id"], "order_id": record["order_id"],
            "reservation_id": record["reservation_id"], "amount_cents": record["amount_cents"],
            "status": record["status"]}


def error(code: str, message: str) -> dict[str, Any]:
    """Return the body of a refusal."""
    return {"error": code, "message": message}


def _strings(values: Any, name: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{name} must be a list of order ids")
    return values
