"""Data is never a path: no input or output an operator or a client writes makes a file handler
read, copy, announce or remove a file outside this execution's own storage (OWASP API1/API8)."""
from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from executions import operations, store
from tests.conftest import wait_terminal
from tests.integration.api.conftest import assert_error
from workflows.builtin import FILE_PROCESSING, ensure_file_processing

API = "/api/v1/"
SECRET = {"db_password": "hunter2-db", "api_key": "sk-live-0000"}


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the storage directory that no execution may read or remove."""
    path = tmp_path / "elsewhere" / "secrets.json"
    path.parent.mkdir()
    path.write_text(json.dumps(SECRET))
    return path


def started(operator: Any, content: bytes | None = None, raw_b64: str | None = None) -> str:
    """Start file-processing through the API with the file's bytes in the input; return the id."""
    ensure_file_processing()
    b64 = raw_b64 if raw_b64 is not None else base64.b64encode(content or b"").decode()
    response = operator.post(API + "executions/", {"workflow": FILE_PROCESSING,
                                                   "input": {"name": "n.txt", "content_b64": b64}},
                             format="json")
    assert response.status_code == 201, response.content
    return str(response.json()["id"])


def failed_at(execution_id: str, step: str) -> dict[str, Any]:
    [doc] = wait_terminal(execution_id)
    failed = [s["name"] for s in doc["steps"] if s["status"] == "FAILED"]
    assert (doc["status"], failed) == ("FAILED", [step]), (doc["status"], failed, doc["steps"])
    return doc


def skip(operator: Any, execution_id: str, output: dict[str, Any]) -> None:
    response = operator.post(API + f"executions/{execution_id}/skip/",
                             {"reason": "done by hand", "output": output}, format="json")
    assert response.status_code == 200, response.content


def everything_shown(operator: Any, execution_id: str) -> str:
    """What the API shows of an execution: its document and its whole history."""
    detail = operator.get(API + f"executions/{execution_id}/").content.decode()
    events = operator.get(API + f"executions/{execution_id}/events/?limit=1000").content.decode()
    return detail + events


def assert_untouched(secret: Path, shown: str) -> None:
    """The file is there as it was, and nothing read from it shows (a name an operator wrote may)."""
    assert json.loads(secret.read_text()) == SECRET, "the file outside storage was changed or removed"
    for word in (*SECRET, *SECRET.values()):
        assert word not in shown, f"{word!r} reached the execution's outputs or history"


@pytest.mark.parametrize("inbox", [
    "{secret}",                       # an absolute path outside storage
    "../elsewhere/secrets.json",      # relative, leaving storage by '..'
    "inbox/../../elsewhere/secrets.json",
    "inbox/{other}",                  # another execution's received copy
])
def test_skip_output__naming_a_file_outside_this_executions_inbox_is_refused_and_it_stays_untouched(
    operator: Any, worker: Any, isolated: Path, secret: Path, inbox: str
) -> None:
    other = started(operator, b"")  # its empty file is refused by files.validate and kept in the inbox
    failed_at(other, "files.validate")
    other_copy = isolated / "inbox" / other
    eid = started(operator, raw_b64="not base64!")
    failed_at(eid, "files.receive")

    named = inbox.format(secret=secret, other=other)
    skip(operator, eid, {"inbox": named, "size": secret.stat().st_size, "original_name": "x.json"})

    doc = failed_at(eid, "files.validate")
    error = doc["steps"][1]["error"]["message"]
    assert "the output of files.receive" in error and named not in error
    assert_untouched(secret, everything_shown(operator, eid))
    assert other_copy.is_file(), "another execution's received copy was removed"


def test_skip_output__a_symbolic_link_in_the_inbox_is_refused_and_its_target_stays_untouched(
    operator: Any, worker: Any, isolated: Path, secret: Path
) -> None:
    eid = started(operator, raw_b64="not base64!")
    failed_at(eid, "files.receive")
    (isolated / "inbox").mkdir(parents=True, exist_ok=True)
    os.symlink(secret, isolated / "inbox" / eid)

    skip(operator, eid, {"inbox": f"inbox/{eid}", "size": 10, "original_name": "x.json"})

    doc = failed_at(eid, "files.validate")
    assert "symbolic link" in doc["steps"][1]["error"]["message"]
    assert_untouched(secret, everything_shown(operator, eid))


@pytest.mark.parametrize("path", ["{secret}", "uploads/../../elsewhere/secrets.json", "inbox/{eid}"])
def test_retry_input__a_path_outside_uploads_is_refused_by_the_api_and_by_the_handler(
    operator: Any, worker: Any, isolated: Path, secret: Path, path: str
) -> None:
    eid = started(operator, raw_b64="not base64!")
    failed_at(eid, "files.receive")
    edited = {"path": path.format(secret=secret, eid=eid), "name": "x.json"}

    response = operator.post(API + f"executions/{eid}/retry/", {"reason": "fixed", "input": edited},
                             format="json")
    assert_error(response, 400, "forbidden", "input.path")
    # Whoever edits it (the admin, a script through operations), the handler refuses it too.
    operations.retry(eid, "script", "fixed", input=edited)

    doc = failed_at(eid, "files.receive")
    assert "input.path names a file outside" in doc["steps"][0]["error"]["message"]
    assert_untouched(secret, everything_shown(operator, eid))


