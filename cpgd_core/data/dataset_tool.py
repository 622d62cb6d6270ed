"""Dataset tool: encode paired blurry/sharp frame folders and store their codec priors.

``python -m cpgd_core dataset encode SRC OUT [--layout auto|gopro|dvd] [--format ours|official|both]
[--crf 18] [--preset medium] [--max-frames N]``

Input layouts:
- GoPro: ``SRC/<split>/<clip>/{blur,sharp}/*.png`` (``blur_gamma`` is ignored).
- DVD:   ``SRC/<clip>/{input,GT}/*.jpg`` (or .png).

Each clip's blurry frames are encoded with libx264 (``bframes=0:ref=1``, IPPP like phone footage), the file
is decoded again exactly as at inference (``codec.decode.load_video``) and the priors are written:

- ``ours``: ``OUT/<split>/<clip>/blur.mp4``, ``meta.json`` and one .npy per frame and field in
  ``flow_to_prev/``, ``valid_to_prev/``, ``flow_to_next/``, ``valid_to_next/``, ``residual/`` (float16 /
  bool, CodecPriors shapes). Read back with :func:`read_priors_dir`.
- ``official``: the CPGD-Net "265/264" test layout (arXiv 2504.12222 code, ``utils_tools.recoverMV`` /
  ``load_resi_seq``) under ``OUT/official/<split>/``: ``lq/<clip>/%05d.png`` (decoded blurry frames),
  ``gt/<clip>/%05d.png``, ``MVs/<clip>/<clip>_<a>_<a+1>.npy`` = (2, ceil(H/8), ceil(W/8)) int16 quarter-pel
  vectors of frame a+1 into frame a (x, y), ``resi/<clip>/<clip>_<a>_<a+1>.npy`` = (H, W) int16 residual of
  frame a+1 stored so that ``(raw + 1) / 255`` is the residual, ``meta_info.txt`` lines
  ``<clip> <nframes> (h,w,3)``. The format has no validity mask (intra blocks are stored as zero motion),
  so a sidecar ``MVs_valid/<clip>/<clip>_<a>_<a+1>.npy`` (bool, same grid) is written next to it and used by
  :func:`read_official_clip` when present.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
from fractions import Fraction
from typing import Optional

import cv2
import numpy as np
import torch

from ..codec.decode import load_video
from ..codec.encode import write_video
from ..codec.motion import grid_size, invert_grid
from ..codec.priors import PRIOR_FIELDS, CodecPriors
from ..errors import CPGDInputError
from ..fileio import atomic_write, write_text

_IMG_EXT = (".png", ".jpg", ".jpeg", ".bmp")
OFFICIAL_MV_STRIDE = 8
OFFICIAL_MV_SCALE = 4      # quarter-pel
OFFICIAL_RESI_SCALE = 255  # residual = (raw + 1) / 255


# Every file is written to a hidden temporary name and renamed into place (cpgd_core.fileio), and each
# clip's index entry (meta.json, meta_info.txt) comes last: an interrupted run leaves no truncated frame,
# array or index, and re-running it rewrites the clip.

def _save_npy(path: str, array: np.ndarray) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


# ----------------------------------------------------------------------------------- input layouts

def _images(folder: str) -> list[str]:
    return sorted(f for f in glob.glob(os.path.join(folder, "*")) if f.lower().endswith(_IMG_EXT))


def find_clips(src: str, layout: str = "auto") -> list[dict]:
    """List clips as dicts(split, name, blur=[paths], sharp=[paths]) for a GoPro or DVD layout."""
    if not os.path.isdir(src):
        raise CPGDInputError(f"dataset folder not found: {src}")
    clips = []
    if layout in ("auto", "gopro"):
        for d in sorted(glob.glob(os.path.join(src, "*", "*", "blur"))):
            clip_dir = os.path.dirname(d)
            clips.append({"split": os.path.basename(os.path.dirname(clip_dir)), "name": os.path.basename(clip_dir),
                          "blur": _images(d), "sharp": _images(os.path.join(clip_dir, "sharp"))})
    if layout in ("auto", "dvd") and not clips:
        for d in sorted(glob.glob(os.path.join(src, "*", "input"))):
            clip_dir = os.path.dirname(d)
            clips.append({"split": "", "name": os.path.basename(clip_dir), "blur": _images(d),
                          "sharp": _images(os.path.join(clip_dir, "GT"))})
    if layout not in ("auto", "gopro", "dvd"):
        raise CPGDInputError(f"layout must be auto, gopro or dvd, got {layout!r}")
    if not clips:
        raise CPGDInputError(f"no clips found in {src}: expected <split>/<clip>/{{blur,sharp}}/*.png (GoPro) "
                             f"or <clip>/{{input,GT}}/*.jpg (DVD)")
    for c in clips:
        if not c["blur"]:
            raise CPGDInputError(f"clip {c['name']} has no blurry frames")
        if c["sharp"] and len(c["sharp"]) != len(c["blur"]):
            raise CPGDInputError(f"clip {c['name']}: {len(c['blur'])} blurry but {len(c['sharp'])} sharp frames")
    return clips


def read_frames(paths: list[str]) -> torch.Tensor:
    """Image files -> (T, 3, H, W) float32 RGB in [0, 1]."""
    out = []
    for p in paths:
        img = cv2.imread(p, cv2.IMREAD_COLOR)
        if img is None:
            raise CPGDInputError(f"cannot read image {p}")
        out.append(img[:, :, ::-1])
    if len({a.shape for a in out}) > 1:
        raise CPGDInputError(f"frames of different sizes in {os.path.dirname(paths[0])}")
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div_(255.0)


def write_frames(folder: str, frames: torch.Tensor, names: Optional[list[str]] = None) -> None:
    os.makedirs(folder, exist_ok=True)
    arr = (frames.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for i, a in enumerate(arr):
        name = names[i] if names else f"{i:05d}.png"
        ok, data = cv2.imencode(os.path.splitext(name)[1], np.ascontiguousarray(a[:, :, ::-1]))
        if not ok:
            raise CPGDInputError(f"cannot encode frame {name} for {folder}")
        with atomic_write(os.path.join(folder, name)) as tmp, open(tmp, "wb") as f:
            f.write(data.tobytes())


# ------------------------------------------------------------------------------------ our npy layout

def write_priors_dir(folder: str, priors: CodecPriors, extra: Optional[dict] = None) -> None:
    """One .npy per frame and field plus meta.json (see module docstring)."""
    # meta.json marks a complete clip: drop an older one first, so a rewrite cut short is not read as whole
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, "meta.json"))
    for name in PRIOR_FIELDS:
        d = os.path.join(folder, name)
        os.makedirs(d, exist_ok=True)
        data = getattr(priors, name).numpy()
        for t in range(len(priors)):
            _save_npy(os.path.join(d, f"{t:05d}.npy"), data[t])
    meta = {"frame_types": priors.frame_types, "height": priors.height, "width": priors.width,
            "fps": [priors.fps.numerator, priors.fps.denominator], "flow_stride": priors.flow_stride,
            "source_indices": priors.source_indices, "source": priors.source, "frames": len(priors)}
    meta.update(extra or {})
    write_text(os.path.join(folder, "meta.json"), json.dumps(meta, indent=1))


def read_priors_dir(folder: str) -> CodecPriors:
    """Inverse of :func:`write_priors_dir`."""
    meta_path = os.path.join(folder, "meta.json")
    if not os.path.isfile(meta_path):
        raise CPGDInputError(f"no priors in {folder} (meta.json missing)")
    with open(meta_path) as f:
        meta = json.load(f)
    n = int(meta["frames"])
    fields = {k: torch.from_numpy(np.stack([np.load(os.path.join(folder, k, f"{t:05d}.npy")) for t in range(n)]))
              for k in PRIOR_FIELDS}
    return CodecPriors(**fields, frame_types=list(meta["frame_types"]), height=int(meta["height"]),
                       width=int(meta["width"]), fps=Fraction(*meta["fps"]), flow_stride=int(meta["flow_stride"]),
                       source_indices=list(meta["source_indices"]), source=meta["source"])


# ------------------------------------------------------------------------------ official layout

def _pair_name(clip: str, a: int) -> str:
    return f"{clip}_{a:05d}_{a + 1:05d}.npy"


def _index_without(meta: str, clip: str) -> list[str]:
    """The lines of an official ``meta_info.txt`` except ``clip``'s."""
    if not os.path.isfile(meta):
        return []
    with open(meta) as f:
        return [ln for ln in f.read().splitlines() if ln.strip() and ln.split()[0] != clip]


