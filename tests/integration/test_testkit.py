"""The handler authors' test kit (``executions.testing``): a workflow run to its end in the test's
process with the real engine and the embedded store, no Redis, no worker and the kit's clock."""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis.connection

from detflow_site import conf, embedded, times
from executions import dispatch, operations, runner, signals, store
from executions.testing import HistoryDoesNotReplay, TestKit
from workflows.context import StepContext
from workflows.errors import PermanentError
from workflows.registry import step

#: Handler calls by ``(step, attempt)``.
CALLS: Counter[tuple[str, int]] = Counter()
#: What an external system saw: one effect per idempotency key, however often it was asked.
GATEWAY: dict[str, Any] = {}


@step("kit.flaky")
def flaky(ctx: StepContext) -> dict[str, Any]:
    """Fail the first two attempts, succeed the third."""
    CALLS[(ctx.step, ctx.attempt)] += 1
    if ctx.attempt < 3:
        raise RuntimeError(f"gateway down (attempt {ctx.attempt})")
    return {"attempt": ctx.attempt}


@step("kit.charge")
def charge(ctx: StepContext) -> dict[str, Any]:
    """Charge once per idempotency key, however often it runs."""
    CALLS[(ctx.step, ctx.attempt)] += 1
    receipt = GATEWAY.setdefault(ctx.idempotency_key, f"r-{ctx.input['order']}-{len(GATEWAY)}")
    return {"receipt": receipt}


@step("kit.refuse")
def refuse(ctx: StepContext) -> None:
    CALLS[(ctx.step, ctx.attempt)] += 1
    raise PermanentError(f"card {ctx.input['order']} declined")


@step("kit.refund")
def refund(ctx: StepContext) -> dict[str, Any]:
    assert ctx.compensation is not None
    CALLS[(ctx.step + ":compensate", ctx.attempt)] += 1
    GATEWAY.setdefault(ctx.idempotency_key, "refunded")
    return {"refunded": ctx.compensation.step_output, "cause": ctx.compensation.cause}


@step("kit.echo")
def echo(ctx: StepContext) -> dict[str, Any]:
    CALLS[(ctx.step, ctx.attempt)] += 1
    return {"input": ctx.input, "outputs": dict(ctx.outputs)}


RETRY = {"max_attempts": 3, "initial_delay_s": 30, "multiplier": 2, "max_delay_s": 600, "jitter": 0}


