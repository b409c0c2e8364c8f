"""The file-processing handlers: receive, validate, checksum, metadata, transform, store, notify.

Each one streams its file in 1 MiB chunks (an image is decoded once, within the pixel limit), and
returns paths and facts, never file contents; ``workflows.storage`` says where files live and
writes them whole or not at all. The inbox copy is removed once the file is stored, and kept when
the file is refused, so that someone can look at it. The handlers find the outputs of earlier
steps under the step names ``files.receive``, ``files.validate``, ..., so a workflow using them
names its steps after them.
"""
from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from PIL import ImageOps

from detflow_site import conf
from workflows import filetypes, storage
from workflows.context import StepContext
from workflows.errors import PermanentError, RetryableError
from workflows.filetypes import IMAGES, TEXTS, chunks, human
from workflows.registry import step

#: Longest side of a thumbnail, in pixels.
THUMBNAIL_PX = 256
#: Chunks between two heartbeats in long loops (the watchdog renews the lease anyway; a heartbeat
#: also stops an attempt whose step a successor owns).
HEARTBEAT_EVERY = 64
#: The storage directory's folder that ``input.path`` names uploads in.
UPLOADS = "uploads"
#: Seconds a notification POST may take.
POST_TIMEOUT_S = 10.0
_PDF_PAGE = re.compile(rb"/Type\s{0,8}/Page(?![A-Za-z])")


@step("files.receive")
def receive(ctx: StepContext) -> dict[str, Any]:
    """Copy the upload into the inbox under a generated name; record its size and original name.

    The input hands the file in by ``path``, the name of a file under the storage directory's
    ``uploads/`` folder (``POST files/`` puts it there; any other path is refused), or carries it
    as ``content_b64``; ``name`` is the client's name for it, recorded as data only.
    """
    _simulate(ctx)
    data = ctx.input if isinstance(ctx.input, dict) else {}
    limit = conf.get().MAX_FILE_BYTES
    target = storage.inbox_path(ctx.execution_id)
    if "path" in data:
        source = storage.resolve(data["path"], "input.path", under=UPLOADS)
        name = data.get("name") or "upload"
        with storage.open_source(source) as handle:
            size = storage.write_atomic(target, lambda out: storage.copy(handle, out, limit, ctx.heartbeat))
            over = bool(handle.read(1))
    elif isinstance(data.get("content_b64"), str):
        name = data.get("name") or "upload"
        try:
            content = base64.b64decode(data["content_b64"], validate=True)
        except (binascii.Error, ValueError):
            raise PermanentError("input.content_b64 is not valid base64") from None
        size = storage.write_atomic(target, lambda out: storage.copy(io.BytesIO(content), out, limit))
        over = len(content) > limit
    else:
        raise PermanentError("the input needs 'path' (an upload under the storage directory's uploads/) "
                             "or 'content_b64' (the file's bytes in base64)")
    # A file over the limit is kept only up to it; files.validate refuses it.
    ctx.log.info("received %d bytes%s", size, " (over the limit: cut there)" if over else "")
    return {"inbox": storage.relative(target), "size": size, "over_limit": over,
            "original_name": str(name)[:255]}


@step("files.validate")
def validate(ctx: StepContext) -> dict[str, Any]:
    """Detect the type from the content; refuse empty, truncated, corrupt, oversized, disallowed files."""
    _simulate(ctx)
    received = _earlier(ctx, "files.receive")
    settings = conf.get()
    if received.get("over_limit"):
        raise PermanentError(f"the file is larger than the limit of {human(settings.MAX_FILE_BYTES)} "
                             "(DETFLOW_MAX_FILE_BYTES)")
    path = _inbox(ctx, received)
    found = filetypes.detect(path, settings.MAX_FILE_BYTES, settings.MAX_IMAGE_PIXELS,
                             received.get("original_name", ""))
    ctx.log.info("%s, %s", found.kind, human(found.size))
    return {"type": found.kind, "mime": found.mime, "size": found.size, "details": found.details}


@step("files.checksum")
def checksum(ctx: StepContext) -> dict[str, Any]:
    """Compute the SHA-256 of the received file in 1 MiB chunks."""
    _simulate(ctx)
    path = _inbox(ctx, _earlier(ctx, "files.receive"))
    digest = hashlib.sha256()
    size = 0
    for n, block in enumerate(chunks(path), start=1):
        digest.update(block)
        size += len(block)
        if n % HEARTBEAT_EVERY == 0:
            ctx.heartbeat()
    return {"sha256": digest.hexdigest(), "size": size}


@step("files.metadata")
def metadata(ctx: StepContext) -> dict[str, Any]:
    """Describe the file: an image's format and size, text's encoding and lines, a PDF's pages."""
    _simulate(ctx)
    path = _inbox(ctx, _earlier(ctx, "files.receive"))
    validated = _earlier(ctx, "files.validate")
    kind, details = validated["type"], dict(validated.get("details") or {})
    if kind in IMAGES:
        with filetypes.open_image(path, conf.get().MAX_IMAGE_PIXELS) as image:
            return {"type": kind, "format": image.format, "width": image.width,
                    "height": image.height, "mode": image.mode,
                    "animated": bool(getattr(image, "is_animated", False))}
    if kind == "pdf":
        return {"type": kind, "version": details.get("version"), "pages": _pdf_pages(path, ctx)}
    if kind == "csv":
        details["rows"] = _csv_rows(path, details["encoding"], details["delimiter"])
    return {"type": kind, **details}