def write_official_clip(root: str, clip: str, lq: torch.Tensor, gt: Optional[torch.Tensor],
                        priors: CodecPriors) -> None:
    """Write one clip in the official "265/264" layout (module docstring) under ``root``."""
    if priors.flow_stride != 4:
        raise CPGDInputError(f"official export expects priors on the 1/4 grid, got stride {priors.flow_stride}")
    h, w = priors.height, priors.width
    meta = os.path.join(root, "meta_info.txt")
    if os.path.isfile(meta):  # the clip's line marks it complete: drop an older one first (re-added at the end)
        write_text(meta, "".join(ln + "\n" for ln in _index_without(meta, clip)))
    write_frames(os.path.join(root, "lq", clip), lq)
    if gt is not None:
        write_frames(os.path.join(root, "gt", clip), gt)
    for sub in ("MVs", "MVs_valid", "resi"):
        os.makedirs(os.path.join(root, sub, clip), exist_ok=True)
    gh8, gw8 = grid_size(h, w, OFFICIAL_MV_STRIDE)
    for a in range(len(priors) - 1):
        # Codec blocks are >= 8x8 and 8-aligned, so every other 4-px cell carries the whole 8x8 block.
        flow = priors.flow_to_prev[a + 1, :, ::2, ::2].float()[:, :gh8, :gw8]
        valid = priors.valid_to_prev[a + 1, :, ::2, ::2][:, :gh8, :gw8]
        raw = torch.round(flow * OFFICIAL_MV_SCALE) * valid  # no mask in the format: intra = zero motion
        _save_npy(os.path.join(root, "MVs", clip, _pair_name(clip, a)), raw.numpy().astype(np.int16))
        _save_npy(os.path.join(root, "MVs_valid", clip, _pair_name(clip, a)), valid[0].numpy())
        res = torch.round(priors.residual[a + 1, 0].float() * OFFICIAL_RESI_SCALE) - 1
        _save_npy(os.path.join(root, "resi", clip, _pair_name(clip, a)), res.numpy().astype(np.int16))
    lines = _index_without(meta, clip) + [f"{clip} {len(priors)} ({h},{w},3)"]
    write_text(meta, "\n".join(sorted(lines)) + "\n")