@pytest.fixture(autouse=True)
def no_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse every Redis connection and the embedded redis-server: the kit needs neither."""
    tried: list[str] = []

    def refused(self: Any, *args: Any, **kwargs: Any) -> None:
        tried.append(repr(self))
        raise AssertionError(f"the test kit connected to Redis: {self!r}")

    def no_server() -> None:
        tried.append("embedded redis-server")
        raise AssertionError("the test kit started the embedded redis-server")

    monkeypatch.setattr(redis.connection.AbstractConnection, "connect", refused)
    # A client connected before the test (its pool kept the connection) is caught at its command.
    monkeypatch.setattr(redis.Redis, "execute_command", refused)
    monkeypatch.setattr(embedded, "redis_server", no_server)
    CALLS.clear()
    GATEWAY.clear()
    yield tried
    assert tried == [], f"Redis was used: {tried}"


@pytest.fixture
def kit() -> Iterator[TestKit]:
    with TestKit() as opened:
        yield opened


def test_retry__fails_twice_then_succeeds_at_once_on_the_kits_clock(kit: TestKit) -> None:
    wall = time.monotonic()
    run = kit.run({"name": "kit-retry", "steps": [{"name": "pay", "handler": "kit.flaky", "retry": RETRY}]},
                  {"order": 1})
    assert run.status == "SUCCEEDED" and run.steps == {"pay": "SUCCEEDED"}
    assert run.output("pay") == {"attempt": 3}
    assert [a["outcome"] for a in run.attempts("pay")] == ["failed", "failed", "succeeded"]
    assert CALLS == {("pay", 1): 1, ("pay", 2): 1, ("pay", 3): 1}
    # The backoff (30 s, then 60 s) passed on the kit's clock, not the wall's.
    assert kit.elapsed_s == 90.0
    assert time.monotonic() - wall < 10
    assert run.events.count("attempt_failed") == 2 and run.events[-1] == "execution_succeeded"
    # The engine's messages were recorded, not sent; its end was announced to the kit.
    assert kit.sent and {s.execution_id for s in kit.sent} == {run.id}
    assert kit.finished == [(run.id, "SUCCEEDED")]


def test_sleep__an_hour_passes_at_once(kit: TestKit) -> None:
    run = kit.run({"name": "kit-nap", "steps": [{"name": "first", "handler": "kit.echo"},
                                                {"name": "nap", "sleep": {"seconds": 3600}},
                                                {"name": "after", "handler": "kit.echo"}]}, {"n": 1})
    assert run.status == "SUCCEEDED" and kit.elapsed_s == 3600.0
    assert run.output("nap") == {"slept_until": store.to_dt(kit.start_ms + 3_600_000).isoformat() + "Z"}
    assert run.output("after")["outputs"]["nap"] == run.output("nap")


def test_crash_after__the_handler_runs_again_and_the_step_succeeds_once(kit: TestKit) -> None:
    run = kit.run({"name": "kit-crash", "steps": [{"name": "charge", "handler": "kit.charge", "retry": RETRY},
                                                  {"name": "notify", "handler": "kit.echo"}]},
                  {"order": 7}, crash_after="charge")
    assert run.crashed == ["charge"]
    assert run.status == "SUCCEEDED" and run.steps == {"charge": "SUCCEEDED", "notify": "SUCCEEDED"}
    # The handler ran twice (attempt 1, whose outcome the crash lost, and attempt 2); its effect,
    # keyed by the idempotency key, happened once; the step succeeded once.
    assert CALLS[("charge", 1)] == 1 and CALLS[("charge", 2)] == 1
    assert list(GATEWAY) == [f"{run.id}:charge"] and run.output("charge") == {"receipt": "r-7-0"}
    assert [a["outcome"] for a in run.attempts("charge")] == ["lost", "succeeded"]
    assert run.events.count("step_succeeded") == 2 and run.events.count("attempt_lost") == 1
    # Recovery waited for the lease to run out, then for the retry's delay: on the kit's clock.
    assert kit.elapsed_s >= conf.get().LEASE_S + 30


def test_permanent_failure__ends_failed_with_the_error(kit: TestKit) -> None:
    run = kit.run({"name": "kit-fail", "steps": [{"name": "charge", "handler": "kit.refuse", "retry": RETRY},
                                                 {"name": "notify", "handler": "kit.echo"}]}, {"order": 9})
    assert run.status == "FAILED" and run.steps == {"charge": "FAILED", "notify": "PENDING"}
    error = run.error("charge")
    assert error is not None
    assert error["type"] == "workflows.errors.PermanentError" and error["message"] == "card 9 declined"
    assert CALLS == {("charge", 1): 1} and kit.elapsed_s == 0


def test_compensate__the_succeeded_steps_are_undone_newest_first(kit: TestKit) -> None:
    run = kit.run({"name": "kit-undo", "on_failure": "compensate", "steps": [
        {"name": "reserve", "handler": "kit.charge", "compensate": {"handler": "kit.refund"}},
        {"name": "capture", "handler": "kit.refuse"},
    ]}, {"order": 3})
    assert run.status == "COMPENSATED" and run.compensations == {"reserve": "SUCCEEDED"}
    assert run.steps == {"reserve": "SUCCEEDED", "capture": "FAILED"}
    assert CALLS[("reserve:compensate", 1)] == 1
    assert list(GATEWAY) == [f"{run.id}:reserve", f"{run.id}:reserve:compensate"]
    assert run.events[-1] == "execution_compensated" and "rollback_started" in run.events


def test_wait__stops_for_the_signal_and_goes_on_with_it(kit: TestKit) -> None:
    definition = {"name": "kit-approve", "steps": [
        {"name": "approval", "wait": {"signal": "approved", "timeout_s": 86400}},
        {"name": "after", "handler": "kit.echo"}]}
    run = kit.run(definition, {"n": 1})
    assert (run.status, run.waiting, run.steps["approval"]) == ("RUNNING", "approval", "WAITING")
    kit.advance(3600)  # an hour is not the timeout: it still waits
    done = kit.signal(run.id, "approved", {"by": "ann"})
    assert done.status == "SUCCEEDED" and done.output("approval") == {"by": "ann"}
    assert done.waiting is None and kit.elapsed_s == 3600


def test_wait__its_timeout_passes_when_the_clock_gets_there(kit: TestKit) -> None:
    definition = {"name": "kit-timeout", "steps": [
        {"name": "approval", "wait": {"signal": "approved", "timeout_s": 86400, "on_timeout": "fail"}},
        {"name": "after", "handler": "kit.echo"}]}
    first = kit.run(definition, {"n": 1})
    assert first.waiting == "approval"
    kit.advance(86400)  # drives every execution the kit started: the timeout is due
    timed_out = kit.drive(first.id)
    at_once = kit.run(definition, {"n": 2}, timeouts=True)
    for run in (timed_out, at_once):
        assert run.status == "FAILED" and run.steps == {"approval": "FAILED", "after": "PENDING"}
    assert not CALLS and kit.elapsed_s == 2 * 86400


def test_registered_workflow__runs_by_name(kit: TestKit, define: Any) -> None:
    define("kit-named", [{"name": "a", "handler": "kit.echo"}, {"name": "b", "handler": "kit.echo"}])
    run = kit.run("kit-named", {"x": 1})
    assert run.status == "SUCCEEDED"
    assert run.output("b")["outputs"] == {"a": {"input": {"x": 1}, "outputs": {}}}


def test_a_history_that_does_not_replay__fails_loudly(kit: TestKit) -> None:
    run = kit.run({"name": "kit-tamper", "steps": [{"name": "a", "handler": "kit.echo"}]}, {})
    store.collection().update_one({"_id": run.id}, {"$inc": {"event_seq": 1}})
    try:
        with pytest.raises(HistoryDoesNotReplay, match="event_seq is"):
            kit.drive(run.id)
    finally:
        store.collection().delete_one({"_id": run.id})  # the suite's own audit would refuse it too


def test_closing__puts_back_what_the_kit_replaced() -> None:
    before = (dispatch.send, runner.Attempt, runner.step_slot, signals.execution_finished)
    with TestKit() as kit:
        assert store.now_ms() == runner.now_ms() == kit.now_ms
        assert dispatch.send is not before[0]
        kit.advance(5)
        assert store.now_ms() == kit.start_ms + 5000
    assert (dispatch.send, runner.Attempt, runner.step_slot, signals.execution_finished) == before
    assert store.now_ms is times.now_ms and runner.now_ms is times.now_ms
    with pytest.raises(RuntimeError, match="open the TestKit first"):
        kit.run("kit-named")


def test_an_operator_action__then_drive_goes_on(kit: TestKit) -> None:
    run = kit.run({"name": "kit-op", "steps": [{"name": "charge", "handler": "kit.refuse"}]}, {"order": 1})
    assert run.status == "FAILED"
    operations.skip(run.id, by="ann", reason="charged by hand", output={"receipt": "manual"})
    after = kit.drive(run.id)
    assert after.status == "SUCCEEDED" and after.output("charge") == {"receipt": "manual"}


def test_no_redis_fixture__refuses_a_connection(no_redis: list[str]) -> None:
    with pytest.raises(AssertionError, match="connected to Redis"):
        redis.Redis(host="127.0.0.1", port=1).ping()
    assert no_redis
    no_redis.clear()


AUTHOR_HANDLERS = '''
from workflows.registry import step

CALLS = []


@step("myapp.charge")
def charge(ctx):
    CALLS.append(ctx.attempt)
    if ctx.attempt == 2:
        raise RuntimeError("gateway down")
    return {"charged": ctx.input["order"]}
'''

AUTHOR_TEST = '''
from executions.testing import TestKit
from myapp import handlers

ORDERS = {"name": "orders", "steps": [
    {"name": "charge", "handler": "myapp.charge",
     "retry": {"max_attempts": 4, "initial_delay_s": 60, "jitter": 0}},
    {"name": "nap", "sleep": {"seconds": 3600}},
]}


def test_orders():
    with TestKit() as kit:
        run = kit.run(ORDERS, {"order": 1}, crash_after="charge")
        assert run.status == "SUCCEEDED", run.events
        assert handlers.CALLS == [1, 2, 3] and run.crashed == ["charge"]
        assert [a["outcome"] for a in run.attempts("charge")] == ["lost", "failed", "succeeded"]
        # The lease (30 s by default), the backoff and the sleep passed on the kit's clock.
        assert kit.elapsed_s >= 30 + 60 + 3600
        assert not kit.sent or all(s.execution_id == run.id for s in kit.sent)
'''


def test_an_authors_own_pytest_django_test__runs_with_detflows_settings_and_no_redis(
    tmp_path: Any, no_redis: list[str]
) -> None:
    """An author's test in their own process (detflow's production settings, the embedded store),
    with DETFLOW_REDIS_URL at a port that listens and records: nothing connects to it."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "handlers.py").write_text(AUTHOR_HANDLERS)
    (tmp_path / "test_author.py").write_text(AUTHOR_TEST)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("DETFLOW_", "DJANGO_"))}
        environ.update(DJANGO_SETTINGS_MODULE="detflow_site.settings", DJANGO_SQLITE_PATH=":memory:",
                       DETFLOW_HANDLER_MODULES="myapp.handlers",
                       DETFLOW_REDIS_URL=f"redis://127.0.0.1:{port}/0",
                       PYTHONPATH=os.pathsep.join([str(root), str(tmp_path)]))
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 "test_author.py"], cwd=tmp_path, env=environ, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 passed" in result.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection came


def test_crash_after__a_lost_attempt_counts_against_the_policy(kit: TestKit) -> None:
    run = kit.run({"name": "kit-once", "steps": [{"name": "charge", "handler": "kit.charge",
                                                 "retry": {"max_attempts": 1}}]},
                  {"order": 2}, crash_after="charge")
    assert run.crashed == ["charge"] and run.status == "FAILED"
    assert [a["outcome"] for a in run.attempts("charge")] == ["lost"]
    error = run.error("charge")
    assert error is not None and error["type"] == "AttemptLost"
    assert CALLS == {("charge", 1): 1}
