"""An append-only JSON-lines file that holds each key's line once, whatever crashes and re-runs.

Writers take an exclusive ``flock`` on the file, so threads and processes on one machine append in
turn. Each key has a marker file naming the offset of its line: the marker is written before the
line, and a line counts as written only when the marker points at a whole line carrying the key.
A crash between the two leaves a marker that points at nothing (or at a partial last line, which
the next writer cuts off), so the re-run appends the line once more, and only once.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

#: Longest line read back when checking a marker.
LINE_LIMIT = 1024 * 1024
#: Bytes looked back from the end for the start of a partial last line.
TAIL = 64 * 1024


@dataclass(frozen=True)
class Entry:
    """Where a key's line is, and what this call did."""

    offset: int
    #: False when the line was already there (a re-run).
    appended: bool
    #: True once :meth:`Outbox.mark_posted` recorded a delivery for the key.
    posted: bool


class Outbox:
    """The outbox at ``path`` with its markers in ``<path>.sent/``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.markers = path.with_name(path.name + ".sent")

    def append_once(self, key: str, record: dict[str, Any]) -> Entry:
        """Append ``record`` (with ``key``) as one line unless the key's line is there already."""
        self.markers.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                marker = self._marker(key)
                if marker is not None and _line_has(handle, marker["offset"], key):
                    return Entry(marker["offset"], False, bool(marker.get("posted")))
                offset = _end_of_last_whole_line(handle)
                self._write_marker(key, {"key": key, "offset": offset, "posted": False})
                line = json.dumps({**record, "idempotency_key": key}, ensure_ascii=False) + "\n"
                handle.write(line.encode())
                handle.flush()
                os.fsync(handle.fileno())
                return Entry(offset, True, False)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def mark_posted(self, key: str) -> None:
        """Record that the key's line was delivered to the notification URL."""
        marker = self._marker(key)
        if marker is not None:
            self._write_marker(key, {**marker, "posted": True})

    def records(self) -> Iterator[dict[str, Any]]:
        """Yield every whole line, parsed (a partial last line is skipped)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    yield json.loads(line)

    def _marker_path(self, key: str) -> Path:
        return self.markers / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.json"

    def _marker(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._marker_path(key).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("key") == key else None

    def _write_marker(self, key: str, data: dict[str, Any]) -> None:
        target = self._marker_path(key)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        temp.write_text(json.dumps(data))
        os.replace(temp, target)


def _line_has(handle: BinaryIO, offset: int, key: str) -> bool:
    handle.seek(offset)
    line = handle.readline(LINE_LIMIT)
    if not line.endswith(b"\n"):
        return False
    try:
        return bool(json.loads(line).get("idempotency_key") == key)
    except (ValueError, AttributeError):
        return False


def _end_of_last_whole_line(handle: BinaryIO) -> int:
    """Return where the next line goes, cutting off a partial last line that a crash left."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return 0
    start = max(size - TAIL, 0)
    handle.seek(start)
    tail = handle.read(TAIL)
    if tail.endswith(b"\n"):
        return size
    cut = tail.rfind(b"\n")
    if cut < 0 and start > 0:
        # No line start within reach: end the partial line instead of guessing where it began.
        handle.write(b"\n")
        return size + 1
    handle.truncate(start + cut + 1)
    return start + cut + 1
