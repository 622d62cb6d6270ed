"""Publish browser-test screenshots: docs/screenshots/<name>.png and the workflow thumbnail workflows/<name>.jpg.

The browser tests call ``publish`` when CPGD_UPDATE_SCREENSHOTS=1; by hand:

    python scripts/make_thumbnails.py SCREENSHOT.png [...]     # name = file stem
"""
from __future__ import annotations

import io
import os
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCREENSHOTS = os.path.join(ROOT, "docs", "screenshots")
WORKFLOWS = os.path.join(ROOT, "workflows")
MAX_BYTES = 300_000      # README images stay small in the repository
SCREENSHOT_WIDTH = 1280
THUMB_WIDTH = 480


def _fit(img: Image.Image, width: int) -> Image.Image:
    if img.width <= width:
        return img
    return img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)


def _encode_small(img: Image.Image) -> tuple[bytes, str]:
    """PNG with a reduced palette if that fits MAX_BYTES (crisp UI text), else JPEG at falling quality."""
    buf = io.BytesIO()
    img.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
    if buf.tell() <= MAX_BYTES:
        return buf.getvalue(), "png"
    for quality in (85, 75, 65, 55, 45):
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=quality, optimize=True)
        if buf.tell() <= MAX_BYTES:
            break
    return buf.getvalue(), "jpg"


def publish(screenshot: str, name: str, thumbnail: bool = True) -> list[str]:
    """Write docs/screenshots/<name>.(png|jpg) and, for a workflow, workflows/<name>.jpg. Returns the paths."""
    img = Image.open(screenshot)
    img.load()
    os.makedirs(SCREENSHOTS, exist_ok=True)
    data, ext = _encode_small(_fit(img, SCREENSHOT_WIDTH))
    for old in ("png", "jpg"):
        stale = os.path.join(SCREENSHOTS, f"{name}.{old}")
        if old != ext and os.path.exists(stale):
            os.remove(stale)
    out = [os.path.join(SCREENSHOTS, f"{name}.{ext}")]
    with open(out[0], "wb") as f:
        f.write(data)
    if thumbnail:
        out.append(os.path.join(WORKFLOWS, f"{name}.jpg"))
        _fit(img, THUMB_WIDTH).convert("RGB").save(out[1], "JPEG", quality=80, optimize=True)
    return out


if __name__ == "__main__":
    for path in sys.argv[1:]:
        for written in publish(path, os.path.splitext(os.path.basename(path))[0]):
            print(os.path.relpath(written, ROOT))
