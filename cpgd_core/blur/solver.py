"""Non-blind deblurring by half-quadratic splitting (HQS) with a learned or a TV prior.

Restores x from a blurry frame y = B x + n, B the trajectory blur of :mod:`.operator`, by alternating

- a data step: ``x = argmin ||B x - y||^2 + mu_k ||x - z||^2``, i.e. ``(B^T B + mu_k I) x = B^T y + mu_k z``,
  a few conjugate-gradient iterations warm-started at z;
- a prior step: ``z = D(x, sigma_k)``: the learned denoiser (:class:`~cpgd_core.models.prior_denoiser.
  PriorDenoiser`) at noise level sigma_k, or the colour-coupled TV proximal map as the untrained baseline,

with sigma_k falling geometrically over the iterations and mu_k = (noise / sigma_k)^2 (DPIR, Zhang et al. 2021).
The data step works on the frames as they are (sRGB) or, with ``data_space='linear'``, in linear light, where a
shutter (and the training blur's generator) averages: the straight-path model fits the generator's blur 2-3 dB
better there (docs/bench/motion.md); the prior step always sees sRGB.
:class:`UnrolledDeblur` holds the schedule as learnable per-iteration scalars beside the shared denoiser, so the
whole loop trains end to end on blur made from real footage with *estimated* trajectories and learns to absorb
their error. Where the trajectory is shorter than ``GATE_PX`` the input is kept: there is nothing to invert, and
a sharp frame must come back as it went in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..codec.flow import magnitude
from ..data.synth import GAMMA
from ..models.config import JsonConfig
from ..models.prior_denoiser import PriorDenoiser, PriorDenoiserConfig
from .operator import TrajectoryBlur

# Trajectory length (px) below which a pixel is left as it came in, and the ramp over which deblurring fades in.
GATE_PX = (0.75, 1.5)
# Trajectory (px) that the guided prior reads as 1: the guide stays of order one for blur of tens of pixels.
GUIDE_TRAJECTORY_PX = 16.0
# Channels of that guide: the blurry frame (3) and its trajectory (2).
GUIDE_CHANNELS = 5
Interrupt = Optional[Callable[[], None]]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=(1, 2, 3), keepdim=True)


def conjugate_gradient(apply_a: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x: torch.Tensor,
                       steps: int) -> torch.Tensor:
    """``steps`` CG iterations on A x = b from ``x`` (A symmetric positive definite), each image of the batch on
    its own step sizes. Differentiable (no in-place updates)."""
    r = b - apply_a(x)
    p = r
    rs = _dot(r, r)
    for _ in range(steps):
        ap = apply_a(p)
        alpha = rs / _dot(p, ap).clamp_min(1e-12)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _dot(r, r)
        p = r + (rs_new / rs.clamp_min(1e-12)) * p
        rs = rs_new
    return x


def _grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gx = torch.zeros_like(x)
    gy = torch.zeros_like(x)
    gx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    gy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    return gx, gy


def _div(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Negative adjoint of :func:`_grad`."""
    dx = torch.zeros_like(px)
    dy = torch.zeros_like(py)
    dx[..., :, 0] = px[..., :, 0]
    dx[..., :, 1:-1] = px[..., :, 1:-1] - px[..., :, :-2]
    dx[..., :, -1] = -px[..., :, -2]
    dy[..., 0, :] = py[..., 0, :]
    dy[..., 1:-1, :] = py[..., 1:-1, :] - py[..., :-2, :]
    dy[..., -1, :] = -py[..., -2, :]
    return dx + dy


@torch.no_grad()
def tv_prox(x: torch.Tensor, weight: torch.Tensor | float, iterations: int = 20) -> torch.Tensor:
    """argmin_z 1/2 ||z - x||^2 + weight * TV(z), colour-coupled isotropic TV (one gradient norm over the
    channels), by Chambolle's projection (2004). x (N, C, H, W); weight a float or (N, 1, 1, 1)."""
    w = torch.as_tensor(weight, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    px = torch.zeros_like(x)
    py = torch.zeros_like(x)
    tau = 0.248
    for _ in range(iterations):
        gx, gy = _grad(_div(px, py) - x / w.clamp_min(1e-8))
        norm = (gx * gx + gy * gy).sum(1, keepdim=True).sqrt()
        px = (px + tau * gx) / (1 + tau * norm)
        py = (py + tau * gy) / (1 + tau * norm)
    return x - w * _div(px, py)


@dataclass
class UnrolledDeblurConfig(JsonConfig):
    """iterations: HQS iterations; cg_steps: CG iterations per data step; sigma_start / sigma_end: the prior's noise
    level at the first and last iteration ([0, 1] units); noise: assumed error of the blur model and the codec in
    y, sets mu_k = (noise / sigma_k)^2; prior: 'learned', 'tv', or 'none' (the data steps alone: the ablation);
    tv_scale: TV weight = tv_scale * sigma_k; data_space: 'srgb' or 'linear', where the data step inverts the
    blur."""

    iterations: int = 4
    cg_steps: int = 3
    sigma_start: float = 16 / 255
    sigma_end: float = 3 / 255
    noise: float = 4 / 255
    prior: str = "learned"
    tv_scale: float = 1.0
    tv_iterations: int = 20
    data_space: str = "srgb"
    denoiser: PriorDenoiserConfig = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.denoiser is None:
            self.denoiser = PriorDenoiserConfig()
        elif isinstance(self.denoiser, dict):
            self.denoiser = PriorDenoiserConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                  for k, v in self.denoiser.items()})
        if self.prior not in ("learned", "tv", "none"):
            raise ValueError(f"prior must be 'learned', 'tv' or 'none', got {self.prior!r}")
        if self.data_space not in ("srgb", "linear"):
            raise ValueError(f"data_space must be 'srgb' or 'linear', got {self.data_space!r}")


