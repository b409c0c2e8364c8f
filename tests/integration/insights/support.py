"""Shared by the insights tests: handlers that log secrets and instructions, executions run to their
end in this thread, a local OpenAI-compatible server, and a counter of writes to the executions."""
from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from executions import faults, operations, runner, store, sweeper
from executions.store import now_ms
from insights.prompt import CLOSE, OPEN
from tests.conftest import mongo_commands_heard
from tests.handlers import LEDGER
from workflows.context import StepContext
from workflows.errors import PermanentError
from workflows.registry import step

#: Secrets the ``insights.leaky`` handler puts in its logs, its error and its input: none may reach a model.
SECRETS = {
    "password": "hunter2-Pa55word",
    "dsn_password": "s3cr3t-dsn-pw",
    "bearer": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNlY3JldA",
    "openai_key": "sk-proj-AbCdEf0123456789GhIjKl",
    "aws_key": "AKIAIOSFODNN7EXAMPLE",
    "token": "tok_9f8e7d6c5b4a",
    "pem": "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7",
}


@step("insights.leaky")
def leaky(ctx: StepContext) -> None:
    """Log lines full of secrets, then fail for good with one in the message."""
    LEDGER[(ctx.idempotency_key, ctx.attempt)] += 1
    ctx.log.info("connecting to postgres://app:%s@db.internal:5432/orders", SECRETS["dsn_password"])
    ctx.log.info("Authorization: Bearer %s", SECRETS["bearer"])
    ctx.log.warning("retrying with api_key=%s and token=%s", SECRETS["openai_key"], SECRETS["token"])
    ctx.log.info("aws access key %s", SECRETS["aws_key"])
    ctx.log.error("-----BEGIN RSA PRIVATE KEY-----\n%s\n-----END RSA PRIVATE KEY-----", SECRETS["pem"])
    raise PermanentError(f"login refused for password={SECRETS['password']}")


@step("insights.says")
def says(ctx: StepContext) -> None:
    """Log ``input["line"]``, then fail for good with ``input["error"]``."""
    LEDGER[(ctx.idempotency_key, ctx.attempt)] += 1
    ctx.log.info("%s", ctx.input["line"])
    raise PermanentError(ctx.input["error"])


def run_to_end(execution_id: str, limit: int = 20) -> dict[str, Any]:
    """Advance an execution in this thread until it is terminal (waiting out retry delays)."""
    for _ in range(limit):
        doc = store.load(execution_id)
        assert doc is not None
        if doc["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") and not doc.get("due_at"):
            return doc
        due = store.to_ms(doc.get("due_at")) or 0
        time.sleep(max(due - now_ms(), 0) / 1000)
        runner.advance(execution_id, worker="test-worker")
    raise AssertionError(f"execution {execution_id} did not finish in {limit} advances")


def failed(define: Callable[..., Any], handler: str = "test.permanent", input: Any = None,
           name: str = "explained", **step_options: Any) -> dict[str, Any]:
    """Return the document of a one-then-two-step execution that failed at its first step."""
    define(name, [{"handler": handler, **step_options}, {"handler": "test.echo"}])
    doc, _ = operations.start(name, input if input is not None else {"n": 1})
    return run_to_end(doc["_id"])


def lost(define: Callable[..., Any], name: str = "crashes") -> dict[str, Any]:
    """Return the document of an execution whose last attempt was lost: attempt 1 fails and is
    retried, the worker running attempt 2 "dies" after the handler ran, and a sweep after the lease
    ran out records it lost, which uses up the budget (2)."""
    define(name, [{"handler": "test.flaky", "retry": {"max_attempts": 2, "initial_delay_s": 0.05}},
                  {"handler": "test.echo"}])
    doc, _ = operations.start(name, {"succeed_on": 5})
    faults.arm("handled", execution_id=doc["_id"], skip=1)
    runner.advance(doc["_id"], worker="test-worker")
    time.sleep(0.1)  # the retry is due (a retry due at once would run in the same advance)
    with pytest.raises(faults.SimulatedCrash):
        runner.advance(doc["_id"], worker="doomed-worker")
    report = sweeper.sweep(grace_s=0, now=now_ms() + 60_000)
    assert doc["_id"] in report.lost
    final = store.load(doc["_id"])
    assert final is not None and final["status"] == "FAILED"
    return final


