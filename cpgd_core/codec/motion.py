"""Codec motion vectors -> block-grid flow fields, and flow arithmetic on that grid.

Everything here works on the 1/``stride`` cell grid of :class:`~.priors.CodecPriors` (values in
full-resolution pixels). Codec blocks are >= 8 px and aligned to 4 px, so a stride of 4 is lossless.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import cv2
import numpy as np
import torch


def grid_size(height: int, width: int, stride: int = 4) -> tuple[int, int]:
    """Cell-grid size (h, w) = (ceil(H/s), ceil(W/s))."""
    return math.ceil(height / stride), math.ceil(width / stride)


def mvs_to_flow(mvs: Optional[np.ndarray], height: int, width: int, source: int = -1, stride: int = 4,
                zero_means_missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise FFmpeg ``MOTION_VECTORS`` side data into a block-grid flow.

    Args:
        mvs: structured array from ``side_data['MOTION_VECTORS'].to_ndarray()`` (fields ``source, w, h,
            dst_x, dst_y, motion_x, motion_y, motion_scale``), or None (I-frame / no side data).
        height, width: frame size in pixels.
        source: -1 keeps vectors into a past reference (list L0), +1 into a future one (L1).
        stride: cell size of the output grid in pixels.
        zero_means_missing: treat a frame whose selected vectors are *all* exactly zero as having no
            motion (MPEG-4 part 2 B-frames export direct-mode blocks as zeros, which are not motion).

    Returns:
        flow (2, ceil(H/s), ceil(W/s)) float32 in full-resolution pixels, ``src = dst + flow``
        (x, y); valid (1, ceil(H/s), ceil(W/s)) bool, False where no block of that direction exists
        (intra blocks, I-frames).
    """
    return _rasterise(mvs, height, width, (source,), stride, zero_means_missing)[0]


