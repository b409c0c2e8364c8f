"""Retention: finished executions past their window go, with their history, insight and files."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from detflow_site import retention
from detflow_site.times import now_ms
from executions import operations, signals, store
from executions.sweeper import Sweeper
from insights import service
from insights.models import Insight
from tests.conftest import wait_for, wait_terminal
from tests.integration.admin.test_indexes import covered, declared_indexes, queries  # noqa: F401
from tests.wire import WireStore, wire_store_fixture  # noqa: F401
from workflows.models import WorkflowDefinition

ROOT = Path(__file__).resolve().parents[2]
DAY = retention.DAY_MS


@pytest.fixture
def storage(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    (root / "uploads").mkdir(parents=True)
    settings.DETFLOW = {**settings.DETFLOW, "STORAGE_DIR": str(root)}
    return root


def finished(workflow: str, count: int = 1, data: Any = None) -> list[str]:
    ids = [operations.start(workflow, {} if data is None else data)[0]["_id"] for _ in range(count)]
    wait_terminal(*ids)
    return ids


def exists(execution_id: str) -> bool:
    return store.collection().find_one({"_id": execution_id}, {"_id": 1}) is not None


def lines(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") as handle:
        return [json.loads(line) for line in handle]


def set_retention(workflow: str, days: int) -> None:
    WorkflowDefinition._get_collection().update_many({"name": workflow}, {"$set": {"retention_days": days}})


def test_purge__removes_exactly_the_finished_executions_past_the_window(worker: Any, define: Any) -> None:
    define("old", [{"handler": "test.echo"}])
    define("asleep", [{"name": "nap", "sleep": {"seconds": 3600}}])
    gone = finished("old", 2)
    kept = finished("old", 1)
    sleeping = operations.start("asleep", {})[0]["_id"]
    wait_for(lambda: store.load(sleeping)["steps"][0]["status"] == "WAITING", what="the sleep")  # type: ignore[index]
    now = now_ms()
    store.collection().update_many({"_id": {"$in": gone}},
                                   {"$set": {"finished_at": store.to_dt(now - 31 * DAY)}})
    store.collection().update_one({"_id": sleeping}, {"$set": {"created_at": store.to_dt(now - 400 * DAY)}})
    report = retention.purge(now)
    assert sorted(report.removed) == sorted(gone)
    assert not any(exists(i) for i in gone)
    assert all(exists(i) for i in [*kept, sleeping])
    assert store.history().count_documents({"execution_id": {"$in": gone}}) == 0
    assert retention.purge(now).removed == []


def test_sweeper__runs_the_retention_pass_once_an_interval(worker: Any, define: Any, settings: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    define("aging", [{"handler": "test.echo"}])
    gone, kept, aged_later = finished("aging", 2), finished("aging", 1), finished("aging", 1)
    age(gone)
    settings.DETFLOW = {**settings.DETFLOW, "PURGE_INTERVAL_S": 3600}
    monkeypatch.setattr(retention, "_last_pass", [float("-inf")])
    sweeps: list[int] = []

    def count(now: int, **_: Any) -> None:
        sweeps.append(now)

    signals.swept.connect(count, dispatch_uid="test-retention-count")
    sweeper = Sweeper(interval_s=0.05)
    sweeper.start()
    try:
        wait_for(lambda: not any(exists(i) for i in gone), what="the sweeper's retention pass")
        age(aged_later)
        seen = len(sweeps)
        wait_for(lambda: len(sweeps) >= seen + 3, what="three more sweeps")
    finally:
        sweeper.stop()
        signals.swept.disconnect(dispatch_uid="test-retention-count")
    assert all(exists(i) for i in kept)
    assert exists(aged_later[0])  # one pass an interval: the next one is an hour away


def age(ids: list[str], days: int = 31) -> None:
    store.collection().update_many({"_id": {"$in": ids}},
                                   {"$set": {"finished_at": store.to_dt(now_ms() - days * DAY)}})


def test_purge__a_workflow_retention_days_beats_the_default_and_zero_keeps_forever(
        worker: Any, define: Any, settings: Any) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "RETENTION_DAYS": 10}
    for name in ("short", "default", "forever"):
        define(name, [{"handler": "test.echo"}])
    short, default, forever = (finished(name)[0] for name in ("short", "default", "forever"))
    set_retention("short", 2)
    set_retention("forever", 0)
    later = now_ms() + 3 * DAY
    assert retention.purge(later).removed == [short]
    assert retention.purge(later + 10 * DAY).removed == [default]
    assert retention.purge(later + 10_000 * DAY).removed == []
    assert exists(forever)


def test_purge__the_export_holds_each_removed_execution_once_with_its_history(
        worker: Any, define: Any, tmp_path: Path) -> None:
    define("exp", [{"handler": "test.echo"}, {"handler": "test.echo"}])
    ids = finished("exp", 5)
    first = retention.purge(now_ms() + 31 * DAY, limit=3, export_to=tmp_path)
    second = retention.purge(now_ms() + 31 * DAY + 1, limit=3, export_to=tmp_path)
    assert len(first.removed) == 3 and len(second.removed) == 2
    exported = [item for path in sorted(tmp_path.glob("*.jsonl.gz")) for item in lines(path)]
    assert sorted(item["id"] for item in exported) == sorted(ids)
    for item in exported:
        assert item["status"] == "SUCCEEDED"
        assert [e["seq"] for e in item["events"]] == list(range(1, item["event_count"] + 1))
        assert item["events"][0]["type"] == "created"


def test_purge__insights_and_upload_files_go_with_the_execution(
        worker: Any, define: Any, storage: Path) -> None:
    define("files", [{"handler": "files.receive"}])
    upload = storage / "uploads" / "a1"
    upload.write_bytes(b"hello")
    (execution_id,) = finished("files", data={"path": "uploads/a1"})
    inbox = storage / "inbox" / execution_id
    assert inbox.is_file()
    service.postmortem(execution_id)
    assert Insight.objects(execution_id=execution_id).count() == 1
    report = retention.purge(now_ms() + 31 * DAY)
    assert report.removed == [execution_id]
    assert sorted(report.files) == sorted([f"inbox/{execution_id}", "uploads/a1"])
    assert not upload.exists() and not inbox.exists()
    assert Insight.objects(execution_id=execution_id).count() == 0


def test_purge__never_touches_a_path_outside_the_upload_dir(
        worker: Any, define: Any, storage: Path, tmp_path: Path) -> None:
    define("files", [{"handler": "files.receive"}])
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"keep me")
    (storage / "uploads" / "link").symlink_to(outside)
    (storage / "objects").mkdir()
    other = storage / "objects" / "kept"
    other.write_bytes(b"shared")
    names = [str(outside), "uploads/link", "uploads/../objects/kept", "../precious.txt"]
    ids = [finished("files", data={"path": name})[0] for name in names]
    # An execution whose stored input was changed to name a file elsewhere after it ran.
    (ran,) = finished("files", data={"content_b64": "aGk="})
    store.collection().update_one({"_id": ran}, {"$set": {"input_json": json.dumps({"path": str(outside)})}})
    report = retention.purge(now_ms() + 31 * DAY)
    assert sorted(report.removed) == sorted([*ids, ran])
    assert report.files == [f"inbox/{ran}"]
    assert outside.read_bytes() == b"keep me" and other.read_bytes() == b"shared"
    assert (storage / "uploads" / "link").is_symlink()


def test_purge__dry_run_removes_nothing(worker: Any, define: Any) -> None:
    define("dry", [{"handler": "test.echo"}])
    ids = finished("dry", 2)
    out = []
    call_command("purge", "--dry-run", stdout=_Sink(out))
    assert out == ["would remove 0 execution(s) and 0 file(s)\n"]
    report = retention.purge(now_ms() + 31 * DAY, dry_run=True)
    assert sorted(report.removed) == sorted(ids) and all(exists(i) for i in ids)


def test_purge_and_export__run_only_indexed_queries(worker: Any, define: Any, tmp_path: Path,
                                                     queries: Any) -> None:  # noqa: F811
    define("idx", [{"handler": "test.echo"}])
    finished("idx", 2)
    queries.queries.clear()
    retention.purge(now_ms() + 31 * DAY, limit=1, export_to=tmp_path)
    retention.export(tmp_path / "all.jsonl.gz", "idx", now_ms() + DAY)
    recorded = [q for q in queries.queries
                if q.collection in ("executions", "insights", "workflow_definitions")]
    assert any(q.collection == "executions" and "finished_at" in q.filter for q in recorded)
    indexes = declared_indexes()
    # A fenced removal matches _id (and version, status): the unique _id index serves it.
    by_id = [q for q in recorded if isinstance(q.filter.get("_id"), str)]
    assert by_id and all(q.command == "find" for q in by_id)
    assert [q for q in recorded if q not in by_id and not covered(q, indexes)] == []


def test_export_command__writes_and_with_purge_removes(worker: Any, define: Any, tmp_path: Path) -> None:
    define("a", [{"handler": "test.echo"}])
    define("b", [{"handler": "test.echo"}])
    a_ids, b_ids = finished("a", 2), finished("b", 1)
    call_command("export", "--out", str(tmp_path / "a.jsonl.gz"), "--workflow", "a", stdout=_Sink([]))
    assert sorted(i["id"] for i in lines(tmp_path / "a.jsonl.gz")) == sorted(a_ids)
    assert all(exists(i) for i in a_ids)
    call_command("export", "--out", str(tmp_path / "p.jsonl.gz"), "--purge",
                 "--finished-before", "2999-01-01T00:00:00Z", stdout=_Sink([]))
    assert sorted(i["id"] for i in lines(tmp_path / "p.jsonl.gz")) == sorted(a_ids + b_ids)
    assert not any(exists(i) for i in a_ids + b_ids)
    call_command("export", "--out", str(tmp_path / "none.jsonl.gz"),
                 "--finished-before", "2000-01-01", stdout=_Sink([]))
    assert lines(tmp_path / "none.jsonl.gz") == []


@pytest.mark.parametrize(("args", "says"), [
    (["--out", "x.json"], "must name a .jsonl.gz file"),
    (["--out", "/nonexistent-dir/x.jsonl.gz"], "does not exist"),
    (["--out", "OUT", "--finished-before", "yesterday"], "is not an ISO 8601 time"),
    (["--out", "OUT", "--workflow", "nope"], "is not registered"),
])
def test_export_command__bad_input_is_refused(db: None, tmp_path: Path, args: list[str], says: str) -> None:
    args = [str(tmp_path / "o.jsonl.gz") if a == "OUT" else a for a in args]
    with pytest.raises(CommandError, match=says):
        call_command("export", *args)
    assert not (tmp_path / "o.jsonl.gz").exists()


class _Sink:
    def __init__(self, into: list[str]) -> None:
        self.into = into

    def write(self, text: str) -> None:
        self.into.append(text if text.endswith("\n") else text + "\n")

    def flush(self) -> None:
        pass


@pytest.fixture
def wire_db(wire_store: WireStore, request: pytest.FixtureRequest) -> Iterator[tuple[WireStore, Any, str]]:
    """A database of the ``runstore`` with the indexes, for commands run as processes of their own."""
    name = f"test_retention_{request.node.name[-40:].strip('[]').replace('-', '_')}"[:60]
    env = wire_store.environ(name)
    subprocess.run([sys.executable, "manage.py", "ensure_indexes"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)
    with wire_store.client() as client:
        yield wire_store, client[name], name
        client.drop_database(name)


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**env, "DJANGO_SQLITE_PATH": ":memory:"}, timeout=120)


def test_commands__in_their_own_process_purge_and_export(
        worker: Any, define: Any, tmp_path: Path, wire_db: tuple[WireStore, Any, str]) -> None:
    wire, database, name = wire_db
    define("copied", [{"handler": "test.echo"}])
    ids = finished("copied", 3)
    # Copy what the real engine stored here into the runstore the commands' processes use.
    database["workflow_definitions"].insert_many(list(WorkflowDefinition._get_collection().find()))
    database["executions"].insert_many(list(store.collection().find({"_id": {"$in": ids}})))
    database["execution_history"].insert_many(
        [{"execution_id": ids[0], "first_seq": 1, "events": []}])
    env = wire.environ(name)
    old = store.to_dt(now_ms() - 31 * DAY)
    database["executions"].update_many({"_id": {"$in": ids[:2]}}, {"$set": {"finished_at": old}})
    dry = manage(env, "purge", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == "would remove 2 execution(s) and 0 file(s)"
    assert database["executions"].count_documents({}) == 3
    (tmp_path / "exports").mkdir()
    done = manage(env, "purge", "--export-dir", str(tmp_path / "exports"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("removed 2 execution(s) and 0 file(s); 2 exported to ")
    (exported,) = (tmp_path / "exports").glob("*.jsonl.gz")
    assert sorted(i["id"] for i in lines(exported)) == sorted(ids[:2])
    assert [d["_id"] for d in database["executions"].find()] == [ids[2]]
    assert database["execution_history"].count_documents({}) == 0
    out = manage(env, "export", "--out", str(tmp_path / "rest.jsonl.gz"), "--purge")
    assert out.returncode == 0, out.stderr
    assert [i["id"] for i in lines(tmp_path / "rest.jsonl.gz")] == [ids[2]]
    assert database["executions"].count_documents({}) == 0
    for args, says in [(["purge", "--export-dir", str(tmp_path / "missing")], "is not a directory"),
                       (["export", "--out", str(tmp_path / "rest.jsonl.gz")], "exists already")]:
        bad = manage(env, *args)
        assert bad.returncode == 1
        (line,) = bad.stderr.strip().splitlines()
        assert says in line and "Traceback" not in bad.stderr
    assert os.path.getsize(tmp_path / "rest.jsonl.gz") > 0
