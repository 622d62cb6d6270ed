"""Per-pixel velocity between consecutive decoded frames (OpenCV DIS), in the pack's flow convention.

The velocity of frame t is ``v = (f(t->t+1) - f(t->t-1)) / 2``: the central difference of where each pixel of t
is found in its neighbours, in pixels per frame interval (one-sided at the ends of a clip). A blurry frame's
trajectory is that velocity times the exposure (``field.py``).
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import torch

PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def grey_u8(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) float RGB in [0, 1] -> (H, W) uint8 luma, the input DIS takes."""
    rgb = (frame.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def dis(preset: str = "medium") -> "cv2.DISOpticalFlow":
    """A fresh DIS instance (instances keep state between calls, so each caller owns its own)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown DIS preset {preset!r}; one of {sorted(PRESETS)}")
    return cv2.DISOpticalFlow_create(PRESETS[preset])


def dis_flow(engine: "cv2.DISOpticalFlow", a: np.ndarray, b: np.ndarray,
             init: Optional[np.ndarray] = None) -> np.ndarray:
    """Field on ``a`` pointing into ``b`` ((H, W, 2) float32, x then y): ``a(p) ~ b(p + flow(p))``.

    ``init`` starts the search from a given field instead of zero (OpenCV's DIS uses a flow argument of the
    frame's size as its initial flow).
    """
    if init is None:
        return engine.calc(a, b, None)
    return engine.calc(a, b, np.ascontiguousarray(init, dtype=np.float32).copy())


def central_velocity(to_next: Optional[np.ndarray], to_prev: Optional[np.ndarray]) -> np.ndarray:
    """v = (f(t->t+1) - f(t->t-1)) / 2, one-sided where a neighbour is missing. (H, W, 2) float32."""
    if to_next is not None and to_prev is not None:
        return 0.5 * (to_next - to_prev)
    if to_next is not None:
        return to_next
    if to_prev is not None:
        return -to_prev
    raise ValueError("a velocity needs at least one neighbouring frame")


def fb_confidence(f_ab: np.ndarray, f_ba: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Soft forward-backward agreement of a field on a (into b) with the field on b (into a), (H, W) in [0, 1].

    Where a pixel of a does not come back to itself (occlusion, wrong match) the velocity is not to be trusted;
    the tolerance grows with the motion (Sundaram et al.), since long vectors carry proportionally more error.
    """
    h, w = f_ab.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    back = cv2.remap(f_ba, xs + f_ab[..., 0], ys + f_ab[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    err = ((f_ab + back) ** 2).sum(-1)
    tol = sigma ** 2 + 0.01 * ((f_ab ** 2).sum(-1) + (back ** 2).sum(-1))
    return np.exp(-err / (2 * tol)).astype(np.float32)