@step("files.transform")
def transform(ctx: StepContext) -> dict[str, Any]:
    """Make a thumbnail of at most 256 px of an image, or a gzip copy of a text file."""
    _simulate(ctx)
    path = _inbox(ctx, _earlier(ctx, "files.receive"))
    kind = _earlier(ctx, "files.validate")["type"]
    folder = storage.derived_dir(ctx.execution_id)
    if kind in IMAGES:
        with filetypes.open_image(path, conf.get().MAX_IMAGE_PIXELS) as image:
            image.draft(None, (THUMBNAIL_PX, THUMBNAIL_PX))  # JPEG: decode at a fraction of the size
            thumb = ImageOps.exif_transpose(image)
            thumb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            if thumb.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
                thumb = thumb.convert("RGBA" if "A" in thumb.mode else "RGB")
            encoded = io.BytesIO()
            thumb.save(encoded, "PNG")
        target = folder / "thumbnail.png"
        size = storage.write_atomic(target, lambda out: out.write(encoded.getvalue()))
        return {"kind": "thumbnail", "path": storage.relative(target), "width": thumb.width,
                "height": thumb.height, "bytes": size}
    if kind in TEXTS:
        target = folder / "compressed.gz"
        size = storage.write_atomic(target, lambda out: _gzip(path, out, ctx))
        return {"kind": "gzip", "path": storage.relative(target), "bytes": size}
    return {"kind": "none", "reason": f"{kind} files are stored as they are"}


@step("files.store")
def store(ctx: StepContext) -> dict[str, Any]:
    """Store the file once per content under ``objects/ab/cdef...``; storing it again changes nothing.

    The received copy is hashed every time, whatever ``files.checksum`` recorded: an object is
    stored (or found already stored) only under the digest of what was received, so an output that
    names another digest re-points nothing. Once stored, the digest is recorded under
    ``stored/<execution id>`` before the received copy is removed, so that a re-run (its worker
    crashed before the outcome was recorded) knows what this execution stored.
    """
    _simulate(ctx)
    received = _earlier(ctx, "files.receive")
    summed = _earlier(ctx, "files.checksum")
    target = storage.object_path(summed.get("sha256"))
    marker = storage.stored_marker(ctx.execution_id)
    shown = storage.relative(target)
    if _stored_before(marker, summed["sha256"], target):
        ctx.log.info("already stored %s by an earlier run of this step", shown)
        return {"object": shown, "sha256": summed["sha256"], "created": False}
    inbox = _inbox(ctx, received)
    digest = hashlib.sha256()

    def verify() -> None:
        if digest.hexdigest() != summed["sha256"]:
            raise PermanentError("the received file's SHA-256 is not the one files.checksum recorded: "
                                 "the file changed after its checksum was taken, or the checksum "
                                 "was not taken from it")

    created = False
    if target.exists() and target.stat().st_size == inbox.stat().st_size:
        with storage.open_source(inbox) as handle:
            storage.copy(handle, _Discard(), None, ctx.heartbeat, digest)
        verify()
    else:
        def fill(out: BinaryIO) -> None:
            with storage.open_source(inbox) as handle:
                storage.copy(handle, out, None, ctx.heartbeat, digest)
            verify()

        storage.write_atomic(target, fill)
        created = True
    storage.write_atomic(marker, lambda out: out.write(summed["sha256"].encode()))
    inbox.unlink(missing_ok=True)
    ctx.log.info("%s %s", "stored" if created else "already stored", shown)
    return {"object": shown, "sha256": summed["sha256"], "created": created}


def _stored_before(marker: Path, sha256: Any, target: Path) -> bool:
    """Tell whether an earlier run of this execution's files.store stored this digest."""
    try:
        recorded = marker.read_text(encoding="ascii")
    except (FileNotFoundError, UnicodeDecodeError):
        return False
    return recorded == sha256 and target.is_file()


class _Discard:
    """A sink for :func:`storage.copy` when only the digest is wanted."""

    def write(self, block: bytes) -> int:
        return len(block)


