"""cpgd_core.ops.deform_conv2d against a plain float64 loop reference of torchvision's semantics.

The Triton tests run automatically on a CUDA machine with Triton (and on CPU under TRITON_INTERPRET=1).
"""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from cpgd_core.errors import CPGDInputError
from cpgd_core.ops import deform_conv2d, triton_available


def _bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """img (C, H, W); torchvision's rule: zero unless -1 < y < H and -1 < x < W, outside corners are zero."""
    c, h, w = img.shape
    out = torch.zeros(c, dtype=img.dtype)
    if not (-1 < y < h and -1 < x < w):
        return out
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    for yy, xx, wt in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
                       (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):
        if 0 <= yy < h and 0 <= xx < w:
            out += wt * img[:, yy, xx]
    return out


def reference_deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Straightforward loops in float64, written from torchvision's documented semantics."""
    inp, offset, weight = input.double(), offset.double(), weight.double()
    n, c, h, w = inp.shape
    c_out, c_in_g, kh, kw = weight.shape
    k = kh * kw
    og = offset.shape[1] // (2 * k)
    cg = c // og
    groups = c // c_in_g
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    ho, wo = offset.shape[2:]
    cols = torch.zeros(n, c, kh, kw, ho, wo, dtype=torch.float64)
    for b in range(n):
        for gi in range(og):
            img = inp[b, gi * cg:(gi + 1) * cg]
            for i in range(kh):
                for j in range(kw):
                    tap = gi * k + i * kw + j
                    for oy in range(ho):
                        for ox in range(wo):
                            y = oy * sh - ph + i * dh + float(offset[b, 2 * tap, oy, ox])
                            x = ox * sw - pw + j * dw + float(offset[b, 2 * tap + 1, oy, ox])
                            m = 1.0 if mask is None else float(mask[b, tap, oy, ox])
                            cols[b, gi * cg:(gi + 1) * cg, i, j, oy, ox] = m * _bilinear(img, y, x)
    out = torch.zeros(n, c_out, ho, wo, dtype=torch.float64)
    co_g = c_out // groups
    for gw in range(groups):
        wg = weight[gw * co_g:(gw + 1) * co_g].reshape(co_g, -1)
        cg_cols = cols[:, gw * c_in_g:(gw + 1) * c_in_g].reshape(n, -1, ho * wo)
        out[:, gw * co_g:(gw + 1) * co_g] = (wg @ cg_cols).view(n, co_g, ho, wo)
    if bias is not None:
        out += bias.double().view(1, -1, 1, 1)
    return out


