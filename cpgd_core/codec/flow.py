"""Flow-field helpers shared by the codec priors and the networks.

Convention (docs/ARCHITECTURE.md): a flow is a field defined on the *target* frame, in pixels,
channel 0 = x, channel 1 = y; ``warp(src, flow)`` samples ``src`` at ``p + flow(p)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def magnitude(vectors: torch.Tensor, dim: int = 1, keepdim: bool = False) -> torch.Tensor:
    """Per-pixel length of the 2-vectors stored along ``dim`` (flows, trajectories: (N, 2, H, W) -> (N, H, W)).

    ``torch.hypot`` of the two components rather than ``norm(dim=...)``: on CPU the strided reduction of ``norm``
    over the channel dim takes about 0.14 s per 1280x720 frame, 40x longer, and it ran on every frame."""
    out = torch.hypot(vectors.narrow(dim, 0, 1), vectors.narrow(dim, 1, 1))
    return out if keepdim else out.squeeze(dim)


def _base_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                            torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys], 0)  # (2, h, w)


def warp(src: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear",
         padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``src`` (N, C, H, W) at ``p + flow(p)``; ``flow`` is (N, 2, H, W) in pixels.

    Bilinear, align_corners=True (pixel centres at integer coordinates), zeros outside.
    """
    n, _, h, w = src.shape
    if flow.shape[-2:] != (h, w):
        raise ValueError(f"flow {tuple(flow.shape)} does not match source {tuple(src.shape)}")
    pos = _base_grid(h, w, flow.device, flow.dtype).unsqueeze(0) + flow
    gx = 2.0 * pos[:, 0] / max(w - 1, 1) - 1.0
    gy = 2.0 * pos[:, 1] / max(h - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1).to(src.dtype)
    return F.grid_sample(src, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def compose(flow_ab: torch.Tensor, flow_bc: torch.Tensor) -> torch.Tensor:
    """Chain a field on frame a pointing into b with a field on b pointing into c: a -> c. (N, 2, H, W)."""
    return flow_ab + warp(flow_bc, flow_ab, padding_mode="border")


def resize_flow(flow: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a (N, 2, h, w) field to ``size`` = (H, W), rescaling the vectors to the new pixel units."""
    h, w = flow.shape[-2:]
    out = F.interpolate(flow, size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    scale = torch.tensor([size[1] / w, size[0] / h], dtype=flow.dtype, device=flow.device).view(1, 2, 1, 1)
    return out * scale


def consistency_mask(flow_ab: torch.Tensor, flow_ba: torch.Tensor, alpha: float = 0.01,
                     beta: float = 0.5) -> torch.Tensor:
    """Forward-backward check: (N, 1, H, W) True where ``flow_ab`` and ``flow_ba`` agree."""
    back = warp(flow_ba, flow_ab, padding_mode="border")
    diff = (flow_ab + back).pow(2).sum(1, keepdim=True)
    mag = flow_ab.pow(2).sum(1, keepdim=True) + back.pow(2).sum(1, keepdim=True)
    return diff < alpha * mag + beta
