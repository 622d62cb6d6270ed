"""Codec motion vectors -> block-grid flow fields, and flow arithmetic on that grid.

Everything here works on the 1/``stride`` cell grid of :class:`~.priors.CodecPriors` (values in
full-resolution pixels). Codec blocks are >= 8 px and aligned to 4 px, so a stride of 4 is lossless.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from .flow import warp


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
    gh, gw = grid_size(height, width, stride)
    flow = np.zeros((2, gh, gw), np.float32)
    valid = np.zeros((1, gh, gw), bool)
    if mvs is None or len(mvs) == 0:
        return flow, valid
    mvs = mvs[mvs["source"] == source]
    if len(mvs) == 0:
        return flow, valid
    scale = mvs["motion_scale"].astype(np.float32)
    scale[scale == 0] = 1.0
    vec = np.stack([mvs["motion_x"] / scale, mvs["motion_y"] / scale], -1).astype(np.float32)
    if zero_means_missing and not np.any(vec):
        return flow, valid
    bw = mvs["w"].astype(np.int64)
    bh = mvs["h"].astype(np.int64)
    x0 = mvs["dst_x"].astype(np.int64) - bw // 2
    y0 = mvs["dst_y"].astype(np.int64) - bh // 2
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
    return flow, valid


def _to_grid_units(flow: torch.Tensor, stride: int) -> torch.Tensor:
    return flow / float(stride)


def compose_grid(flow_ab: torch.Tensor, valid_ab: torch.Tensor, flow_bc: torch.Tensor, valid_bc: torch.Tensor,
                 stride: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain two block-grid fields a->b and b->c into a->c.

    Shapes: flows (N, 2, h, w) in full-resolution pixels on the 1/``stride`` grid, valids (N, 1, h, w) bool.
    The result is valid where a->b is valid and lands on a valid, in-frame cell of b->c.
    """
    f_ab = _to_grid_units(flow_ab.float(), stride)
    f_bc = _to_grid_units(flow_bc.float(), stride)
    out = f_ab + warp(f_bc, f_ab, padding_mode="border")
    land = warp(valid_bc.float(), f_ab, mode="nearest", padding_mode="zeros") > 0.5
    return out * stride, valid_ab & land


def invert_grid(flow: torch.Tensor, valid: torch.Tensor, stride: int = 4,
                iterations: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate inverse of a block-grid field: a field on frame b pointing into a from one on a -> b.

    Solves ``g(p) = -f(p + g(p))`` by fixed-point iteration from ``g = -f`` (the official CPGD code
    stops after one step of a similar scheme). Exact for piecewise-constant motion away from motion
    boundaries; where the back-projected point lands on an invalid cell or leaves the frame the result
    is marked invalid. Shapes: (N, 2, h, w) / (N, 1, h, w).
    """
    f = _to_grid_units(flow.float(), stride)
    g = -f
    for _ in range(iterations):
        g = -warp(f, g, padding_mode="border")
    land = warp(valid.float(), g, mode="nearest", padding_mode="zeros") > 0.5
    return g * stride, land


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


def dense_from_grid(flow: np.ndarray, height: int, width: int, stride: int = 4) -> np.ndarray:
    """(2, h, w) cell field -> (2, H, W) per-pixel field by block replication (numpy, for cv2.remap)."""
    dense = np.repeat(np.repeat(flow, stride, axis=1), stride, axis=2)
    return dense[:, :height, :width]
