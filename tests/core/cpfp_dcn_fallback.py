"""TEMPORARY test-only stand-in for ``cpgd_core.ops.deform_conv2d`` until the real kernel lands.

Installed into ``cpgd_core.ops`` only when that module has no ``deform_conv2d`` yet; remove this file
once cpgd_core/ops/deform_conv.py exists. Semantics: torchvision.ops.deform_conv2d (groups=1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    n, cin, h, w = input.shape
    cout, _, kh, kw = weight.shape
    s, p, d = (stride, stride) if isinstance(stride, int) else stride, \
        (padding, padding) if isinstance(padding, int) else padding, \
        (dilation, dilation) if isinstance(dilation, int) else dilation
    ho, wo = offset.shape[-2:]
    k = kh * kw
    g = offset.shape[1] // (2 * k)
    off = offset.view(n, g, k, 2, ho, wo)
    msk = mask.view(n, g, k, ho, wo) if mask is not None else None
    ys = torch.arange(ho, device=input.device, dtype=input.dtype).view(1, 1, ho, 1) * s[0] - p[0]
    xs = torch.arange(wo, device=input.device, dtype=input.dtype).view(1, 1, 1, wo) * s[1] - p[1]
    xg = input.reshape(n * g, cin // g, h, w)
    cols = []
    for tap in range(k):
        i, j = divmod(tap, kw)
        py = ys + i * d[0] + off[:, :, tap, 0]
        px = xs + j * d[1] + off[:, :, tap, 1]
        grid = torch.stack([2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1], -1).view(n * g, ho, wo, 2)
        col = F.grid_sample(xg, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        col = col.view(n, g, cin // g, ho, wo)
        if msk is not None:
            col = col * msk[:, :, tap].unsqueeze(2)
        cols.append(col.reshape(n, cin, ho, wo))
    cols = torch.stack(cols, 2)  # (n, cin, k, ho, wo)
    out = torch.einsum("nckhw,ock->nohw", cols, weight.reshape(cout, cin, k))
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def install() -> None:
    import cpgd_core.ops as ops
    if not hasattr(ops, "deform_conv2d"):
        ops.deform_conv2d = reference_deform_conv2d
