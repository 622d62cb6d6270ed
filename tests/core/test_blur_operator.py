"""The trajectory blur operator (cpgd_core.blur.operator) and the HQS solver built on it."""
from __future__ import annotations

import pytest
import torch

from cpgd_core.blur.operator import TrajectoryBlur, sample_count
from cpgd_core.blur.solver import UnrolledDeblur, UnrolledDeblurConfig, conjugate_gradient, gate, tv_prox


def _smooth_field(n: int, h: int, w: int, scale: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 2, 4, 5, generator=g) * scale
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)


def _texture(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, h // 4 + 1, w // 4 + 1, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)


def test_adjoint_identity_to_float_tolerance():
    traj = _smooth_field(2, 37, 53, 7.0)
    blur = TrajectoryBlur(traj.double())
    assert blur.samples > 1
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 37, 53, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 37, 53, generator=g, dtype=torch.float64)
    lhs, rhs = (blur(x) * y).sum(), (x * blur.adjoint(y)).sum()
    assert abs(float(lhs - rhs)) <= 1e-10 * float(lhs.abs())
    # float32: same identity at float32 rounding
    lhs32, rhs32 = (blur(x.float()) * y.float()).sum(), (x.float() * blur.adjoint(y.float())).sum()
    assert abs(float(lhs32 - rhs32)) <= 1e-5 * float(lhs32.abs())
    # the negated-trajectory approximation is not the adjoint (what made plain FISTA diverge)
    approx = (x * TrajectoryBlur(-traj.double(), samples=blur.samples)(y)).sum()
    assert abs(float(lhs - approx)) > 1e-3 * float(lhs.abs())


def test_adjoint_is_differentiable_and_its_derivative_is_the_blur():
    traj = _smooth_field(1, 20, 24, 4.0)
    blur = TrajectoryBlur(traj)
    y = torch.rand(1, 3, 20, 24, requires_grad=True)
    w = torch.rand(1, 3, 20, 24)
    (grad,) = torch.autograd.grad((blur.adjoint(y) * w).sum(), y)
    assert torch.allclose(grad, blur(w), atol=1e-6)


def test_uniform_pan_equals_a_rendered_box_blur():
    # A pan of L px (L even) sampled at K = L midpoints with bilinear weights is the trapezoid rule over the
    # L + 1 integer shifts: exactly the box blur of the piecewise-linear image.
    x = _texture(1, 40, 64)
    length = 8
    traj = torch.zeros(1, 2, 40, 64)
    traj[:, 0] = length
    out = TrajectoryBlur(traj, samples=length)(x)
    weights = torch.ones(length + 1)
    weights[0] = weights[-1] = 0.5
    box = sum(wt * torch.roll(x, shifts=-(k - length // 2), dims=3) for k, wt in enumerate(weights)) / length
    inner = slice(length, 64 - length)
    assert torch.allclose(out[..., inner], box[..., inner], atol=1e-5)


def test_zero_trajectory_is_the_identity():
    x = torch.rand(2, 3, 16, 20)
    blur = TrajectoryBlur(torch.zeros(2, 2, 16, 20))
    assert blur.samples == 1
    assert torch.equal(blur(x), x) and torch.equal(blur.adjoint(x), x)
    assert torch.equal(UnrolledDeblur(UnrolledDeblurConfig(prior="tv"))(x, torch.zeros(2, 2, 16, 20)), x)


def test_sample_count_follows_the_longest_paths():
    traj = torch.zeros(1, 2, 50, 50)
    traj[:, 0, :, :25] = 20.0
    assert sample_count(traj, spacing=2.0) == 16   # 20 px / 2 px = 10, rounded up to a power of two
    assert sample_count(torch.zeros(1, 2, 8, 8)) == 1
    assert sample_count(torch.full((1, 2, 8, 8), 1000.0), max_samples=32) == 32


def test_conjugate_gradient_solves_the_data_step():
    traj = _smooth_field(1, 24, 30, 5.0)
    blur = TrajectoryBlur(traj)
    x_true = _texture(1, 24, 30)
    mu = 0.05
    b = blur.normal(x_true) + mu * x_true
    x = conjugate_gradient(lambda v: blur.normal(v) + mu * v, b, torch.zeros_like(b), 60)
    assert torch.allclose(x, x_true, atol=1e-3)


def test_tv_prox_flattens_noise_and_keeps_edges():
    x = torch.zeros(1, 3, 32, 32)
    x[..., 16:] = 1.0
    noisy = x + 0.05 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = tv_prox(noisy, 0.1, 50)
    assert (out - x).pow(2).mean() < 0.25 * (noisy - x).pow(2).mean()
    assert out[..., 20:].mean() - out[..., :12].mean() > 0.9


def test_tv_solver_deblurs_a_known_blur_and_gate_keeps_still_pixels():
    x = _texture(1, 48, 64, seed=4)
    traj = torch.zeros(1, 2, 48, 64)
    traj[:, 0, :, 32:] = 10.0    # right half blurred, left half still
    y = TrajectoryBlur(traj)(x)
    out = UnrolledDeblur(UnrolledDeblurConfig(prior="tv", iterations=6, cg_steps=4, tv_scale=0.25))(y, traj)
    err_in = (y - x)[..., 36:60].pow(2).mean()
    err_out = (out - x)[..., 36:60].pow(2).mean()
    assert err_out < 0.5 * err_in
    assert torch.equal(out[..., :30], y[..., :30])    # gate: trajectory 0 -> input kept exactly
    assert gate(traj)[..., :31].max() == 0 and gate(traj)[..., 33:].min() == 1


def test_linear_light_data_step_inverts_blur_averaged_in_linear_light():
    """With data_space 'linear' the data steps invert a blur averaged in linear light (as a shutter and the training
    generator average) better than the sRGB data steps do; the conversion round trip is exact to float tolerance and
    keeps black at black, and still pixels stay as they came."""
    from cpgd_core.blur.solver import to_linear, to_srgb

    x = _texture(1, 48, 64, seed=4)
    assert torch.allclose(to_srgb(to_linear(x)), x, atol=2e-4) and float(to_srgb(torch.zeros(1))) == 0.0
    traj = torch.zeros(1, 2, 48, 64)
    traj[:, 0, :, 32:] = 10.0
    y = to_srgb(TrajectoryBlur(traj)(to_linear(x)))
    errors = {}
    for space in ("srgb", "linear"):
        config = UnrolledDeblurConfig(prior="none", iterations=6, cg_steps=10, noise=1 / 255, data_space=space)
        with torch.no_grad():
            out = UnrolledDeblur(config)(y, traj)
        errors[space] = float((out - x)[..., 36:60].pow(2).mean())
        assert torch.equal(out[..., :30], y[..., :30])
    assert errors["linear"] < 0.5 * errors["srgb"]
    with pytest.raises(ValueError, match="data_space"):
        UnrolledDeblurConfig(data_space="log")
