"""Realistic motion blur from real footage: frame interpolation, then averaging over an exposure.

GoPro (Nah et al. 2017) and REDS averaged consecutive high-frame-rate frames in linear light. The real clips we
have (``shared/data/real_motion/train``: GoPro action footage, DAVIS, Vimeo-90k, BasketballPass) are normal
frame rate, so the high-rate sub-frames are made by flow-based interpolation between consecutive real frames
(OpenCV DIS flow both ways, forward-backward occlusion check, visibility-weighted blending). Each blurry frame
averages sub-frames over an exposure of ``shutter x step`` source intervals centred on a real source frame,
which stays the sharp target (never an interpolated one). The output clip advances ``step`` source frames per
frame (``step`` 1-3: mild to strong blur at the same frame rate), a random spatial scale sets the motion per
pixel, and a share of clips has no blur at all so the network learns to leave sharp video alone. The blurry
clip then goes through libx264 and the decoder exactly as at inference (``synth.make_training_example``'s
encoder mix), so its priors are what the loader would extract.

Whole clips are held out for validation (``VAL_CLIPS``, named in the model card).
"""
from __future__ import annotations

import functools
import math
import os
from typing import Optional

import cv2
import numpy as np
import torch

from ..errors import CPGDInputError
from .synth import CRF_RANGE, ENCODINGS, GAMMA

ENV_DIR = "CPGD_REAL_MOTION_DIR"
# Held-out whole clips (never trained on): one GoPro action clip, one DAVIS clip with a moving bus and a
# panning camera, two Vimeo-90k septuplets.
VAL_CLIPS = ("set8_gopro_rafting", "davis_bus", "vimeo_00002_0007", "vimeo_00002_0008")
# Source frames per output frame (mild to strong blur at the same frame rate) and their probabilities.
STEPS = ((1, 0.5), (2, 0.3), (3, 0.2))
# Up to 5: blur of 20-40 px at the footage's scale, as 11 averaged frames of 240 fps GoPro video make at 720p.
LONG_STEPS = ((1, 0.3), (2, 0.2), (3, 0.2), (4, 0.15), (5, 0.15))
SHUTTER_RANGE = (0.3, 1.0)
SHARP_SHARE = 0.1          # clips with no blur (exposure 0)
STILL_SHARE = 0.25         # share of still-photo clips (synth.py) in the "mix" source
_MARGIN = 16               # px around the crop so interpolation near its edges sees the content moving in


def default_dir() -> str:
    """Folder of the real clips: $CPGD_REAL_MOTION_DIR, else ``../shared/data/real_motion/train`` beside the repo."""
    env = os.environ.get(ENV_DIR)
    if env:
        return env
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(os.path.dirname(repo), "shared", "data", "real_motion", "train")


def clip_names(split: str = "train", root: Optional[str] = None) -> list[str]:
    """Names (file stems) of the real clips of a split: 'train' (all but VAL_CLIPS) or 'val' (VAL_CLIPS)."""
    if split not in ("train", "val"):
        raise CPGDInputError(f"split must be 'train' or 'val', got {split!r}")
    root = root or default_dir()
    if not os.path.isdir(root):
        raise CPGDInputError(f"real training clips not found in {root} (set {ENV_DIR})")
    names = sorted(f[:-4] for f in os.listdir(root) if f.endswith(".mkv"))
    if split == "val":
        missing = [n for n in VAL_CLIPS if n not in names]
        if missing:
            raise CPGDInputError(f"held-out clips {missing} not found in {root}")
        return list(VAL_CLIPS)
    return [n for n in names if n not in VAL_CLIPS]


@functools.lru_cache(maxsize=64)
def load_clip(name: str, root: Optional[str] = None) -> np.ndarray:
    """All frames of a real clip as (N, H, W, 3) uint8 RGB (cached per process)."""
    import av

    path = os.path.join(root or default_dir(), name + ".mkv")
    if not os.path.isfile(path):
        raise CPGDInputError(f"real clip not found: {path}")
    with av.open(path) as box:
        frames = [f.to_ndarray(format="rgb24") for f in box.decode(video=0)]
    if len(frames) < 2:
        raise CPGDInputError(f"{path}: needs at least 2 frames, has {len(frames)}")
    return np.stack(frames)


