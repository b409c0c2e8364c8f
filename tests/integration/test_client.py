"""``detflow_client`` against a live server (``live_server``: the API over real HTTP) with real workers."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from detflow_client import (
    ApiError,
    BadRequest,
    Client,
    ClientError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    NotFound,
    Timeout,
    Unauthorized,
)
from tests.integration.test_rundev import free_port

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

#: A workflow whose first step waits for the signal ``approved``.
APPROVAL = [{"name": "approval", "wait": {"signal": "approved", "timeout_s": 3600}}, {"handler": "test.echo"}]


def token(role: str, username: str) -> str:
    from executions import roles

    return roles.grant(username, {"operator": roles.OPERATORS, "viewer": roles.VIEWERS}[role])


@pytest.fixture
def url(live_server: Any, redis_client: Any) -> str:
    redis_client.flushdb()  # the start throttle's counts too
    return f"{live_server.url}/api/v1"


@pytest.fixture
def api(url: str) -> Iterator[Client]:
    """A client signed in as an operator."""
    with Client(url, token("operator", "client-operator")) as client:
        yield client


def test_client__starts_waits_and_reads_every_page_of_the_history(
    api: Client, worker: Any, define: Callable[..., Any]
) -> None:
    define("client-echo", [{"handler": "test.echo"}] * 3)

    started = api.start("client-echo", {"n": 1})
    done = api.wait(started["id"], timeout=20, poll=0.05)
    paged = api.events(started["id"], page_size=2)

    assert started["workflow"] == "client-echo" and started["input"] == {"n": 1}
    assert done["status"] == "SUCCEEDED"
    assert [s["output"]["step"] for s in done["steps"]] == ["s1", "s2", "s3"]
    assert done["event_count"] > 2 * 2  # more than two pages of two
    assert [e["seq"] for e in paged] == list(range(1, done["event_count"] + 1))
    assert paged[0]["type"] == "created" and paged[-1]["type"] == "execution_succeeded"
    assert api.events(started["id"]) == paged
    assert api.events(started["id"], after=3, page_size=2) == paged[3:]


def test_client_start__same_idempotency_key_returns_the_same_execution(
    api: Client, define: Callable[..., Any]
) -> None:
    define("client-echo", [{"handler": "test.echo"}])

    first = api.start("client-echo", {"n": 1}, idempotency_key="order-1")
    again = api.start("client-echo", {"n": 1}, idempotency_key="order-1")
    with pytest.raises(Conflict) as other_input:
        api.start("client-echo", {"n": 2}, idempotency_key="order-1")
    other_key = api.start("client-echo", {"n": 1}, idempotency_key="order-2")

    assert again["id"] == first["id"]
    assert other_key["id"] != first["id"]
    assert other_input.value.status == 409
    assert other_input.value.code == "idempotency_conflict"
    assert "order-1" in other_input.value.detail and first["id"] in other_input.value.detail


def test_client_cancel__of_a_finished_execution_raises_conflict_with_code_and_detail(
    api: Client, worker: Any, define: Callable[..., Any]
) -> None:
    define("client-echo", [{"handler": "test.echo"}])
    done = api.wait(api.start("client-echo", {"n": 1})["id"], timeout=20, poll=0.05)

    with pytest.raises(Conflict) as refused:
        api.cancel(done["id"], "too late")

    assert isinstance(refused.value, ApiError)
    assert (refused.value.status, refused.value.code, refused.value.fields) == (409, "not_allowed", {})
    assert "SUCCEEDED" in refused.value.detail
    assert api.get(done["id"])["status"] == "SUCCEEDED"


def test_client__bad_requests_raise_bad_request_naming_the_field(
    api: Client, define: Callable[..., Any]
) -> None:
    define("client-echo", [{"handler": "test.echo"}])
    define("client-approval", APPROVAL)
    waiting = api.start("client-approval", {"n": 1})

    with pytest.raises(BadRequest) as unknown_workflow:
        api.start("client-echoo", {"n": 1})
    with pytest.raises(BadRequest) as bad_version:
        api.start("client-echo", {"n": 1}, version=0)
    with pytest.raises(BadRequest) as bad_key:
        api.start("client-echo", {"n": 1}, idempotency_key="k" * 201)
    with pytest.raises(BadRequest) as no_such_wait:
        api.signal(waiting["id"], "rejected", {"ok": False})
    with pytest.raises(InvalidRequest):  # requests will not send it: the client says so, not the server
        api.start("client-echo", {"n": 1}, idempotency_key="one\r\nX-Injected: 1")

    assert (unknown_workflow.value.status, unknown_workflow.value.code) == (400, "unknown_workflow")
    assert list(unknown_workflow.value.fields) == ["workflow"]
    assert "client-echo" in unknown_workflow.value.detail  # the known workflows are listed
    assert list(bad_version.value.fields) == ["version"]
    assert list(bad_key.value.fields) == ["Idempotency-Key"]
    assert list(no_such_wait.value.fields) == ["name"]


def test_client__unknown_execution_raises_not_found(api: Client) -> None:
    with pytest.raises(NotFound) as missing:
        api.get("no-such-execution")
    with pytest.raises(NotFound) as no_history:
        api.events("no-such-execution")

    assert (missing.value.status, missing.value.code) == (404, "execution_not_found")
    assert "no-such-execution" in missing.value.detail
    assert no_history.value.code == "execution_not_found"


def test_client__wrong_token_raises_unauthorized_and_a_viewer_starting_forbidden(
    url: str, define: Callable[..., Any]
) -> None:
    define("client-echo", [{"handler": "test.echo"}])
    token("operator", "client-operator")  # a real token exists: the wrong one is still refused

    with Client(url, "0" * 40) as stranger, pytest.raises(Unauthorized) as unknown:
        stranger.get("no-such-execution")
    with Client(url, token("viewer", "client-viewer")) as viewer, pytest.raises(Forbidden) as denied:
        viewer.start("client-echo", {"n": 1})

    assert (unknown.value.status, unknown.value.code) == (401, "authentication_failed")
    assert (denied.value.status, denied.value.code) == (403, "permission_denied")


def test_client__unreachable_server_raises_connection_failed() -> None:
    port = free_port()  # bound then closed: nothing listens on it

    with Client(f"http://127.0.0.1:{port}/api/v1", "0" * 40, timeout=5) as nowhere, \
            pytest.raises(ConnectionFailed) as failed:
        nowhere.get("any")

    assert isinstance(failed.value, ClientError)
    assert isinstance(failed.value.__cause__, requests.ConnectionError)
    assert f"127.0.0.1:{port}" in str(failed.value)


def test_client_wait__times_out_naming_the_status_then_a_signal_finishes_it(
    api: Client, worker: Any, define: Callable[..., Any]
) -> None:
    define("client-approval", APPROVAL)
    execution_id = api.start("client-approval", {"n": 1})["id"]

    with pytest.raises(Timeout) as timed_out:
        api.wait(execution_id, timeout=0.3, poll=0.05)
    with pytest.raises(ValueError, match="poll"):
        api.wait(execution_id, timeout=1, poll=0)
    sent = api.signal(execution_id, "approved", {"ok": True}, reason="approved by the test",
                      idempotency_key="approval-1")
    again = api.signal(execution_id, "approved", {"ok": True}, idempotency_key="approval-1")
    done = api.wait(execution_id, timeout=20, poll=0.05)

    assert timed_out.value.execution_id == execution_id
    assert timed_out.value.status in ("PENDING", "RUNNING")
    assert timed_out.value.status in str(timed_out.value)
    assert timed_out.value.execution["id"] == execution_id
    assert (sent["created"], again["created"], again["signal_index"]) == (True, False, sent["signal_index"])
    assert done["status"] == "SUCCEEDED"
    assert done["steps"][0]["output"] == {"ok": True}
    with pytest.raises(Conflict):
        api.signal(execution_id, "approved", {"ok": True})


def test_client_pause_and_resume__hold_and_release_the_execution(
    api: Client, define: Callable[..., Any]
) -> None:
    define("client-approval", APPROVAL)
    execution_id = api.start("client-approval", {"n": 1})["id"]

    paused = api.pause(execution_id, "hold for the audit")
    held = api.get(execution_id)["paused"]
    with pytest.raises(Conflict) as twice:
        api.pause(execution_id, "again")
    resumed = api.resume(execution_id, "audit done")
    released = api.get(execution_id)["paused"]
    with pytest.raises(Conflict):
        api.resume(execution_id, "not paused")

    assert (paused["action"], paused["dry_run"]) == ("pause", False)
    assert held["execution"]["reason"] == "hold for the audit"
    assert twice.value.code == "not_allowed"
    assert resumed["action"] == "resume"
    assert released == {}


def test_client_retry_and_skip__repair_failed_executions(
    api: Client, worker: Any, define: Callable[..., Any]
) -> None:
    define("client-flaky", [{"handler": "test.flaky"}, {"handler": "test.echo"}])
    define("client-permanent", [{"handler": "test.permanent"}, {"handler": "test.echo"}])
    flaky = api.wait(api.start("client-flaky", {"succeed_on": 99})["id"], timeout=20, poll=0.05)
    broken = api.wait(api.start("client-permanent", {"n": 1})["id"], timeout=20, poll=0.05)

    dry = api.retry(flaky["id"], "look first", input={"succeed_on": 1}, dry_run=True)
    still = api.get(flaky["id"])["status"]
    api.retry(flaky["id"], "the dependency is back", input={"succeed_on": 1})
    api.skip(broken["id"], "done by hand", output={"note": "by hand"}, step="s1")
    retried = api.wait(flaky["id"], timeout=20, poll=0.05)
    skipped = api.wait(broken["id"], timeout=20, poll=0.05)

    assert (flaky["status"], broken["status"]) == ("FAILED", "FAILED")
    assert dry["dry_run"] is True and still == "FAILED"
    assert retried["status"] == "SUCCEEDED"
    assert retried["steps"][0]["input"] == {"succeed_on": 1}
    assert retried["steps"][0]["output"] == {"attempt": 4}
    assert skipped["status"] == "SUCCEEDED"
    assert skipped["steps"][0]["status"] == "SKIPPED"
    assert skipped["steps"][0]["output"] == {"note": "by hand"}


def test_readme__the_client_example_runs_as_written_in_its_own_process(
    url: str, worker: Any, tmp_path: Path, settings: Any
) -> None:
    from workflows import definitions

    settings.DETFLOW = {**settings.DETFLOW, "STORAGE_DIR": str(tmp_path / "storage")}
    [example] = re.findall(r"<!-- client-example -->\n```python\n(.*?)```", README.read_text(), re.DOTALL)
    (tmp_path / "example.py").write_text(example)
    definitions.register({"name": "upload-check", "steps": [
        {"name": "files.receive", "handler": "files.receive"},
        {"name": "files.validate", "handler": "files.validate"},
        {"name": "files.checksum", "handler": "files.checksum"}]})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DETFLOW_"))}
    env.update(DETFLOW_API=url, TOKEN=token("operator", "readme-client"), PYTHONPATH=str(ROOT))

    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=90)

    assert done.returncode == 0, done.stderr[-3000:]
    status, rest = done.stdout.splitlines()[0].split(" ", 1)
    assert status == "SUCCEEDED" and "'execution_succeeded'" in rest
    assert done.stdout.splitlines()[1].startswith("not_allowed ")