FORGEABLE = [
    {"name": "files.receive", "handler": "files.receive"},
    {"name": "files.checksum", "handler": "files.checksum"},
    {"name": "files.validate", "handler": "test.permanent"},
    {"name": "files.transform", "handler": "test.permanent"},
    {"name": "files.store", "handler": "files.store"},
    {"name": "files.notify", "handler": "files.notify"},
]


def start_forgeable(operator: Any, define: Any, steps: list[dict[str, Any]], content: bytes) -> str:
    """Start a workflow of file handlers where the steps given as ``test.permanent`` fail for good,
    so that an operator can skip them with an output of their choosing."""
    define("forgeable", steps)
    response = operator.post(API + "executions/", {"workflow": "forgeable", "input": {
        "content_b64": base64.b64encode(content).decode()}}, format="json")
    assert response.status_code == 201, response.content
    return str(response.json()["id"])


@pytest.mark.parametrize("path", ["{secret}", "derived/{other}/compressed.gz",
                                  "derived/../../elsewhere/secrets.json"])
def test_skip_output__of_transform_naming_a_file_elsewhere_is_refused_by_notify(
    operator: Any, worker: Any, isolated: Path, secret: Path, define: Any, path: str
) -> None:
    other = started(operator, b"one\ntwo\n")
    assert wait_terminal(other)[0]["status"] == "SUCCEEDED"
    lines_before = (isolated / "outbox" / "notifications.jsonl").read_text().count("\n")
    eid = start_forgeable(operator, define, FORGEABLE, b"mine\n")
    failed_at(eid, "files.validate")
    skip(operator, eid, {"type": "text", "size": 5})
    failed_at(eid, "files.transform")

    skip(operator, eid, {"kind": "gzip", "path": path.format(secret=secret, other=other), "bytes": 1})

    doc = failed_at(eid, "files.notify")
    assert "files.transform" in doc["steps"][5]["error"]["message"]
    assert (isolated / "outbox" / "notifications.jsonl").read_text().count("\n") == lines_before
    assert_untouched(secret, everything_shown(operator, eid))


def test_forged_checksum__files_store_refuses_a_digest_it_did_not_compute(
    operator: Any, worker: Any, isolated: Path, define: Any
) -> None:
    theirs = started(operator, b"their private report\n")
    [done] = wait_terminal(theirs)
    their_digest = json.loads(done["steps"][2]["output_json"])["sha256"]
    their_object = isolated / json.loads(done["steps"][5]["output_json"])["object"]
    stamp = their_object.stat().st_mtime_ns
    lines_before = (isolated / "outbox" / "notifications.jsonl").read_text().count("\n")
    mine = start_forgeable(operator, define, [
        {"name": "files.receive", "handler": "files.receive"},
        {"name": "files.checksum", "handler": "test.permanent"},
        {"name": "files.store", "handler": "files.store"},
        {"name": "files.validate", "handler": "test.permanent"},
        {"name": "files.notify", "handler": "files.notify"},
    ], b"mine\n")
    failed_at(mine, "files.checksum")

    skip(operator, mine, {"sha256": their_digest, "size": their_object.stat().st_size})

    doc = failed_at(mine, "files.store")
    assert "SHA-256 is not the one files.checksum recorded" in doc["steps"][2]["error"]["message"]
    skip(operator, mine, {"object": f"objects/{their_digest[:2]}/{their_digest[2:]}",
                          "sha256": their_digest, "created": False})
    doc = failed_at(mine, "files.validate")
    skip(operator, mine, {"type": "text", "size": 5})
    doc = failed_at(mine, "files.notify")
    assert "stored no object" in doc["steps"][4]["error"]["message"]
    assert their_object.stat().st_mtime_ns == stamp
    assert (isolated / "outbox" / "notifications.jsonl").read_text().count("\n") == lines_before


@pytest.mark.slow
def test_start_race__a_thousand_starts_against_changing_versions_never_read_a_server_path(
    operator: Any, isolated: Path, secret: Path, settings: Any, define: Any
) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "API_START_RATE": "100000/minute"}
    plain = [{"name": "echo", "handler": "test.echo"}]
    reading = [{"name": "files.receive", "handler": "files.receive"}]
    define("racy", plain)
    stop = threading.Event()

    def flip() -> None:
        n = 0
        while not stop.wait(0.002):  # a new version every few starts, not thousands of them
            n += 1
            # Each registration differs from the latest, so each is a new version.
            define("racy", (reading if n % 2 else plain), description=f"flip {n}")

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    outcomes: dict[int, int] = {}
    try:
        for _ in range(1000):
            response = operator.post(API + "executions/", {"workflow": "racy", "input": {
                "path": str(secret)}}, format="json")
            outcomes[response.status_code] = outcomes.get(response.status_code, 0) + 1
    finally:
        stop.set()
        flipper.join(10)

    assert set(outcomes) <= {201, 400}, outcomes
    assert outcomes.get(201, 0) > 0 and outcomes.get(400, 0) > 0, f"the race never ran both ways: {outcomes}"
    for doc in store.collection().find({"workflow": "racy"}, {"definition": 1, "input_json": 1}):
        handlers = [s["handler"] for s in doc["definition"]["steps"]]
        assert "files.receive" not in handlers, "a start with input.path landed on a version that reads it"
    assert_untouched(secret, "")
