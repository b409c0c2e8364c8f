"""Text a handler hands the engine (an error message, a traceback, log lines) is stored even when it
holds lone surrogates, as ``OSError`` text about a file name that is not UTF-8 does: a MongoDB server
(and the strict embedded store) refuses such a string."""
from __future__ import annotations

import errno
import os
from typing import Any

import bson

from executions import operations
from tests.conftest import wait_terminal
from workflows.context import StepContext
from workflows.registry import step

#: A file name that is not UTF-8, as Python decodes it: ``"\udcff.txt"``.
NAME = os.fsdecode(b"\xff.txt")


@step("test.unreadable_name")
def unreadable_name(ctx: StepContext) -> None:
    """Log the file name, then fail as opening it would."""
    ctx.log.warning("opening %s", NAME)
    raise OSError(errno.ENOENT, "No such file or directory", NAME)


def test_handler_failing_on_a_file_name_that_is_not_utf8__fails_its_step_readably(
        worker: Any, define: Any) -> None:
    define("unreadable", [{"handler": "test.unreadable_name",
                           "retry": {"max_attempts": 1, "initial_delay_s": 0.05}}])

    started, _ = operations.start("unreadable", {})
    [doc] = wait_terminal(started["_id"])

    assert doc["status"] == "FAILED"
    step_doc = doc["steps"][0]
    [attempt] = step_doc["attempts"]
    assert attempt["outcome"] == "failed"
    assert attempt["error_type"] == "FileNotFoundError"
    assert attempt["message"] == "[Errno 2] No such file or directory: '\\udcff.txt'"
    assert "FileNotFoundError: [Errno 2] No such file or directory: '\\udcff.txt'" in attempt["traceback"]
    assert [line["message"] for line in attempt["logs"]] == ["opening \\udcff.txt"]
    assert bson.encode(doc)  # what a server would have to store
