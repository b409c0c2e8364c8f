"""Child processes of detflow's own commands, as the test topology and chaos start them.

Each child runs in its own session (its process group is its pid), so that stopping or killing it
reaches what it started too (``runworker``'s Dramatiq processes). Its stderr is read by a thread,
every line kept, so that its pipe never fills. ``start_store`` starts ``manage.py runstore`` and
returns once it says where it listens.
"""
from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The project's ``manage.py``.
MANAGE = Path(__file__).resolve().parents[1] / "manage.py"
_LISTENING = re.compile(r"^listening on (mongodb://\S+)$")


def manage_command(*args: str) -> list[str]:
    """Return the command line of ``python manage.py <args>`` with this interpreter."""
    return [sys.executable, str(MANAGE), *args]


@dataclass
class Lines:
    """A child's output read by a thread, every line kept."""

    lines: list[str] = field(default_factory=list)

    def follow(self, stream: Any) -> threading.Thread:
        def read() -> None:
            for line in stream:
                self.lines.append(line)
            stream.close()

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def tail(self, chars: int = 3000) -> str:
        return "".join(self.lines)[-chars:]


@dataclass
class Child:
    """A child process in its own session, its stderr followed."""

    process: subprocess.Popen[str]
    log: Lines

    @classmethod
    def start(cls, command: list[str], environ: Mapping[str, str], cwd: Path,
              stdout: Any = subprocess.DEVNULL) -> Child:
        process = subprocess.Popen(command, cwd=cwd, env=dict(environ), stdout=stdout,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        log = Lines()
        log.follow(process.stderr)
        return cls(process, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def group(self) -> list[int]:
        """Return the pids of the child's process group (the child first), read from ``/proc``."""
        return [self.pid, *sorted(p for p in group_members(self.pid) if p != self.pid)]

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a machine losing power would, and reap the child."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM the child (SIGKILL its group after ``timeout_s``); return its exit code."""
        return stop(self.process, timeout_s)


def stop(process: subprocess.Popen[Any], timeout_s: float = 15.0) -> int:
    """SIGTERM ``process`` (SIGKILL its group after ``timeout_s``); return its exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return int(process.returncode)


def group_alive(pgid: int) -> bool:
    """Tell whether any process of group ``pgid`` is alive."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def group_members(pgid: int) -> list[int]:
    """Return the live pids whose process group is ``pgid`` (Linux: from ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    """Tell whether ``pid`` no longer runs (no such process, or a zombie not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2:].split()[0] == "Z"


def start_store(directory: Path, *, faults: bool = True,
                timeout_s: float = 30.0) -> tuple[subprocess.Popen[str], str]:
    """Start ``manage.py runstore --port 0`` with ``directory`` as its working and temp directory;
    return the process and its URL once it prints where it listens."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_")}
    env.update(DJANGO_SETTINGS_MODULE="detflow_site.settings", PYTHONUNBUFFERED="1",
               TMPDIR=str(directory), DJANGO_SQLITE_PATH=str(directory / "db.sqlite3"))
    command = manage_command("runstore", "--port", "0") + (["--faults"] if faults else [])
    with open(directory / "runstore.err", "w") as errors:
        process = subprocess.Popen(command, cwd=directory, env=env, stdout=subprocess.PIPE,
                                   stderr=errors, text=True, start_new_session=True)
    assert process.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                break
            line = process.stdout.readline()
            if not line:  # the process ended
                break
            seen.append(line)
            found = _LISTENING.match(line.strip())
            if found:
                return process, found.group(1)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()
    err = (directory / "runstore.err").read_text(errors="replace")
    raise RuntimeError(f"runstore did not say where it listens within {timeout_s}s: "
                       f"{''.join(seen)[-500:]}{err[-1500:]}")
