"""Triton kernels for the bilinear deformable im2col and its backward (CUDA; CPU only under TRITON_INTERPRET=1).

The GEMMs stay in cuBLAS (see the shared driver in :mod:`.deform_conv`); these kernels replace only the
sampling, which is where the PyTorch path spends its memory traffic:

- ``_im2col_kernel``: one program per (batch item, offset group, tile of BLOCK_P output pixels). For each
  kernel tap the bilinear corner indices / weights are computed once and reused for all channels of the
  group, which are gathered BLOCK_C at a time. Output col (n, C*K, P), row c*K + k.
- ``_col2im_kernel``: same tiling. grad_input via atomic adds at the four corners; grad_offset and grad_mask
  are reductions over the group's channels that stay inside the program, so they are stored without atomics.
  When the weight gradient needs the column matrix again, the same program writes it from the corner values
  it has already gathered (no second im2col pass over the input).

Importing this module raises ImportError when Triton is missing; :mod:`.deform_conv` then uses PyTorch.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .deform_conv import DCNGeometry

_BLOCK_P = 128
_MAX_BLOCK_C = 32
_MAX_GRID_Y = 65535


@triton.jit
def _tap(off_ptr, mask_ptr, n, g, tap, ki, kj, oy, ox, sp, pm, plane, GK, H, W, SH, SW, PH, PW, DH, DW,
         USE_MASK: tl.constexpr):
    """Bilinear set-up of one kernel tap for a tile of output pixels (torchvision's validity rules)."""
    off_base = (n * (2 * GK) + 2 * tap) * plane
    dy = tl.load(off_ptr + off_base + sp, mask=pm, other=0.0)
    dx = tl.load(off_ptr + off_base + plane + sp, mask=pm, other=0.0)
    y = (oy * SH - PH + ki * DH).to(dy.dtype) + dy
    x = (ox * SW - PW + kj * DW).to(dx.dtype) + dx
    inside = pm & (y > -1.0) & (y < H) & (x > -1.0) & (x < W)
    y0f = tl.floor(y)
    x0f = tl.floor(x)
    ly = y - y0f
    lx = x - x0f
    hy = 1.0 - ly
    hx = 1.0 - lx
    # int conversion only of in-range lanes: NaN / huge offsets must not overflow (they are masked anyway)
    y0 = tl.where(inside, y0f, 0.0).to(tl.int32)
    x0 = tl.where(inside, x0f, 0.0).to(tl.int32)
    ok00 = inside & (y0 >= 0) & (x0 >= 0)
    ok01 = inside & (y0 >= 0) & (x0 + 1 < W)
    ok10 = inside & (y0 + 1 < H) & (x0 >= 0)
    ok11 = inside & (y0 + 1 < H) & (x0 + 1 < W)
    s00 = y0 * W + x0
    if USE_MASK:
        m = tl.load(mask_ptr + (n * GK + tap) * plane + sp, mask=pm, other=0.0)
    else:
        m = tl.full(dy.shape, 1.0, dy.dtype)
    return off_base, m, ok00, ok01, ok10, ok11, s00, ly, lx, hy, hx


@triton.jit
def _program_pixels(N0, R0, ROWS, WO, G, BLOCK_P: tl.constexpr):
    """This program's (batch item, offset group) and its BLOCK_P output pixels of the row block."""
    pid_p = tl.program_id(0)
    pid_ng = tl.program_id(1)
    nr = pid_ng // G
    g = pid_ng % G
    n = (N0 + nr).to(tl.int64)
    P = ROWS * WO
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < P
    oy = R0 + p // WO
    ox = p % WO
    return nr, g, n, P, p, pm, oy, ox, oy * WO + ox


@triton.jit
def _im2col_kernel(inp_ptr, off_ptr, mask_ptr, col_ptr,
                   N0, R0, ROWS, C, H, W, HO, WO, G, SH, SW, PH, PW, DH, DW, CG: tl.constexpr,
                   KH: tl.constexpr, KW: tl.constexpr, USE_MASK: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    K: tl.constexpr = KH * KW
    nr, g, n, P, p, pm, oy, ox, sp = _program_pixels(N0, R0, ROWS, WO, G, BLOCK_P)
    plane = HO * WO
    hw = H * W
    cc = tl.arange(0, BLOCK_C)
    for k in tl.static_range(K):
        off_base, m, ok00, ok01, ok10, ok11, s00, ly, lx, hy, hx = _tap(
            off_ptr, mask_ptr, n, g, g * K + k, k // KW, k % KW, oy, ox, sp, pm, plane, G * K, H, W,
            SH, SW, PH, PW, DH, DW, USE_MASK)
        w00 = hy * hx * m
        w01 = hy * lx * m
        w10 = ly * hx * m
        w11 = ly * lx * m
        for c0 in range(0, CG, BLOCK_C):
            cm = (c0 + cc) < CG
            ch = (g * CG + c0 + cc).to(tl.int64)
            ptr = inp_ptr + ((n * C + ch) * hw)[:, None] + s00[None, :]
            m2 = cm[:, None]
            v = tl.load(ptr, mask=m2 & ok00[None, :], other=0.0) * w00[None, :]
            v += tl.load(ptr + 1, mask=m2 & ok01[None, :], other=0.0) * w01[None, :]
            v += tl.load(ptr + W, mask=m2 & ok10[None, :], other=0.0) * w10[None, :]
            v += tl.load(ptr + W + 1, mask=m2 & ok11[None, :], other=0.0) * w11[None, :]
            row = (nr * C + ch) * K + k
            tl.store(col_ptr + row[:, None] * P + p[None, :], v, mask=m2 & pm[None, :])


@triton.jit
def _col2im_kernel(inp_ptr, off_ptr, mask_ptr, gcol_ptr, ginp_ptr, goff_ptr, gmask_ptr, col_ptr,
                   N0, R0, ROWS, C, H, W, HO, WO, G, SH, SW, PH, PW, DH, DW, CG: tl.constexpr,
                   KH: tl.constexpr, KW: tl.constexpr, USE_MASK: tl.constexpr,
                   NEED_INPUT: tl.constexpr, NEED_OFFSET: tl.constexpr, NEED_MASK: tl.constexpr,
                   NEED_COL: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    K: tl.constexpr = KH * KW
    nr, g, n, P, p, pm, oy, ox, sp = _program_pixels(N0, R0, ROWS, WO, G, BLOCK_P)
    plane = HO * WO
    hw = H * W
    cc = tl.arange(0, BLOCK_C)
    for k in tl.static_range(K):
        off_base, m, ok00, ok01, ok10, ok11, s00, ly, lx, hy, hx = _tap(
            off_ptr, mask_ptr, n, g, g * K + k, k // KW, k % KW, oy, ox, sp, pm, plane, G * K, H, W,
            SH, SW, PH, PW, DH, DW, USE_MASK)
        b00 = hy * hx
        b01 = hy * lx
        b10 = ly * hx
        b11 = ly * lx
        acc_y = tl.zeros_like(ly)
        acc_x = tl.zeros_like(ly)
        acc_m = tl.zeros_like(ly)
        for c0 in range(0, CG, BLOCK_C):
            cm = (c0 + cc) < CG
            ch = (g * CG + c0 + cc).to(tl.int64)
            m2 = cm[:, None]
            row = (nr * C + ch) * K + k
            gc = tl.load(gcol_ptr + row[:, None] * P + p[None, :], mask=m2 & pm[None, :], other=0.0)
            chan = ((n * C + ch) * hw)[:, None] + s00[None, :]
            if NEED_OFFSET or NEED_MASK or NEED_COL:
                v00 = tl.load(inp_ptr + chan, mask=m2 & ok00[None, :], other=0.0)
                v01 = tl.load(inp_ptr + chan + 1, mask=m2 & ok01[None, :], other=0.0)
                v10 = tl.load(inp_ptr + chan + W, mask=m2 & ok10[None, :], other=0.0)
                v11 = tl.load(inp_ptr + chan + W + 1, mask=m2 & ok11[None, :], other=0.0)
                if NEED_OFFSET:
                    acc_y += tl.sum(gc * (hx[None, :] * (v10 - v00) + lx[None, :] * (v11 - v01)), axis=0)
                    acc_x += tl.sum(gc * (hy[None, :] * (v01 - v00) + ly[None, :] * (v11 - v10)), axis=0)
                if NEED_MASK or NEED_COL:
                    samp = b00[None, :] * v00 + b01[None, :] * v01 + b10[None, :] * v10 + b11[None, :] * v11
                    if NEED_MASK:
                        acc_m += tl.sum(gc * samp, axis=0)
                    if NEED_COL:  # the weight gradient's im2col, from the corners already loaded
                        tl.store(col_ptr + row[:, None] * P + p[None, :], samp * m[None, :], mask=m2 & pm[None, :])
            if NEED_INPUT:
                gm = gc * m[None, :]
                tl.atomic_add(ginp_ptr + chan, gm * b00[None, :], mask=m2 & ok00[None, :])
                tl.atomic_add(ginp_ptr + chan + 1, gm * b01[None, :], mask=m2 & ok01[None, :])
                tl.atomic_add(ginp_ptr + chan + W, gm * b10[None, :], mask=m2 & ok10[None, :])
                tl.atomic_add(ginp_ptr + chan + W + 1, gm * b11[None, :], mask=m2 & ok11[None, :])
        if NEED_OFFSET:
            tl.store(goff_ptr + off_base + sp, acc_y * m, mask=pm)
            tl.store(goff_ptr + off_base + plane + sp, acc_x * m, mask=pm)
        if NEED_MASK:
            tl.store(gmask_ptr + (n * (G * K) + g * K + k) * plane + sp, acc_m, mask=pm)


def _launch_args(inp: torch.Tensor, g: DCNGeometry, n0: int, n1: int, r0: int, r1: int):
    nb = n1 - n0
    if nb * g.offset_groups > _MAX_GRID_Y:
        raise RuntimeError(f"deform_conv2d triton: batch*offset_groups={nb * g.offset_groups} exceeds the grid limit")
    cg = g.c_per_offset_group
    block_c = min(_MAX_BLOCK_C, max(2, triton.next_power_of_2(cg)))
    p = (r1 - r0) * g.wo
    grid = (triton.cdiv(p, _BLOCK_P), nb * g.offset_groups)
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    scalars = (n0, r0, r1 - r0, g.c_in, g.h, g.w, g.ho, g.wo, g.offset_groups, sh, sw, ph, pw, dh, dw)
    meta = dict(CG=cg, KH=g.kh, KW=g.kw, USE_MASK=g.use_mask, BLOCK_C=block_c, BLOCK_P=_BLOCK_P)
    return grid, scalars, meta, p


class TritonBackend:
    """Sampling back-end with Triton kernels; tensors must be contiguous float32/float64 (the driver ensures it)."""

    name = "triton"

    def sample(self, inp, offset, mask, g: DCNGeometry, n0, n1, r0, r1):
        grid, scalars, meta, p = _launch_args(inp, g, n0, n1, r0, r1)
        col = torch.empty(n1 - n0, g.c_in * g.k, p, device=inp.device, dtype=inp.dtype)
        with torch.cuda.device(inp.device) if inp.is_cuda else contextlib.nullcontext():
            _im2col_kernel[grid](inp, offset, offset if mask is None else mask, col, *scalars, **meta)
        return col

    def sample_backward(self, grad_col, inp, offset, mask, g: DCNGeometry, n0, n1, r0, r1, grad_input,
                        grad_offset, grad_mask, need_col):
        if grad_input is None and grad_offset is None and grad_mask is None:
            return self.sample(inp, offset, mask, g, n0, n1, r0, r1) if need_col else None
        grid, scalars, meta, p = _launch_args(inp, g, n0, n1, r0, r1)
        col = torch.empty(n1 - n0, g.c_in * g.k, p, device=inp.device, dtype=inp.dtype) if need_col else None
        dummy = inp  # never written: the matching NEED_* flag is False
        with torch.cuda.device(inp.device) if inp.is_cuda else contextlib.nullcontext():
            _col2im_kernel[grid](
                inp, offset, offset if mask is None else mask, grad_col.contiguous(),
                dummy if grad_input is None else grad_input,
                dummy if grad_offset is None else grad_offset,
                dummy if grad_mask is None else grad_mask,
                dummy if col is None else col,
                *scalars, NEED_INPUT=grad_input is not None, NEED_OFFSET=grad_offset is not None,
                NEED_MASK=grad_mask is not None, NEED_COL=need_col, **meta)
        return col

