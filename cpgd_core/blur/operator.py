"""Per-pixel trajectory blur ``B`` and its exact adjoint ``B^T``.

The blur model: each pixel of a blurry frame averages the sharp frame along the straight path it swept during
the exposure, centred on the pixel::

    (B x)(p) = 1/K * sum_k x(p + s_k * trajectory(p)),   s_k = (k + 1/2) / K - 1/2,  k = 0..K-1

with bilinear sampling and replicated borders. K (the samples along the path) follows the longest trajectories
of the frame, so that neighbouring samples are at most ``spacing`` pixels apart. ``B`` is linear in ``x``; its
transpose scatters each sample's bilinear weights back (PyTorch's ``grid_sampler_2d_backward`` is exactly that
scatter), so ``<B x, y> = <x, B^T y>`` holds to float rounding. The exact adjoint matters: conjugate-gradient data
steps diverge with ``B^T`` approximated by the blur along the negated trajectory (``shared/reference/
real_blur_findings.md``). Both directions are differentiable in ``x`` / ``y`` (not in the trajectory), so the
unrolled solver trains end to end through them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Sample spacing along the path, in pixels: with bilinear sampling, 2 px keeps the line integral within a few
# 1e-3 of a densely sampled one on natural images, at half the cost of 1 px.
DEFAULT_SPACING = 2.0
MAX_SAMPLES = 32
_BILINEAR, _BORDER = 0, 1


def sample_count(trajectory: torch.Tensor, spacing: float = DEFAULT_SPACING, max_samples: int = MAX_SAMPLES) -> int:
    """Samples along the path for a (N, 2, H, W) trajectory: its 99.5th-percentile length / ``spacing``,
    rounded up, in [1, max_samples]."""
    length = trajectory.detach().float().norm(dim=1).flatten()
    if length.numel() > 1_000_000:   # quantile refuses very large inputs; a strided subset is as good
        length = length[:: math.ceil(length.numel() / 1_000_000)]
    top = float(torch.quantile(length, 0.995)) if length.numel() else 0.0
    return int(min(max(math.ceil(top / spacing), 1), max_samples))


class _Adjoint(torch.autograd.Function):
    """y -> B^T y (scatter); its derivative is B (gather)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, grid: torch.Tensor, samples: int, like: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grid)
        ctx.samples = samples
        n, c, h, w = y.shape
        grad_out = (y / samples).unsqueeze(2).expand(n, c, samples, h, w).reshape(n, c, samples * h, w)
        out, _ = torch.ops.aten.grid_sampler_2d_backward(grad_out, like, grid, _BILINEAR, _BORDER, True,
                                                         [True, False])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (grid,) = ctx.saved_tensors
        return _gather(grad, grid, ctx.samples), None, None, None


def _gather(x: torch.Tensor, grid: torch.Tensor, samples: int) -> torch.Tensor:
    n, c, h, w = x.shape
    out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return out.view(n, c, samples, h, w).mean(2)


class TrajectoryBlur:
    """The blur of one batch of frames along their trajectories.

    Args:
        trajectory: (N, 2, H, W) float, displacement (x, y) in pixels swept during the exposure.
        samples: points along each path (None: :func:`sample_count`).
    Apply as ``blur(x)`` / ``blur.adjoint(y)`` / ``blur.normal(x)`` on (N, C, H, W) tensors.
    """

    def __init__(self, trajectory: torch.Tensor, samples: int | None = None, spacing: float = DEFAULT_SPACING) -> None:
        n, two, h, w = trajectory.shape
        if two != 2:
            raise ValueError(f"trajectory must be (N, 2, H, W), got {tuple(trajectory.shape)}")
        traj = trajectory.detach().float()
        self.samples = samples or sample_count(traj, spacing)
        self.shape = (n, h, w)
        self.identity = bool(traj.abs().max() == 0) if traj.numel() else True
        dev = traj.device
        ys = torch.arange(h, device=dev, dtype=torch.float32).view(1, 1, h, 1)
        xs = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, 1, w)
        s = ((torch.arange(self.samples, device=dev, dtype=torch.float32) + 0.5) / self.samples - 0.5)
        s = s.view(1, -1, 1, 1)
        # normalised coordinates for align_corners=True: -1 at pixel 0, +1 at pixel size-1
        gx = (xs + s * traj[:, :1]) * (2.0 / max(w - 1, 1)) - 1.0
        gy = (ys + s * traj[:, 1:]) * (2.0 / max(h - 1, 1)) - 1.0
        # (N, K*H, W, 2): all K samples in one grid_sample call
        self.grid = torch.stack([gx, gy], -1).reshape(n, self.samples * h, w, 2)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or (x.shape[0], x.shape[2], x.shape[3]) != self.shape:
            raise ValueError(f"expected (N, C, H, W) with N, H, W = {self.shape}, got {tuple(x.shape)}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """B x: (N, C, H, W) -> (N, C, H, W)."""
        self._check(x)
        return x if self.identity else _gather(x, self.grid, self.samples)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """B^T y: (N, C, H, W) -> (N, C, H, W), the exact transpose of :meth:`__call__`."""
        self._check(y)
        if self.identity:
            return y
        like = y.new_empty(1, 1, 1, 1).expand(y.shape)   # shape and dtype only: nothing is read from it
        return _Adjoint.apply(y, self.grid.to(y.dtype), self.samples, like)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """B^T B x."""
        return self.adjoint(self(x))
