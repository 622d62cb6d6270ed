"""Codec-prior costs and accuracy: ``python bench/priors.py [--frames 48]``.

1. Per-frame cost at 1280x720 (a synthetic pan of a real photo, H.264 crf 20): decode only, decode + RGB,
   the full prior pipeline (``iter_decoded``: MVs, block-grid flows both ways, MC residual, RGB) for an
   IPPP and an IBBP stream, and the libx264 re-encode fallback (``priors_from_frames``).
2. Median end-point error of the codec flow against the true flow on synthetic clips.
3. A late start: loading 16 frames from the end of a long 720p clip (keyframe every 2 s) against loading the
   first 16 (decoding seeks to the keyframe before the start instead of decoding from frame 0).
Timings are medians over the frames of one run; on a shared machine read them as +-30 %.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import av
import numpy as np
import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cpgd_core.codec.decode import frame_to_rgb, iter_decoded, load_video  # noqa: E402
from cpgd_core.codec.encode import write_video  # noqa: E402
from cpgd_core.codec.reencode import encode_and_extract, priors_from_frames  # noqa: E402
from cpgd_core.data.synth import load_photo, make_blur_clip, pan_zoom_path, render_path  # noqa: E402


def _per_frame(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / n * 1000


def _decode_only(path: str, rgb: bool) -> None:
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for fr in c.decode(s):
            if rgb:
                frame_to_rgb(fr)


def _epe(pri, true: torch.Tensor, which: str = "prev", mean: bool = False) -> float:
    f = (pri.flow_to_prev if which == "prev" else pri.flow_to_next).float()
    v = (pri.valid_to_prev if which == "prev" else pri.valid_to_next)[:, 0]
    s = pri.flow_stride
    t = true[:, :, s // 2::s, s // 2::s][..., :f.shape[-2], :f.shape[-1]]
    e = (f - t).norm(dim=1)[v]
    if not e.numel():
        return float("nan")
    return float(e.mean() if mean else e.median())


def timing(frames: int, tmp: str) -> list[tuple[str, float]]:
    img = load_photo("astronaut")
    size = (1280, 720)
    clip, _ = render_path(img, pan_zoom_path(img.shape, size, frames, 4.0, 1.5, zoom_per_frame=1.002), size)
    clip = torch.from_numpy(clip)
    rows = []
    for name, params in (("IPPP", "bframes=0:ref=1"), ("IPPP ref=3", "bframes=0:ref=3"),
                         ("IBBP", "bframes=2:b-pyramid=none:ref=1")):
        path = os.path.join(tmp, f"{name.replace(' ', '_')}.mp4")
        write_video(path, clip, 30, crf=20, preset="veryfast", x264_params=params, overwrite=True)
        _decode_only(path, False)  # warm caches
        rows.append((f"{name}: decode only", _per_frame(lambda: _decode_only(path, False), frames)))
        rows.append((f"{name}: decode + RGB", _per_frame(lambda: _decode_only(path, True), frames)))
        rows.append((f"{name}: decode + MVs + flows both ways + residual + RGB",
                     _per_frame(lambda: list(iter_decoded(path)), frames)))
        rows.append((f"{name}: load_video (same + stacking to tensors)",
                     _per_frame(lambda: load_video(path), frames)))
    rows.append(("re-encode fallback, libx264 superfast (priors_from_frames)",
                 _per_frame(lambda: priors_from_frames(clip, 30, crf=18, preset="superfast"), frames)))
    return rows


def accuracy(tmp: str) -> list[tuple[str, float]]:
    img = load_photo("astronaut")
    size = (320, 240)
    rows = []
    for name, mats in (("pan 3.25,-1.5 px", pan_zoom_path(img.shape, size, 12, 3.25, -1.5)),
                       ("zoom 1.2 %/frame + rotation", pan_zoom_path(img.shape, size, 12, 1.0, 0.5, 1.012, 0.004))):
        frames, true = render_path(img, mats, size)
        frames, true = torch.from_numpy(frames), torch.from_numpy(true)
        for label, codec, params in (("x264 IPPP", "libx264", "bframes=0:ref=1"),
                                     ("x264 IBBP", "libx264", "bframes=2:b-pyramid=none:ref=1"),
                                     ("x264 default (refs=3, b-pyramid)", "libx264", None),
                                     ("mpeg4 (P only)", "mpeg4", None),
                                     ("hevc -> re-encode", "libx265", None)):
            path = os.path.join(tmp, "acc.mkv" if codec == "libx265" else "acc.mp4")
            write_video(path, frames, 24, codec=codec, crf=18, preset="medium", x264_params=params, overwrite=True)
            _, pri, _, _ = load_video(path)
            rows.append((f"{name}, {label}: flow_to_prev", _epe(pri, true)))
            nxt = torch.zeros_like(true)
            nxt[:-1] = -true[1:]
            rows.append((f"{name}, {label}: flow_to_next", _epe(pri, nxt, "next")))
    clip = make_blur_clip(load_photo("chelsea"), 12, (256, 256), seed=1)
    _, pri = encode_and_extract(clip["blurry"], 24, crf=23)
    rows.append(("synthetic shake blur 256x256, x264 crf 23: flow_to_prev", _epe(pri, clip["flow_to_prev_true"])))
    # Multi-reference P-frames: FFmpeg exports no reference index, decode.pick_references recovers it.
    clip = make_blur_clip(load_photo("coffee"), 12, (320, 240), subframes=9, seed=0, motion=2.0)
    for params in ("bframes=0:ref=1", "bframes=0:ref=3"):
        _, pri = encode_and_extract(clip["blurry"], 24, crf=23, preset="medium", x264_params=params)
        rows.append((f"shake blur 320x240 (motion 2), x264 medium {params}: flow_to_prev (MEAN EPE)",
                     _epe(pri, clip["flow_to_prev_true"], mean=True)))
    return rows


def seeking(frames: int, tmp: str) -> list[tuple[str, float]]:
    img = load_photo("astronaut")
    size = (1280, 720)
    mats = pan_zoom_path(img.shape, size, frames, 0.5, 0.25)
    path = os.path.join(tmp, "long.mp4")
    with av.open(path, "w") as c:  # rendered and encoded 30 frames at a time: the whole clip would not fit in RAM
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.options = {"crf": "20", "preset": "veryfast", "x264-params": "bframes=2:keyint=60:scenecut=0"}
        for i in range(0, frames, 30):
            part, _ = render_path(img, mats[i:i + 30], size)
            for f in np.clip(np.asarray(part).transpose(0, 2, 3, 1) * 255 + 0.5, 0, 255).astype(np.uint8):
                c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    rows = []
    for label, start in (("first 16 frames", 0), (f"16 frames from frame {frames - 16}", frames - 16)):
        t0 = time.perf_counter()
        load_video(path, start=start, cap=16)
        rows.append((f"{frames}-frame 720p IBBP clip, keyint 60: {label}", time.perf_counter() - t0))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--seek-frames", type=int, default=600, help="length of the late-start clip (0: skip)")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as tmp:
        print(f"| 1280x720, {a.frames} frames | ms / frame |\n|---|---|")
        for k, v in timing(a.frames, tmp):
            print(f"| {k} | {v:.1f} |")
        print("\n| flow accuracy | median EPE (px) |\n|---|---|")
        for k, v in accuracy(tmp):
            print(f"| {k} | {v:.3f} |")
        if a.seek_frames:
            print("\n| late start | load_video seconds |\n|---|---|")
            for k, v in seeking(a.seek_frames, tmp):
                print(f"| {k} | {v:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
