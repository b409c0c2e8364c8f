"""Schedules: one execution per scheduled time, whatever the number of firers; overlap; catch-up."""
from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from executions import operations, schedules, store
from executions.engine import TERMINAL
from executions.errors import InvalidArgument
from executions.sweeper import Sweeper
from tests.conftest import wait_for, wait_terminal
from tests.wire import WireStore, wire_store_fixture  # noqa: F401
from workflows.models import WorkflowDefinition

ROOT = Path(__file__).resolve().parents[2]

#: A whole second (epoch ms), so an every-second schedule's times fall on T0 + k * 1000.
T0 = 1_800_000_000_000


@pytest.fixture(autouse=True)
def no_schedules() -> Iterator[None]:
    schedules.collection().delete_many({})
    yield
    schedules.collection().delete_many({})


def keyed(schedule_id: str) -> Counter[str]:
    """Count the executions started for each time of a schedule, by idempotency key."""
    found = store.collection().find({"idempotency_key": {"$regex": f"^schedule:{schedule_id}:"}},
                                    {"idempotency_key": 1})
    return Counter(d["idempotency_key"] for d in found)


def test_fire_due__two_interleaved_firers_start_one_execution_per_second_for_100_s(
    broker: Any, define: Any
) -> None:
    define("tick", [{"handler": "test.echo"}])
    doc = schedules.create("tick", "* * * * * *", {"n": 1}, overlap="allow", catch_up_s=1000, now=T0)
    nows = [T0 + 500 * k for k in range(202)]  # 0.0 .. 100.5 s
    rng = random.Random(7)

    def firer() -> None:
        for now in nows:
            if rng.random() < 0.3:
                threading.Event().wait(0.0005)  # shuffle the two firers' interleaving
            schedules.fire_due(now)

    threads = [threading.Thread(target=firer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = keyed(doc["_id"])
    assert len(counts) == 101
    assert set(counts.values()) == {1}
    after = schedules.get(doc["_id"])
    assert store.to_ms(after["next_fire_at"]) == T0 + 101_000


def test_sweepers__two_real_sweepers_fire_each_time_once(broker: Any, define: Any) -> None:
    define("tick", [{"handler": "test.echo"}])
    doc = schedules.create("tick", "* * * * * *", overlap="allow")
    sweepers = [Sweeper(interval_s=0.05, exclusive=False) for _ in range(2)]
    for s in sweepers:
        s.start()
    try:
        wait_for(lambda: sum(keyed(doc["_id"]).values()) >= 3, timeout=20, what="3 scheduled executions")
    finally:
        for s in sweepers:
            s.stop()
    counts = keyed(doc["_id"])
    assert set(counts.values()) == {1}
    assert all(store.load(d["_id"])["created_by"] == f"schedule:{doc['_id']}"  # type: ignore[index]
               for d in store.collection().find({"idempotency_key": {"$in": list(counts)}}, {"_id": 1}))


def test_fire_due__skip_overlap_skips_while_the_last_runs_and_paused_fires_nothing(
    broker: Any, define: Any
) -> None:
    define("tick", [{"handler": "test.echo"}])
    doc = schedules.create("tick", "* * * * * *", now=T0)
    assert len(schedules.fire_due(T0).started) == 1
    report = schedules.fire_due(T0 + 1000)  # no worker: the first is still PENDING
    assert (report.started, report.skipped) == ([], 1)
    schedules.set_paused(doc["_id"], True)
    assert schedules.fire_due(T0 + 5000).started == []
    assert sum(keyed(doc["_id"]).values()) == 1


def test_fire_due__skip_overlap_fires_again_once_the_last_ended(broker: Any, define: Any) -> None:
    define("tick", [{"handler": "test.echo"}])
    schedules.create("tick", "* * * * * *", now=T0)
    (first,) = schedules.fire_due(T0).started
    operations.cancel(first, by="op", reason="ends it")
    wait_terminal(first)
    assert len(schedules.fire_due(T0 + 1000).started) == 1


def test_fire_due__cancel_previous_cancels_the_running_one_then_starts(broker: Any, define: Any) -> None:
    define("tick", [{"handler": "test.echo"}])
    schedules.create("tick", "* * * * * *", overlap="cancel_previous", now=T0)
    (first,) = schedules.fire_due(T0).started
    (second,) = schedules.fire_due(T0 + 1000).started
    assert second != first
    old = store.load(first)
    assert old is not None and old["status"] == "CANCELLED"
    assert old["status"] in TERMINAL
    assert any(e.get("by") == f"schedule:{schedules.listed()[0]['_id']}" for e in old["events"])


def test_fire_due__catch_up_s_bounds_the_missed_times_fired(broker: Any, define: Any) -> None:
    define("tick", [{"handler": "test.echo"}])
    none = schedules.create("tick", "* * * * * *", overlap="allow", now=T0)
    some = schedules.create("tick", "* * * * * *", overlap="allow", catch_up_s=3, now=T0)
    report = schedules.fire_due(T0 + 10_000)  # ten seconds with no sweeper
    assert sum(keyed(none["_id"]).values()) == 1  # only the latest time
    assert sorted(keyed(some["_id"])) == sorted(
        f"schedule:{some['_id']}:{t}" for t in ("2027-01-15T08:00:07+00:00", "2027-01-15T08:00:08+00:00",
                                                "2027-01-15T08:00:09+00:00", "2027-01-15T08:00:10+00:00"))
    assert report.missed == 10 + 7


def test_fire_due__a_long_outage_fires_at_most_max_fires_per_call(broker: Any, define: Any) -> None:
    define("tick", [{"handler": "test.echo"}])
    doc = schedules.create("tick", "* * * * * *", overlap="allow", catch_up_s=10_000, now=T0)
    assert len(schedules.fire_due(T0 + 1_000_000).started) == schedules.MAX_FIRES
    assert store.to_ms(schedules.get(doc["_id"])["next_fire_at"]) == T0 + 1000 * schedules.MAX_FIRES


@pytest.mark.parametrize(("change", "field"), [
    ({"cron": "every minute"}, "cron"),
    ({"cron": "* * *"}, "cron"),
    ({"cron": "0 0 31 2 *"}, "cron"),
    ({"timezone_name": "Mars/Olympus"}, "timezone"),
    ({"timezone_name": "Europe"}, "timezone"),
    ({"catch_up_s": float("nan")}, "catch_up_s"),
    ({"workflow": "nope"}, "workflow"),
    ({"overlap": "sometimes"}, "overlap"),
    ({"catch_up_s": -1}, "catch_up_s"),
])
def test_create__bad_argument_names_its_field_and_stores_nothing(
    define: Any, change: dict[str, Any], field: str
) -> None:
    define("tick", [{"handler": "test.echo"}])
    args: dict[str, Any] = {"workflow": "tick", "cron": "*/5 * * * *", **change}
    with pytest.raises(InvalidArgument) as raised:
        schedules.create(args.pop("workflow"), args.pop("cron"), **args)
    assert raised.value.field == field
    assert schedules.listed() == []


def test_create__fires_in_its_timezone(define: Any) -> None:
    define("tick", [{"handler": "test.echo"}])
    paris = schedules.create("tick", "0 8 * * *", timezone_name="Europe/Paris", now=T0)
    utc = schedules.create("tick", "0 8 * * *", now=T0)
    # T0 is 2027-01-15 08:00 UTC, 09:00 in Paris (winter): 08:00 Paris is 07:00 UTC, the next day.
    assert store.to_ms(paris["next_fire_at"]) == T0 + 23 * 3_600_000
    assert store.to_ms(utc["next_fire_at"]) == T0


def test_command__create_list_pause_resume_delete(define: Any) -> None:
    define("tick", [{"handler": "test.echo"}])
    out = StringIO()
    call_command("schedules", "create", "--workflow", "tick", "--cron", "*/5 * * * *",
                 "--input", '{"a": 1}', "--overlap", "allow", stdout=out)
    (doc,) = schedules.listed()
    assert doc["input"] == {"a": 1} and doc["overlap"] == "allow"
    call_command("schedules", "pause", doc["_id"], stdout=out)
    assert schedules.get(doc["_id"])["paused"] is True
    call_command("schedules", "resume", doc["_id"], stdout=out)
    call_command("schedules", "list", stdout=out)
    assert f"{doc['_id']} tick '*/5 * * * *' UTC allow next" in out.getvalue()
    call_command("schedules", "delete", doc["_id"], stdout=out)
    assert schedules.listed() == []
    with pytest.raises(CommandError, match="cron"):
        call_command("schedules", "create", "--workflow", "tick", "--cron", "nope")
    with pytest.raises(CommandError, match="--input: not JSON"):
        call_command("schedules", "create", "--workflow", "tick", "--cron", "* * * * *", "--input", "{")
    with pytest.raises(CommandError, match="no schedule"):
        call_command("schedules", "pause", "missing")


def test_command__in_its_own_process_against_a_runstore(define: Any, wire_store: WireStore) -> None:
    define("tick", [{"handler": "test.echo"}])
    env = {**wire_store.environ("test_schedules_command"), "DJANGO_SQLITE_PATH": ":memory:"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    with wire_store.client() as client:
        database = client["test_schedules_command"]
        try:
            assert run("ensure_indexes").returncode == 0
            database["workflow_definitions"].insert_many(list(WorkflowDefinition._get_collection().find()))
            made = run("schedules", "create", "--workflow", "tick", "--cron", "*/5 * * * *")
            assert made.returncode == 0, made.stderr
            (doc,) = database["schedules"].find()
            assert made.stdout.startswith(f"created {doc['_id']} tick")
            paused = run("schedules", "pause", doc["_id"])
            assert paused.returncode == 0, paused.stderr
            assert database["schedules"].find_one()["paused"] is True  # type: ignore[index]
            listed = run("schedules", "list")
            assert listed.stdout.strip().endswith("paused"), listed.stdout
            for args, says in [(["create", "--workflow", "tick", "--cron", "nope"], "cron: "),
                               (["create", "--workflow", "ghost", "--cron", "* * * * *"], "workflow: "),
                               (["create", "--workflow", "tick", "--cron", "* * * * *", "--timezone", "X/Y"],
                                "timezone: "),
                               (["delete", "missing"], "no schedule has id")]:
                bad = run("schedules", *args)
                assert bad.returncode != 0, args
                assert len(bad.stderr.strip().splitlines()) == 1 and says in bad.stderr, bad.stderr
            assert run("schedules", "delete", doc["_id"]).returncode == 0
            assert database["schedules"].count_documents({}) == 0
        finally:
            client.drop_database("test_schedules_command")
