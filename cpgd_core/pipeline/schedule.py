"""Scheduling shared by both stages (CPFP restore and the diffusion video sampler).

A clip is cut into temporal chunks of ``size`` frames and each frame into spatial tiles of ``tile`` pixels
(0 = whole frames); both cuts follow one rule (:func:`windows_1d`: a fixed stride, the last window moved back
to end at the edge, as the official CPGD tiling does). Overlapping chunks are cross-faded linearly
(:class:`ChunkBlender`, streaming); overlapping tiles are blended with weights that sum to 1: feathered
(:func:`feather_weights`, CPFP) or Gaussian (:func:`gaussian_weights`, the official latent tiling).
:func:`fit_chunk_and_tile` picks the sizes that fit a memory budget.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from ..errors import CPGDInputError


def windows_1d(size: int, window: int, overlap: int, what: str = "tile") -> list[tuple[int, int]]:
    """[start, stop) windows of length ``window`` covering 0..size, consecutive ones sharing >= ``overlap``.

    Starts step by ``window - overlap``; the last window is moved back to end at ``size`` (so every window
    is full-length when size >= window). ``window`` <= 0 or >= size: one window. With ``size``, ``window``
    and ``overlap`` multiples of some alignment, every start is one too.
    """
    if size <= 0:
        raise CPGDInputError(f"no {what}s to cut: size {size}")
    if window <= 0 or window >= size:
        return [(0, size)]
    if overlap < 0 or overlap >= window:
        raise CPGDInputError(f"{what} overlap must be in [0, {what} size): got {what} size {window}, "
                             f"overlap {overlap}")
    starts = list(range(0, size - window, window - overlap)) + [size - window]
    return [(s, s + window) for s in starts]


def chunk_windows(num_frames: int, chunk_size: int, overlap: int) -> list[tuple[int, int]]:
    """Temporal chunks [start, stop) of ``chunk_size`` frames (see :func:`windows_1d`)."""
    if chunk_size < 1 or overlap < 0 or overlap >= chunk_size:
        raise CPGDInputError(f"chunk_size must be >= 1 and chunk_overlap in [0, chunk_size): got "
                             f"chunk_size={chunk_size}, chunk_overlap={overlap}")
    if num_frames <= 0:
        raise CPGDInputError("no frames to process")
    return windows_1d(num_frames, chunk_size, overlap, "chunk")


def _ramp_1d(length: int, lo_overlap: int, hi_overlap: int, device=None) -> torch.Tensor:
    """Trapezoid: rises over ``lo_overlap`` samples, falls over ``hi_overlap``, 1 in between, > 0 everywhere."""
    i = torch.arange(length, dtype=torch.float64, device=device)
    w = torch.ones(length, dtype=torch.float64, device=device)
    if lo_overlap > 0:
        w = torch.minimum(w, (i + 1) / (lo_overlap + 1))
    if hi_overlap > 0:
        w = torch.minimum(w, (length - i) / (hi_overlap + 1))
    return w


def feather_weights(intervals: list[tuple[int, int]], size: int) -> list[torch.Tensor]:
    """Per-interval feather weights along one axis, normalised so that they sum to exactly 1 everywhere
    (up to float rounding). Each entry is a float64 vector of the interval's length."""
    raw = []
    for k, (s, e) in enumerate(intervals):
        lo = intervals[k - 1][1] - s if k > 0 else 0
        hi = e - intervals[k + 1][0] if k + 1 < len(intervals) else 0
        raw.append(_ramp_1d(e - s, max(lo, 0), max(hi, 0)))
    total = torch.zeros(size, dtype=torch.float64)
    for (s, e), w in zip(intervals, raw):
        total[s:e] += w
    return [w / total[s:e] for (s, e), w in zip(intervals, raw)]


def gaussian_weights(th: int, tw: int, var: float = 0.01) -> torch.Tensor:
    """(th, tw) Gaussian blending weight peaked at the tile centre (variance ``var`` in units of the tile size)."""
    def g(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float64)
        mid = (n - 1) / 2
        return torch.exp(-((x - mid) / n) ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)

    return (g(th)[:, None] * g(tw)[None, :]).float()


