"""Pictures of codec priors: motion on a colour wheel, residuals as a signed heat map."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .flow import magnitude


def _upsample(img: torch.Tensor, size: Optional[tuple[int, int]]) -> torch.Tensor:
    if size is None or tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img, size=tuple(size), mode="nearest")


def flow_to_color(flow: torch.Tensor, valid: Optional[torch.Tensor] = None, max_magnitude: Optional[float] = None,
                  size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Colour-wheel picture of a flow field.

    Args:
        flow: (T, 2, h, w) in pixels. valid: (T, 1, h, w) bool or None; invalid cells are black.
        max_magnitude: magnitude drawn at full saturation (default: the 99th percentile of valid vectors,
            shared by all frames so the clip does not flicker).
        size: (H, W) to upsample to (nearest: block edges stay visible), or None.

    Returns (T, 3, h, w) or (T, 3, H, W) float32 in [0, 1]. Hue = direction (x+ red, y+ (down) yellow-green,
    x- cyan, y- blue-violet); saturation = speed; zero motion is white.
    """
    flow = flow.float()
    if valid is None:
        valid = torch.ones_like(flow[:, :1], dtype=torch.bool)
    mag = magnitude(flow, keepdim=True)
    if max_magnitude is None:
        m = mag[valid]
        max_magnitude = float(torch.quantile(m[:1_000_000], 0.99)) if m.numel() else 1.0
    max_magnitude = max(float(max_magnitude), 1e-6)
    hue = (torch.atan2(flow[:, 1:2], flow[:, 0:1]) / (2 * math.pi)) % 1.0
    sat = (mag / max_magnitude).clamp(0, 1)
    # HSV -> RGB with V = 1.
    k = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    t = (k + hue * 6.0) % 6.0
    rgb = 1.0 - sat * torch.clamp(torch.minimum(t, 4.0 - t), 0, 1)
    rgb = rgb * valid.float()
    return _upsample(rgb, size)


def residual_heatmap(residual: torch.Tensor, scale: Optional[float] = None,
                     size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Signed residual picture: black = 0, red/yellow = positive, blue/cyan = negative.

    Args:
        residual: (T, 1, H, W) (or (T, C, H, W): channels are averaged) in [0,1]-luma units.
        scale: |residual| drawn at full intensity (default: 99.5th percentile of |residual|).
        size: (H, W) to resize to (bilinear), or None.
    Returns (T, 3, H, W) float32 in [0, 1].
    """
    r = residual.float()
    if r.shape[1] != 1:
        r = r.mean(1, keepdim=True)
    if scale is None:
        a = r.abs().flatten()
        if a.numel() > 2_000_000:
            a = a[:: a.numel() // 2_000_000 + 1]
        scale = float(torch.quantile(a, 0.995)) if a.numel() else 1.0
    scale = max(float(scale), 1e-6)
    v = (r / scale).clamp(-1, 1)
    pos, neg = v.clamp(min=0), (-v).clamp(min=0)
    # Two-step ramps: dark -> saturated -> bright, so small and large residuals are both readable.
    rgb = torch.cat([
        (2 * pos).clamp(0, 1) + (2 * neg - 1).clamp(0, 1) * 0.6,
        (2 * pos - 1).clamp(0, 1) + (2 * neg - 1).clamp(0, 1),
        (2 * neg).clamp(0, 1),
    ], 1).clamp(0, 1)
    if size is not None and tuple(rgb.shape[-2:]) != tuple(size):
        rgb = F.interpolate(rgb, size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)
    return rgb


def trajectory_to_color(trajectory: torch.Tensor, max_length: Optional[float] = None) -> torch.Tensor:
    """Picture of a blur field's trajectories (sign-invariant: a blur along +d is the blur along -d).

    Args:
        trajectory: (T, 2, H, W) displacement in pixels swept during each frame's exposure.
        max_length: length drawn at full saturation (default: the 99th percentile, shared by all frames).
    Returns (T, 3, H, W) float32 in [0, 1]: hue = the axis of the blur (horizontal red, vertical cyan, the
    diagonals green and violet), saturation = its length; white = sharp.
    """
    t = trajectory.float()
    length = magnitude(t, keepdim=True)
    if max_length is None:
        a = length.flatten()
        a = a[:: a.numel() // 1_000_000 + 1]
        max_length = float(torch.quantile(a, 0.99)) if a.numel() else 1.0
    max_length = max(float(max_length), 1e-6)
    # Doubling the angle maps d and -d to the same hue.
    hue = (2 * torch.atan2(t[:, 1:2], t[:, 0:1]) / (2 * math.pi)) % 1.0
    sat = (length / max_length).clamp(0, 1)
    k = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    h6 = (k + hue * 6.0) % 6.0
    return 1.0 - sat * torch.clamp(torch.minimum(h6, 4.0 - h6), 0, 1)
