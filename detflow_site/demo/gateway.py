"""A payment gateway on 127.0.0.1 for the payments workflow: a real HTTP server over an in-memory ledger.

JSON in and out. Every mutating route needs an ``Idempotency-Key`` header: the same key with the
same request is answered with the first answer and applies nothing again; the same key with another
request is answered 422. Every answer but a 5xx is kept under its key (a 409 stays a 409).

======  ==============================  =======================================  ==========================
method  route                           body                                     answer
======  ==============================  =======================================  ==========================
POST    /reservations                   order_id, amount_cents                   201 reservation, "held"
POST    /reservations/<id>/release      order_id (optional, must match)          200 reservation, "released"
POST    /charges                        order_id, reservation_id, amount_cents   201 charge, "authorized"
POST    /charges/<id>/capture           order_id (optional, must match)          200 charge, "captured"
POST    /charges/<id>/refund            order_id (optional, must match)          200 charge, "refunded"
POST    /receipts                       order_id, charge_id                      201 receipt
GET     /ledger                         -                                        200 the whole ledger
POST    /control                        faults (see :meth:`Gateway.control`)     200 the faults now set
======  ==============================  =======================================  ==========================

Errors are ``{"error": code, "message": text}``: 400 ``bad_request`` / ``idempotency_key_required``,
402 ``declined`` (a capture of a declined order), 403 ``refund_refused`` (a planned refusal, forever),
404 ``not_found``, 409 ``conflict`` (out of order: a release while the reservation's charge is not
refunded, a capture of a refunded charge, a receipt for an uncaptured charge, ...), 422
``idempotency_key_reused``, 503 ``unavailable`` (an outage: nothing applied). A release is refused
while its reservation's charge is authorized or captured, so a rollback that does not refund before
it releases is caught by the gateway itself.

Faults hit named orders or a count of requests (only ``outage(seconds=...)`` reads a clock; the only
randomness is :meth:`Faults.seeded`'s seeded choice), and ids are derived from the seed and the
idempotency key, so that a rerun gives the same ledger.
:mod:`detflow_site.demo.ledger` holds the state and the rules; :mod:`detflow_site.demo.balance`
judges a ledger (:func:`~detflow_site.demo.balance.check`) and says how each order ended.
"""
from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from detflow_site.demo import balance
from detflow_site.demo.ledger import Faults, Ledger, Refusal, error

#: Largest request body read, in bytes.
MAX_BODY_BYTES = 64 * 1024


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the gateway quiet: the ledger is its record."""

    def do_GET(self) -> None:
        if self.path == "/ledger":
            self._answer(200, self.server.gateway.ledger.to_json())
        else:
            self._answer(404, error("not_found", f"no route GET {self.path}"))

    def do_POST(self) -> None:
        try:
            body = self._body()
        except Refusal as refusal:
            self._answer(refusal.status, error(refusal.code, refusal.message))
            return
        gateway = self.server.gateway
        if self.path == "/control":
            try:
                self._answer(200, gateway.control(body))
            except (TypeError, ValueError) as exc:
                self._answer(400, error("bad_request", f"control: {exc}"))
            return
        status, answer, drop = gateway.ledger.handle(self.path, self.headers.get("Idempotency-Key"), body)
        if drop:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self._answer(status, answer)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise Refusal(413, "too_large", f"a request body is at most {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (UnicodeDecodeError, ValueError):
            raise Refusal(400, "bad_request", "the body is not JSON") from None
        if not isinstance(body, dict):
            raise Refusal(400, "bad_request", "the body must be a JSON object")
        return body

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(("127.0.0.1", gateway.port), _Handler)
        self.gateway = gateway


class Gateway:
    """The payment gateway served on 127.0.0.1 from a daemon thread; ``with Gateway() as url:``."""

    def __init__(self, faults: Faults | None = None, *, seed: int = 0, port: int = 0) -> None:
        self.ledger = Ledger(faults or Faults(), seed)
        self.port = port
        self.url: str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Serve on 127.0.0.1 (``port`` 0: any free port); return the base URL."""
        if self._server is not None:
            raise RuntimeError("the gateway is running already")
        self._server = _Server(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="payment-gateway",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close the socket; the ledger stays readable."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults, in process or over POST /control -------------------------------------------------

    def outage(self, requests: int | None = None, seconds: float | None = None) -> None:
        """Answer 503 to the next ``requests`` mutating requests, or to every one for ``seconds``."""
        self.ledger.outage(requests, seconds)

    def end_outage(self) -> None:
        self.ledger.end_outage()

    def control(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Change the faults as ``POST /control`` does: see :meth:`Ledger.control`."""
        return self.ledger.control(body)

    # -- checks -----------------------------------------------------------------------------------

    def check(self, excused: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
        """Judge the ledger now: see :func:`balance.check`."""
        return balance.check(self.ledger.to_json(), excused)

    def orders(self) -> dict[str, dict[str, Any]]:
        """Say how each order ended: see :func:`balance.orders`."""
        return balance.orders(self.ledger.to_json())