# sRGB <-> linear light as the training blur's generator takes it (a 2.2 power law), with a straight segment under
# LINEAR_KNEE (linear) so that the way back has a bounded derivative at black, where a data step may land.
LINEAR_KNEE = 1e-3
_SRGB_KNEE = LINEAR_KNEE ** (1 / GAMMA)


def to_linear(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= _SRGB_KNEE, x * (LINEAR_KNEE / _SRGB_KNEE), x.clamp_min(_SRGB_KNEE).pow(GAMMA))


def to_srgb(u: torch.Tensor) -> torch.Tensor:
    u = u.clamp(0, 1)
    return torch.where(u <= LINEAR_KNEE, u * (_SRGB_KNEE / LINEAR_KNEE), u.clamp_min(LINEAR_KNEE).pow(1 / GAMMA))


def gate(trajectory: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) weight of the deblurred frame: 0 where the trajectory is shorter than GATE_PX[0], 1 above
    GATE_PX[1]."""
    length = magnitude(trajectory, keepdim=True)
    lo, hi = GATE_PX
    return ((length - lo) / (hi - lo)).clamp(0, 1)


class UnrolledDeblur(nn.Module):
    """HQS with a learned (or TV) prior, unrolled over ``config.iterations``.

    forward(y, trajectory): y (N, 3, H, W) blurry frames in [0, 1]; trajectory (N, 2, H, W) in pixels.
    Returns (N, 3, H, W) deblurred frames (not clamped, so training sees the true error).
    """

    def __init__(self, config: UnrolledDeblurConfig | None = None) -> None:
        super().__init__()
        self.config = config or UnrolledDeblurConfig()
        c = self.config
        k = max(c.iterations, 1)
        sig = torch.tensor([math.log(c.sigma_start) + (math.log(c.sigma_end) - math.log(c.sigma_start)) * i / max(k - 1, 1)
                            for i in range(k)])
        # learnable per-iteration schedule (log domain), initialised at the DPIR-style geometric one
        self.log_sigma = nn.Parameter(sig)
        self.log_mu = nn.Parameter(2 * (math.log(c.noise) - sig))
        self.denoiser = PriorDenoiser(c.denoiser) if c.prior == "learned" else None

    def prior_step(self, x: torch.Tensor, sigma: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.prior == "none":
            return x
        if self.denoiser is None:
            return tv_prox(x, self.config.tv_scale * sigma, self.config.tv_iterations)
        return self.denoiser(x, sigma.expand(x.shape[0]), guide)

    def forward(self, y: torch.Tensor, trajectory: torch.Tensor, check_interrupt: Interrupt = None,
                blur: TrajectoryBlur | None = None) -> torch.Tensor:
        blur = blur or TrajectoryBlur(trajectory)
        if blur.identity:
            return y
        linear = self.config.data_space == "linear"
        bty = blur.adjoint(to_linear(y) if linear else y)
        guided = self.denoiser is not None and self.config.denoiser.guide > 0
        guide = torch.cat([y, trajectory / GUIDE_TRAJECTORY_PX], 1) if guided else None
        z = y
        for k in range(self.config.iterations):
            if check_interrupt is not None:
                check_interrupt()
            mu = self.log_mu[k].exp()
            start = to_linear(z) if linear else z
            x = conjugate_gradient(lambda v: blur.normal(v) + mu * v, bty + mu * start, start, self.config.cg_steps)
            x = to_srgb(x) if linear else x
            if check_interrupt is not None:
                check_interrupt()
            z = self.prior_step(x, self.log_sigma[k].exp(), guide)
        g = gate(trajectory)
        return y + g * (z - y)
