"""Where the file-processing handlers keep files, and how they write them: whole or not at all.

Under ``DETFLOW_STORAGE_DIR``: ``uploads/<random>`` (files handed in), ``inbox/<execution id>``,
``derived/<execution id>/``, ``objects/ab/cdef...`` (by SHA-256), ``stored/<execution id>`` (the
digest an execution stored) and ``outbox/notifications.jsonl``.
Names are made here, from execution ids and digests, never from a client's file name.

Data is never a path: the handlers derive every path they read, write or remove from the storage
directory and the execution id. A name that does come from data (the upload an input hands in, a
name an output carries) is a path relative to the storage directory, and :func:`resolve` refuses it
unless it stays inside that directory, with no ``..`` and no symbolic link on the way. Outputs name
files relative to the storage directory (:func:`relative`), so they show no server path.
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
from typing import Any, BinaryIO, Protocol

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


def relative(path: Path) -> str:
    """Return how outputs name ``path``: relative to the storage directory, ``/``-separated."""
    return path.relative_to(storage_dir()).as_posix()


def resolve(name: Any, field: str, under: str = "") -> Path:
    """Return the file a name from an input or an output stands for, inside the storage directory.

    ``name`` is relative to the storage directory (an absolute path is accepted only when it lies
    inside it) and, when ``under`` is given, must lie in that folder of it. A name with ``..``, one
    that leaves the directory, or one with a symbolic link on its way is refused with a
    ``PermanentError`` naming ``field``; the message never repeats the name.
    """
    root = storage_dir()
    where = f"the storage directory's {under}/ folder" if under else "the storage directory"
    if not isinstance(name, str) or not name or "\x00" in name:
        raise PermanentError(f"{field} must name a file in {where}")
    given = Path(name)
    if given.is_absolute():
        try:
            given = given.relative_to(root)
        except ValueError:
            raise PermanentError(f"{field} names a file outside {where}; files are named relative "
                                 "to it") from None
    parts = given.parts
    if not parts or ".." in parts or (under and parts[0] != under) or len(parts) < (2 if under else 1):
        raise PermanentError(f"{field} names a file outside {where}")
    path = root.joinpath(*parts)
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root.joinpath(*parts):
        raise PermanentError(f"{field} leads through a symbolic link: refused, files are read only "
                             f"from {where}")
    return path


def inbox_path(execution_id: str) -> Path:
    """Return where an execution's received copy lives: ``inbox/<execution id>``."""
    return storage_dir() / "inbox" / safe_id(execution_id)


def derived_dir(execution_id: str) -> Path:
    """Return the folder of an execution's derivatives: ``derived/<execution id>/``."""
    return storage_dir() / "derived" / safe_id(execution_id)


def stored_marker(execution_id: str) -> Path:
    """Return where ``files.store`` records the digest it stored for an execution: ``stored/<id>``."""
    return storage_dir() / "stored" / safe_id(execution_id)


def keep_upload(fill: Callable[[BinaryIO], object]) -> str:
    """Write a file handed in under ``uploads/<random>``; return its name for ``input.path``."""
    target = storage_dir() / "uploads" / secrets.token_hex(16)
    write_atomic(target, fill)
    return relative(target)


def safe_id(execution_id: str) -> str:
    """Return a file name for an execution: its id, or a hash of it if the id is not plain."""
    if _SAFE_ID.match(execution_id):
        return execution_id
    return hashlib.sha256(execution_id.encode()).hexdigest()[:32]


def object_path(sha256: Any) -> Path:
    """Return where the content with this SHA-256 is stored: ``objects/ab/cdef...``."""
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise PermanentError("the checksum is not a SHA-256 digest (64 lower-case hexadecimal digits)")
    return storage_dir() / "objects" / sha256[:2] / sha256[2:]


def outbox() -> Outbox:
    """Return the notification outbox."""
    return Outbox(storage_dir() / "outbox" / "notifications.jsonl")


@contextlib.contextmanager
def open_source(path: Path) -> Iterator[BinaryIO]:
    """Open a file of the storage directory to read; refuse, with a reason, what is missing, not a
    regular file, or (a link swapped in since it was resolved) a symbolic link."""
    shown = relative(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise PermanentError(f"there is no file {shown} in the storage directory") from None
    except IsADirectoryError:
        raise PermanentError(f"{shown} is a directory, not a file") from None
    except PermissionError:
        raise PermanentError(f"the worker may not read {shown}") from None
    except OSError as exc:  # ELOOP: the last part became a symbolic link
        raise PermanentError(f"{shown} cannot be opened ({exc.strerror})") from None
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise PermanentError(f"{shown} is not a regular file")
        yield handle


class Sink(Protocol):
    """Where :func:`copy` writes: a binary file, or anything with its ``write``."""

    def write(self, data: bytes, /) -> int: ...


def copy(
    source: BinaryIO, out: Sink, limit: int | None = None, beat: Callable[[], None] | None = None,
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