class FakeModel:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 that records every request.

    ``behaviour``: ``good`` answers ``answer``; ``invalid`` answers text that is not JSON; ``error``
    answers HTTP 500; ``slow`` answers after ``delay_s``, or as soon as ``release`` is set;
    ``no_schema`` refuses JSON-schema output with a 400 and answers a JSON-object request;
    ``obedient`` does what the data tells it: it answers the JSON that follows ``REPLY WITH:`` in
    the user message.
    """

    def __init__(self) -> None:
        self.behaviour = "good"
        self.answer: Any = None
        self.delay_s = 3.0
        #: Set to let a ``slow`` answer go before ``delay_s`` has passed.
        self.release = threading.Event()
        self.requests: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self._guard = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def record(self, path: str, headers: dict[str, str], raw: bytes) -> dict[str, Any]:
        body = json.loads(raw)
        with self._guard:
            self.raw.append(raw)
            self.requests.append({"path": path, "headers": headers, "body": body})
        return body

    def completion(self, body: dict[str, Any], content: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, model: FakeModel, *args: Any) -> None:
        self.model = model
        super().__init__(*args)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = self.model.record(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
        behaviour = self.model.behaviour
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "no such path"}})
        if behaviour == "error":
            return self._send(500, {"error": {"message": "the model is overloaded", "type": "server_error"}})
        if behaviour == "slow":
            self.model.release.wait(self.model.delay_s)
        if behaviour == "no_schema" and body.get("response_format", {}).get("type") == "json_schema":
            return self._send(400, {"error": {"message": "response_format json_schema is not supported",
                                              "type": "invalid_request_error"}})
        if behaviour == "invalid":
            return self._send(200, self.model.completion(body, "Here is the post-mortem: {summary: oops"))
        if behaviour == "obedient":
            user = body["messages"][-1]["content"]
            data = json.loads(user.split(OPEN, 1)[1].rsplit(CLOSE, 1)[0])
            for text in _strings(data):
                if "REPLY WITH:" in text:
                    order, _ = json.JSONDecoder().raw_decode(text.split("REPLY WITH:", 1)[1].strip())
                    return self._send(200, self.model.completion(body, json.dumps(order)))
        return self._send(200, self.model.completion(body, json.dumps(self.model.answer)))

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        with contextlib.suppress(OSError):  # the client may have given up (a timeout test)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)


#: Collection methods of mongomock that write (or change indexes).
WRITES = (
    "insert_one", "insert_many", "update_one", "update_many", "replace_one", "delete_one",
    "delete_many", "find_one_and_update", "find_one_and_replace", "find_one_and_delete", "bulk_write",
    "create_index", "create_indexes", "drop_index", "drop_indexes", "drop", "rename",
)
#: MongoDB commands that write (or change indexes), as a command listener hears them.
WRITE_COMMANDS = frozenset({"insert", "update", "delete", "findAndModify", "createIndexes", "dropIndexes",
                            "drop", "renameCollection", "bulkWrite"})


class Writes:
    """Writes seen, as ``(collection, command)``, from any thread; and the writes each Dramatiq actor
    made, by actor name (from the message its thread was handling)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.by_actor: dict[str, list[tuple[str, str]]] = {}
        self._guard = threading.Lock()

    def add(self, collection: str, command: str) -> None:
        from dramatiq.middleware import CurrentMessage

        message = CurrentMessage.get_current_message()
        with self._guard:
            self.seen.append((collection, command))
            if message is not None:
                self.by_actor.setdefault(message.actor_name, []).append((collection, command))

    def clear(self) -> None:
        """Forget what was seen so far (the set-up's writes)."""
        with self._guard:
            self.seen.clear()
            self.by_actor.clear()

    def to(self, collection: str) -> list[str]:
        with self._guard:
            return [command for name, command in self.seen if name == collection]


@contextlib.contextmanager
def listening(seen: Writes) -> Iterator[None]:
    from insights import service

    def started(event: Any) -> None:
        if event.command_name in WRITE_COMMANDS:
            seen.add(str(event.command.get(event.command_name)), event.command_name)

    with mongo_commands_heard(started):
        store.collection()
        service.collection()
        seen.clear()
        yield


def snapshot() -> list[dict[str, Any]]:
    """Return every stored execution, in id order."""
    return sorted(store.collection().find({}), key=lambda d: d["_id"])