def read_official_clip(root: str, clip: str, fps: float = 30.0) -> tuple[torch.Tensor, Optional[torch.Tensor], CodecPriors]:
    """Read an official-layout clip: (lq (T,3,H,W), gt or None, CodecPriors on our 1/4 grid).

    Frame 0 has no stored pair: its residual is zero and its motion invalid. ``flow_to_next`` is not part of
    the format; it is rebuilt as the inverse of the next frame's field (as for P-only streams).
    """
    lq_paths = _images(os.path.join(root, "lq", clip))
    if not lq_paths:
        raise CPGDInputError(f"no frames for clip {clip} in {os.path.join(root, 'lq')}")
    lq = read_frames(lq_paths)
    gt_paths = _images(os.path.join(root, "gt", clip))
    gt = read_frames(gt_paths) if gt_paths else None
    t_len, _, h, w = lq.shape
    gh, gw = grid_size(h, w, 4)
    fp = torch.zeros(t_len, 2, gh, gw)
    vp = torch.zeros(t_len, 1, gh, gw, dtype=torch.bool)
    res = torch.zeros(t_len, 1, h, w)
    mv_files = sorted(glob.glob(os.path.join(root, "MVs", clip, "*.npy")))
    resi_files = sorted(glob.glob(os.path.join(root, "resi", clip, "*.npy")))
    if len(mv_files) != t_len - 1 or len(resi_files) != t_len - 1:
        raise CPGDInputError(f"clip {clip}: expected {t_len - 1} MV and residual files, found "
                             f"{len(mv_files)} and {len(resi_files)}")
    for a, (mf, rf) in enumerate(zip(mv_files, resi_files)):
        raw = torch.from_numpy(np.load(mf).astype(np.float32))
        # recoverMV: repeat x8 (nearest), /4 -> pixels; on our grid that is a x2 repeat.
        flow = raw.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :gh, :gw] / OFFICIAL_MV_SCALE
        fp[a + 1] = flow
        vf = os.path.join(root, "MVs_valid", clip, os.path.basename(mf))
        if os.path.isfile(vf):
            v = torch.from_numpy(np.load(vf))
            vp[a + 1, 0] = v.repeat_interleave(2, 0).repeat_interleave(2, 1)[:gh, :gw]
        else:
            vp[a + 1] = True
        res[a + 1, 0] = (torch.from_numpy(np.load(rf).astype(np.float32)) + 1) / OFFICIAL_RESI_SCALE
    fn = torch.zeros_like(fp)
    vn = torch.zeros_like(vp)
    if t_len > 1:
        fn[:-1], vn[:-1] = invert_grid(fp[1:], vp[1:], 4)
    types = ["I"] + ["P"] * (t_len - 1)
    pri = CodecPriors(flow_to_prev=fp.half(), valid_to_prev=vp, flow_to_next=fn.half(), valid_to_next=vn,
                      residual=res.half(), frame_types=types, height=h, width=w,
                      fps=Fraction(fps).limit_denominator(1001), source_indices=list(range(t_len)),
                      source="official:265/264")
    return lq, gt, pri


