"""Modulated deformable convolution (DCNv1 / DCNv2) with exactly the semantics of ``torchvision.ops.deform_conv2d``.

torchvision's compiled op is not usable everywhere ComfyUI runs (see docs/ARCHITECTURE.md), so CPFP uses this one.

Semantics (identical to torchvision / mmcv):

- ``offset`` is ``(N, 2 * offset_groups * kh * kw, Ho, Wo)``; channel ``(g * kh * kw + k) * 2 + 0`` is the
  y (row) displacement and ``+ 1`` the x displacement of kernel tap ``k = i * kw + j`` for offset group ``g``.
  ``offset_groups`` is inferred from the channel count; input channel ``c`` belongs to group ``c // (C / G)``.
- ``mask`` (DCNv2) is ``(N, offset_groups * kh * kw, Ho, Wo)`` and multiplies the sampled value.
- The sampling point of output ``(oy, ox)`` and tap ``(i, j)`` is
  ``y = oy * stride_h - pad_h + i * dil_h + dy``, ``x = ox * stride_w - pad_w + j * dil_w + dx``.
  Bilinear interpolation; a point contributes only if ``-1 < y < H`` and ``-1 < x < W`` and each of its four
  corners outside the image contributes zero.
- ``weight`` is ``(C_out, C_in / groups, kh, kw)``; ``groups`` is inferred from ``C_in / weight.shape[1]``.

Two interchangeable sampling back-ends feed one shared driver that works in blocks of output rows (and
batch items) so that the im2col buffer stays under a memory budget even at 720p:

- ``torch``: any device/dtype; bilinear sampling through ``grid_sample`` (align_corners=True, zero
  padding is exactly the rule above) and its fused backward.
- ``triton``: CUDA kernels in :mod:`.deform_conv_triton`, chosen automatically on CUDA when Triton imports.

Both run through one ``torch.autograd.Function`` whose backward recomputes the sampling block by block, so
neither forward nor backward ever holds the full-resolution im2col tensor.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch
import torch.nn.functional as F

from ..errors import CPGDInputError

logger = logging.getLogger(__name__)

__all__ = ["deform_conv2d", "triton_available", "DCNGeometry"]

# Bytes the per-block working set (im2col + its gradient + temporaries) may use. Env overrides for tuning.
_DEFAULT_BLOCK_BYTES = {"cpu": 256 << 20, "cuda": 1 << 30}
# Working-set multiple of one im2col block: backward keeps col, grad_col and sampler temporaries alive.
_WORKSET_FACTOR = 4


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    try:
        a, b = v
        return int(a), int(b)
    except (TypeError, ValueError):
        raise CPGDInputError(f"deform_conv2d: {name} must be an int or a pair of ints, got {v!r}") from None


@dataclass(frozen=True)
class DCNGeometry:
    """All sizes of one deformable convolution call (derived from the tensor shapes)."""

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    groups: int
    offset_groups: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ho: int
    wo: int
    use_mask: bool

    @property
    def k(self) -> int:
        return self.kh * self.kw

    @property
    def c_per_offset_group(self) -> int:
        return self.c_in // self.offset_groups


def _geometry(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    dilation: int | tuple[int, int],
    mask: torch.Tensor | None,
) -> DCNGeometry:
    for name, t in (("input", input), ("offset", offset), ("weight", weight)) + (
        (("mask", mask),) if mask is not None else ()
    ):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise CPGDInputError(f"deform_conv2d: {name} must be a 4-D tensor, got {getattr(t, 'shape', type(t))}")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise CPGDInputError(f"deform_conv2d: bad stride {stride}, padding {padding} or dilation {dilation}")
    n, c_in, h, w = input.shape
    c_out, c_in_g, kh, kw = weight.shape
    if c_in_g == 0 or c_in % c_in_g != 0:
        raise CPGDInputError(f"deform_conv2d: input channels {c_in} not divisible by weight.shape[1]={c_in_g}")
    groups = c_in // c_in_g
    if c_out % groups != 0:
        raise CPGDInputError(f"deform_conv2d: out channels {c_out} not divisible by groups {groups}")
    k = kh * kw
    if offset.shape[1] == 0 or offset.shape[1] % (2 * k) != 0:
        raise CPGDInputError(
            f"deform_conv2d: offset has {offset.shape[1]} channels, expected a multiple of 2*kh*kw={2 * k}"
        )
    og = offset.shape[1] // (2 * k)
    if c_in % og != 0:
        raise CPGDInputError(f"deform_conv2d: input channels {c_in} not divisible by offset groups {og}")
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    if ho <= 0 or wo <= 0:
        raise CPGDInputError(f"deform_conv2d: output would be empty for input {h}x{w} and kernel {kh}x{kw}")
    if tuple(offset.shape) != (n, 2 * og * k, ho, wo):
        raise CPGDInputError(
            f"deform_conv2d: offset shape {tuple(offset.shape)} does not match expected {(n, 2 * og * k, ho, wo)}"
        )
    if mask is not None and tuple(mask.shape) != (n, og * k, ho, wo):
        raise CPGDInputError(
            f"deform_conv2d: mask shape {tuple(mask.shape)} does not match expected {(n, og * k, ho, wo)}"
        )
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise CPGDInputError(f"deform_conv2d: bias shape {tuple(bias.shape)}, expected ({c_out},)")
    for name, t in (("offset", offset), ("weight", weight), ("mask", mask), ("bias", bias)):
        if t is not None and t.device != input.device:
            raise CPGDInputError(f"deform_conv2d: {name} is on {t.device} but input is on {input.device}")
    return DCNGeometry(n, c_in, h, w, c_out, groups, og, kh, kw, (sh, sw), (ph, pw), (dh, dw), ho, wo,
                       mask is not None)


class SamplingBackend(Protocol):
    """Bilinear im2col of one block of output rows and its gradient (the part that differs per device)."""

    name: str

    def sample(self, inp: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None, g: DCNGeometry,
               n0: int, n1: int, r0: int, r1: int) -> torch.Tensor:
        """Masked im2col of batch items [n0, n1) and output rows [r0, r1).

        inp (N, C, H, W), offset (N, 2GK, Ho, Wo), mask (N, GK, Ho, Wo) are the full tensors.
        Returns col (n1-n0, C*K, (r1-r0)*Wo); row index c*K + k matches ``weight.reshape(C_out, -1)``.
        """

    def sample_backward(self, grad_col: torch.Tensor, inp: torch.Tensor, offset: torch.Tensor,
                        mask: torch.Tensor | None, g: DCNGeometry, n0: int, n1: int, r0: int, r1: int,
                        grad_input: torch.Tensor | None, grad_offset: torch.Tensor | None,
                        grad_mask: torch.Tensor | None, need_col: bool) -> torch.Tensor | None:
        """Backward of :meth:`sample` given grad_col (n1-n0, C*K, P) of the *masked* col (may be clobbered).

        Accumulates into grad_input (N, C, H, W) and writes the block's slice of grad_offset / grad_mask
        (full-size tensors; any of them may be None when not needed). Returns the recomputed col when need_col.
        """


class TorchBackend:
    """Pure-PyTorch sampling via ``grid_sample``; runs on any device."""

    name = "torch"

    @staticmethod
    def _grid(inp: torch.Tensor, offset: torch.Tensor, g: DCNGeometry, n0: int, n1: int, r0: int, r1: int
              ) -> tuple[torch.Tensor, torch.Tensor, int, int, float, float]:
        """Sampling grid of a block, normalised against the band of input rows the block can touch.

        Restricting the sampled input to that band keeps grid_sample's backward (which allocates a full
        grad-input of its input) proportional to the block instead of the image.
        Returns (input band (n*G, Cg, Hb, Wb), grid (n*G, K, rows*Wo, 2), band start row, band height,
        pixel->normalised scale for y, for x).
        """
        n, rows = n1 - n0, r1 - r0
        dev, dt = offset.device, offset.dtype
        (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
        off = offset[n0:n1, :, r0:r1].reshape(n, g.offset_groups, g.k, 2, rows, g.wo)
        tap_y = (torch.arange(g.kh, device=dev, dtype=dt) * dh).repeat_interleave(g.kw)
        tap_x = (torch.arange(g.kw, device=dev, dtype=dt) * dw).repeat(g.kh)
        base_y = tap_y.view(-1, 1, 1) + (torch.arange(r0, r1, device=dev, dtype=dt) * sh - ph).view(1, -1, 1)
        base_x = tap_x.view(-1, 1, 1) + (torch.arange(g.wo, device=dev, dtype=dt) * sw - pw).view(1, 1, -1)

        # Band bounds from min/max of the offsets plus the base range: one reduction over the offsets only,
        # at worst a slightly wider (still correct) band than the exact sample range.
        lo, hi = 0, g.h - 1
        off_min, off_max = (float(v) for v in torch.aminmax(off[:, :, :, 0]))
        if math.isfinite(off_min) and math.isfinite(off_max):
            lo = min(max(math.floor(off_min + float(base_y.min())), 0), g.h - 1)
            hi = min(max(math.floor(off_max + float(base_y.max())) + 1, lo), g.h - 1)
        if hi == lo and g.h > 1:  # align_corners=True needs >= 2 rows; widen with real rows when there are any
            lo, hi = (lo, hi + 1) if hi + 1 < g.h else (lo - 1, hi)
        band = inp[n0:n1, :, lo:hi + 1]
        if band.shape[2] == 1 or band.shape[3] == 1:
            # a 1-pixel-wide image has no align_corners scale; a zero row/column is exactly "outside the image"
            band = F.pad(band, (0, int(band.shape[3] == 1), 0, int(band.shape[2] == 1)))
        hb, wb = band.shape[2], band.shape[3]
        sy, sx = 2.0 / (hb - 1), 2.0 / (wb - 1)
        # normalised = base_norm + scale * offset, written straight into the grid (one pass per coordinate)
        grid = torch.empty(n, g.offset_groups, g.k, rows, g.wo, 2, device=dev, dtype=dt)
        torch.add(base_x * sx - 1.0, off[:, :, :, 1], alpha=sx, out=grid[..., 0])
        torch.add((base_y - lo) * sy - 1.0, off[:, :, :, 0], alpha=sy, out=grid[..., 1])
        grid = grid.view(n * g.offset_groups, g.k, rows * g.wo, 2)
        band = band.reshape(n * g.offset_groups, g.c_per_offset_group, hb, wb)
        return band, grid, lo, hi - lo + 1, sy, sx

    def sample(self, inp, offset, mask, g, n0, n1, r0, r1):
        n, p = n1 - n0, (r1 - r0) * g.wo
        band, grid, *_ = self._grid(inp, offset, g, n0, n1, r0, r1)
        col = F.grid_sample(band, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        if mask is not None:
            col.mul_(mask[n0:n1, :, r0:r1].reshape(n * g.offset_groups, 1, g.k, p))
        return col.view(n, g.c_in * g.k, p)

    def sample_backward(self, grad_col, inp, offset, mask, g, n0, n1, r0, r1, grad_input, grad_offset,
                        grad_mask, need_col):
        n, rows = n1 - n0, r1 - r0
        p = rows * g.wo
        band, grid, lo, hb, sy, sx = self._grid(inp, offset, g, n0, n1, r0, r1)
        grad_col = grad_col.reshape(n * g.offset_groups, g.c_per_offset_group, g.k, p)
        col = None
        if need_col or grad_mask is not None:
            col = F.grid_sample(band, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        if mask is not None:
            m = mask[n0:n1, :, r0:r1].reshape(n * g.offset_groups, 1, g.k, p)
            if grad_mask is not None:
                gm = torch.linalg.vecdot(grad_col, col, dim=1)  # (n*G, K, P): sum over the group's channels
                grad_mask[n0:n1, :, r0:r1] = gm.view(n, g.offset_groups * g.k, rows, g.wo)
            if col is not None:
                col.mul_(m)
            grad_col = grad_col * m
        if grad_input is not None or grad_offset is not None:
            gi, gg = torch.ops.aten.grid_sampler_2d_backward(
                grad_col, band, grid, 0, 0, True, [grad_input is not None, grad_offset is not None]
            )
            if grad_input is not None:
                gi = gi.view(n, g.c_in, gi.shape[2], gi.shape[3])[:, :, :hb, : g.w]
                grad_input[n0:n1, :, lo:lo + hb] += gi
            if grad_offset is not None:
                gg = gg.view(n, g.offset_groups, g.k, rows, g.wo, 2)
                gyx = torch.stack((gg[..., 1] * sy, gg[..., 0] * sx), dim=3)  # (n, G, K, 2, rows, Wo)
                grad_offset[n0:n1, :, r0:r1] = gyx.view(n, -1, rows, g.wo)
        return col.view(n, g.c_in * g.k, p) if need_col else None


_TORCH_BACKEND = TorchBackend()
_triton_backend: SamplingBackend | None = None
_triton_state = "untried"  # untried | ok | unavailable | failed


def _load_triton() -> SamplingBackend | None:
    global _triton_backend, _triton_state
    if _triton_state == "untried":
        if os.environ.get("CPGD_DCN_DISABLE_TRITON", "") not in ("", "0"):
            _triton_state = "unavailable"
            return None
        try:
            from .deform_conv_triton import TritonBackend
        except Exception as e:  # ImportError, or a broken Triton install
            logger.info("CPGD deform_conv2d: Triton not usable (%s); using the PyTorch path", e)
            _triton_state = "unavailable"
            return None
        _triton_backend = TritonBackend()
        _triton_state = "ok"
    return _triton_backend if _triton_state == "ok" else None


def triton_available() -> bool:
    """True when the Triton back-end imported (and has not failed); it is used only for CUDA tensors."""
    return _load_triton() is not None


class _FallbackBackend:
    """Runs Triton, and on the first failure (e.g. a compile error) logs once and switches to PyTorch for good."""

    name = "triton"

    def _call(self, method: str, *args, **kwargs):
        global _triton_state
        if _triton_state == "ok":
            try:
                return getattr(_triton_backend, method)(*args, **kwargs)
            except (torch.cuda.OutOfMemoryError, CPGDInputError):
                raise
            except Exception as e:  # noqa: BLE001 - any kernel compile/launch failure falls back
                _triton_state = "failed"
                logger.warning("CPGD deform_conv2d: Triton kernel failed (%s: %s); falling back to PyTorch",
                               type(e).__name__, e)
        return getattr(_TORCH_BACKEND, method)(*args, **kwargs)

    def sample(self, *args, **kwargs):
        return self._call("sample", *args, **kwargs)

    def sample_backward(self, *args, **kwargs):
        return self._call("sample_backward", *args, **kwargs)


def _pick_backend(device: torch.device, backend: str | None) -> SamplingBackend:
    if backend in (None, "auto"):
        if device.type == "cuda" and _load_triton() is not None:
            return _FallbackBackend()
        return _TORCH_BACKEND
    if backend == "torch":
        return _TORCH_BACKEND
    if backend == "triton":
        tb = _load_triton()
        if tb is None:
            raise CPGDInputError("deform_conv2d: backend='triton' requested but Triton is not available")
        return tb
    raise CPGDInputError(f"deform_conv2d: unknown backend {backend!r} (use 'auto', 'torch' or 'triton')")


def _blocks(g: DCNGeometry, elem_bytes: int, device: torch.device, block_rows: int | None
            ) -> Iterator[tuple[int, int, int, int]]:
    """Yield (n0, n1, r0, r1) blocks whose im2col working set fits the memory budget."""
    if block_rows is not None:
        if block_rows < 1:
            raise CPGDInputError(f"deform_conv2d: block_rows must be >= 1, got {block_rows}")
        n_step, r_step = g.n, block_rows
    else:
        env = os.environ.get("CPGD_DCN_BLOCK_MB")
        budget = int(float(env) * (1 << 20)) if env else _DEFAULT_BLOCK_BYTES.get(device.type, 256 << 20)
        row_bytes = _WORKSET_FACTOR * g.c_in * g.k * g.wo * elem_bytes
        rows_fit = max(1, budget // row_bytes)
        if rows_fit >= g.ho:
            n_step, r_step = max(1, min(g.n, rows_fit // g.ho)), g.ho
        else:
            n_step, r_step = 1, rows_fit
    for n0 in range(0, g.n, n_step):
        for r0 in range(0, g.ho, r_step):
            yield n0, min(n0 + n_step, g.n), r0, min(r0 + r_step, g.ho)


class _DeformConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, offset, mask, weight, bias, g: DCNGeometry, backend: SamplingBackend,
                block_rows: int | None):
        ctx.g, ctx.backend, ctx.block_rows = g, backend, block_rows
        ctx.save_for_backward(input, offset, mask, weight, bias)
        w2 = weight.reshape(g.groups, g.c_out // g.groups, -1)  # (groups, Cout_g, Cin_g*K)
        out = input.new_empty(g.n, g.c_out, g.ho, g.wo)
        for n0, n1, r0, r1 in _blocks(g, input.element_size(), input.device, block_rows):
            n, p = n1 - n0, (r1 - r0) * g.wo
            col = backend.sample(input, offset, mask, g, n0, n1, r0, r1)
            # a broadcast batched GEMM reads col in place; einsum permuted (copied) it first and was 1-4x slower
            # on the CPU at CPFP shapes
            res = torch.matmul(w2, col.view(n, g.groups, -1, p))  # (n, groups, Cout_g, P)
            out[n0:n1, :, r0:r1] = res.reshape(n, g.c_out, r1 - r0, g.wo)
        if bias is not None:
            out += bias.view(1, -1, 1, 1)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        input, offset, mask, weight, bias = ctx.saved_tensors
        g, backend = ctx.g, ctx.backend
        need_in, need_off, need_mask, need_w, need_b = ctx.needs_input_grad[:5]
        need_mask = need_mask and mask is not None
        need_b = need_b and bias is not None
        grad_out = grad_out.contiguous()
        grad_input = torch.zeros_like(input) if need_in else None
        grad_offset = torch.zeros_like(offset) if need_off else None
        grad_mask = torch.zeros_like(mask) if need_mask else None
        w2 = weight.reshape(g.groups, g.c_out // g.groups, -1)
        grad_w2 = torch.zeros_like(w2) if need_w else None
        if need_in or need_off or need_mask or need_w:
            for n0, n1, r0, r1 in _blocks(g, input.element_size(), input.device, ctx.block_rows):
                n, p = n1 - n0, (r1 - r0) * g.wo
                go = grad_out[n0:n1, :, r0:r1].reshape(n, g.groups, g.c_out // g.groups, p)
                grad_col = torch.matmul(w2.transpose(1, 2), go)  # (n, groups, Cin_g*K, P)
                col = backend.sample_backward(grad_col.reshape(n, -1, p), input, offset, mask, g, n0, n1, r0, r1,
                                              grad_input, grad_offset, grad_mask, need_w)
                if need_w:
                    grad_w2 += torch.matmul(go, col.view(n, g.groups, -1, p).transpose(-1, -2)).sum(0)
        grad_weight = grad_w2.view_as(weight) if need_w else None
        grad_bias = grad_out.sum((0, 2, 3)) if need_b else None
        return grad_input, grad_offset, grad_mask, grad_weight, grad_bias, None, None, None


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
    *,
    block_rows: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Deformable convolution v2 (v1 when ``mask`` is None), a drop-in for ``torchvision.ops.deform_conv2d``.

    Args:
        input: (N, C_in, H, W).
        offset: (N, 2 * offset_groups * kh * kw, Ho, Wo), per group and tap a (dy, dx) pair.
        weight: (C_out, C_in / groups, kh, kw).
        bias: (C_out,) or None.
        stride, padding, dilation: int or (h, w) pair.
        mask: (N, offset_groups * kh * kw, Ho, Wo) modulation, or None.
        block_rows: force blocks of this many output rows (whole batch per block); default: sized from a
            memory budget (256 MiB CPU / 1 GiB CUDA working set, env ``CPGD_DCN_BLOCK_MB`` overrides).
        backend: 'auto' (default: Triton for CUDA tensors when available, else PyTorch), 'torch' or 'triton'.

    Returns:
        (N, C_out, Ho, Wo) in the dtype of ``input``. Half/bfloat16 inputs are computed in float32.
    """
    g = _geometry(input, offset, weight, bias, stride, padding, dilation, mask)
    be = _pick_backend(input.device, backend)
    out_dtype = input.dtype
    cdt = torch.float64 if out_dtype == torch.float64 else torch.float32

    def prep(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(cdt).contiguous()

    out = _DeformConv2dFunction.apply(prep(input), prep(offset), prep(mask), prep(weight), prep(bias), g, be,
                                      block_rows)
    return out.to(out_dtype)
