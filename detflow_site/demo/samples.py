"""The demo's sample set: real files drawn and written on the spot, some of them broken on purpose."""
from __future__ import annotations

import io
import json
import math
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps


@dataclass(frozen=True)
class Sample:
    """One generated file and what the workflow should make of it."""

    path: Path
    #: ``"valid"``, or why ``files.validate`` must refuse it: ``"truncated"``, ``"empty"``, ``"disallowed"``.
    expect: str
    #: What the file is, for people.
    note: str


def generate(folder: Path) -> list[Sample]:
    """Write the sample set into ``folder`` (created if needed); return it in a stable order."""
    folder.mkdir(parents=True, exist_ok=True)
    makers: list[tuple[str, str, str, Callable[[], bytes]]] = [
        ("sunset.png", "valid", "PNG drawn with Pillow", sunset_png),
        ("mandelbrot.jpg", "valid", "JPEG of the Mandelbrot set", mandelbrot_jpeg),
        ("spinner.gif", "valid", "animated GIF, 8 frames", spinner_gif),
        ("badge.webp", "valid", "WebP with transparency", badge_webp),
        ("report.pdf", "valid", "two-page PDF", report_pdf),
        ("orders.csv", "valid", "CSV, 1,000 rows", orders_csv),
        ("notes.txt", "valid", "UTF-8 text", notes_txt),
        ("inventory.json", "valid", "JSON object", inventory_json),
        ("broken.png", "truncated", "a PNG cut off halfway", lambda: halved(sunset_png())),
        ("empty.txt", "empty", "0 bytes", lambda: b""),
        ("holiday.jpg", "disallowed", "a ZIP archive named like a photo", holiday_zip),
    ]
    samples = []
    for name, expect, note, make in makers:
        path = folder / name
        path.write_bytes(make())
        samples.append(Sample(path, expect, note))
    return samples


def halved(data: bytes) -> bytes:
    """The first half of a file, as an interrupted upload leaves it."""
    return data[: len(data) // 2]


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def sunset_png(width: int = 640, height: int = 400) -> bytes:
    """A sky gradient, a sun and a sea."""
    sky = Image.linear_gradient("L").resize((width, height))
    image = ImageOps.colorize(sky, black="#ffcf6b", white="#3b2a6b")
    image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.38, height * 0.35, width * 0.62, height * 0.35 + width * 0.24), fill="#ff7b39")
    draw.rectangle((0, height * 0.62, width, height), fill="#1d3b6e")
    for row in range(8):
        y = height * 0.65 + row * 16
        draw.line((width * 0.40 + row * 4, y, width * 0.60 - row * 4, y), fill="#ffb36b", width=3)
    return _encode(image, "PNG")


def mandelbrot_jpeg(width: int = 800, height: int = 600) -> bytes:
    """The Mandelbrot set, coloured."""
    gray = Image.effect_mandelbrot((width, height), (-2.2, -1.2, 1.0, 1.2), 120)
    return _encode(ImageOps.colorize(gray, black="#0b1d3a", white="#f5d76e"), "JPEG", quality=88)


def spinner_gif(size: int = 96, frames: int = 8) -> bytes:
    """A rotating arc, as an animated GIF."""
    images = []
    for n in range(frames):
        image = Image.new("P", (size, size), 0)
        image.putpalette([255, 255, 255, 40, 110, 200] + [0, 0, 0] * 254)
        start = n * 360 // frames
        ImageDraw.Draw(image).arc((8, 8, size - 8, size - 8), start, start + 270, fill=1, width=10)
        images.append(image)
    return _encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=80, loop=0)


def badge_webp(size: int = 300) -> bytes:
    """A round badge on a transparent background."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 10, size - 10, size - 10), fill=(40, 110, 200, 255), outline=(255, 255, 255, 255),
                 width=8)
    points = [(size / 2 + 90 * math.cos(a * math.pi / 5 - math.pi / 2) * (1 if a % 2 == 0 else 0.45),
               size / 2 + 90 * math.sin(a * math.pi / 5 - math.pi / 2) * (1 if a % 2 == 0 else 0.45))
              for a in range(10)]
    draw.polygon(points, fill=(255, 215, 0, 255))
    return _encode(image, "WEBP", quality=90)


def report_pdf() -> bytes:
    """Two pages, each an image with a few bars (Pillow writes the PDF)."""
    pages = []
    for n in range(2):
        page = Image.new("RGB", (595, 842), "white")
        draw = ImageDraw.Draw(page)
        draw.text((60, 60), f"Quarterly report, page {n + 1} of 2", fill="black")
        for bar in range(6):
            height = 80 + ((bar * 37 + n * 53) % 300)
            draw.rectangle((80 + bar * 75, 700 - height, 130 + bar * 75, 700), fill="#2e6fc0")
        pages.append(page)
    return _encode(pages[0], "PDF", save_all=True, append_images=pages[1:], resolution=72.0)


def orders_csv(rows: int = 1000) -> bytes:
    """Orders with an id, a date, a customer, an amount and a status."""
    rng = random.Random(7)
    lines = ["order_id,date,customer,amount_eur,status"]
    for n in range(rows):
        lines.append(f"{10_000 + n},2025-{1 + n % 12:02d}-{1 + n % 28:02d},customer-{rng.randint(1, 300)},"
                     f"{rng.randint(100, 99_999) / 100:.2f},{rng.choice(['paid', 'shipped', 'refunded'])}")
    return ("\n".join(lines) + "\n").encode()


def notes_txt() -> bytes:
    """A few lines of UTF-8 prose."""
    return (
        "Notes from the planning meeting\n"
        "================================\n\n"
        "- Ship the café menu update before Friday — the printer needs two days.\n"
        "- Résumé reviews move to Tuesdays.\n"
        "- Nobody remembers who owns the staging server. Find out.\n"
    ).encode()


def inventory_json() -> bytes:
    """A small inventory document."""
    return json.dumps({
        "warehouse": "north", "updated": "2025-06-01",
        "items": [{"sku": f"SKU-{n:04d}", "count": (n * 7) % 50} for n in range(40)],
        "tags": ["seasonal", "audited"],
    }, indent=2).encode()


def holiday_zip() -> bytes:
    """A ZIP archive (the name says it is a JPEG)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "not a photo\n")
    return out.getvalue()
