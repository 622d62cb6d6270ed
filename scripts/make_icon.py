"""Draws the registry icon docs/images/icon.png (pyproject.toml [tool.comfy] Icon): a frame blurred on its left
half and sharp on its right, under two motion-vector arrows (the codec prior). Deterministic; run to redraw."""
from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFilter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "images", "icon.png")
S = 400


def main() -> None:
    icon = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    d = ImageDraw.Draw(icon)
    d.rounded_rectangle((0, 0, S - 1, S - 1), radius=64, fill=(27, 35, 48, 255))
    frame = (40, 90, 360, 310)
    scene = Image.new("RGB", (S, S), (44, 62, 87))
    sd = ImageDraw.Draw(scene)
    sd.ellipse((130, 130, 270, 270), fill=(242, 178, 51))
    sd.rectangle((120, 250, 280, 274), fill=(232, 237, 245))
    blurred = scene.filter(ImageFilter.BoxBlur(12))
    scene.paste(blurred.crop((frame[0], frame[1], S // 2, frame[3])), (frame[0], frame[1]))
    mask = Image.new("L", (S, S), 0)
    ImageDraw.Draw(mask).rounded_rectangle(frame, radius=14, fill=255)
    icon.paste(scene, (0, 0), mask)
    d.line((200, 80, 200, 320), fill=(232, 237, 245), width=6)
    arrow = (94, 200, 242)
    for x0 in (70, 250):
        d.line((x0, 48, x0 + 80, 48), fill=arrow, width=10)
        d.line((x0 + 62, 32, x0 + 80, 48, x0 + 62, 64), fill=arrow, width=10, joint="curve")
    for x in (62, 122, 182, 242, 302):
        d.rounded_rectangle((x, 334, x + 28, 352), radius=4, fill=(91, 107, 130))
    icon.save(OUT, optimize=True)
    print(OUT)


if __name__ == "__main__":
    main()
