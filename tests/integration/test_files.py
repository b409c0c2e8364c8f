"""The file-processing handlers on real files written to tmp_path: each handler, the refusals,
a decompression bomb, a client name like ``../../x``, store idempotency and notify deduplication."""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from detflow_site.demo import samples
from executions import operations
from tests.conftest import wait_terminal
from workflows import registry
from workflows.builtin import FILE_PROCESSING, ensure_file_processing
from workflows.context import AttemptLog, StepContext
from workflows.errors import PermanentError, RetryableError
from workflows.outbox import Outbox

STEPS = ("files.receive", "files.validate", "files.checksum", "files.metadata", "files.transform",
         "files.store", "files.notify")
EID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def storage(settings: Any, tmp_path: Path) -> Path:
    """Point DETFLOW_STORAGE_DIR at a fresh directory."""
    root = tmp_path / "storage"
    settings.DETFLOW = {**settings.DETFLOW, "STORAGE_DIR": str(root)}
    return root


def context(step: str, data: Any, outputs: dict[str, Any] | None = None, execution_id: str = EID,
            attempt: int = 1) -> StepContext:
    return StepContext(
        execution_id=execution_id, workflow=FILE_PROCESSING, workflow_version=1, step=step,
        attempt=attempt, idempotency_key=f"{execution_id}:{step}", input=data,
        outputs=dict(outputs or {}), fencing_token=1, log=AttemptLog(200, {}),
    )


def run(data: Any, upto: str = "files.notify", execution_id: str = EID) -> dict[str, Any]:
    """Run the handlers in order up to ``upto``; return their outputs by step name."""
    outputs: dict[str, Any] = {}
    for name in STEPS:
        outputs[name] = registry.get_handler(name)(context(name, data, outputs, execution_id))
        if name == upto:
            break
    return outputs


