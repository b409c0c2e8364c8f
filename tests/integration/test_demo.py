"""The demo end to end: real files, real worker threads and sweeper, an injected transient failure
and an injected worker crash; its ``--json`` summary and its printed table."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from detflow_site.demo import run as demo
from detflow_site.demo import samples
from workflows.outbox import Outbox

VALID = ("sunset.png", "mandelbrot.jpg", "spinner.gif", "badge.webp", "report.pdf", "orders.csv",
         "notes.txt", "inventory.json")
REFUSED = {"broken.png": "the PNG image is truncated or corrupt",
           "empty.txt": "the file is empty (0 bytes)",
           "holiday.jpg": "the file is a ZIP archive (or an Office document), which is not allowed"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo__json_summary_shows_every_outcome_the_issue_promises(redis_client: Any, tmp_path: Path) -> None:
    out = StringIO()
    call_command("demo", "--json", "--workdir", str(tmp_path), stdout=out)

    summary = json.loads(out.getvalue())  # nothing but the JSON is printed
    rows = {row["file"]: row for row in summary["executions"]}
    assert set(rows) == set(VALID) | set(REFUSED)
    assert summary["store"].startswith("embedded mongomock") or summary["store"].startswith("MongoDB")
    assert summary["redis"]
    for row in summary["executions"]:
        assert {"id", "file", "status", "attempts", "failed_step", "error", "recovered_crashes",
                "outputs"} <= set(row)

    for name in VALID:
        row = rows[name]
        original = tmp_path / "samples" / name
        assert row["status"] == "SUCCEEDED", row
        assert (row["failed_step"], row["error"]) == (None, None)
        stored = Path(row["outputs"]["object"])
        assert stored.is_file() and stored.is_relative_to(tmp_path / "storage" / "objects")
        assert sha256(stored) == sha256(original) == row["outputs"]["sha256"]
        assert stored.name == row["outputs"]["sha256"][2:]
        if name != "report.pdf":
            assert Path(row["outputs"]["derivative"]).is_file()

    for name, reason in REFUSED.items():
        row = rows[name]
        assert (row["status"], row["failed_step"]) == ("FAILED", "files.validate"), row
        assert row["steps"]["files.validate"]["attempts"] == 1
        assert row["attempts"] == 2  # files.receive, then files.validate once
        assert reason in row["error"]
        assert "object" not in row["outputs"]

    transient = rows[demo.TRANSIENT[0]]
    assert transient["status"] == "SUCCEEDED"
    assert transient["steps"][demo.TRANSIENT[1]]["attempts"] == 2
    assert transient["attempts"] == 8

    crashed = rows[demo.CRASH[0]]
    assert crashed["status"] == "SUCCEEDED"
    assert crashed["recovered_crashes"] >= 1
    assert crashed["steps"][demo.CRASH[1]]["attempts"] >= 2

    notified = Counter(r["execution_id"] for r in Outbox(Path(summary["outbox"])).records())
    assert notified[crashed["id"]] == 1
    assert notified == Counter({rows[name]["id"]: 1 for name in VALID})
    assert all(check["ok"] for check in summary["checks"]), summary["checks"]


def test_demo__prints_progress_and_a_summary_table(redis_client: Any, tmp_path: Path) -> None:
    out = StringIO()

    summary = demo.run(out, workdir=tmp_path, threads=3)

    text = out.getvalue()
    assert "store: " in text and "redis: " in text
    assert "injected: orders.csv fails once in files.checksum" in text
    assert "] 11/11 finished" in text
    assert "orders.csv      files.checksum attempt 1 failed: simulated transient failure" in text
    assert "sunset.png      files.notify attempt 1 lost: its worker stopped before recording" in text
    table = text[text.index("file            status"):]
    assert "broken.png      FAILED     2" in table and "files.validate  the PNG image is truncated" in table
    assert "sunset.png      SUCCEEDED  8 (1 lost)" in table
    assert "notifications: storage/outbox/notifications.jsonl" in table
    assert "checks:" in table and all(c["ok"] for c in summary["checks"])


def test_demo__files_option_processes_the_users_files_without_injected_faults(
    redis_client: Any, tmp_path: Path
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.png").write_bytes(samples.sunset_png(64, 40))
    (mine / "..hidden").write_bytes(b"skipped")
    (mine / "list.txt").write_bytes(b"eggs\nmilk\n")
    out = StringIO()

    summary = demo.run(out, files=mine, workdir=tmp_path / "work", as_json=True)

    rows = {row["file"]: row for row in summary["executions"]}
    assert set(rows) == {"photo.png", "list.txt"}
    assert all(r["status"] == "SUCCEEDED" and r["attempts"] == 7 for r in rows.values())
    assert all(r["injected"] is None and r["recovered_crashes"] == 0 for r in rows.values())
    assert json.loads(out.getvalue()) == summary


@pytest.mark.parametrize(("args", "message"), [
    (["--files", "/no/such/dir"], "--files /no/such/dir: not a directory"),
    (["--threads", "0"], "--threads must be at least 1"),
])
def test_demo__bad_arguments_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("demo", "--workdir", str(tmp_path), *args, stdout=StringIO())


def test_demo__an_empty_files_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="the directory holds no files"):
        call_command("demo", "--files", str(tmp_path), "--workdir", str(tmp_path / "w"), stdout=StringIO())