def stream_windows(num_frames: int, chunk_size: int, overlap: int) -> list[tuple[int, int]]:
    """The [start, stop) windows that ``codec.decode.iter_video_chunks`` yields (and so ``restore_stream`` and
    ``deblur`` process): every ``chunk_size - overlap`` frames, the last one cut at ``num_frames`` (unlike
    :func:`chunk_windows`, which moves it back to stay full-length)."""
    if chunk_size < 1 or overlap < 0 or overlap >= chunk_size:
        raise CPGDInputError(f"chunk must be >= 1 and 0 <= overlap < chunk, got chunk={chunk_size}, "
                             f"overlap={overlap}")
    windows, start = [], 0
    while True:
        windows.append((start, min(start + chunk_size, num_frames)))
        if start + chunk_size >= num_frames:
            return windows
        start += chunk_size - overlap


class ChunkBlender:
    """Cross-fades overlapping temporal chunks and releases frames as soon as no later chunk can cover them.

    ``add(start, pred)`` with non-decreasing starts, contiguous or overlapping coverage; returns the frames
    that became final (possibly none). In an overlap of length o the earlier chunk fades out linearly
    (weights (o-i)/(o+1)) and the later one in ((i+1)/(o+1)); the two weights sum to 1.
    """

    def __init__(self) -> None:
        self.pending: Optional[torch.Tensor] = None  # frames [self.start, self.start + len)
        self.start = 0
        self.emitted = 0

    def add(self, start: int, pred: torch.Tensor) -> Optional[torch.Tensor]:
        if self.pending is None:
            if start != 0:
                raise ValueError(f"first chunk must start at frame 0, not {start}")
            self.pending, self.start = pred, 0
            return None
        end = self.start + len(self.pending)
        if start < self.emitted or start > end:
            raise ValueError(f"chunk at {start} leaves a gap or overlaps emitted frames (emitted {self.emitted}, "
                             f"pending up to {end})")
        out = self.pending[: start - self.start]
        o = min(end, start + len(pred)) - start
        if o > 0:
            w = (torch.arange(1, o + 1, dtype=torch.float64) / (o + 1)).to(pred.dtype).view(-1, 1, 1, 1)
            old = self.pending[start - self.start: start - self.start + o]
            mixed = old * (1 - w) + pred[:o] * w
            tail = pred[o:] if start + len(pred) >= end else torch.cat([pred[o:], self.pending[start - self.start + o:]])
            self.pending = torch.cat([mixed, tail])
        else:
            self.pending = pred
        self.start = start
        self.emitted = start
        return out if len(out) else None

    def flush(self) -> Optional[torch.Tensor]:
        out, self.pending = self.pending, None
        if out is not None:
            self.emitted = self.start + len(out)
        return out




def fit_chunk_and_tile(chunk: int, overlap: int, tile: int, smaller_tiles: Sequence[int],
                       fits: Callable[[int, int], bool], comfortable_tile: int) -> tuple[int, int, int]:
    """The largest (chunk, overlap, tile) not above the requested ones for which ``fits`` holds.

    ``tile`` (0 = whole frames) is tried first, then ``smaller_tiles`` (descending) down to
    ``comfortable_tile``; if none fits, the chunk halves (the overlap shrinks to at most a quarter of it)
    and the tiles are tried again; at one frame per chunk every smaller tile is tried too. If nothing
    fits, the smallest plan is returned (the caller's out-of-memory handling takes over).
    """
    tiles = [tile] + [t for t in smaller_tiles if tile <= 0 or t < tile]
    while True:
        for t in tiles:
            if (t == tile or t >= comfortable_tile or chunk == 1) and fits(chunk, t):
                return chunk, overlap, t
        if chunk == 1:
            return chunk, overlap, tiles[-1]
        chunk = max(1, chunk // 2)
        overlap = min(overlap, chunk // 4)
