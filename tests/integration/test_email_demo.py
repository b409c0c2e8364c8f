"""``manage.py demo --workflow email``, run as a user runs it: its own process, a fresh directory,
settings from the environment (embedded services), and the SMTP server's mailbox checked."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from detflow_site.processes import manage_command


def demo(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_")}
    environ.update(DJANGO_SETTINGS_MODULE="detflow_site.settings", DJANGO_SQLITE_PATH=":memory:")
    return subprocess.run(manage_command("demo", "--workflow", "email", *args), cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=timeout)


def test_email_demo__json_exits_0_with_every_check_true(tmp_path: Path) -> None:
    result = demo(tmp_path, "--json")

    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, Any] = json.loads(result.stdout)
    assert [c for c in summary["checks"] if not c["ok"]] == []
    assert len(summary["checks"]) == 7
    rows = {r["message"]: r for r in summary["messages"]}
    assert len(rows) == 50 and summary["mailbox"]["held"] == 50
    assert all(r["status"] == "SUCCEEDED" and r["in_mailbox"] for r in rows.values())
    assert [r["result"] for r in rows.values()].count("delivered") == 48
    assert rows["message-0003"]["result"] == "bounced" and rows["message-0004"]["result"] == "unknown"
    assert rows["message-0001"]["workflow"] == "email-demo-approved"
    assert rows["message-0001"]["steps"]["approval"] == {"status": "SUCCEEDED", "attempts": 1}
    assert any(r["steps"]["send"]["attempts"] > 1 for r in rows.values())
    assert summary["smtp"].startswith("smtp://127.0.0.1:")


def test_email_demo__prints_the_table_and_the_checks(tmp_path: Path) -> None:
    result = demo(tmp_path, "--messages", "8", "--threads", "2")

    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "SMTP server: smtp://127.0.0.1:" in out
    assert "message-0003  SUCCEEDED  bounced" in out and "message-0004  SUCCEEDED  unknown" in out
    assert out.count("[ok]") == 7 and "[FAILED]" not in out


@pytest.mark.parametrize(("args", "message"), [
    (["--messages", "4"], "--messages must be 5 to 1000, got 4"),
    (["--serve"], "--files and --serve go with the file-processing demo, not email"),
    (["--threads", "0"], "--threads must be at least 1"),
])
def test_email_demo__bad_arguments_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = demo(tmp_path, *args, timeout=120)

    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"CommandError: {message}"]