# ------------------------------------------------------------------------------------------ encode

def encode_clip(clip: dict, out_dir: str, crf: int = 18, preset: str = "medium", fps: float = 30.0,
                max_frames: int = 0) -> tuple[torch.Tensor, Optional[torch.Tensor], CodecPriors]:
    """Encode one clip's blurry frames to ``out_dir/blur.mp4`` and decode it with priors."""
    blur_paths = clip["blur"][:max_frames] if max_frames else clip["blur"]
    sharp_paths = (clip["sharp"][:max_frames] if max_frames else clip["sharp"]) or None
    frames = read_frames(blur_paths)
    os.makedirs(out_dir, exist_ok=True)
    video = os.path.join(out_dir, "blur.mp4")
    write_video(video, frames, fps, crf=crf, preset=preset, x264_params="bframes=0:ref=1", overwrite=True)
    decoded, priors, _, _ = load_video(video)
    gt = read_frames(sharp_paths) if sharp_paths else None
    return decoded, gt, priors


def encode_dataset(src: str, out: str, layout: str = "auto", fmt: str = "ours", crf: int = 18,
                   preset: str = "medium", fps: float = 30.0, max_frames: int = 0, log=print) -> int:
    """Encode every clip of ``src``; returns the number of clips written."""
    if fmt not in ("ours", "official", "both"):
        raise CPGDInputError(f"format must be ours, official or both, got {fmt!r}")
    clips = find_clips(src, layout)
    for c in clips:
        rel = os.path.join(c["split"], c["name"]) if c["split"] else c["name"]
        ours_dir = os.path.join(out, rel)
        decoded, gt, priors = encode_clip(c, ours_dir, crf, preset, fps, max_frames)
        if fmt in ("ours", "both"):
            write_priors_dir(ours_dir, priors, {"crf": crf, "preset": preset,
                                                "blur": [os.path.relpath(p, src) for p in c["blur"][:len(priors)]],
                                                "sharp": [os.path.relpath(p, src) for p in c["sharp"][:len(priors)]]})
        if fmt in ("official", "both"):
            write_official_clip(os.path.join(out, "official", c["split"]), c["name"], decoded, gt, priors)
        log(f"{rel}: {priors.summary()}")
    return len(clips)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cpgd_core dataset", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encode", help="encode blurry frame folders and write priors")
    e.add_argument("src")
    e.add_argument("out")
    e.add_argument("--layout", default="auto", choices=["auto", "gopro", "dvd"])
    e.add_argument("--format", default="ours", choices=["ours", "official", "both"])
    e.add_argument("--crf", type=int, default=18)
    e.add_argument("--preset", default="medium")
    e.add_argument("--fps", type=float, default=30.0)
    e.add_argument("--max-frames", type=int, default=0, help="encode at most this many frames per clip (0 = all)")
    i = sub.add_parser("info", help="summarise an encoded clip folder (ours) or official clip")
    i.add_argument("folder")
    i.add_argument("--official-clip", default=None, help="clip name when FOLDER is an official-layout root")
    a = ap.parse_args(argv)
    if a.cmd == "encode":
        n = encode_dataset(a.src, a.out, a.layout, a.format, a.crf, a.preset, a.fps, a.max_frames)
        print(f"{n} clips written to {a.out}")
    else:
        pri = read_official_clip(a.folder, a.official_clip)[2] if a.official_clip else read_priors_dir(a.folder)
        print(pri.summary())
    return 0
