"""A Python client for detflow's REST API: start executions, wait for them, read and act on them.

It needs ``requests`` and nothing of detflow or Django, so any service can use it::

    from detflow_client import Client, Conflict

    with Client("http://127.0.0.1:8000/api/v1", token="<an operator's token>") as api:
        execution = api.start("billing", {"order": 42}, idempotency_key="order-42")
        done = api.wait(execution["id"], timeout=60)          # raises Timeout naming the last status
        if done["status"] == "FAILED":
            api.retry(done["id"], "the gateway is back")
        for event in api.events(done["id"]):                  # every page
            print(event["seq"], event["type"])
        try:
            api.cancel(done["id"], "too late")
        except Conflict as refused:                            # 409: it has finished
            print(refused.code, refused.detail)

Every refusal of the API is an :class:`ApiError` carrying its ``status``, ``code``, ``detail`` and
``fields`` (:class:`BadRequest`, :class:`Unauthorized`, :class:`Forbidden`, :class:`NotFound`,
:class:`Conflict`...); a server that cannot be reached raises :class:`ConnectionFailed`. All of them
are :class:`ClientError`.
"""
from __future__ import annotations

from detflow_client.client import Client
from detflow_client.errors import (
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ServerError,
    Throttled,
    Timeout,
    Unauthorized,
    Unavailable,
)
from detflow_client.statuses import STATUSES, TERMINAL

__all__ = [
    "STATUSES", "TERMINAL", "ApiError", "BadRequest", "Client", "ClientError", "Conflict",
    "ConnectionFailed", "Forbidden", "InvalidRequest", "NotFound", "PayloadTooLarge", "ServerError",
    "Throttled", "Timeout", "Unauthorized", "Unavailable",
]
