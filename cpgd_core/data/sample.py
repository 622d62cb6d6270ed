"""The bundled sample clip: ``python -m cpgd_core sample --out DIR [--seed 0]``.

Writes, deterministically for a seed:
- ``sample_blurry.mp4``: 3 s of 640x360 @ 24 fps camera-shake blur (GoPro protocol, ``synth.py``) of a
  photo from the *validation* split, H.264 (IPPP, crf 23) with an AAC track of 880 Hz beeps starting on
  every whole second, so frame-rate and audio sync can be checked by ear and by tests.
- ``sample_sharp.mkv``: the sharp centre sub-frames, lossless FFV1 in RGB (exact ground truth).
- ``sample.json``: the generation parameters; a second run with the same seed does nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import sys
from typing import Optional

import numpy as np
import torch

from ..codec.encode import write_video
from ..fileio import write_text
from .synth import load_photo, make_blur_clip

SAMPLE_VERSION = 1
FPS = 24
SECONDS = 3
SIZE = (640, 360)
SAMPLE_RATE = 44100
PHOTO = "coffee"  # validation split: never seen in training
MOTION = 1.5  # clearly visible shake blur
BLURRY, SHARP, META = "sample_blurry.mp4", "sample_sharp.mkv", "sample.json"


def beep_track(seconds: float, sample_rate: int = SAMPLE_RATE, beep_s: float = 0.1) -> dict:
    """Mono AUDIO dict with an 880 Hz beep (10 ms fades) starting exactly at every whole second."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    gate = (t % 1.0) < beep_s
    fade = np.minimum(1.0, np.minimum(t % 1.0, beep_s - t % 1.0) / 0.01)
    wav = 0.4 * np.sin(2 * np.pi * 880.0 * t) * gate * np.clip(fade, 0, 1)
    return {"waveform": torch.from_numpy(wav.astype(np.float32)).view(1, 1, -1), "sample_rate": sample_rate}


@functools.lru_cache(maxsize=1)
def _generator_digest() -> str:
    """Fingerprint of the code that renders the clip: a cached sample from older code is regenerated
    (a stale one silently skewed every figure measured on it)."""
    from . import synth

    h = hashlib.sha256()
    for mod in (synth, sys.modules[__name__]):
        with open(mod.__file__, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _meta(seed: int) -> dict:
    return {"version": SAMPLE_VERSION, "seed": int(seed), "photo": PHOTO, "fps": FPS, "frames": FPS * SECONDS,
            "size": list(SIZE), "generator": _generator_digest()}


def make_sample(out_dir: str, seed: int = 0, force: bool = False) -> tuple[str, str]:
    """Generate the sample pair in ``out_dir`` (skipped when already there for this seed). Returns the two paths."""
    os.makedirs(out_dir, exist_ok=True)
    blurry, sharp, meta_path = (os.path.join(out_dir, n) for n in (BLURRY, SHARP, META))
    meta = _meta(seed)
    if not force and os.path.isfile(blurry) and os.path.isfile(sharp) and os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                if json.load(f) == meta:
                    return blurry, sharp
        except (OSError, ValueError):
            pass
    with contextlib.suppress(FileNotFoundError):
        os.remove(meta_path)  # written last: marks a complete pair
    clip = make_blur_clip(load_photo(PHOTO), FPS * SECONDS, SIZE, subframes=9, seed=seed, motion=MOTION)
    # x264 with B-frames is not bit-reproducible across thread timings; IPPP (like the phone clips) is.
    write_video(blurry, clip["blurry"], FPS, audio=beep_track(SECONDS), crf=23, preset="medium",
                x264_params="bframes=0", overwrite=True)
    write_video(sharp, clip["sharp"], FPS, codec="ffv1", pix_fmt="bgr0", overwrite=True)
    write_text(meta_path, json.dumps(meta, indent=1))
    return blurry, sharp


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cpgd_core sample", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="regenerate even if present")
    a = ap.parse_args(argv)
    b, s = make_sample(a.out, a.seed, a.force)
    print(f"{b}\n{s}")
    return 0