# ------------------------------------------------------------------------------------- interpolation

_DIS = None


def _dis():
    global _DIS
    if _DIS is None:
        _DIS = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return _DIS


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def _warp(img: np.ndarray, flow: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Backward warp: out(x) = img(x + flow(x)). flow (H, W, 2) as (dx, dy)."""
    return cv2.remap(img, grid[0] + flow[..., 0], grid[1] + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


class _Interval:
    """Flows and visibility between two consecutive real frames, for interpolating any instant between them."""

    def __init__(self, lin0: np.ndarray, lin1: np.ndarray, grey0: np.ndarray, grey1: np.ndarray) -> None:
        h, w = grey0.shape
        self.grid = _grid(h, w)
        self.lin0, self.lin1 = lin0, lin1
        self.f01 = _dis().calc(grey0, grey1, None)
        self.f10 = _dis().calc(grey1, grey0, None)
        # Forward-backward check (Sundaram et al.): a pixel of frame 0 whose flow does not return is occluded in 1.
        self.vis0 = self._consistent(self.f01, self.f10)
        self.vis1 = self._consistent(self.f10, self.f01)
        self.max_motion = float(np.sqrt((self.f01 ** 2).sum(-1)).max())

    def _consistent(self, fab: np.ndarray, fba: np.ndarray) -> np.ndarray:
        back = _warp(fba, fab, self.grid)
        err = ((fab + back) ** 2).sum(-1)
        bound = 0.01 * ((fab ** 2).sum(-1) + (back ** 2).sum(-1)) + 0.5
        return (err < bound).astype(np.float32)

    def at(self, t: float) -> np.ndarray:
        """Linear-light frame at fraction t in (0, 1) of the interval, (H, W, 3) float32."""
        # Flows from the instant t to both ends, assuming locally linear motion (Jiang et al., Super SloMo).
        ft0 = -(1 - t) * t * self.f01 + t * t * self.f10
        ft1 = (1 - t) * (1 - t) * self.f01 - t * (1 - t) * self.f10
        w0 = (1 - t) * _warp(self.vis0, ft0, self.grid) + 1e-4 * (1 - t)
        w1 = t * _warp(self.vis1, ft1, self.grid) + 1e-4 * t
        a, b = _warp(self.lin0, ft0, self.grid), _warp(self.lin1, ft1, self.grid)
        return (a * w0[..., None] + b * w1[..., None]) / (w0 + w1)[..., None]


def _linear_lut() -> np.ndarray:
    return ((np.arange(256, dtype=np.float32) / 255.0) ** GAMMA).astype(np.float32)


def blur_from_frames(frames: np.ndarray, centres: list[int], exposure: float, subframes_per_px: float = 1.0,
                     min_subframes: int = 9, max_subframes: int = 65,
                     with_trajectory: bool = False) -> tuple[torch.Tensor, ...]:
    """Blurry and sharp frames from consecutive real frames.

    Args:
        frames: (N, H, W, 3) uint8 consecutive real frames.
        centres: source indices of the output frames (each needs [c - exposure/2, c + exposure/2] inside [0, N-1]).
        exposure: exposure length in source frame intervals (0: no blur).
        subframes_per_px: sub-frame density, per pixel of motion across the exposure (so neighbouring sub-frames
            are at most about a pixel apart: averaging gives blur, not ghosts).
        with_trajectory: also return the true trajectory (see below).
    Returns:
        blurry, sharp: (T, 3, H, W) float32 in [0, 1] (sRGB); sharp are the real frames at ``centres``.
        trajectory (only with ``with_trajectory``): (T, 2, H, W) float32, the displacement (x, y) in pixels
            between each pixel's positions at c - exposure/2 and c + exposure/2, from the same interpolation flows
            the sub-frames were made with (composed across intervals); zero when exposure is 0.
    """
    n = len(frames)
    half = exposure / 2
    if any(c - half < -1e-6 or c + half > n - 1 + 1e-6 for c in centres):
        raise CPGDInputError(f"exposure {exposure} around frames {centres} leaves the clip of {n} frames")
    lut = _linear_lut()
    lin = {}
    intervals: dict[int, _Interval] = {}

    def linear(i: int) -> np.ndarray:
        if i not in lin:
            lin[i] = lut[frames[i]]
        return lin[i]

    def interval(i: int) -> _Interval:
        if i not in intervals:
            g0 = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY)
            g1 = cv2.cvtColor(frames[i + 1], cv2.COLOR_RGB2GRAY)
            intervals[i] = _Interval(linear(i), linear(i + 1), g0, g1)
        return intervals[i]

    blurry, sharp, trajectory = [], [], []
    for c in centres:
        sharp.append(frames[c].astype(np.float32) / 255.0)
        if with_trajectory:
            trajectory.append(_true_trajectory(interval, c, half, n) if exposure > 0
                              else np.zeros(frames.shape[1:3] + (2,), np.float32))
        if exposure <= 0:
            blurry.append(sharp[-1])
            continue
        lo, hi = c - half, c + half
        spans = range(int(math.floor(lo)), int(math.ceil(hi)))
        motion = sum(interval(min(i, n - 2)).max_motion for i in spans) * exposure / max(len(spans), 1)
        count = int(np.clip(math.ceil(motion * subframes_per_px), min_subframes, max_subframes)) | 1
        acc = np.zeros_like(linear(c))
        for tau in np.linspace(lo, hi, count):
            i = min(int(math.floor(tau)), n - 2)
            t = float(tau - i)
            if t < 1e-6:
                acc += linear(i)
            elif t > 1 - 1e-6:
                acc += linear(i + 1)
            else:
                acc += interval(i).at(t)
        blurry.append(np.clip(acc / count, 0, 1) ** (1 / GAMMA))
    to_t = lambda a: torch.from_numpy(np.stack(a).transpose(0, 3, 1, 2).copy())  # noqa: E731
    if with_trajectory:
        return to_t(blurry), to_t(sharp), to_t(trajectory)
    return to_t(blurry), to_t(sharp)


def line_blur(sharp: torch.Tensor, trajectory: torch.Tensor, spacing: float = 0.5) -> torch.Tensor:
    """Blur that follows the straight-path model exactly: each pixel the mean, in linear light, of the sharp frame
    along its own straight trajectory centred on it, densely sampled (at most ``spacing`` px apart, bilinear).

    The generator's blur (``blur_from_frames``) bends with the 30 fps footage's motion between source frames, so
    the straight path explains it only to about 30 dB PSNR on strong blur, where averaged 240 fps GoPro frames fit
    it to 40.9 dB (``shared/reference/real_blur_findings.md``); this renders blur as consistent with the model as
    real high-frame-rate blur is. sharp (T, 3, H, W) in [0, 1] sRGB, trajectory (T, 2, H, W) px -> (T, 3, H, W)."""
    out = []
    for x, traj in zip(sharp, trajectory):
        lin = np.ascontiguousarray(x.permute(1, 2, 0).numpy()) ** GAMMA
        tr = traj.permute(1, 2, 0).numpy()
        xs, ys = _grid(*lin.shape[:2])
        count = max(int(math.ceil(float(np.sqrt((tr ** 2).sum(-1)).max()) / spacing)), 1) | 1
        acc = np.zeros_like(lin)
        for f in np.linspace(-0.5, 0.5, count) if count > 1 else [0.0]:
            acc += cv2.remap(lin, xs + np.float32(f) * tr[..., 0], ys + np.float32(f) * tr[..., 1], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        out.append(np.clip(acc / count, 0, 1) ** (1 / GAMMA))
    return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).copy())


def sharp_subframes(frames: np.ndarray, start: int, count: int, per_interval: int) -> np.ndarray:
    """Sharp frames of a higher frame rate: ``count`` instants ``start + k / per_interval`` of consecutive real
    frames, interpolated as the blur's sub-frames are (no averaging), (count, H, W, 3) uint8 RGB. Motion per frame is
    the footage's divided by ``per_interval``: what a high-speed camera records (sharp frames, little motion)."""
    n = len(frames)
    if start < 0 or start + (count - 1) / per_interval > n - 1:
        raise CPGDInputError(f"{count} sub-frames from frame {start} at {per_interval} per interval leave the clip "
                             f"of {n} frames")
    lut = _linear_lut()
    out, cached = [], None
    for k in range(count):
        i, t = divmod(k, per_interval)
        i += start
        if t == 0:
            out.append(frames[i])
            continue
        if cached is None or cached[0] != i:
            grey = [cv2.cvtColor(frames[j], cv2.COLOR_RGB2GRAY) for j in (i, i + 1)]
            cached = (i, _Interval(lut[frames[i]], lut[frames[i + 1]], *grey))
        lin = np.clip(cached[1].at(t / per_interval), 0, 1)
        out.append((lin ** (1 / GAMMA) * 255 + 0.5).astype(np.uint8))
    return np.stack(out)


def _true_trajectory(interval, c: int, half: float, n: int) -> np.ndarray:
    """Displacement (H, W, 2) of each pixel of source frame c between the instants c - half and c + half.

    Motion is linear within an interval, as in the sub-frames' interpolation: a pixel at p on frame i is at
    p + t * f(i -> i+1)(p) at instant i + t. Past one interval the path continues from where it landed on the
    next real frame (flows composed), so long exposures follow curved and accelerating motion.
    """

    def endpoint(direction: int) -> np.ndarray:
        first = interval(c - 1 if direction < 0 else c)
        h, w = first.f01.shape[:2]
        xs, ys = first.grid
        px, py = xs.copy(), ys.copy()
        left, i = half, c
        while left > 1e-9:
            frac = min(1.0, left)
            iv = interval(i if direction > 0 else i - 1)
            flow = iv.f01 if direction > 0 else iv.f10  # on frame i, pointing into i + direction
            f = cv2.remap(flow, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            px, py = px + frac * f[..., 0], py + frac * f[..., 1]
            left -= frac
            i += direction
        return np.stack([px - xs, py - ys], -1)

    return (endpoint(+1) - endpoint(-1)).astype(np.float32)


# ------------------------------------------------------------------------------------------ examples

def _draw_timing(rng: np.random.Generator, n: int, num_frames: int, sharp: bool,
                 steps: tuple[tuple[int, float], ...] = STEPS) -> Optional[tuple[int, float, int]]:
    """(step, exposure, first centre) that fits a clip of n frames, or None."""
    choices, weights = zip(*steps)
    for _ in range(8):
        step = int(rng.choice(choices, p=weights))
        exposure = 0.0 if sharp else float(rng.uniform(*SHUTTER_RANGE)) * step
        half = math.ceil(exposure / 2)
        span = (num_frames - 1) * step + 2 * half
        if span <= n - 1:
            return step, exposure, half + int(rng.integers(0, n - 1 - span + 1))
    return None


def _region(rng: np.random.Generator, frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Random spatial scale (more or less motion per pixel) and a crop of ``size`` plus a margin, all frames."""
    w, h = size
    n, fh, fw = frames.shape[:3]
    lo = max(w / fw, h / fh) * 1.05
    scale = float(rng.uniform(max(0.5, lo), 1.0)) if lo < 1.0 else lo
    cw = min(fw, int(math.ceil((w + 2 * _MARGIN) / scale)))
    ch = min(fh, int(math.ceil((h + 2 * _MARGIN) / scale)))
    x0, y0 = int(rng.integers(0, fw - cw + 1)), int(rng.integers(0, fh - ch + 1))
    out_w, out_h = max(w, round(cw * scale)), max(h, round(ch * scale))
    crop = frames[:, y0:y0 + ch, x0:x0 + cw]
    if (out_w, out_h) == (cw, ch):
        return crop
    return np.stack([cv2.resize(f, (out_w, out_h), interpolation=cv2.INTER_AREA) for f in crop])


def make_real_clip(rng: np.random.Generator, size: tuple[int, int] = (128, 128), num_frames: int = 5,
                   split: str = "train", sharp_share: float = SHARP_SHARE, root: Optional[str] = None,
                   steps: tuple[tuple[int, float], ...] = STEPS, line_share: float = 0.0) -> dict:
    """A blurry/sharp pair from a random real clip of the split (before encoding); ``steps``: (source frames per
    output frame, probability) pairs; ``line_share``: the share of clips whose blur is re-rendered along the true
    trajectories by ``line_blur`` (no random number is drawn for it at 0, so other draws stay as they were).

    Returns dict: blurry, sharp (T, 3, H, W) float32 in [0, 1]; trajectory (T, 2, H, W) float32, the true
    displacement in output pixels each pixel sweeps during its frame's exposure (0 for sharp clips); clip, step,
    exposure (source intervals), exposure_fraction (exposure / step: the fraction of the output frame interval).
    """
    names = clip_names(split, root)
    # Clips are drawn by their number of frames, so 7-frame Vimeo septuplets do not outweigh long clips.
    counts = np.array([len(load_clip(n, root)) for n in names], np.float64)
    w, h = size
    for _ in range(32):
        name = names[int(rng.choice(len(names), p=counts / counts.sum()))]
        frames = load_clip(name, root)
        if frames.shape[1] < h or frames.shape[2] < w:
            continue
        timing = _draw_timing(rng, len(frames), num_frames, bool(rng.random() < sharp_share), steps)
        if timing is None:
            continue
        step, exposure, first = timing
        half = math.ceil(exposure / 2)
        centres = [first + k * step for k in range(num_frames)]
        lo, hi = centres[0] - half, centres[-1] + half
        region = _region(rng, frames[lo:hi + 1], size)
        blurry, sharp, trajectory = blur_from_frames(region, [c - lo for c in centres], exposure,
                                                     with_trajectory=True)
        rh, rw = region.shape[1:3]
        y0, x0 = (rh - h) // 2, (rw - w) // 2
        crop = lambda a: a[..., y0:y0 + h, x0:x0 + w].contiguous()  # noqa: E731
        line = line_share > 0 and exposure > 0 and bool(rng.random() < line_share)
        if line:   # (before cropping, so the paths near the crop's edges read the content beyond them)
            blurry = line_blur(sharp, trajectory)
        return {"blurry": crop(blurry), "sharp": crop(sharp), "trajectory": crop(trajectory), "clip": name,
                "step": step, "exposure": exposure, "exposure_fraction": exposure / step, "line": line}
    raise CPGDInputError(f"no real clip of split {split!r} fits {num_frames} frames at {w}x{h}")


def make_training_example(rng: np.random.Generator, size: tuple[int, int] = (128, 128), num_frames: int = 5,
                          crf_range: tuple[int, int] = CRF_RANGE, split: str = "train",
                          sharp_share: float = SHARP_SHARE, root: Optional[str] = None,
                          steps: tuple[tuple[int, float], ...] = STEPS, line_share: float = 0.0) -> dict:
    """One real-footage sample made exactly like inference input: real blur -> libx264 -> decoded frames + priors
    (``steps`` and ``line_share`` as in ``make_real_clip``).

    Returns dict: blurry_decoded (T, 3, H, W) float32, sharp (T, 3, H, W) float32, priors (CodecPriors),
    trajectory (T, 2, H, W) float32 (``make_real_clip``'s), crf, encoding, clip, step, exposure,
    exposure_fraction.
    """
    from ..codec.reencode import encode_and_extract

    clip = make_real_clip(rng, size, num_frames, split, sharp_share, root, steps, line_share)
    crf = int(rng.integers(crf_range[0], crf_range[1] + 1))
    preset, params = ENCODINGS[int(rng.integers(len(ENCODINGS)))]
    decoded, priors = encode_and_extract(clip["blurry"], fps=24, crf=crf, preset=preset, x264_params=params)
    return {"blurry_decoded": decoded, "sharp": clip["sharp"], "priors": priors, "crf": crf,
            "encoding": f"{preset}:{params}", "clip": clip["clip"], "step": clip["step"],
            "exposure": clip["exposure"], "trajectory": clip["trajectory"],
            "exposure_fraction": clip["exposure_fraction"]}
