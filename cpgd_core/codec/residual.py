"""Coding residual from decoded frames: current frame minus its motion-compensated prediction.

FFmpeg exports no transform coefficients, so the residual is rebuilt from what it does export: the
decoded reference frame(s) are warped with the block motion vectors (bilinear, edge-replicated like
the codec's reference padding) and subtracted from the decoded current frame. On a single-reference
H.264 stream this matches the true decoded residual to within the interpolation-filter difference
(bilinear vs the 6-tap filter: ~0.8 vs 0.3 grey levels mean, against ~14 for a plain frame difference).

Options (``channels``, ``signed``):
- ``"luma"`` (default, what CPFP consumes): computed on the decoded Y plane, output (1, H, W).
- ``"rgb"``: computed per RGB channel, output (3, H, W).
- ``signed=True`` (default) keeps the sign; ``False`` returns ``|residual|``.
Values are in [0,1]-luma units (grey levels / 255).

Where a pixel has no motion vector (intra block, I-frame) the prediction falls back to the co-located
pixel of the previous frame (zero motion), and the returned ``compensated`` mask is False there so a
consumer can tell the two apart. A frame with no reference at all (the first frame) gets a zero residual.

Cost: the decoding loop calls :func:`residual_of` on the decoded uint8 planes themselves (no float copy of a
frame), so one prediction is one ``cv2.remap`` with a relative map made by a nearest-neighbour upscale of the
cell grid, and the scaled subtraction writes the output dtype directly.
"""
from __future__ import annotations

import threading
from typing import Optional

import cv2
import numpy as np

from .motion import RELATIVE_MAP as _RELATIVE
from .motion import pixel_grid, remap_points

RESIDUAL_CHANNELS = ("luma", "rgb")
# Above this share of candidate cells the multi-reference check warps whole frames instead of gathering cells.
_SPARSE_SHARE = 0.15
# Rows per band of the residual computation (keeps a band's maps and prediction in cache).
_BAND = 128


def _dense(grid: np.ndarray, h: int, w: int, stride: int) -> np.ndarray:
    """(h', w'[, C]) cell grid -> (H, W[, C]) by block replication (nearest resize by an integer factor)."""
    gh, gw = grid.shape[:2]
    out = cv2.resize(grid, (gw * stride, gh * stride), interpolation=cv2.INTER_NEAREST)
    return out if out.shape[:2] == (h, w) else np.ascontiguousarray(out[:h, :w])


def _cell_planes(flow: np.ndarray, valid: Optional[np.ndarray]) -> np.ndarray:
    """(2, h', w') vectors -> (2, h', w') float32 map cells (x, y), zero where ``valid`` is False (zero motion)."""
    if valid is None or valid.all():
        return np.ascontiguousarray(flow, np.float32)
    return np.multiply(flow, valid, dtype=np.float32)


class _Scratch(threading.local):
    """Per-thread buffers of the banded residual, reused from frame to frame (fresh frame-sized buffers cost
    page faults that add up to a sizeable share of the work)."""

    def __init__(self) -> None:
        self.bufs: dict = {}

    def get(self, name: str, shape: tuple, dtype=np.float32) -> np.ndarray:
        key = (name, shape, np.dtype(dtype))
        if key not in self.bufs:
            if len(self.bufs) > 16:  # a new video size: drop the old sizes' buffers
                self.bufs.clear()
            self.bufs[key] = np.empty(shape, dtype)
        return self.bufs[key]


_SCRATCH = _Scratch()