def _make(n, c, h, w, c_out, kh, kw, stride, padding, dilation, groups, og, use_mask, use_bias, dtype,
          offset_scale=2.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    inp = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    offset = (torch.rand(n, 2 * og * kh * kw, ho, wo, generator=gen, dtype=dtype) * 2 - 1) * offset_scale
    weight = torch.randn(c_out, c // groups, kh, kw, generator=gen, dtype=dtype)
    mask = torch.rand(n, og * kh * kw, ho, wo, generator=gen, dtype=dtype) if use_mask else None
    bias = torch.randn(c_out, generator=gen, dtype=dtype) if use_bias else None
    return dict(input=inp, offset=offset, weight=weight, bias=bias, stride=stride, padding=padding,
                dilation=dilation, mask=mask)


# (n, c, h, w, c_out, kh, kw, stride, padding, dilation, groups, offset_groups, mask, bias)
CASES = [
    (1, 4, 6, 7, 3, 3, 3, 1, 1, 1, 1, 1, True, True),
    (2, 6, 5, 6, 4, 3, 3, 1, 1, 1, 1, 3, True, False),
    (1, 4, 7, 6, 4, 3, 3, 2, 1, 1, 2, 2, False, True),
    (1, 6, 7, 8, 6, 3, 2, (2, 1), (0, 2), (2, 1), 3, 2, True, True),
    (2, 4, 5, 5, 2, 1, 1, 1, 0, 1, 1, 4, True, False),
    (1, 2, 1, 5, 2, 3, 3, 1, 1, 1, 1, 1, True, True),  # one-row image
    (1, 2, 4, 1, 3, 3, 3, 1, 1, 1, 1, 2, False, False),  # one-column image
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"-k{c[5]}{c[6]}-s{c[7]}-g{c[10]}-og{c[11]}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_loop_reference(case, dtype):
    args = _make(*case, dtype=dtype)
    ref = reference_deform_conv2d(**args)
    out = deform_conv2d(**args, backend="torch")
    assert out.dtype == dtype and out.shape == ref.shape
    assert _rel(out, ref) <= 1e-5


def test_zero_offset_ones_mask_is_conv2d():
    args = _make(2, 6, 9, 8, 4, 3, 3, (2, 1), (1, 2), (1, 2), 2, 3, True, True, torch.float64)
    args["offset"].zero_()
    args["mask"].fill_(1.0)
    ref = F.conv2d(args["input"], args["weight"], args["bias"], args["stride"], args["padding"], args["dilation"],
                   groups=2)
    assert _rel(deform_conv2d(**args), ref) <= 1e-12
    args["mask"] = None
    assert _rel(deform_conv2d(**args), ref) <= 1e-12


def test_integer_offsets_shift_the_image():
    """Offset (dy, dx) = (1, -2) everywhere samples the input shifted by one row down and two columns left."""
    args = _make(1, 3, 6, 7, 2, 3, 3, 1, 1, 1, 1, 1, False, False, torch.float64)
    args["offset"][:, 0::2] = 1.0
    args["offset"][:, 1::2] = -2.0
    padded = F.pad(args["input"], (3, 3, 3, 3))  # tap (i, j) of output (oy, ox) reads input (oy-1+i+1, ox-1+j-2)
    ref = F.conv2d(padded[:, :, 3:3 + 6 + 2, 0:7 + 2], args["weight"])
    assert _rel(deform_conv2d(**args), ref) <= 1e-12


def _grads(args, only=None, **kw):
    """Output and the gradients of all tensor arguments (or of those named in ``only``)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in args.items()
              if isinstance(v, torch.Tensor) and (only is None or k in only)}
    out = deform_conv2d(**{**args, **leaves}, **kw)
    gen = torch.Generator().manual_seed(1)
    (out * torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)).sum().backward()
    return out.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[3], CASES[5]], ids=["basic", "og3", "strided", "one-row"])
def test_gradcheck(case):
    n, c, h, w = case[:4]
    args = _make(*case, dtype=torch.float64, offset_scale=1.7, seed=3)
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor)]
    tensors = [args[k].detach().clone().requires_grad_(True) for k in names]
    fixed = {k: v for k, v in args.items() if k not in names}

    def fn(*ts):
        return deform_conv2d(**dict(zip(names, ts)), **fixed, backend="torch")

    # full Jacobians for the small cases, random projections (fast_mode) for the larger one
    fast = n * c * h * w > 100
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast)


def test_gradcheck_row_blocks():
    args = _make(2, 4, 6, 5, 3, 3, 3, 1, 1, 1, 1, 2, True, True, torch.float64, offset_scale=1.3, seed=5)
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor)]
    tensors = [args[k].detach().clone().requires_grad_(True) for k in names]
    fixed = {k: v for k, v in args.items() if k not in names}

    def fn(*ts):
        return deform_conv2d(**dict(zip(names, ts)), **fixed, block_rows=2)

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_row_blocks_equal_single_block(dtype, monkeypatch):
    args = _make(3, 8, 11, 9, 5, 3, 3, 1, 1, 1, 1, 4, True, True, dtype, offset_scale=4.0, seed=7)
    out1, g1 = _grads(args, block_rows=10**6)
    out2, g2 = _grads(args, block_rows=1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert _rel(out2, out1) <= tol
    for k in g1:
        assert _rel(g2[k], g1[k]) <= tol, k
    # the memory-budget path: a tiny budget forces one batch item and one row per block
    monkeypatch.setenv("CPGD_DCN_BLOCK_MB", "0.0001")
    out3, g3 = _grads(args)
    assert _rel(out3, out1) <= tol
    for k in g1:
        assert _rel(g3[k], g1[k]) <= tol, k


def test_backward_matches_reference_autograd():
    """Gradients of the blocked custom backward equal autograd through the loop reference."""
    args = _make(1, 4, 5, 6, 3, 3, 3, 1, 1, 1, 1, 2, True, True, torch.float64, offset_scale=2.0, seed=11)
    _, ours = _grads(args)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in args.items() if isinstance(v, torch.Tensor)}
    ref = _reference_autograd(**{**args, **leaves})
    gen = torch.Generator().manual_seed(1)
    (ref * torch.randn(ref.shape, generator=gen, dtype=ref.dtype)).sum().backward()
    for k, v in leaves.items():
        assert _rel(ours[k], v.grad) <= 1e-10, k


def _reference_autograd(input, offset, weight, bias, stride, padding, dilation, mask):
    """Differentiable (vectorised, gather-based) float64 reference: a second, independent formulation."""
    n, c, h, w = input.shape
    c_out, c_in_g, kh, kw = weight.shape
    k = kh * kw
    og = offset.shape[1] // (2 * k)
    ho, wo = offset.shape[2:]
    off = offset.view(n, og, k, 2, ho, wo)
    ky = torch.arange(kh).repeat_interleave(kw).double().view(k, 1, 1) * dilation
    kx = torch.arange(kw).repeat(kh).double().view(k, 1, 1) * dilation
    y = off[:, :, :, 0] + ky + (torch.arange(ho).double() * stride - padding).view(1, -1, 1)
    x = off[:, :, :, 1] + kx + (torch.arange(wo).double() * stride - padding).view(1, 1, -1)
    inside = (y > -1) & (y < h) & (x > -1) & (x < w)
    y0, x0 = torch.floor(y), torch.floor(x)
    ly, lx = y - y0, x - x0
    img = input.view(n, og, c // og, h * w)
    col = 0
    for dy, dx, wt in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yy, xx = (y0 + dy).long(), (x0 + dx).long()
        ok = inside & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).view(n, og, 1, -1).expand(-1, -1, c // og, -1)
        v = torch.gather(img, 3, idx).view(n, og, c // og, k, ho, wo)
        col = col + (wt * ok).unsqueeze(2) * v
    if mask is not None:
        col = col * mask.view(n, og, 1, k, ho, wo)
    col = col.reshape(n, c * k, ho * wo)
    out = (weight.reshape(c_out, -1) @ col).view(n, c_out, ho, wo)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def test_half_precision_input():
    args = _make(1, 4, 6, 7, 3, 3, 3, 1, 1, 1, 1, 2, True, True, torch.float32)
    ref = deform_conv2d(**args)
    half = {k: (v.to(torch.bfloat16) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    out = deform_conv2d(**half)
    assert out.dtype == torch.bfloat16
    assert _rel(out, ref) <= 3e-2


@pytest.mark.parametrize(
    "change, needle",
    [
        (dict(offset=torch.zeros(1, 17, 6, 7)), "offset"),
        (dict(offset=torch.zeros(1, 18, 5, 7)), "offset shape"),
        (dict(mask=torch.zeros(1, 8, 6, 7)), "mask shape"),
        (dict(weight=torch.zeros(3, 3, 3, 3)), "divisible"),
        (dict(bias=torch.zeros(4)), "bias"),
        (dict(stride=0), "stride"),
        (dict(input=torch.zeros(4, 6, 7)), "4-D"),
    ],
)
def test_bad_input_raises(change, needle):
    args = _make(1, 4, 6, 7, 3, 3, 3, 1, 1, 1, 1, 1, True, True, torch.float32)
    with pytest.raises(CPGDInputError, match=needle):
        deform_conv2d(**{**args, **change})


# ---------------------------------------------------------------- Triton (CUDA, or the Triton CPU interpreter)
_INTERPRET = os.environ.get("TRITON_INTERPRET", "") == "1"
_TRITON_DEVICE = "cuda" if torch.cuda.is_available() else ("cpu" if _INTERPRET else None)
needs_triton = pytest.mark.skipif(
    _TRITON_DEVICE is None or not triton_available(),
    reason="needs a CUDA GPU with Triton (or TRITON_INTERPRET=1 with Triton installed)",
)

TRITON_CASES = [CASES[0], CASES[1], CASES[2], CASES[3], CASES[5],
                (2, 48, 9, 12, 16, 3, 3, 1, 1, 1, 1, 2, True, True)]  # 24 channels per offset group, as CPFP


@needs_triton
@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"-og{c[11]}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_matches_torch(case, dtype):
    args = _make(*case, dtype=dtype, seed=13)
    args = {k: (v.to(_TRITON_DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    out_t, g_t = _grads(args, backend="torch")
    out_k, g_k = _grads(args, backend="triton")
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert _rel(out_k, out_t) <= tol
    for k in g_t:
        assert _rel(g_k[k], g_t[k]) <= tol, k


@needs_triton
@pytest.mark.parametrize("only", [("weight",), ("weight", "offset"), ("input", "mask")], ids="+".join)
def test_triton_partial_gradients(only):
    # each subset takes another path through the backward kernel (which gradients it computes, and whether
    # the weight gradient's column matrix comes out of it)
    args = _make(2, 48, 9, 12, 16, 3, 3, 1, 1, 1, 1, 2, True, True, dtype=torch.float64, seed=23)
    args = {k: (v.to(_TRITON_DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    _, g_t = _grads(args, only=only, backend="torch")
    _, g_k = _grads(args, only=only, backend="triton")
    assert set(g_k) == set(only)
    for k in only:
        assert _rel(g_k[k], g_t[k]) <= 1e-10, k


@needs_triton
def test_triton_row_blocks_and_reference():
    args = _make(2, 4, 7, 6, 3, 3, 3, 1, 1, 1, 1, 2, True, True, torch.float64, seed=17)
    ref = reference_deform_conv2d(**args)
    dev = {k: (v.to(_TRITON_DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    out1, g1 = _grads(dev, backend="triton", block_rows=2)
    out2, g2 = _grads(dev, backend="triton")
    assert _rel(out1.cpu(), ref) <= 1e-10
    assert _rel(out2.cpu(), ref) <= 1e-10
    for k in g1:
        assert _rel(g1[k], g2[k]) <= 1e-10, k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_auto_backend_vs_torchvision():
    tv_ops = pytest.importorskip("torchvision.ops")
    args = _make(2, 32, 20, 24, 16, 3, 3, 1, 1, 1, 1, 4, True, True, torch.float32, seed=19)
    args = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    try:
        ref_out, ref_g = None, None
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in args.items() if isinstance(v, torch.Tensor)}
        ref_out = tv_ops.deform_conv2d(**{**args, **leaves})
    except (RuntimeError, NotImplementedError) as e:  # a CPU-only torchvision build
        pytest.skip(f"torchvision CUDA op unavailable: {e}")
    gen = torch.Generator().manual_seed(1)
    (ref_out * torch.randn(ref_out.shape, generator=gen).cuda()).sum().backward()
    out, g = _grads(args)
    assert _rel(out, ref_out.detach()) <= 1e-4
    for k, v in leaves.items():
        assert _rel(g[k], v.grad) <= 1e-3, k
