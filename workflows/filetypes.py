"""What a file is, from its content: magic bytes for binary formats, a streamed scan for text.

Every check reads the file in :data:`CHUNK` pieces (an image is decoded once, within the pixel
limit). A file that is empty, truncated, corrupt, too large or of a type that is not allowed raises
:class:`~workflows.errors.PermanentError` with a reason written for the person who sent it.
"""
from __future__ import annotations

import codecs
import csv
import io
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from workflows.errors import PermanentError
from workflows.jsonscan import JsonError, JsonScan

#: Bytes read at a time, everywhere.
CHUNK = 1024 * 1024
#: Bytes of text looked at to tell CSV from plain text.
SAMPLE = 64 * 1024
#: Delimiters a CSV file may use, in the order a tie is decided; rows of the sample compared.
CSV_DELIMITERS = (",", "\t", ";", "|")
CSV_ROWS = 50
#: CSV header columns kept in the outputs, and characters kept of each (outputs stay small).
COLUMNS_KEPT = 200
COLUMN_CHARS = 200

#: Allowed types: name -> MIME type.
ALLOWED = {
    "png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp",
    "pdf": "application/pdf", "text": "text/plain", "csv": "text/csv", "json": "application/json",
}
IMAGES = frozenset({"png", "jpeg", "gif", "webp"})
TEXTS = frozenset({"text", "csv", "json"})
#: Signatures of common types that are not allowed, so that the refusal can name them.
KNOWN_OTHERS = (
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"), (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"), (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x7fELF", "a Linux executable"), (b"MZ", "a Windows executable"),
    (b"\xcf\xfa\xed\xfe", "a macOS executable"), (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"), (b"SQLite format 3\x00", "an SQLite database"),
    (b"OggS", "an Ogg media file"), (b"ID3", "an MP3 file"), (b"\x00\x00\x01\x00", "an icon file"),
)
#: Characters that do not occur in text (tab, line breaks, form feed and escape do).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
_ALLOWED_TEXT = "PNG, JPEG, GIF, WebP, PDF, plain text, CSV or JSON"


@dataclass(frozen=True)
class Detected:
    """The type of a file and what finding it out learnt on the way."""

    kind: str
    size: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def mime(self) -> str:
        return ALLOWED[self.kind]


def chunks(path: Path, size: int = CHUNK) -> Iterator[bytes]:
    """Yield the file's bytes ``size`` at a time."""
    with open(path, "rb") as handle:
        while block := handle.read(size):
            yield block


def human(size: int) -> str:
    """Return a byte count for people: ``512 MiB``, ``1.5 KiB``, ``12 bytes``."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "bytes" or value.is_integer() else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def detect(path: Path, max_bytes: int, max_pixels: int, name_hint: str = "") -> Detected:
    """Return the allowed type of the file at ``path``; raise ``PermanentError`` saying why not."""
    size = path.stat().st_size
    if size == 0:
        raise PermanentError("the file is empty (0 bytes): there is nothing to process")
    if size > max_bytes:
        raise PermanentError(
            f"the file is {human(size)}, larger than the limit of {human(max_bytes)} "
            "(DETFLOW_MAX_FILE_BYTES)")
    with open(path, "rb") as handle:
        head = handle.read(32)
    kind = magic(head)
    if kind in IMAGES:
        return Detected(kind, size, check_image(path, kind, size, max_pixels))
    if kind == "pdf":
        return Detected(kind, size, check_pdf(path, size))
    if looks_binary(head):
        for signature, what in KNOWN_OTHERS:
            if head.startswith(signature):
                raise PermanentError(f"the file is {what}, which is not allowed: send {_ALLOWED_TEXT}")
        if head[4:8] == b"ftyp":
            raise PermanentError(f"the file is a video or an HEIC image, which is not allowed: "
                                 f"send {_ALLOWED_TEXT}")
    return check_text(path, size, name_hint)


def looks_binary(head: bytes) -> bool:
    """Tell whether the first bytes cannot be the start of UTF-8 text."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return True
    return _CONTROL.search(text) is not None


def magic(head: bytes) -> str | None:
    """Return the allowed binary type whose signature ``head`` starts with, or ``None``."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"%PDF-"):
        return "pdf"
    return None


def open_image(path: Path, max_pixels: int) -> Image.Image:
    """Open an image (header only) and refuse one over ``max_pixels`` before anything is decoded."""
    try:
        image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own limit (MAX_IMAGE_PIXELS) caught it first; ours is lower, so say ours.
        raise PermanentError(_bomb_reason(None, max_pixels)) from None
    except UnidentifiedImageError:
        raise PermanentError("the file starts like an image but its header cannot be read: "
                             "it is corrupt") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise PermanentError(_bomb_reason((width, height), max_pixels))
    return image


def _bomb_reason(size: tuple[int, int] | None, max_pixels: int) -> str:
    dims = f"{size[0]} x {size[1]} = {size[0] * size[1]:,} pixels" if size else "far too many pixels"
    return (f"the image declares {dims}, more than the limit of {max_pixels:,} "
            "(DETFLOW_MAX_IMAGE_PIXELS): refused as a possible decompression bomb")


def check_image(path: Path, kind: str, size: int, max_pixels: int) -> dict[str, Any]:
    """Check that the image is whole and decodes; return its format and size."""
    what = kind.upper() if kind != "webp" else "WebP"
    if kind == "webp":
        with open(path, "rb") as handle:
            declared = int.from_bytes(handle.read(8)[4:8], "little") + 8
        if size < declared:
            raise PermanentError(f"the {what} image is truncated: it declares {declared} bytes "
                                 f"and has {size}")
    if kind == "gif":
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\x3b":
                raise PermanentError(f"the {what} image is truncated: it has no end marker")
    try:
        with open_image(path, max_pixels) as image:
            details = {"width": image.width, "height": image.height, "mode": image.mode}
            if kind == "png":
                image.verify()  # chunk checksums, up to the end chunk
        with open_image(path, max_pixels) as image:
            if kind == "jpeg":
                image.draft(None, (256, 256))  # decode at a fraction of the size: enough to check
            image.load()
    except PermanentError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise PermanentError(f"the {what} image is truncated or corrupt ({exc})") from None
    return details


def check_pdf(path: Path, size: int) -> dict[str, Any]:
    """Check that the PDF ends with its end-of-file marker; return its version."""
    with open(path, "rb") as handle:
        version = handle.read(16)[5:8].decode("ascii", "replace")
        handle.seek(max(size - 2048, 0))
        tail = handle.read(2048)
    if b"%%EOF" not in tail:
        raise PermanentError("the PDF is truncated: it has no end-of-file marker (%%EOF)")
    return {"version": version}


def check_text(path: Path, size: int, name_hint: str = "") -> Detected:
    """Check that the file is UTF-8 text; tell JSON, CSV and plain text apart."""
    info = scan_text(path)
    first = info.pop("first_char")
    if first in ("{", "["):
        try:
            keys = scan_json(path, info["encoding"])
        except JsonError as exc:
            if name_hint.lower().endswith(".json"):
                raise PermanentError(f"the JSON is not valid: {exc}") from None
        else:
            return Detected("json", size, {**info, **keys})
    dialect = sniff_csv(path, info["encoding"])
    if dialect is not None:
        return Detected("csv", size, {**info, **dialect})
    return Detected("text", size, info)


def scan_text(path: Path) -> dict[str, Any]:
    """Decode the whole file as UTF-8, streaming; return its encoding, lines and first character."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = lines = 0
    ascii_only = True
    bom = False
    first = ""
    last = b""
    for block in chunks(path):
        if offset == 0 and block.startswith(codecs.BOM_UTF8):
            bom, block, offset = True, block[3:], 3
        try:
            text = decoder.decode(block)
        except UnicodeDecodeError as exc:
            raise PermanentError(
                f"the file is neither an allowed binary type nor UTF-8 text (byte 0x{block[exc.start]:02x} "
                f"at offset {offset + exc.start}): send {_ALLOWED_TEXT}, with text in UTF-8") from None
        bad = _CONTROL.search(text)
        if bad:
            raise PermanentError(
                f"the file holds binary data (control character {ord(bad.group()):#04x}), and no "
                f"allowed type matches its first bytes: send {_ALLOWED_TEXT}")
        if not first:
            first = text.lstrip()[:1]
        ascii_only = ascii_only and block.isascii()
        lines += block.count(b"\n")
        offset += len(block)
        last = block[-1:] or last
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise PermanentError("the text ends in the middle of a UTF-8 character: "
                             "the file looks truncated") from None
    if last and last != b"\n":
        lines += 1
    encoding = "utf-8-sig" if bom else ("ascii" if ascii_only else "utf-8")
    return {"encoding": encoding, "lines": lines, "first_char": first}


def text_chunks(path: Path, encoding: str) -> Iterator[str]:
    """Yield the file's text, decoded in chunks."""
    decoder = codecs.getincrementaldecoder("utf-8-sig" if encoding == "utf-8-sig" else "utf-8")()
    for block in chunks(path):
        yield decoder.decode(block)
    yield decoder.decode(b"", final=True)


def scan_json(path: Path, encoding: str) -> dict[str, Any]:
    """Check the JSON structure, streaming; return its root type and top-level keys or items."""
    scan = JsonScan()
    for text in text_chunks(path, encoding):
        scan.feed(text)
    scan.close()
    if scan.root == "object":
        return {"root": "object", "keys": scan.keys, "key_count": scan.items}
    return {"root": "array", "items": scan.items}


def sniff_csv(path: Path, encoding: str) -> dict[str, Any] | None:
    """Return the CSV dialect and header of a text file that looks like CSV, else ``None``.

    It looks like CSV when a delimiter (``,`` ``;`` tab ``|``) splits each of the first
    :data:`CSV_ROWS` rows of the first :data:`SAMPLE` characters (cut to whole lines) into the same
    number of fields, at least two. Each delimiter is tried with ``csv.reader`` (quotes as in
    RFC 4180), whose cost is linear in the sample, unlike ``csv.Sniffer``'s, which a few KiB of
    ``,"a`` keep busy for seconds; of those that fit, the one that makes the most fields wins, the
    first of ``,`` tab ``;`` ``|`` on a tie.
    """
    with open(path, encoding=encoding, newline="") as handle:
        sample = handle.read(SAMPLE)
    if len(sample) == SAMPLE and "\n" in sample:
        sample = sample[: sample.rindex("\n") + 1]
    first_line = sample.split("\n", 1)[0]
    found: tuple[int, str, list[str]] | None = None
    for delimiter in CSV_DELIMITERS:
        spaced = first_line.count(delimiter) == first_line.count(delimiter + " ")
        try:
            reader = csv.reader(io.StringIO(sample), delimiter=delimiter, skipinitialspace=spaced)
            rows = list(itertools.islice((row for row in reader if row), CSV_ROWS))
        except csv.Error:
            continue
        widths = {len(row) for row in rows}
        if len(rows) < 2 or len(widths) != 1 or (width := widths.pop()) < 2:
            continue
        if found is None or width > found[0]:
            found = (width, delimiter, rows[0])
    if found is None:
        return None
    _, delimiter, header = found
    return {"delimiter": delimiter, "columns": [c[:COLUMN_CHARS] for c in header[:COLUMNS_KEPT]],
            "column_count": len(header)}
