"""Display rotation of phone videos: frames and priors are turned upright the way players show them.

Phones store portrait video as landscape pictures plus a display matrix ("rotate 90° to show"). FFmpeg's
command line and players apply it (``autorotate``); PyAV's decoder does not, so without this step portrait
clips would be restored, and written back, lying on their side. Decoding and prior extraction run on the
stored pictures; :func:`rotate_frame_arrays` then turns the finished frame, residual, QP map and motion fields.

``rotation`` everywhere here is the *clockwise* angle (0, 90, 180, 270) that makes a stored picture upright,
i.e. ffmpeg's ``-display_rotation`` with the opposite sign.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

ROTATIONS = (0, 90, 180, 270)


def display_rotation(frame) -> int:
    """Clockwise degrees to show a decoded ``av.VideoFrame`` upright (its display matrix, to the nearest 90°)."""
    try:
        ccw = float(frame.rotation)  # FFmpeg's av_display_rotation_get: counter-clockwise degrees
    except (AttributeError, TypeError, ValueError):
        return 0
    return int(round(-ccw / 90.0)) % 4 * 90


def rotated_hw(height: int, width: int, rotation: int) -> tuple[int, int]:
    """(height, width) of an (height, width) picture after the rotation."""
    return (width, height) if rotation in (90, 270) else (height, width)


def rotate_image(a: np.ndarray, rotation: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Rotate the ``axes`` (rows, columns) of ``a`` clockwise by ``rotation`` degrees (contiguous copy)."""
    if rotation == 0:
        return a
    return np.ascontiguousarray(np.rot90(a, k=-(rotation // 90), axes=axes))


def _source_pixel(yr: np.ndarray, xr: np.ndarray, height: int, width: int, rotation: int):
    """Pixel (y, x) of an (height, width) stored picture that lands on (yr, xr) of the rotated one."""
    if rotation == 90:
        return height - 1 - xr, yr
    if rotation == 180:
        return height - 1 - yr, width - 1 - xr
    return xr, width - 1 - yr  # 270


def rotate_cells(a: np.ndarray, frame_hw: tuple[int, int], rotation: int, cell: int) -> np.ndarray:
    """Rotate a block map (..., ceil(H/cell), ceil(W/cell)) of an (H, W) picture.

    Block grids do not simply rotate when H or W is not a multiple of ``cell`` (the partial blocks move from
    the bottom/right edge to the top/left), so every block of the rotated grid takes the value of the stored
    block that holds its centre pixel.
    """
    if rotation == 0:
        return a
    h, w = frame_hw
    hr, wr = rotated_hw(h, w, rotation)
    yr = np.minimum(np.arange(-(-hr // cell)) * cell + cell // 2, hr - 1)
    xr = np.minimum(np.arange(-(-wr // cell)) * cell + cell // 2, wr - 1)
    ys, xs = _source_pixel(yr[:, None], xr[None, :], h, w, rotation)
    return np.ascontiguousarray(a[..., ys // cell, xs // cell])


def rotate_flow(flow: np.ndarray, valid: np.ndarray, frame_hw: tuple[int, int], rotation: int, stride: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a motion field (2, h, w) of (dx, dy) pixels and its validity (1, h, w) on the stride grid."""
    if rotation == 0:
        return flow, valid
    f = rotate_cells(flow, frame_hw, rotation, stride)
    dx, dy = f[0], f[1]
    turned = {90: (-dy, dx), 180: (-dx, -dy), 270: (dy, -dx)}[rotation]
    return np.ascontiguousarray(np.stack(turned, 0), dtype=np.float32), rotate_cells(valid, frame_hw, rotation, stride)


def rotate_frame_arrays(rgb: np.ndarray, residual: np.ndarray, qp: Optional[np.ndarray],
                        fields: list[tuple[np.ndarray, np.ndarray]], rotation: int, stride: int):
    """Rotate one decoded frame's arrays: rgb (H, W, 3), residual (C, H, W), qp (1, H/16, W/16) or None,
    and each (flow, valid) field. Returns them in the same order."""
    frame_hw = rgb.shape[:2]
    return (rotate_image(rgb, rotation), rotate_image(residual, rotation, axes=(1, 2)),
            None if qp is None else rotate_cells(qp, frame_hw, rotation, 16),
            [rotate_flow(f, v, frame_hw, rotation, stride) for f, v in fields])