def _maps(cells: np.ndarray, h: int, w: int, stride: int, y0: int = 0,
          scratch: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Remap maps (x, y) of ``h`` x ``w`` output pixels from map cells (2, h', w') (:func:`_cell_planes`) that
    cover rows ``y0`` .. ``y0 + h`` of the frame: relative to the output pixel where OpenCV takes relative maps
    (:func:`_remap` adds the flag), absolute otherwise. ``scratch``: in per-thread buffers (valid until the
    next call)."""
    gh, gw = cells.shape[1:]
    size = (gh * stride, gw * stride)
    mx = _SCRATCH.get("mx", size) if scratch else None
    my = _SCRATCH.get("my", size) if scratch else None
    # the band's offset is added on the cells, before the upscale (16 times fewer values)
    cy = cells[1] + np.float32(y0) if y0 else cells[1]
    mx = cv2.resize(cells[0], size[::-1], dst=mx, interpolation=cv2.INTER_NEAREST)[:h, :w]
    my = cv2.resize(cy, size[::-1], dst=my, interpolation=cv2.INTER_NEAREST)[:h, :w]
    if _RELATIVE is None:
        xs, ys = pixel_grid(h, w)
        mx, my = mx + xs, my + ys
    return mx, my


def _remap(ref: np.ndarray, maps: tuple[np.ndarray, np.ndarray], out: Optional[np.ndarray] = None) -> np.ndarray:
    """``ref`` sampled at :func:`_maps`: bilinear, edge-replicated (as the codecs pad their references)."""
    flags = cv2.INTER_LINEAR if _RELATIVE is None else cv2.INTER_LINEAR | _RELATIVE
    return cv2.remap(ref, maps[0], maps[1], interpolation=flags, dst=out, borderMode=cv2.BORDER_REPLICATE)


def warp_cells(ref: np.ndarray, flow: np.ndarray, valid: Optional[np.ndarray], stride: int) -> np.ndarray:
    """``ref`` (H, W[, C]) uint8 or float32 sampled at ``p + flow(cell of p)``: bilinear, edge-replicated.

    flow (2, h', w') in pixels on the 1/``stride`` grid; cells where ``valid`` (1, h', w') is False are
    sampled with zero motion (the co-located pixel, exactly).
    """
    return _remap(ref, _maps(_cell_planes(flow, valid), ref.shape[0], ref.shape[1], stride))


def _warp_rows(ref: np.ndarray, cells: np.ndarray, y0: int, y1: int, stride: int, name: str) -> np.ndarray:
    """Rows [y0, y1) of ``ref`` warped by the map cells ``cells`` (2, rows of cells covering them, w') as
    :func:`warp_cells`; the result lives in a scratch buffer called ``name``."""
    out = _SCRATCH.get(name, (y1 - y0,) + ref.shape[1:], ref.dtype)
    return _remap(ref, _maps(cells, y1 - y0, ref.shape[1], stride, y0, scratch=True), out)


def _f16_arithmetic() -> bool:
    """Whether OpenCV's arithmetic writes float16 (OpenCV 5; 4.x raises)."""
    try:
        a = np.ones((2, 2), np.float32)
        return cv2.subtract(a, a, dtype=cv2.CV_16F).dtype == np.float16
    except cv2.error:
        return False


# 1/255 rounded to 16 significant bits (off by 1.5e-5 of itself): its product with a grey level is exact in float32,
# so where the prediction equals the frame the residual is exactly 0 (OpenCV fuses the multiply-adds, and the
# rounding of a product with 1/255 itself would leave +-6e-8 there).
_PER_GREY_LEVEL = 32897 / 2 ** 23
_CV_DEPTH = {np.dtype(np.float32): cv2.CV_32F}
if _f16_arithmetic():
    _CV_DEPTH[np.dtype(np.float16)] = cv2.CV_16F


def residual_of(cur: np.ndarray, ref_prev: Optional[np.ndarray], flow_prev: Optional[np.ndarray],
                valid_prev: Optional[np.ndarray], ref_next: Optional[np.ndarray], flow_next: Optional[np.ndarray],
                valid_next: Optional[np.ndarray], stride: int = 4, signed: bool = True,
                dtype=np.float32) -> np.ndarray:
    """:func:`mc_residual` on uint8 frames as decoded; returns only the residual (C, H, W) ``dtype`` in [0,1] units.

    The prediction is made in uint8, as the codec makes its own: interpolated and rounded to grey levels, and
    bi-predicted blocks averaged as ``(a + b + 1) >> 1``. Working on the decoded bytes, with no float copy of each
    frame, is cheaper: 4.8 against 5.7 ms per 720p P-frame with the conversion (2-core machine, interleaved), and
    the result differs from a float prediction by 0.16 grey levels on average (0.56 at most for P-frames).

    Works in bands of ``_BAND`` rows: the full-resolution maps and predictions of a band stay in cache, and
    nothing of frame size is allocated but the output (at 4K a frame-sized map alone is 66 MB).
    """
    h, w = cur.shape[:2]
    use_p = ref_prev is not None and flow_prev is not None and valid_prev is not None and bool(valid_prev.any())
    use_n = ref_next is not None and flow_next is not None and valid_next is not None and bool(valid_next.any())
    # Zero-motion fallback where no vector exists (the previous frame, or the frame itself when there is none).
    base = ref_prev if ref_prev is not None else cur
    gp = _cell_planes(flow_prev, valid_prev) if use_p else None
    gn = _cell_planes(flow_next, valid_next) if use_n else None
    only = both = None
    if use_n:
        # Cells predicted from the future alone, and bi-predicted ones (the average of both, as H.264 /
        # MPEG-4 B-blocks); the others keep the past (or zero-motion) prediction.
        vn = valid_next[0]
        only, both = (vn & ~valid_prev[0], vn & valid_prev[0]) if use_p else (vn, None)
        if only.all():
            only = None  # the future prediction alone
    direct = np.dtype(dtype) in _CV_DEPTH  # OpenCV writes the output type itself
    depth = _CV_DEPTH.get(np.dtype(dtype), cv2.CV_32F)
    scale = _PER_GREY_LEVEL
    out = np.empty((1 if cur.ndim == 2 else cur.shape[2], h, w), dtype)
    band = _BAND - _BAND % stride
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        c0, c1 = y0 // stride, -(-y1 // stride)
        pred = _warp_rows(base, gp[:, c0:c1], y0, y1, stride, "prev") if use_p else base[y0:y1]
        if use_n:
            p1 = _warp_rows(ref_next, gn[:, c0:c1], y0, y1, stride, "next")
            if only is not None:
                p1 = _blend(pred, p1, only[c0:c1], None if both is None else both[c0:c1], stride)
            pred = p1
        if cur.ndim == 2 and direct:
            # straight into the output (OpenCV 5 writes float16 itself; numpy's cast is several times slower)
            diff = cv2.addWeighted(cur[y0:y1], scale, pred, -scale, 0.0, dst=out[0, y0:y1], dtype=depth)
        else:
            diff = cv2.addWeighted(cur[y0:y1], scale, pred, -scale, 0.0, dtype=depth)
            out[:, y0:y1] = diff[None] if diff.ndim == 2 else np.moveaxis(diff, -1, 0)
            diff = out[:, y0:y1]
        if not signed:
            np.abs(diff, out=diff)
    return out


def _blend(past: np.ndarray, future: np.ndarray, only: np.ndarray, both: Optional[np.ndarray],
           stride: int) -> np.ndarray:
    """The prediction of a B-frame band: the future prediction on the cells ``only`` (h', w') bool, the average
    of both on the cells ``both``, the past one elsewhere. May write into ``future`` (a scratch buffer)."""
    neither = ~only if both is None else ~(only | both)
    if both is None or not both.any():
        _put(future, past, neither, stride)
        return future
    mix = cv2.addWeighted(past, 0.5, future, 0.5, 0.25)  # (a + b + 1) >> 1: the codecs' rounding
    _put(mix, future, only, stride)
    _put(mix, past, neither, stride)
    return mix


def _put(dst: np.ndarray, src: np.ndarray, cells: np.ndarray, stride: int) -> None:
    """``dst`` takes the pixels of ``src`` on the given cells (h', w') bool."""
    if not cells.any():
        return
    mask = _dense(cells.view(np.uint8), dst.shape[0], dst.shape[1], stride)
    cv2.copyTo(src, mask, dst=dst)


def _grey_levels(img: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """A frame as uint8 grey levels (float input rounded: decoded pictures are whole grey levels)."""
    if img is None or img.dtype == np.uint8:
        return img
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _cell_error(cur: np.ndarray, pred: np.ndarray, cell: int) -> np.ndarray:
    """Mean |cur - pred| per cell x cell block, (h', w') float32 (edge cells padded by replication)."""
    h, w = cur.shape[:2]
    gh, gw = -(-h // cell), -(-w // cell)
    d = cv2.absdiff(cur, pred)
    if d.ndim == 3:
        d = d.mean(-1, dtype=np.float32)
    if (gh * cell, gw * cell) != (h, w):
        d = cv2.copyMakeBorder(d, 0, gh * cell - h, 0, gw * cell - w, cv2.BORDER_REPLICATE)
    # an area resize by an integer factor is the block mean
    return cv2.resize(d, (gw, gh), interpolation=cv2.INTER_AREA)


def _cells_error(cur: np.ndarray, ref: np.ndarray, flow: np.ndarray, cy: np.ndarray, cx: np.ndarray,
                 cell: int) -> np.ndarray:
    """:func:`_cell_error` of ``ref`` warped by the cell vectors, for the listed cells only: (N,) float32.

    The pixels of each cell (edge cells replicated, as ``_cell_error`` pads) are gathered into an (N, cell²)
    map, so ``cv2.remap`` interpolates exactly the values a full-frame warp would at those pixels.
    """
    h, w = cur.shape[:2]
    off = np.arange(cell)
    py = np.minimum(cy[:, None, None] * cell + off[None, :, None], h - 1)
    px = np.minimum(cx[:, None, None] * cell + off[None, None, :], w - 1)
    py, px = np.broadcast_arrays(py, px)
    py, px = py.reshape(len(cy), -1), px.reshape(len(cy), -1)
    mx = px.astype(np.float32) + flow[0, cy, cx][:, None]
    my = py.astype(np.float32) + flow[1, cy, cx][:, None]
    pred = remap_points(ref, mx.ravel(), my.ravel()).reshape(py.shape + ref.shape[2:])
    d = np.abs(cur[py, px] - pred)
    if d.ndim == 3:
        d = d.mean(-1)
    return d.mean(1)


def half_size(img: np.ndarray) -> np.ndarray:
    """Half-resolution float32 copy (area average) of a frame, as :func:`pick_references` compares them."""
    h, w = img.shape[:2]
    return cv2.resize(img.astype(np.float32), ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA)


def pick_references(cur: np.ndarray, refs: list[tuple[np.ndarray, int]], flow: np.ndarray, valid: np.ndarray,
                    stride: int = 4, gain: float = 0.75, min_gain: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Which past reference each block's vector points into, for codecs that export no reference index.

    H.264 P-blocks may predict from any of several earlier frames, but FFmpeg's exported vectors do not say
    which one. Each cell's vector is tried on every candidate reference (at half resolution: the choice
    needs the error level, not the detail); a farther one is taken only where it predicts clearly better
    (error below ``gain`` x and ``min_gain`` grey levels under the nearest's), so flat areas, where every
    reference fits, keep the nearest. Vectors into a farther reference are rescaled to the nearest one's
    distance (constant velocity).

    Args:
        cur: decoded frame (H, W) luma or (H, W, C), grey levels.
        refs: [(reference frame, distance in frames)], nearest first.
        flow: (2, h', w') block-grid vectors in pixels; valid: (1, h', w') bool.
    Returns:
        flow into the nearest reference (2, h', w') float32; distance (h', w') int32 of the reference each
        cell's vector was found to point into.
    """
    if len(refs) < 2 or not valid.any():
        return pick_references_half(cur, refs, flow, valid, stride, gain, min_gain)
    return pick_references_half(half_size(cur), [(half_size(r), d) for r, d in refs], flow, valid, stride,
                                gain, min_gain)


def pick_references_half(cur_h: np.ndarray, refs_h: list[tuple[np.ndarray, int]], flow: np.ndarray,
                         valid: np.ndarray, stride: int = 4, gain: float = 0.75,
                         min_gain: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pick_references` on frames already reduced by :func:`half_size` (the decoding loop keeps them).

    Only cells whose nearest-reference error exceeds ``min_gain`` can switch, so the farther references
    are tried on those cells alone.
    """
    near = int(refs_h[0][1]) if refs_h else 1
    dist = np.full(flow.shape[-2:], near, np.int32)
    if len(refs_h) < 2 or not valid.any():
        return flow, dist
    gh, gw = flow.shape[-2:]
    cell = stride // 2
    half_flow = (flow * 0.5).astype(np.float32)
    maps = _maps(half_flow, cur_h.shape[0], cur_h.shape[1], cell)  # the same vectors on every reference
    err0 = _cell_error(cur_h, _remap(refs_h[0][0], maps), cell)[:gh, :gw]
    cand = valid[0] & (err0 > min_gain)
    cy, cx = np.nonzero(cand)
    if len(cy) == 0:
        return flow, dist
    if len(cy) > _SPARSE_SHARE * cand.size:  # gathering costs more than warping the whole frame
        errs = np.stack([err0[cy, cx]] + [_cell_error(cur_h, _remap(r, maps), cell)[cy, cx] for r, _ in refs_h[1:]])
    else:
        errs = np.stack([err0[cy, cx]] + [_cells_error(cur_h, r, half_flow, cy, cx, cell) for r, _ in refs_h[1:]])
    best = np.argmin(errs, 0)
    err_best = errs[best, np.arange(len(cy))]
    clear = (err_best < gain * errs[0]) & (errs[0] - err_best > min_gain)
    dist[cy[clear], cx[clear]] = np.asarray([d for _, d in refs_h], np.int32)[best[clear]]
    if not clear.any():
        return flow, dist
    return (flow * (near / dist)[None]).astype(np.float32), dist


def mc_residual(cur: np.ndarray, ref_prev: Optional[np.ndarray], flow_prev: Optional[np.ndarray] = None,
                valid_prev: Optional[np.ndarray] = None, ref_next: Optional[np.ndarray] = None,
                flow_next: Optional[np.ndarray] = None, valid_next: Optional[np.ndarray] = None,
                stride: int = 4, signed: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Residual of one frame against its motion-compensated prediction.

    Args:
        cur: decoded frame, (H, W) luma or (H, W, C), uint8 (or float, rounded to them) grey levels (0..255).
        ref_prev / ref_next: the decoded reference frames the vectors point into (same layout), or None.
        flow_prev / flow_next: (2, ceil(H/s), ceil(W/s)) block-grid vectors into those references, pixels.
        valid_prev / valid_next: (1, h, w) bool masks of where those vectors exist.
        stride: grid cell size.
        signed: keep the sign (True) or return the magnitude.

    Returns:
        residual (C, H, W) float32 in [0,1] units (C = 1 for a 2-D input); compensated (H, W) bool,
        True where at least one motion vector predicted the pixel. Bi-predicted pixels use the average
        of both predictions, as H.264/MPEG-4 B-blocks do.
    """
    h, w = cur.shape[:2]
    g = _grey_levels
    res = residual_of(g(cur), g(ref_prev), flow_prev, valid_prev, g(ref_next), flow_next, valid_next, stride, signed)
    cells = None
    for ref, valid in ((ref_prev, valid_prev), (ref_next, valid_next)):
        if ref is not None and valid is not None:
            cells = valid[0].astype(bool) if cells is None else cells | valid[0].astype(bool)
    if cells is None:
        return res, np.zeros((h, w), bool)
    return res, _dense(cells.astype(np.uint8), h, w, stride).astype(bool)
