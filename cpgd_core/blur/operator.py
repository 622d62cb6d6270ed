"""Per-pixel trajectory blur ``B`` and its exact adjoint ``B^T``.

The blur model: each pixel of a blurry frame averages the sharp frame along the straight path it swept during
the exposure, centred on the pixel::

    (B x)(p) ~= 1/K * sum_k x(p + s_k * trajectory(p)),   s_k = (k + 1/2) / K - 1/2,  k = 0..K-1,  K = 2^m

with bilinear sampling and replicated borders. The K samples are made by m cascaded two-tap warps,
``B = W_1 W_2 ... W_m`` with ``(W_j x)(p) = (x(p + t(p) / 2^(j+1)) + x(p - t(p) / 2^(j+1))) / 2``: 2m single-sample
warps instead of K (about 3x faster at K = 16, and 2m instead of K sampling grids in memory). For a uniform
trajectory the cascade is exactly the K-sample midpoint rule above; where the trajectory varies, each stage reads
it where the previous one landed, a path that bends with the field. K follows the longest trajectories of the
frame, so that neighbouring samples are at most ``spacing`` pixels apart.

``B`` is linear in ``x``; its transpose applies the stages' transposes in reverse order, each scattering its
samples' bilinear weights back (PyTorch's ``grid_sampler_2d_backward`` is exactly that scatter), so
``<B x, y> = <x, B^T y>`` holds to float rounding. The exact adjoint matters: conjugate-gradient data steps diverge
with ``B^T`` approximated by the blur along the negated trajectory (``shared/reference/real_blur_findings.md``).
Both directions are differentiable in ``x`` / ``y`` (not in the trajectory), so the unrolled solver trains end to
end through them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..codec.flow import magnitude

# Sample spacing along the path, in pixels: with bilinear sampling, 2 px keeps the line integral within a few
# 1e-3 of a densely sampled one on natural images, at half the cost of 1 px.
DEFAULT_SPACING = 2.0
MAX_SAMPLES = 32
_BILINEAR, _BORDER = 0, 1


def sample_count(trajectory: torch.Tensor, spacing: float = DEFAULT_SPACING, max_samples: int = MAX_SAMPLES) -> int:
    """Samples along the path for a (N, 2, H, W) trajectory: the power of two that keeps samples of its
    99.5th-percentile length at most ``spacing`` apart, in [1, max_samples]."""
    length = magnitude(trajectory.detach().float()).flatten()
    if length.numel() > 1_000_000:   # quantile refuses very large inputs; a strided subset is as good
        length = length[:: math.ceil(length.numel() / 1_000_000)]
    top = float(torch.quantile(length, 0.995)) if length.numel() else 0.0
    need = max(math.ceil(top / spacing), 1)
    return int(min(1 << math.ceil(math.log2(need)), max_samples))


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
        samples: points along each path, a power of two (None: :func:`sample_count`).
    Apply as ``blur(x)`` / ``blur.adjoint(y)`` / ``blur.normal(x)`` on (N, C, H, W) tensors.
    """

    def __init__(self, trajectory: torch.Tensor, samples: int | None = None, spacing: float = DEFAULT_SPACING) -> None:
        n, two, h, w = trajectory.shape
        if two != 2:
            raise ValueError(f"trajectory must be (N, 2, H, W), got {tuple(trajectory.shape)}")
        traj = trajectory.detach().float()
        self.samples = samples or sample_count(traj, spacing)
        levels = round(math.log2(self.samples))
        if 1 << levels != self.samples:
            raise ValueError(f"samples must be a power of two, got {self.samples}")
        self.shape = (n, h, w)
        self.identity = levels == 0 or (bool(traj.abs().max() == 0) if traj.numel() else True)
        dev = traj.device
        # normalised coordinates for align_corners=True: -1 at pixel 0, +1 at pixel size-1
        sx, sy = 2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)
        base_x = (torch.arange(w, device=dev, dtype=torch.float32) * sx - 1.0).view(1, 1, w)
        base_y = (torch.arange(h, device=dev, dtype=torch.float32) * sy - 1.0).view(1, h, 1)
        tx, ty = traj[:, 0] * sx, traj[:, 1] * sy
        # one (N, 2H, W, 2) grid per stage, both taps in one grid_sample call
        self.grids = []
        for j in range(1, levels + 1):
            a = 1.0 / (1 << (j + 1))
            grid = torch.empty(n, 2, h, w, 2, device=dev)
            torch.add(base_x, tx, alpha=a, out=grid[:, 0, ..., 0])
            torch.add(base_y, ty, alpha=a, out=grid[:, 0, ..., 1])
            torch.add(base_x, tx, alpha=-a, out=grid[:, 1, ..., 0])
            torch.add(base_y, ty, alpha=-a, out=grid[:, 1, ..., 1])
            self.grids.append(grid.view(n, 2 * h, w, 2))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or (x.shape[0], x.shape[2], x.shape[3]) != self.shape:
            raise ValueError(f"expected (N, C, H, W) with N, H, W = {self.shape}, got {tuple(x.shape)}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """B x = W_1 W_2 ... W_m x: (N, C, H, W) -> (N, C, H, W)."""
        self._check(x)
        if self.identity:
            return x
        for grid in reversed(self.grids):
            x = _gather(x, grid, 2)
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """B^T y = W_m^T ... W_1^T y: (N, C, H, W) -> (N, C, H, W), the exact transpose of :meth:`__call__`."""
        self._check(y)
        if self.identity:
            return y
        like = y.new_empty(1, 1, 1, 1).expand(y.shape)   # shape and dtype only: nothing is read from it
        for grid in self.grids:
            y = _Adjoint.apply(y, grid.to(y.dtype), 2, like)
        return y

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """B^T B x."""
        return self.adjoint(self(x))
