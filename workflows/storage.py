"""Where the file-processing handlers keep files, and how they write them: whole or not at all.

Under ``DETFLOW_STORAGE_DIR``: ``inbox/<execution id>``, ``derived/<execution id>/``,
``objects/ab/cdef...`` (by SHA-256) and ``outbox/notifications.jsonl``. Names are made here, from
execution ids and digests, never from a client's file name.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from detflow_site import conf
from workflows.errors import PermanentError
from workflows.filetypes import CHUNK
from workflows.outbox import Outbox

#: Chunks copied between two heartbeats.
HEARTBEAT_EVERY = 64
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def storage_dir() -> Path:
    """Return ``DETFLOW_STORAGE_DIR`` as an absolute path (a relative one is under the project)."""
    from django.conf import settings

    configured = Path(conf.get().STORAGE_DIR).expanduser()
    return configured if configured.is_absolute() else Path(settings.BASE_DIR) / configured


def safe_id(execution_id: str) -> str:
    """Return a file name for an execution: its id, or a hash of it if the id is not plain."""
    if _SAFE_ID.match(execution_id):
        return execution_id
    return hashlib.sha256(execution_id.encode()).hexdigest()[:32]


def object_path(sha256: str) -> Path:
    """Return where the content with this SHA-256 is stored: ``objects/ab/cdef...``."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise PermanentError(f"{sha256!r} is not a SHA-256 digest")
    return storage_dir() / "objects" / sha256[:2] / sha256[2:]


def outbox() -> Outbox:
    """Return the notification outbox."""
    return Outbox(storage_dir() / "outbox" / "notifications.jsonl")


@contextlib.contextmanager
def open_source(path: Path) -> Iterator[BinaryIO]:
    """Open a file to receive; refuse, with a reason, what is missing or not a regular file."""
    try:
        handle = open(path, "rb")  # noqa: SIM115  (closed below)
    except FileNotFoundError:
        raise PermanentError(f"there is no file at {path}") from None
    except IsADirectoryError:
        raise PermanentError(f"{path} is a directory, not a file") from None
    except PermissionError:
        raise PermanentError(f"the worker may not read {path}") from None
    with handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise PermanentError(f"{path} is not a regular file")
        yield handle


def copy(
    source: BinaryIO, out: BinaryIO, limit: int | None = None, beat: Callable[[], None] | None = None,
    digest: Any = None,
) -> None:
    """Copy up to ``limit`` bytes in chunks (all when ``None``), hashing into ``digest``, calling
    ``beat`` every ``HEARTBEAT_EVERY`` chunks."""
    copied = n = 0
    while limit is None or copied < limit:
        block = source.read(CHUNK if limit is None else min(CHUNK, limit - copied))
        if not block:
            return
        out.write(block)
        if digest is not None:
            digest.update(block)
        copied += len(block)
        n += 1
        if beat is not None and n % HEARTBEAT_EVERY == 0:
            beat()


def write_atomic(target: Path, fill: Callable[[BinaryIO], object]) -> int:
    """Write ``target`` through a temporary file renamed into place; return its size."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        with open(temp, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return size
