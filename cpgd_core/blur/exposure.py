"""The exposure of a clip, read from the blur itself along the known motion.

A frame blurred over an exposure ``e`` is the sharp frame averaged along ``e * v(p)``, so its derivative along
the motion stays correlated with itself over lags up to the blur length ``e * |v|``: the autocorrelation of the
sharp derivative, widened by the triangle that is the box's own autocorrelation (Yitzhaky & Kopeika's blur
identification reads the same curve). Across the motion the blur widens nothing, so the correlation across is the
scene's own (scene and codec are about isotropic), and the blur length is what the along-motion width has beyond
it: ``L = sqrt(W_along^2 - W_across^2)``, widths taken where each correlation falls to ``LEVEL`` (0.4: the
triangle's width equals its length there once the sharp width adds in quadrature; checked against the true
exposure in docs/bench/motion.md). Lags are scaled per pixel by its own speed, so every pixel votes in units of
the exposure directly and one pair of curves sums a frame, or a window of frames (``Curves``), whatever the
motion in it.

The widths only measure the blur while it is a few pixels long: the derivative of a long box blur is the difference
of two copies of the sharp derivative a blur length apart, whose correlation keeps the sharp central peak (and
moves the rest to a dip at the blur length), so long blur read at full size reads short (about 0.6 of its length
on training clips with 15-35 px trajectories; 0.45-0.62 on GoPro training footage blurred over 0.9 of the frame
interval). Each frame is therefore read downscaled until its moving pixels' median speed is about ``READ_SPEED`` px
per frame (``_reading_size``; docs/bench/exposure_reader.md has the errors before and after).

Sharp video has equal widths both ways and reads 0; readings under ``SHARP_BELOW`` are taken as 0 (what sharp
footage with directional texture reads), and so are readings whose blur at the voting pixels' speed
(``blur_length``) is shorter than ``SHARP_LENGTH`` px: that short, a blur cannot be told from the texture's own
anisotropy (sharp frames with small motion, as from a high-speed camera, read one). Where too little moves (fewer than ``MIN_VOTES`` of the
pixels faster than ``MIN_SPEED``) the exposure cannot be read and the trajectories are too short to matter:
``FALLBACK`` with confidence 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

LAG_STEP = 0.05        # exposure units between correlation samples
MAX_LAG = 2.0          # exposure units: a width beyond this is not a blur the model can hold
LEVEL = 0.4            # correlation level at which the widths are read
MIN_SPEED = 4.0        # px per frame (full size): slower pixels say little, a 1-2 px lag is the derivative's own
MAX_SAMPLES = 40000    # voting pixels per frame (random, fixed seed: a stable curve at a few ms)
MIN_VOTES = 0.05       # share of the pixels that must vote (move >= MIN_SPEED) for a stable reading
FALLBACK = 0.5         # exposure where it cannot be read (then the motion is too small for it to matter)
# Readings below this are read as sharp (0): sharp training clips read 0.00-0.20 at full confidence (scene
# anisotropy, codec), blurred ones 0.33 and above (the blur generator's exposures are 0.3-1.0), and inverting a
# blur that short gains little where a wrong one costs up to 0.8 dB on sharp frames.
SHARP_BELOW = 0.25
# px (full size): a reading whose blur at the voting pixels' mean speed (``blur_length``) is shorter than this reads
# sharp too. A blur of a few pixels is as wide as the derivative's own correlation, so scene anisotropy and the codec
# read as such a blur: sharp training clips read 1.3-3.3 px, sharp frames with small motion (high frame rate) up to
# 3.8 px (4.1 at fast mode's gate size), and lost 1-2 dB inverted; blurred clips read 1.3 px and more, and each
# gained 0.3-0.9 dB inverted (docs/bench/exposure_reader.md, docs/bench/eval_quality.md). The two overlap: this sits
# just above the sharp readings, and costs the blur of a few pixels under it its gain.
SHARP_LENGTH = 4.5
READ_SPEED = 6.0       # px per frame the moving pixels' median speed is brought to before reading (None: as given)
# px: the short side the frame is never read below (too few pixels vote in less). At 96, long blur on 480p footage
# could not shrink far enough and read short (docs/bench/exposure_reader.md, the long-blur table).
MIN_READ_SIDE = 48


@dataclass
class Curves:
    """Summed along / across derivative correlations of one or more frames, at lags ``k * LAG_STEP`` (k >= 1)."""

    along: np.ndarray = field(default_factory=lambda: np.zeros(0))
    across: np.ndarray = field(default_factory=lambda: np.zeros(0))
    energy_along: float = 0.0
    energy_across: float = 0.0
    votes: int = 0
    pixels: int = 0
    speed: float = 0.0   # summed full-size speed (px per frame) of the voting pixels: votes x their mean speed

    def __add__(self, other: "Curves") -> "Curves":
        n = max(len(self.along), len(other.along))
        pad = lambda a: np.pad(a, (0, n - len(a)), mode="edge") if 0 < len(a) < n else (  # noqa: E731
            a if len(a) else np.zeros(n))
        # A frame whose curves stopped early (both already below LEVEL) continues at its last value, which only
        # ever matters beyond both crossings of the sum.
        return Curves(pad(self.along) + pad(other.along), pad(self.across) + pad(other.across),
                      self.energy_along + other.energy_along, self.energy_across + other.energy_across,
                      self.votes + other.votes, self.pixels + other.pixels, self.speed + other.speed)


def _sampler(gx: np.ndarray, gy: np.ndarray):
    def deriv_at(px: np.ndarray, py: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Derivative along the unit vectors u at the points (px, py), bilinear."""
        n = len(px)
        rows = -(-n // 256)  # remap's maps must stay under 32767 columns: the points as a (rows, 256) image
        mx = np.zeros(rows * 256, np.float32)
        my = np.zeros(rows * 256, np.float32)
        mx[:n], my[:n] = px, py
        mx, my = mx.reshape(rows, 256), my.reshape(rows, 256)
        ax = cv2.remap(gx, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).ravel()[:n]
        ay = cv2.remap(gy, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).ravel()[:n]
        return ax * u[:, 0] + ay * u[:, 1]
    return deriv_at


def _voters(velocity: np.ndarray, confidence: Optional[np.ndarray], scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel speed (H, W) and the pixels that vote: fast enough to show their blur, velocity trusted."""
    speed = np.hypot(velocity[..., 0], velocity[..., 1])
    ok = speed >= MIN_SPEED * scale
    if confidence is not None:
        ok &= confidence > 0.5
    return speed, ok


def _reading_size(grey: np.ndarray, velocity: np.ndarray, confidence: Optional[np.ndarray],
                  scale: float) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], float]:
    """The frame, its velocity and confidence downscaled so that the moving pixels' median speed is about
    ``READ_SPEED`` px per frame (never enlarged, never under ``MIN_READ_SIDE`` px), and the resulting scale."""
    if READ_SPEED is None:
        return grey, velocity, confidence, scale
    speed, moving = _voters(velocity, confidence, scale)
    if moving.sum() < MIN_VOTES * speed.size:
        return grey, velocity, confidence, scale
    h, w = grey.shape
    r = min(1.0, max(READ_SPEED / float(np.median(speed[moving])), MIN_READ_SIDE / min(h, w)))
    if r >= 0.95:
        return grey, velocity, confidence, scale
    size = (round(w * r), round(h * r))
    shrink = lambda a: cv2.resize(a, size, interpolation=cv2.INTER_AREA)  # noqa: E731
    return (shrink(grey), shrink(velocity) * (size[0] / w), None if confidence is None else shrink(confidence),
            scale * size[0] / w)


def frame_curves(grey: np.ndarray, velocity: np.ndarray, confidence: Optional[np.ndarray] = None,
                 scale: float = 1.0, seed: int = 0) -> Curves:
    """Along / across correlation curves of one frame.

    Args:
        grey: (H, W) frame (uint8 or float) at the resolution of ``velocity``.
        velocity: (H, W, 2) float32 per-pixel velocity in pixels (of this resolution) per frame interval.
        confidence: (H, W) in [0, 1] where the velocity is trusted (None: everywhere).
        scale: this resolution over the frame's full size (for ``MIN_SPEED``).
    """
    grey, velocity, confidence, scale = _reading_size(grey, velocity, confidence, scale)
    h, w = grey.shape
    speed, ok = _voters(velocity, confidence, scale)
    m = 4
    ys, xs = np.nonzero(ok[m:-m, m:-m])
    out = Curves(pixels=h * w)
    if len(xs) == 0:
        return out
    if len(xs) > MAX_SAMPLES:
        pick = np.random.default_rng(seed).choice(len(xs), MAX_SAMPLES, replace=False)
        xs, ys = xs[pick], ys[pick]
    xi, yi = xs + m, ys + m
    lag = speed[yi, xi]
    d = velocity[yi, xi] / lag[:, None]
    perp = np.stack([-d[:, 1], d[:, 0]], -1)
    g = grey.astype(np.float32)
    deriv_at = _sampler(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3))
    px, py = xi.astype(np.float32), yi.astype(np.float32)
    g_par, g_perp = deriv_at(px, py, d), deriv_at(px, py, perp)
    e_par, e_perp = float((g_par ** 2).sum()), float((g_perp ** 2).sum())
    if e_par <= 1e-9 or e_perp <= 1e-9:
        return out
    along, across = [], []
    for k in range(1, int(round(MAX_LAG / LAG_STEP)) + 1):
        s = k * LAG_STEP * lag
        a = float((g_par * 0.5 * (deriv_at(px + s * d[:, 0], py + s * d[:, 1], d)
                                  + deriv_at(px - s * d[:, 0], py - s * d[:, 1], d))).sum())
        c = float((g_perp * 0.5 * (deriv_at(px + s * perp[:, 0], py + s * perp[:, 1], perp)
                                   + deriv_at(px - s * perp[:, 0], py - s * perp[:, 1], perp))).sum())
        along.append(a)
        across.append(c)
        if a < 0.5 * LEVEL * e_par and c < 0.5 * LEVEL * e_perp:
            break  # both well past the level: further lags cannot move either crossing of this frame
    # Normalised per frame (each frame's curves are correlations), then weighted by its votes when summed.
    n = len(xs)
    return Curves(np.array(along) / e_par * n, np.array(across) / e_perp * n, float(n), float(n), n, h * w,
                  float(lag.sum()) / scale)


def _width(curve: np.ndarray) -> Optional[float]:
    """Twice the lag (exposure units) where a normalised correlation (1 at lag 0) first falls to LEVEL."""
    c = np.concatenate([[1.0], curve])
    below = np.nonzero(c < LEVEL)[0]
    if len(below) == 0:
        return None
    i = int(below[0])
    frac = (c[i - 1] - LEVEL) / max(c[i - 1] - c[i], 1e-9)
    return 2 * LAG_STEP * (i - 1 + frac)


def read_curves(curves: Curves) -> tuple[float, float]:
    """The raw reading: ``sqrt(W_along^2 - W_across^2)`` (exposure units, may exceed 1) and its confidence in
    [0, 1], before the sharp threshold of :func:`exposure_from_reading`."""
    if curves.votes < MIN_VOTES * max(curves.pixels, 1) or curves.energy_along <= 0:
        return FALLBACK, 0.0
    w_par = _width(curves.along / curves.energy_along)
    w_perp = _width(curves.across / curves.energy_across)
    if w_par is None:  # still correlated at the longest lag: longer than any exposure
        return 1.0, 0.5
    if w_perp is None:  # the scene is smooth across the motion: no reference width to compare with
        return FALLBACK, 0.0
    e = float(np.sqrt(max(w_par ** 2 - w_perp ** 2, 0.0)))
    # Confident when many pixels voted and the answer is inside the physical range.
    share = min(1.0, curves.votes / (0.1 * curves.pixels))
    return e, float(share * (1.0 if e <= 1.1 else 0.5))


def exposure_from_reading(raw: float, length: Optional[float] = None) -> float:
    """Exposure in [0, 1] from a raw reading: 0 under ``SHARP_BELOW``, or where the blur it means (``length``, px,
    from :func:`blur_length`) is shorter than ``SHARP_LENGTH``. The reading is not scaled: read at the size
    ``_reading_size`` chooses it has no overall bias to correct (docs/bench/exposure_reader.md)."""
    if raw < SHARP_BELOW or (length is not None and length < SHARP_LENGTH):
        return 0.0
    return float(np.clip(raw, 0.0, 1.0))


def blur_length(curves: Curves, raw: float) -> float:
    """The blur a raw reading means at the voting pixels' mean speed, in full-size px (0 where nothing voted):
    what ``SHARP_LENGTH`` is compared with."""
    return float(raw) * curves.speed / max(curves.votes, 1)


def exposure_from_curves(curves: Curves) -> tuple[float, float, float]:
    """Exposure (fraction of the frame interval, in [0, 1]), its confidence in [0, 1], and the blur length the
    reading means (px, before the sharp thresholds; 0 where it could not be read)."""
    raw, confidence = read_curves(curves)
    if confidence <= 0:
        return raw, confidence, 0.0
    length = blur_length(curves, raw)
    return exposure_from_reading(raw, length), confidence, length