@step("files.notify")
def notify(ctx: StepContext) -> dict[str, Any]:
    """Append one line per file to the outbox, once per idempotency key; POST it to DETFLOW_NOTIFY_URL."""
    _simulate(ctx)
    received = _earlier(ctx, "files.receive")
    validated = _earlier(ctx, "files.validate")
    stored = _earlier(ctx, "files.store")
    derived = ctx.outputs.get("files.transform") or {}
    if not _stored_before(storage.stored_marker(ctx.execution_id), stored.get("sha256"),
                          storage.object_path(stored.get("sha256"))):
        raise PermanentError("files.store of this execution stored no object with the SHA-256 its output "
                             "names: only what this execution stored is announced")
    record = {
        "execution_id": ctx.execution_id, "file": received.get("original_name"),
        "type": validated["type"], "size": validated["size"], "sha256": stored.get("sha256"),
        "object": storage.relative(storage.object_path(stored.get("sha256"))),
        "derivative": _derivative(ctx, derived),
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    box = storage.outbox()
    entry = box.append_once(ctx.idempotency_key, record)
    result: dict[str, Any] = {"outbox": storage.relative(box.path), "offset": entry.offset,
                              "duplicate": not entry.appended, "posted": None}
    url = conf.get().NOTIFY_URL
    if url is not None:
        if entry.posted:
            result["posted"] = "before"
        else:
            result["http_status"] = _post(url, ctx.idempotency_key, record)
            box.mark_posted(ctx.idempotency_key)
            result["posted"] = "now"
    return result


def _simulate(ctx: StepContext) -> None:
    """Fail this step's first attempt when ``input["simulate"]["transient_failure"]`` names it."""
    simulate = ctx.input.get("simulate") if isinstance(ctx.input, dict) else None
    if isinstance(simulate, dict) and simulate.get("transient_failure") == ctx.step and ctx.attempt == 1:
        raise RetryableError("simulated transient failure (input.simulate): the next attempt succeeds")


def _earlier(ctx: StepContext, name: str) -> dict[str, Any]:
    try:
        output = ctx.outputs[name]
    except KeyError:
        raise PermanentError(f"{ctx.step} needs the output of an earlier step named {name!r}") from None
    if not isinstance(output, dict):
        raise PermanentError(f"the output of step {name!r} is not what {ctx.step} expects")
    return output


def _inbox(ctx: StepContext, received: dict[str, Any]) -> Path:
    """Return this execution's received copy: derived from its id, never taken from an output.

    The name the output of ``files.receive`` carries is checked against it, so that an output an
    operator wrote (a skip) or edited cannot point a step at another file.
    """
    path = storage.inbox_path(ctx.execution_id)
    named = storage.resolve(received.get("inbox"), "the output of files.receive (inbox)", under="inbox")
    if named != path:
        raise PermanentError("the output of files.receive names another execution's inbox; a step "
                             f"reads only this execution's received copy, {storage.relative(path)}")
    if path.is_symlink() or not path.is_file():
        raise PermanentError(f"the received copy {storage.relative(path)} is gone (removed after the "
                             "file was stored, or by hand) or is not a regular file")
    return path


def _derivative(ctx: StepContext, derived: dict[str, Any]) -> str | None:
    """Return the name of this execution's derivative that the output of files.transform names."""
    if not derived.get("path"):
        return None
    path = storage.resolve(derived["path"], "the output of files.transform (path)", under="derived")
    if path.parent != storage.derived_dir(ctx.execution_id):
        raise PermanentError("the output of files.transform names another execution's derivative")
    return storage.relative(path)


def _gzip(path: Path, out: BinaryIO, ctx: StepContext) -> None:
    # mtime=0 and no name: the same text always gives the same bytes.
    with (gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0, filename="") as packed,
          open(path, "rb") as handle):
        storage.copy(handle, packed, None, ctx.heartbeat)  # type: ignore[arg-type]


def _pdf_pages(path: Path, ctx: StepContext) -> int | None:
    """Count ``/Type /Page`` objects, streaming; ``None`` when they are hidden in compressed streams."""
    pages = 0
    pending = b""
    for n, block in enumerate(chunks(path), start=1):
        window = pending + block
        # Matches starting in the last 64 bytes may run on into the next chunk: count them then.
        cut = max(len(window) - 64, 0)
        pages += sum(1 for m in _PDF_PAGE.finditer(window) if m.start() < cut)
        pending = window[cut:]
        if n % HEARTBEAT_EVERY == 0:
            ctx.heartbeat()
    pages += sum(1 for _ in _PDF_PAGE.finditer(pending))
    return pages or None


def _csv_rows(path: Path, encoding: str, delimiter: str) -> int | None:
    """Count the records after the header, streaming; ``None`` if the CSV cannot be read to the end."""
    try:
        with open(path, encoding=encoding, newline="") as handle:
            return max(sum(1 for row in csv.reader(handle, delimiter=delimiter) if row) - 1, 0)
    except (csv.Error, UnicodeDecodeError):
        return None


def _post(url: str, key: str, record: dict[str, Any]) -> int:
    """POST the record as JSON with an ``Idempotency-Key`` header; return the HTTP status."""
    request = urllib.request.Request(
        url, data=json.dumps(record).encode(), method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": key,
                 "User-Agent": "detflow-files-notify"},
    )
    try:
        with urllib.request.urlopen(request, timeout=POST_TIMEOUT_S) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        if 400 <= exc.code < 500 and exc.code not in (408, 425, 429):
            raise PermanentError(f"{url} refused the notification: HTTP {exc.code} {exc.reason}") from None
        raise RetryableError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise RetryableError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
