"""``python -m cpgd_core priors IN --out DIR``: extract codec priors and write pictures of them.

Writes ``DIR/<name>_mv.mp4`` (motion into the previous frame on a colour wheel, black = no vector) and
``DIR/<name>_residual.mp4`` (signed residual heat map), streaming in chunks so any length fits in memory,
and prints a summary. Colour scales are fixed from the first chunk so the videos do not flicker.
With ``--blur-field`` it also writes ``DIR/<name>_blur_field.npz``: each pixel's blur trajectory and each frame's
exposure (``cpgd_core.blur.export``), streamed as well.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional

import numpy as np
import torch

from ..errors import CPGDInputError
from .decode import iter_video_chunks, probe
from .encode import VideoWriter
from .flow import magnitude
from .visualize import flow_to_color, residual_heatmap


def _size(text: Optional[str]) -> Optional[tuple[int, int]]:
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise CPGDInputError(f"size must look like 640x360, got {text!r}") from e
    return w, h


def extract_visualisations(path: str, out_dir: str, start: int = 0, cap: int = 0, every_nth: int = 1,
                           size: Optional[tuple[int, int]] = None, chunk: int = 32, overwrite: bool = False,
                           log=print) -> dict:
    """Write the motion and residual videos of ``path``; returns paths and a summary dict."""
    info = probe(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    mv_path = os.path.join(out_dir, f"{stem}_mv.mp4")
    res_path = os.path.join(out_dir, f"{stem}_residual.mp4")
    for p in (mv_path, res_path):
        if os.path.exists(p) and not overwrite:
            raise CPGDInputError(f"output file already exists: {p} (use --overwrite)")
    stats = {"frames": 0, "types": {"I": 0, "P": 0, "B": 0}, "coverage": 0.0, "mean_abs_residual": 0.0,
             "source": None, "max_flow": None, "residual_scale": None}
    fps = info.fps / every_nth

    os.makedirs(out_dir, exist_ok=True)
    # One decoding pass feeds both writers.
    with VideoWriter(mv_path, fps, crf=20, preset="fast", overwrite=overwrite) as mv_out, \
            VideoWriter(res_path, fps, crf=20, preset="fast", overwrite=overwrite) as res_out:
        for _, pri, _ in iter_video_chunks(path, chunk, 0, start, cap, every_nth, size):
            if stats["max_flow"] is None:
                m = magnitude(pri.flow_to_prev.float(), keepdim=True)[pri.valid_to_prev]
                stats["max_flow"] = max(float(torch.quantile(m, 0.99)) if m.numel() else 1.0, 1.0)
                a = pri.residual.float().abs().flatten()[::7]
                stats["residual_scale"] = max(float(torch.quantile(a, 0.995)), 1 / 255)
                stats["source"] = pri.source
            stats["frames"] += len(pri)
            for k in pri.frame_types:
                stats["types"][k] += 1
            stats["coverage"] += float(pri.valid_to_prev.float().mean()) * len(pri)
            stats["mean_abs_residual"] += float(pri.residual.float().abs().mean()) * len(pri)
            mv_out.write(flow_to_color(pri.flow_to_prev, pri.valid_to_prev, stats["max_flow"],
                                       size=(pri.height, pri.width)))
            res_out.write(residual_heatmap(pri.residual, stats["residual_scale"]))
    n = max(stats["frames"], 1)
    stats["coverage"] /= n
    stats["mean_abs_residual"] /= n
    t = stats["types"]
    log(f"{info.describe()}\npriors from {stats['source']}: {stats['frames']} frames, I/P/B = "
        f"{t['I']}/{t['P']}/{t['B']}, motion coverage {100 * stats['coverage']:.1f}%, "
        f"mean |residual| {255 * stats['mean_abs_residual']:.2f} grey levels\n"
        f"wrote {mv_path} (full saturation = {stats['max_flow']:.1f} px)\n"
        f"wrote {res_path} (full intensity = {255 * stats['residual_scale']:.1f} grey levels)")
    return {"mv": mv_path, "residual": res_path, **stats}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cpgd_core priors", description=__doc__.split("\n")[0])
    ap.add_argument("input", help="video file")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--cap", type=int, default=0, help="at most this many frames (0 = all)")
    ap.add_argument("--every-nth", type=int, default=1)
    ap.add_argument("--size", default=None, help="resize, e.g. 640x360")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--blur-field", action="store_true",
                    help="also write DIR/<name>_blur_field.npz: per-pixel blur trajectory (T, 2, H, W) and exposure (T,)")
    ap.add_argument("--exposure", default="auto",
                    help="with --blur-field: exposure as a fraction of the frame interval (0-1), or auto (estimated)")
    ap.add_argument("--raft", default=None, metavar="RAFT_PTH",
                    help="with --blur-field: refine the motion with RAFT from this raft-things.pth (the official "
                         "CPGD-Net's optical-flow weights; CUDA when available, slow on a CPU; its correlation "
                         "volume takes about 0.4 GB at 1080p, 6 GB at 4K)")
    a = ap.parse_args(argv)
    raft = None
    if a.raft and not a.blur_field:
        raise CPGDInputError("--raft refines the blur field's motion: add --blur-field")
    if a.blur_field:
        from ..blur.field import parse_exposure
        from ..blur.velocity import RaftRefiner

        parse_exposure(a.exposure)  # (a bad value fails before the first decoding pass, not after it)
        if a.raft:
            raft = RaftRefiner.from_file(a.raft)   # (a missing or foreign file is refused by the weights reader)
    size = _size(a.size)
    extract_visualisations(a.input, a.out, a.start, a.cap, a.every_nth, size, overwrite=a.overwrite)
    if a.blur_field:
        from ..blur.export import write_blur_field

        stem = os.path.splitext(os.path.basename(a.input))[0]
        r = write_blur_field(a.input, os.path.join(a.out, f"{stem}_blur_field.npz"), a.exposure, a.start, a.cap,
                             a.every_nth, size, overwrite=a.overwrite, raft=raft)
        e = r["exposure"]
        print(f"wrote {r['path']}: {r['frames']} frames {r['width']}x{r['height']}, exposure "
              f"{float(np.median(e)):.2f} of the frame interval (range {float(e.min()):.2f}-{float(e.max()):.2f}, "
              f"{'given' if a.exposure != 'auto' else 'estimated'}), median |trajectory| "
              f"{r['median_trajectory']:.2f} px{', motion refined by RAFT' if raft is not None else ''}")
    return 0