def write(folder: Path, name: str, content: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def png_bomb(width: int, height: int) -> bytes:
    """A whole, valid 1-bit PNG of ``width`` x ``height`` zeros: a few hundred KiB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


def test_receive__copies_into_the_inbox_under_a_generated_name(storage: Path, tmp_path: Path) -> None:
    source = write(storage / "uploads", "photo.png", samples.sunset_png())

    out = run({"path": str(source), "name": "photo.png"}, upto="files.receive")["files.receive"]

    assert out == {"inbox": f"inbox/{EID}", "size": source.stat().st_size,
                   "over_limit": False, "original_name": "photo.png"}
    assert sha256(storage / out["inbox"]) == sha256(source)
    assert source.exists()


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "..", "a/../../b\x00c", ""])
def test_receive__a_client_name_like_dotdot_is_recorded_never_used_as_a_path(
    storage: Path, tmp_path: Path, name: str
) -> None:
    content = b"hello\n"
    data = {"content_b64": base64.b64encode(content).decode(), "name": name}

    out = run(data, upto="files.receive")["files.receive"]

    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [f"storage/inbox/{EID}"]
    assert (storage / out["inbox"]).read_bytes() == content
    assert out["original_name"] == (name or "upload")


def test_receive__an_execution_id_that_is_not_plain_is_hashed_into_the_name(storage: Path) -> None:
    data = {"content_b64": base64.b64encode(b"x").decode()}

    out = run(data, upto="files.receive", execution_id="../../evil")["files.receive"]

    assert (storage / out["inbox"]).parent == storage / "inbox"
    assert ".." not in (storage / out["inbox"]).name


@pytest.mark.parametrize(("data", "reason"), [
    ({"path": "uploads/none"}, "there is no file uploads/none in the storage directory"),
    ({"path": "uploads/"}, "input.path names a file outside the storage directory's uploads/ folder"),
    ({"path": "/no/such/file"}, "input.path names a file outside the storage directory's uploads/"),
    ({"path": ""}, "input.path must name a file in the storage directory's uploads/ folder"),
    ({"content_b64": "%%%"}, "input.content_b64 is not valid base64"),
    ({"name": "x"}, "the input needs 'path'"),
    ("just text", "the input needs 'path'"),
])
def test_receive__unusable_input_is_a_permanent_error_saying_why(
    storage: Path, data: Any, reason: str
) -> None:
    with pytest.raises(PermanentError, match=reason.replace("(", r"\(")):
        run(data, upto="files.receive")


def test_receive__a_file_over_the_limit_is_cut_there_and_validate_refuses_it(
    storage: Path, settings: Any, tmp_path: Path
) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "MAX_FILE_BYTES": 1000}
    source = write(storage / "uploads", "big.txt", b"a" * 5000)

    out = run({"path": str(source)}, upto="files.receive")["files.receive"]
    assert (out["size"], out["over_limit"]) == (1000, True)
    assert (storage / out["inbox"]).stat().st_size == 1000
    with pytest.raises(PermanentError, match=r"larger than the limit of 1000 bytes \(DETFLOW_MAX_FILE_BYTES"):
        run({"path": str(source)}, upto="files.validate")


@pytest.mark.parametrize(("make", "kind"), [
    (samples.sunset_png, "png"), (samples.mandelbrot_jpeg, "jpeg"), (samples.spinner_gif, "gif"),
    (samples.badge_webp, "webp"), (samples.report_pdf, "pdf"), (samples.orders_csv, "csv"),
    (samples.notes_txt, "text"), (samples.inventory_json, "json"),
])
def test_validate__detects_each_allowed_type_from_the_content_not_the_name(
    storage: Path, tmp_path: Path, make: Any, kind: str
) -> None:
    source = write(storage / "uploads", "misleading.exe", make())

    out = run({"path": str(source)}, upto="files.validate")["files.validate"]

    assert out["type"] == kind
    assert out["size"] == source.stat().st_size


def _truncated_webp() -> bytes:
    return samples.halved(samples.badge_webp())


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("empty.txt", b"", "the file is empty (0 bytes)"),
    ("cut.png", samples.halved(samples.sunset_png()), "the PNG image is truncated or corrupt"),
    ("cut.jpg", samples.halved(samples.mandelbrot_jpeg()), "the JPEG image is truncated or corrupt"),
    ("cut.gif", samples.halved(samples.spinner_gif()), "the GIF image is truncated: it has no end marker"),
    ("cut.webp", _truncated_webp(), "the WebP image is truncated: it declares"),
    ("cut.pdf", samples.halved(samples.report_pdf()), "the PDF is truncated: it has no end-of-file marker"),
    ("photo.jpg", samples.holiday_zip(),
     "the file is a ZIP archive (or an Office document), which is not allowed: "
     "send PNG, JPEG, GIF, WebP, PDF, plain text, CSV or JSON"),
    ("tool", b"\x7fELF\x02\x01\x01" + bytes(100), "the file is a Linux executable, which is not allowed"),
    ("noise.bin", bytes(range(256)) * 4, "the file is neither an allowed binary type nor UTF-8 text"),
    ("latin1.txt", "caf\xe9 cr\xe8me\n".encode("latin-1"), "nor UTF-8 text (byte 0xe9 at offset 3)"),
    ("ctrl.txt", b"hello\x00world\n", "the file holds binary data (control character 0x00)"),
    ("cut.txt", "caf\xe9".encode()[:-1], "the text ends in the middle of a UTF-8 character"),
    ("cut.json", b'{"items": [1, 2, {"a": ', "the JSON is not valid: the text ends with 3 bracket(s) "
                                              "still open: the file looks truncated"),
    ("bad.json", b'{"a": tru}', "the JSON is not valid: 'tru' near character 6 is not a JSON value"),
    ("fake.png", b"\x89PNG\r\n\x1a\n" + bytes(40), "starts like an image but its header cannot be read"),
])
def test_validate__refuses_broken_and_disallowed_files_with_a_reason(
    storage: Path, tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    source = write(storage / "uploads", name, content)
    received = run({"path": str(source), "name": name}, upto="files.receive")

    with pytest.raises(PermanentError) as caught:
        registry.get_handler("files.validate")(context("files.validate", {}, received))

    assert reason in str(caught.value)


@pytest.mark.parametrize(("width", "height", "reason"), [
    # Over Pillow's own hard limit: Pillow refuses it on open; the reason is still ours.
    (20_000, 20_000, "the image declares far too many pixels, more than the limit of 40,000,000"),
    # Under Pillow's limit, over detflow's: refused before a single row is decoded.
    (8_000, 8_000, "the image declares 8000 x 8000 = 64,000,000 pixels, more than the limit of "
                   "40,000,000 (DETFLOW_MAX_IMAGE_PIXELS)"),
])
def test_validate__refuses_a_decompression_bomb(
    storage: Path, tmp_path: Path, width: int, height: int, reason: str
) -> None:
    source = write(storage / "uploads", "bomb.png", png_bomb(width, height))
    assert source.stat().st_size < 1024 * 1024

    with pytest.raises(PermanentError) as caught:
        run({"path": str(source)}, upto="files.validate")

    assert reason in str(caught.value)
    assert "decompression bomb" in str(caught.value)


def test_validate__the_pixel_limit_is_a_setting(storage: Path, settings: Any, tmp_path: Path) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "MAX_IMAGE_PIXELS": 10_000}
    source = write(storage / "uploads", "sunset.png", samples.sunset_png())

    with pytest.raises(PermanentError, match="640 x 400 = 256,000 pixels, more than the limit of 10,000"):
        run({"path": str(source)}, upto="files.validate")


def test_checksum__is_the_sha256_streamed_in_chunks_with_heartbeats(
    storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workflows import files

    monkeypatch.setattr(files, "HEARTBEAT_EVERY", 1)
    source = write(storage / "uploads", "data.txt", b"0123456789abcdef\n" * 200_000)  # 3.4 MB
    received = run({"path": str(source)}, upto="files.receive")
    beats: list[int] = []
    ctx = context("files.checksum", {}, received)
    ctx._heartbeat = lambda: beats.append(1)

    out = registry.get_handler("files.checksum")(ctx)

    assert out == {"sha256": sha256(source), "size": 3_400_000}
    assert len(beats) == 4  # one per 1 MiB chunk


@pytest.mark.parametrize(("make", "expected"), [
    (samples.sunset_png, {"type": "png", "format": "PNG", "width": 640, "height": 400, "mode": "RGB",
                          "animated": False}),
    (samples.spinner_gif, {"type": "gif", "format": "GIF", "width": 96, "height": 96, "mode": "P",
                           "animated": True}),
    (samples.badge_webp, {"type": "webp", "format": "WEBP", "width": 300, "height": 300,
                          "mode": "RGBA", "animated": False}),
    (samples.report_pdf, {"type": "pdf", "version": "1.4", "pages": 2}),
    (lambda: samples.orders_csv(rows=1500), {
        "type": "csv", "encoding": "ascii", "lines": 1501, "delimiter": ",", "rows": 1500,
        "columns": ["order_id", "date", "customer", "amount_eur", "status"], "column_count": 5}),
    (samples.notes_txt, {"type": "text", "encoding": "utf-8", "lines": 6}),
    (lambda: b"\xef\xbb\xbfone\ntwo", {"type": "text", "encoding": "utf-8-sig", "lines": 2}),
    (samples.inventory_json, {"type": "json", "encoding": "ascii", "lines": 170, "root": "object",
                              "keys": ["warehouse", "updated", "items", "tags"], "key_count": 4}),
    (lambda: b'[{"a": 1}, [2, 3], "four", 5]', {"type": "json", "encoding": "ascii", "lines": 1,
                                                "root": "array", "items": 4}),
])
def test_metadata__describes_images_text_csv_json_and_pdf(
    storage: Path, tmp_path: Path, make: Any, expected: dict[str, Any]
) -> None:
    source = write(storage / "uploads", "file", make())

    assert run({"path": str(source)}, upto="files.metadata")["files.metadata"] == expected


def test_transform__makes_a_thumbnail_of_at_most_256px_keeping_the_aspect(
    storage: Path, tmp_path: Path
) -> None:
    source = write(storage / "uploads", "wide.jpg", samples.mandelbrot_jpeg(width=2000, height=1000))

    out = run({"path": str(source)}, upto="files.transform")["files.transform"]

    assert out["kind"] == "thumbnail"
    assert (storage / out["path"]) == storage / "derived" / EID / "thumbnail.png"
    with Image.open(storage / out["path"]) as thumb:
        assert (thumb.format, thumb.size) == ("PNG", (256, 128))
    assert (out["width"], out["height"], out["bytes"]) == (256, 128, (storage / out["path"]).stat().st_size)


def test_transform__compresses_text_to_a_gzip_copy_and_leaves_pdf_alone(
    storage: Path, tmp_path: Path
) -> None:
    text = write(storage / "uploads", "orders.csv", samples.orders_csv())
    pdf = write(storage / "uploads", "report.pdf", samples.report_pdf())

    packed = run({"path": str(text)}, upto="files.transform")["files.transform"]
    untouched = run({"path": str(pdf)}, upto="files.transform", execution_id="f" * 32)["files.transform"]

    assert packed["kind"] == "gzip"
    assert gzip.decompress((storage / packed["path"]).read_bytes()) == text.read_bytes()
    assert packed["bytes"] < text.stat().st_size / 2
    assert untouched == {"kind": "none", "reason": "pdf files are stored as they are"}


def test_store__is_content_addressed_and_storing_the_same_content_again_changes_nothing(
    storage: Path, tmp_path: Path
) -> None:
    source = write(storage / "uploads", "sunset.png", samples.sunset_png())
    digest = sha256(source)

    first = run({"path": str(source)}, upto="files.store")
    target = storage / "objects" / digest[:2] / digest[2:]
    stamp = target.stat().st_mtime_ns, target.stat().st_ino
    second = run({"path": str(source)}, upto="files.store", execution_id="a" * 32)
    again = registry.get_handler("files.store")(context("files.store", {}, second, "a" * 32))

    name = f"objects/{digest[:2]}/{digest[2:]}"
    assert first["files.store"] == {"object": name, "sha256": digest, "created": True}
    assert second["files.store"] == {"object": name, "sha256": digest, "created": False}
    assert again == second["files.store"]
    assert (target.stat().st_mtime_ns, target.stat().st_ino) == stamp
    assert sha256(target) == digest
    assert not any((storage / "inbox").iterdir()), "stored files leave the inbox"
    assert not [p for p in storage.rglob("*.part")], "no temporary file is left behind"


def test_notify__a_rerun_never_appends_a_second_line(storage: Path, tmp_path: Path) -> None:
    source = write(storage / "uploads", "notes.txt", samples.notes_txt())
    outputs = run({"path": str(source), "name": "notes.txt"})
    notify = registry.get_handler("files.notify")

    again = notify(context("files.notify", {}, outputs, attempt=2))

    lines = list(Outbox(storage / "outbox" / "notifications.jsonl").records())
    assert len(lines) == 1
    assert lines[0]["idempotency_key"] == f"{EID}:files.notify"
    assert (lines[0]["file"], lines[0]["sha256"], lines[0]["type"]) == ("notes.txt", sha256(source), "text")
    assert outputs["files.notify"]["duplicate"] is False
    assert again["duplicate"] is True
    assert again["offset"] == outputs["files.notify"]["offset"] == 0


class Receiver(ThreadingHTTPServer):
    """A local HTTP endpoint recording each POST; answers with ``codes`` in turn, then 200."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.received: list[tuple[str | None, dict[str, Any]]] = []
        self.codes: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.headers["Idempotency-Key"], json.loads(body)))
        self.send_response(self.server.codes.pop(0) if self.server.codes else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.DETFLOW = {**settings.DETFLOW, "NOTIFY_URL": server.url}
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_notify__posts_once_with_the_idempotency_key(
    storage: Path, tmp_path: Path, receiver: Receiver
) -> None:
    source = write(storage / "uploads", "a.csv", samples.orders_csv(rows=3))
    outputs = run({"path": str(source)})

    again = registry.get_handler("files.notify")(context("files.notify", {}, outputs, attempt=2))

    assert [(key, body["sha256"]) for key, body in receiver.received] == [
        (f"{EID}:files.notify", sha256(source))]
    assert outputs["files.notify"]["posted"] == "now"
    assert outputs["files.notify"]["http_status"] == 200
    assert again["posted"] == "before"


def test_notify__a_failing_endpoint_is_retried_without_a_second_outbox_line(
    storage: Path, tmp_path: Path, receiver: Receiver
) -> None:
    source = write(storage / "uploads", "a.csv", samples.orders_csv(rows=3))
    before = run({"path": str(source)}, upto="files.store")
    notify = registry.get_handler("files.notify")
    receiver.codes = [503]

    with pytest.raises(RetryableError, match="answered HTTP 503"):
        notify(context("files.notify", {}, before))
    out = notify(context("files.notify", {}, before, attempt=2))

    assert len(list(Outbox(storage / "outbox" / "notifications.jsonl").records())) == 1
    assert len(receiver.received) == 2  # the failed POST and its retry, with the same key
    assert {key for key, _ in receiver.received} == {f"{EID}:files.notify"}
    assert (out["duplicate"], out["posted"]) == (True, "now")


def test_notify__a_refusing_endpoint_is_a_permanent_error(
    storage: Path, tmp_path: Path, receiver: Receiver
) -> None:
    source = write(storage / "uploads", "a.txt", b"hi\n")
    before = run({"path": str(source)}, upto="files.store")
    receiver.codes = [400]

    with pytest.raises(PermanentError, match="refused the notification: HTTP 400"):
        registry.get_handler("files.notify")(context("files.notify", {}, before))


def test_outbox__a_crash_between_marker_and_line_appends_the_line_once_on_rerun(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "out.jsonl")
    box.append_once("k1", {"n": 1})
    # A crash after the marker of k2 was written and before its line: the marker points past the end.
    box._write_marker("k2", {"key": "k2", "offset": box.path.stat().st_size, "posted": False})

    first = box.append_once("k2", {"n": 2})
    second = box.append_once("k2", {"n": 2})

    assert [r["idempotency_key"] for r in box.records()] == ["k1", "k2"]
    assert (first.appended, second.appended, first.offset) == (True, False, second.offset)


def test_outbox__a_partial_last_line_left_by_a_crash_is_cut_off_and_rewritten(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "out.jsonl")
    box.append_once("k1", {"n": 1})
    whole = box.path.stat().st_size
    box._write_marker("k2", {"key": "k2", "offset": whole, "posted": False})
    with open(box.path, "ab") as handle:
        handle.write(b'{"n": 2, "idempotency_key": "k')  # the write the crash interrupted

    entry = box.append_once("k2", {"n": 2})

    assert entry.offset == whole
    assert [r["idempotency_key"] for r in box.records()] == ["k1", "k2"]
    assert box.path.read_bytes().count(b"\n") == 2


def test_outbox__threads_appending_the_same_keys_write_each_once(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "out.jsonl")

    def append(worker: int) -> None:
        for n in range(30):
            box.append_once(f"key-{n}", {"worker": worker})

    threads = [threading.Thread(target=append, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    keys = [r["idempotency_key"] for r in box.records()]
    assert sorted(keys) == sorted(f"key-{n}" for n in range(30))


def test_workflow__the_worker_runs_a_file_through_all_seven_steps(
    worker: Any, storage: Path, tmp_path: Path
) -> None:
    stored = ensure_file_processing()
    again = ensure_file_processing()
    source = write(storage / "uploads", "badge.webp", samples.badge_webp())

    started, _ = operations.start(FILE_PROCESSING, {"path": str(source), "name": "badge.webp"})
    [doc] = wait_terminal(started["_id"])

    assert (stored.version, again.version, again.id) == (1, 1, stored.id)
    assert doc["status"] == "SUCCEEDED"
    assert [s["name"] for s in doc["steps"]] == list(STEPS)
    stored_out = json.loads(doc["steps"][5]["output_json"])
    assert sha256(storage / stored_out["object"]) == sha256(source)
    assert all(len(s["output_json"]) < 64 * 1024 for s in doc["steps"]), "outputs are facts, not files"


def test_workflow__a_transient_failure_is_retried_and_succeeds(
    worker: Any, storage: Path, tmp_path: Path
) -> None:
    ensure_file_processing()
    source = write(storage / "uploads", "n.txt", b"one\ntwo\n")
    data = {"path": str(source), "simulate": {"transient_failure": "files.metadata"}}

    started, _ = operations.start(FILE_PROCESSING, data)
    [doc] = wait_terminal(started["_id"], timeout=30)

    assert doc["status"] == "SUCCEEDED"
    assert [s["attempt"] for s in doc["steps"]] == [1, 1, 1, 2, 1, 1, 1]
    assert doc["steps"][3]["attempts"][0]["message"].startswith("simulated transient failure")


def test_io__handlers_never_read_a_whole_file(
    storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read of a file is at most one 1 MiB chunk (images excepted: Pillow decodes them)."""
    from workflows import filetypes

    reads: list[int] = []
    real_open = open

    class Spy(io.BufferedReader):
        def read(self, size: int | None = -1) -> bytes:
            reads.append(-1 if size is None or size < 0 else size)
            return super().read(size)

    def spying_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode == "rb":
            return Spy(real_open(file, "rb", buffering=0))
        return real_open(file, mode, *args, **kwargs)

    source = write(storage / "uploads", "data.csv", samples.orders_csv(rows=60_000))  # ~2.6 MB
    assert os.path.getsize(source) > 2 * filetypes.CHUNK
    monkeypatch.setattr("builtins.open", spying_open)
    run({"path": str(source)})
    monkeypatch.undo()

    assert reads and max(reads) <= filetypes.CHUNK