def mvs_to_flows(mvs: Optional[np.ndarray], height: int, width: int, stride: int = 4, zero_means_missing: bool = False,
                 ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """:func:`mvs_to_flow` for both directions from one pass over the side data:
    ((flow, valid) into the past, (flow, valid) into the future)."""
    past, future = _rasterise(mvs, height, width, (-1, 1), stride, zero_means_missing)
    return past, future


def _rasterise(mvs, height: int, width: int, sources: tuple[int, ...], stride: int,
               zero_means_missing: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    gh, gw = grid_size(height, width, stride)
    out = [(np.zeros((2, gh, gw), np.float32), np.zeros((1, gh, gw), bool)) for _ in sources]
    if mvs is None or len(mvs) == 0:
        return out
    src = mvs["source"]
    scale = mvs["motion_scale"].astype(np.float32)
    scale[scale == 0] = 1.0
    vec = np.empty((len(mvs), 2), np.float32)
    vec[:, 0], vec[:, 1] = mvs["motion_x"], mvs["motion_y"]
    vec /= scale[:, None]
    bw = mvs["w"].astype(np.int64)
    bh = mvs["h"].astype(np.int64)
    x0 = mvs["dst_x"].astype(np.int64) - bw // 2
    y0 = mvs["dst_y"].astype(np.int64) - bh // 2
    for (flow, valid), source in zip(out, sources):
        sel = src == source
        n = int(np.count_nonzero(sel))
        if n == 0:
            continue
        parts = (x0, y0, bw, bh, vec) if n == len(sel) else (x0[sel], y0[sel], bw[sel], bh[sel], vec[sel])
        if zero_means_missing and not np.any(parts[4]):
            continue
        if not _rasterise_aligned(flow, valid, *parts, stride):
            _rasterise_any(flow, valid, *parts, stride)
    return out


def _rasterise_aligned(flow: np.ndarray, valid: np.ndarray, x0, y0, bw, bh, vec, stride: int) -> bool:
    """Fast path for codec partitions, whose sizes and positions share a common unit (8 px for H.264, whose
    sub-8x8 partitions are exported as 8x8, and for MPEG): the blocks are written on a grid of units, one
    vectorised scatter per unit offset inside a block, and that grid is upscaled to the cells.
    False (nothing written) for blocks off the cell lattice or far outside the frame."""
    if ((x0 | y0 | bw | bh) % stride).any():
        return False
    cx, cy, sw, sh = x0 // stride, y0 // stride, bw // stride, bh // stride
    if (sw <= 0).any() or (sh <= 0).any() or (cx < 0).any() or (cy < 0).any():
        return False
    gh, gw = flow.shape[-2:]
    # The unit: the lowest power of two dividing every position and size (a common divisor, which is all the
    # scatter needs; for codec partitions it is their greatest one).
    bits = int(np.bitwise_or.reduce(np.concatenate([cx, cy, sw, sh])))
    u = bits & -bits
    uh, uw = -(-gh // u), -(-gw // u)
    ux, uy, nw, nh = cx // u, cy // u, sw // u, sh // u
    if int((uy + nh).max()) > uh + 16 // u + 1 or int((ux + nw).max()) > uw + 16 // u + 1:
        return False  # blocks far off the frame: clipped by the general path
    uh, uw = max(uh, int((uy + nh).max())), max(uw, int((ux + nw).max()))
    units = np.zeros(uh * uw, np.complex64)  # one 8-byte element per (x, y) vector: one scatter writes both
    mask = np.zeros(uh * uw, np.uint8)
    vals = np.ascontiguousarray(vec, np.float32).view(np.complex64)[:, 0]
    first = uy * uw + ux
    # One scatter per unit offset inside a block (four for H.264: blocks are 1 or 2 units wide and high); a
    # block's units are disjoint from every other block's, so the write order does not matter.
    for dy in range(int(nh.max())):
        for dx in range(int(nw.max())):
            sel = (nh > dy) & (nw > dx)
            whole = bool(sel.all())
            idx = first + (dy * uw + dx) if whole else first[sel] + (dy * uw + dx)
            units[idx] = vals if whole else vals[sel]
            mask[idx] = 1
    units = units.view(np.float32).reshape(uh, uw, 2)
    _upscale_cells(np.ascontiguousarray(units[..., 0]), u, flow[0])
    _upscale_cells(np.ascontiguousarray(units[..., 1]), u, flow[1])
    _upscale_cells(mask.reshape(uh, uw), u, valid[0].view(np.uint8))
    return True


def _upscale_cells(src: np.ndarray, u: int, out: np.ndarray) -> np.ndarray:
    """Nearest upscale of a 2-D array by an integer factor ``u`` written into ``out`` (H, W), with
    H <= h * u and W <= w * u (the excess right and bottom cells are dropped)."""
    h, w = src.shape
    if (h * u, w * u) == out.shape and out.flags.c_contiguous:
        cv2.resize(src, (w * u, h * u), dst=out, interpolation=cv2.INTER_NEAREST)
    else:
        out[...] = cv2.resize(src, (w * u, h * u), interpolation=cv2.INTER_NEAREST)[:out.shape[0], :out.shape[1]]
    return out


def _rasterise_any(flow: np.ndarray, valid: np.ndarray, x0, y0, bw, bh, vec, stride: int) -> None:
    gh, gw = flow.shape[-2:]
    # Cell range of each block, clipped to the frame (edge blocks can hang off a non-multiple-of-16 frame).
    cx0 = np.clip(np.floor_divide(x0, stride), 0, gw)
    cy0 = np.clip(np.floor_divide(y0, stride), 0, gh)
    cx1 = np.clip(-np.floor_divide(-(x0 + bw), stride), 0, gw)
    cy1 = np.clip(-np.floor_divide(-(y0 + bh), stride), 0, gh)
    nw, nh = cx1 - cx0, cy1 - cy0
    keep = (nw > 0) & (nh > 0)
    cells = flow.reshape(2, -1)
    vmask = valid.reshape(-1)
    # One fancy-index write per distinct block shape (a handful: 16x16, 16x8, 8x16, 8x8, clipped edges).
    key = nh * 4096 + nw
    for k in np.unique(key[keep]):
        sel = np.flatnonzero(keep & (key == k))
        sh, sw = int(k // 4096), int(k % 4096)
        idx = ((cy0[sel, None, None] + np.arange(sh)[None, :, None]) * gw
               + (cx0[sel, None, None] + np.arange(sw)[None, None, :])).reshape(len(sel), -1)
        cells[:, idx] = vec[sel].T[:, :, None]
        vmask[idx] = True


# Robust smoothing of a block-grid field (smooth_field). It works on every second cell: codec blocks are at
# least 8 px and aligned to 8 px (H.264 exports its sub-8x8 partitions as 8x8), so that grid of 8 px units
# holds every vector once, at a quarter of the cost. Windows of the median and the mean in units (5: 40 px),
# the thresholds in pixels that keep outliers out of the mean and motion edges sharp, and the share of a window
# with exactly one vector above which it is a lattice translation, kept as it is (0.8: 0.9 moved exact pans).
SMOOTH_UNIT = 2
SMOOTH_WINDOW = 5
SMOOTH_OUTLIER = 0.5
SMOOTH_EDGE = 0.25
SMOOTH_UNIFORM = 0.8


def smooth_field(flow: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Edge-preserving smoothing of a block-grid field (2, h, w) float32 with validity (1, h, w) -> (2, h, w).

    Encoders choose vectors by rate-distortion on 1/4-pel positions, not true motion: each block's vector is
    off by the quantisation (median 0.1 px on smooth motion) plus search noise, and neighbouring blocks err
    independently. On the grid of 8 px units (``SMOOTH_UNIT``), each valid unit takes the mean of the valid
    units of its ``SMOOTH_WINDOW`` window that lie within ``SMOOTH_OUTLIER`` px of the local median (mis-matched
    blocks stay out); where that mean is more than ``SMOOTH_EDGE`` px from the median (a motion edge inside
    the window) or the window is mostly invalid, or where ``SMOOTH_UNIFORM`` of the window has exactly the
    median's vector, the unit takes the median instead, which keeps edges in place and translations that the
    1/4-pel lattice holds exact. A uniform field comes out unchanged; invalid cells keep their values. bench/priors.py measures the
    end-point errors with and without it.
    """
    if not valid.any():
        return flow
    u = SMOOTH_UNIT
    v = valid[0, ::u, ::u]
    k = (SMOOTH_WINDOW, SMOOTH_WINDOW)

    def box(a: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(a, -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)

    # x and y as separate planes: OpenCV filters them without strided copies, and each step is one call.
    f = [np.ascontiguousarray(flow[c, ::u, ::u], np.float32) for c in (0, 1)]
    med = [cv2.medianBlur(c, 5) for c in f]
    dev = [cv2.absdiff(c, m) for c, m in zip(f, med)]
    keep = v & (dev[0] < SMOOTH_OUTLIER) & (dev[1] < SMOOTH_OUTLIER)
    wgt = keep.astype(np.float32)
    den = box(wgt)
    safe = np.maximum(den, np.float32(1e-6))
    mean = [box(c * wgt) / safe for c in f]
    ok = (den >= 0.5 * SMOOTH_WINDOW ** 2) & (cv2.absdiff(mean[0], med[0]) < SMOOTH_EDGE) \
        & (cv2.absdiff(mean[1], med[1]) < SMOOTH_EDGE)
    # Where most of the window has exactly the median's vector the motion is a translation the 1/4-pel lattice
    # holds: the median is exact there, and averaging in a few deviating blocks would only move it off.
    same = box((keep & (dev[0] == 0) & (dev[1] == 0)).astype(np.float32))
    ok &= same < SMOOTH_UNIFORM * den
    out = np.empty_like(flow, np.float32)
    for c in (0, 1):
        _upscale_cells(np.where(ok, mean[c], med[c]), u, out[c])
    if not valid.all():
        np.copyto(out, flow, where=~valid)  # invalid cells keep their values
    return out


# The per-frame grid arithmetic below runs on small arrays in the decoding loop, where cv2.remap is an
# order of magnitude cheaper than torch.grid_sample (and immune to OpenMP oversubscription on busy
# machines). It samples exactly like flow.warp: pixel centres at integer coordinates, bilinear.

# OpenCV >= 4.10 takes maps relative to the pixel position (no base grid to add); older versions need the
# absolute position.
RELATIVE_MAP = getattr(cv2, "WARP_RELATIVE_MAP", None)


@functools.lru_cache(maxsize=8)
def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) float32 coordinates of an h x w grid: the absolute maps that OpenCV before 4.10 needs (cached)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def remap_points(img: np.ndarray, mx: np.ndarray, my: np.ndarray, interpolation: int = cv2.INTER_LINEAR,
                 border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """``cv2.remap`` of ``img`` at any number of points (1-D float32 coordinates): (N,) or (N, C) values.

    The points are laid out as rows of a map (OpenCV takes maps under 32767 rows and columns); each output
    value depends only on its own coordinates, so it equals what a whole-frame remap gives at that pixel.
    """
    n = len(mx)
    if n == 0:
        return np.zeros((0,) + img.shape[2:], img.dtype)
    cols = min(n, 4096)
    rows = -(-n // cols)
    pad = rows * cols - n
    mx = np.concatenate([mx, np.zeros(pad, np.float32)]).reshape(rows, cols) if pad else mx.reshape(rows, cols)
    my = np.concatenate([my, np.zeros(pad, np.float32)]).reshape(rows, cols) if pad else my.reshape(rows, cols)
    out = cv2.remap(img, mx.astype(np.float32, copy=False), my.astype(np.float32, copy=False), interpolation,
                    borderMode=border)
    return out.reshape(rows * cols, *out.shape[2:])[:n]


def _sample(img: np.ndarray, grid_flow: np.ndarray, nearest: bool = False, border: bool = True) -> np.ndarray:
    """img (C, h, w) sampled at p + grid_flow(p) (grid_flow (2, h, w) in cell units) -> (C, h, w)."""
    interp = cv2.INTER_LINEAR if not nearest else cv2.INTER_NEAREST
    if RELATIVE_MAP is None:
        xs, ys = pixel_grid(*img.shape[-2:])
        mx, my = xs + grid_flow[0], ys + grid_flow[1]
    else:
        mx, my = np.ascontiguousarray(grid_flow[0]), np.ascontiguousarray(grid_flow[1])
        interp |= RELATIVE_MAP
    mode = cv2.BORDER_REPLICATE if border else cv2.BORDER_CONSTANT
    img = np.ascontiguousarray(img)
    out = np.empty(img.shape, img.dtype)
    # One channel per call: OpenCV interpolates single-channel float images at full float precision,
    # multi-channel ones with 1/32-pixel weights.
    for c in range(img.shape[0]):
        cv2.remap(img[c], mx, my, interp, dst=out[c], borderMode=mode, borderValue=0)
    return out


def _lands(valid: np.ndarray, grid_flow: np.ndarray) -> np.ndarray:
    """(1, h, w) bool: where p + grid_flow(p) (cell units) falls on a valid cell inside the grid (nearest)."""
    return _sample(valid.astype(np.uint8), grid_flow, nearest=True, border=False) > 0


def compose_np(flow_ab: np.ndarray, valid_ab: np.ndarray, flow_bc: np.ndarray, valid_bc: np.ndarray,
               stride: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """numpy form of :func:`compose_grid` for one frame: (2, h, w) / (1, h, w)."""
    f_ab = flow_ab.astype(np.float32) / stride
    f_bc = flow_bc.astype(np.float32) / stride
    out = _sample(f_bc, f_ab)
    out += f_ab
    out *= stride
    return out, valid_ab.astype(bool) & _lands(valid_bc, f_ab)


def invert_np(flow: np.ndarray, valid: np.ndarray, stride: int = 4, iterations: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """numpy form of :func:`invert_grid` for one frame: (2, h, w) / (1, h, w)."""
    f = flow.astype(np.float32) / stride
    g = -f
    for _ in range(iterations):
        g = _sample(f, g)
        np.negative(g, out=g)
    land = _lands(valid, g)
    g *= stride
    return g, land


def _batched(fn, *arrays: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    outs = [fn(*(a[i].detach().cpu().numpy() for a in arrays), stride=stride) for i in range(arrays[0].shape[0])]
    f = torch.from_numpy(np.stack([o[0] for o in outs])).to(arrays[0].device)
    v = torch.from_numpy(np.stack([o[1] for o in outs])).to(arrays[0].device)
    return f, v


def compose_grid(flow_ab: torch.Tensor, valid_ab: torch.Tensor, flow_bc: torch.Tensor, valid_bc: torch.Tensor,
                 stride: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain two block-grid fields a->b and b->c into a->c.

    Shapes: flows (N, 2, h, w) in full-resolution pixels on the 1/``stride`` grid, valids (N, 1, h, w) bool.
    The result is valid where a->b is valid and lands on a valid, in-frame cell of b->c.
    """
    return _batched(compose_np, flow_ab.float(), valid_ab, flow_bc.float(), valid_bc, stride=stride)


def invert_grid(flow: torch.Tensor, valid: torch.Tensor, stride: int = 4,
                iterations: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate inverse of a block-grid field: a field on frame b pointing into a from one on a -> b.

    Solves ``g(p) = -f(p + g(p))`` by fixed-point iteration from ``g = -f`` (the official CPGD code
    stops after one step of a similar scheme). Exact for piecewise-constant motion away from motion
    boundaries; where the back-projected point lands on an invalid cell or leaves the frame the result
    is marked invalid. Shapes: (N, 2, h, w) / (N, 1, h, w).
    """
    return _batched(lambda f, v, stride: invert_np(f, v, stride, iterations), flow.float(), valid, stride=stride)


def resize_grid(flow: torch.Tensor, valid: torch.Tensor, size: tuple[int, int], src_size: tuple[int, int],
                stride: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale block-grid fields of frames ``src_size`` = (H, W) to frames ``size`` = (H', W').

    Vectors are scaled by the frame-size ratio (not the grid-size ratio, which is rounded); the grid is
    resampled nearest so block edges stay sharp. Shapes (N, 2, h, w) / (N, 1, h, w).
    """
    gh, gw = grid_size(size[0], size[1], stride)
    f = torch.nn.functional.interpolate(flow.float(), size=(gh, gw), mode="nearest")
    v = torch.nn.functional.interpolate(valid.float(), size=(gh, gw), mode="nearest") > 0.5
    scale = torch.tensor([size[1] / src_size[1], size[0] / src_size[0]], dtype=f.dtype).view(1, 2, 1, 1)
    return f * scale, v
