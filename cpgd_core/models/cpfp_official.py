"""The official CPGD-Net stage-one network ("cpfp"), so the authors' checkpoints run in this pack.

Written from the behavioural description in ``shared/reference/cpgd_official_spec.md`` §1 (no official code).
It is BSSTNet with the flow-completion network and the sparse transformer removed:

- shallow encoder: full res (``concat``) -> 1/2 res (``down01``, two CABs) -> 1/4 res (``down12``, two CABs:
  the "spatial" features, 192 channels);
- four recurrent branches at 1/4 res (backward_1, forward_1, backward_2, forward_2), each step aligning the
  previous two steps' features with a second-order modulated deformable convolution whose offsets start at
  the flows and whose mask is biased by the normalised coding residual;
- fusion of [spatial, 4 branches] by a grouped Conv3d and two Video-Swin residual groups;
- ``cabattn`` on [fused, zeros] (the disabled transformer branch), a Shift-Net style decoder at 1/2 res,
  pixel-shuffle to full res and a global skip.

Parameter and buffer names equal the official state dict (``official_checkpoint_keys/cpfp_keys.txt``) for
every module used in ``forward``; the unused official modules are not built (:data:`UNUSED_PREFIXES`, their
keys are dropped on load).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..codec.flow import warp
from ..errors import CPGDInputError
from ..ops.deform_conv import deform_conv2d
from .config import JsonConfig

BRANCHES = ("backward_1", "forward_1", "backward_2", "forward_2")
# Official modules that exist in the checkpoint but never run in forward (spec §1.4).
UNUSED_PREFIXES = ("feat_extract.", "decoder_level1_2.", "decoder_level2.", "decoder_level2_1.",
                   "decoder_level2_2.", "conv_before_upsampler.", "conv_before_input.", "upsampler.", "conv_last.")


@dataclass
class OfficialCPFPConfig(JsonConfig):
    """Hyper-parameters of :class:`OfficialCPFP`; the defaults are the official constructor's."""

    channels: int = 64            # full and 1/2 resolution
    mid_channels: int = 192       # 1/4 resolution
    num_heads: int = 6
    window_size: tuple[int, int, int] = (2, 8, 8)   # (frames, h, w) of the Swin windows
    swin_groups: int = 2          # residual Swin groups (RSTB) in the fusion
    swin_depth: int = 2           # Swin layers per group
    mlp_ratio: float = 2.0
    fusion_groups: int = 3        # groups of the fusion Conv3d
    deform_groups: int = 16
    max_residue_magnitude: float = 5.0
    shift_pixels: int = 4         # spatial shift of the decoder's shift blocks (1/2-res pixels)


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.1, inplace=True)


class CALayer(nn.Module):
    """Channel attention: x * sigmoid(conv(relu(conv(avgpool(x))))), bias-free 1x1 convs."""

    def __init__(self, c: int):
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.ReLU(inplace=True),
                                     nn.Conv2d(c, c, 1, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(x.mean((2, 3), keepdim=True))


class CAB(nn.Module):
    """Conv-LReLU-conv, channel attention, residual. (F, C, H, W) -> same."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), _lrelu(),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False))
        self.CA = CALayer(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.CA(self.body(x))


class LayerNorm2d(nn.Module):
    """LayerNorm over channels at every pixel (biased variance, eps 1e-6)."""

    def __init__(self, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-6) * self.weight[:, None, None] + self.bias[:, None, None]


class RepConv2(nn.Module):
    """x + depthwise3x3(x)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv_2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_2(x)


class RepConv(nn.Module):
    """x + depthwise kxk(x) + depthwise 3x3(x)."""

    def __init__(self, c: int, k: int):
        super().__init__()
        self.conv_1 = nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)
        self.conv_2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_1(x) + self.conv_2(x)


class SimpleGate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class SimpleGate2(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * torch.sigmoid(b)


def _gated_body(c_in: int, c: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, 2 * c, 1, bias=False), RepConv2(2 * c), SimpleGate(), RepConv(c, k),
                         nn.Conv2d(c, 2 * c, 1, bias=False), SimpleGate2(), CALayer(c),
                         nn.Conv2d(c, c, 1, bias=False))


class CAB1(nn.Module):
    """x + beta * body(LN2d(x)). (F, C, H, W) -> same."""

    def __init__(self, c: int, k: int):
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.norm = LayerNorm2d(c)
        self.body = _gated_body(c, c, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.beta * self.body(self.norm(x))


class CAB2(nn.Module):
    """(F, C + add, H, W) -> (F, C, H, W): shortcut = first C channels, the rest pass a depthwise conv first."""

    def __init__(self, c: int, k: int, add: int):
        super().__init__()
        self.c = c
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.conv1 = nn.Conv2d(add, add, 3, padding=1, groups=add, bias=False)
        self.norm = LayerNorm2d(c + add)
        self.body = _gated_body(c + add, c, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short, side = x[:, :self.c], x[:, self.c:]
        return short + self.beta * self.body(self.norm(torch.cat([short, self.conv1(side)], 1)))


def _displace(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[..., y, x] = x[..., y - dy, x - dx], zero where that falls outside."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


class ShiftBlock(nn.Module):
    """Shift-Net style block: 4 x (temporal channel roll, spatial shift of a subset, CAB2, CAB1).

    The frames are the batch dimension; the roll treats (F, C) as one channel axis and wraps at the ends.
    (F, C, H, W) -> same.
    """

    # (dy, dx) in units of the shift, for the groups of n2 and then of n1 channels
    _FAR = ((2, 2), (2, 1), (2, 0), (2, -1), (2, -2), (-2, 2), (-2, 1), (-2, 0), (-2, -1), (-2, -2),
            (1, 2), (1, -2), (0, 2), (0, -2), (-1, 2), (-1, -2))
    _NEAR = ((1, 1), (1, 0), (1, -1), (0, 1), (0, -1), (-1, 1), (-1, 0), (-1, -1))

    def __init__(self, c: int, shift: int):
        super().__init__()
        number = c // 16
        self.add = 8 * number
        self.n2 = (number - 1) // 2
        self.n1 = number - 2 * self.n2
        self.shift = shift
        for name in ("encoder_level1", "encoder_level1_1", "encoder_level1_2", "encoder_level1_3"):
            self.add_module(name, nn.Sequential(CAB2(c, 5, self.add), CAB1(c, 5)))

    def _shifted(self, x: torch.Tensor, forward: bool) -> torch.Tensor:
        f, c, h, w = x.shape
        rolled = torch.roll(x.reshape(f * c, h, w), c // 2 if forward else -(c // 2), 0).reshape(f, c, h, w)
        sub = rolled[:, :self.add] if forward else rolled[:, c - self.add:]
        parts, s, i = [], self.shift, 0
        for (dy, dx), n in [(d, self.n2) for d in self._FAR] + [(d, self.n1) for d in self._NEAR]:
            parts.append(_displace(sub[:, i:i + n], dy * s, dx * s))
            i += n
        return torch.cat([rolled] + parts, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder_level1(self._shifted(x, True))
        x = self.encoder_level1_1(self._shifted(x, False))
        x = self.encoder_level1_2(self._shifted(x, True))
        return self.encoder_level1_3(self._shifted(x, False))


class SkipUpSample(nn.Module):
    """bilinear x2 of (F, C_in, h, w), 1x1 conv to C, plus the skip (F, C, 2h, 2w)."""

    def __init__(self, c: int, c_in: int):
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                nn.Conv2d(c_in, c, 1, bias=False))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.up(x) + skip


class PixelShufflePack(nn.Module):
    def __init__(self, c: int, scale: int = 2):
        super().__init__()
        self.scale = scale
        self.upsample_conv = nn.Conv2d(c, c * scale * scale, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.upsample_conv(x), self.scale)


class SecondOrderAlignment(nn.Module):
    """Flow-initialised, residual-modulated second-order deformable alignment (CPFA).

    ``forward(x, extra, flow_1, flow_2, blur_1, blur_2)``: x (1, 2C, h, w) = [feat_prop, feat_n2] unwarped;
    extra (1, 3C + 5, h, w); flows (1, 2, h, w) in (x, y); blur maps (1, 1, h, w) in [0, 1] -> (1, C, h, w).
    """

    def __init__(self, c: int, groups: int, max_residue_magnitude: float):
        super().__init__()
        self.groups = groups
        self.max_residue_magnitude = max_residue_magnitude
        self.weight = nn.Parameter(torch.empty(c, 2 * c, 3, 3))
        self.bias = nn.Parameter(torch.zeros(c))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.conv_offset = nn.Sequential(
            nn.Conv2d(3 * c + 9, c, 3, padding=1), _lrelu(), nn.Conv2d(c, c, 3, padding=1), _lrelu(),
            nn.Conv2d(c, c, 3, padding=1), _lrelu(), nn.Conv2d(c, 27 * groups, 3, padding=1))
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)

    def forward(self, x: torch.Tensor, extra: torch.Tensor, flow_1: torch.Tensor, flow_2: torch.Tensor,
                blur_1: torch.Tensor, blur_2: torch.Tensor, record: Optional[dict] = None) -> torch.Tensor:
        out = self.conv_offset(torch.cat([extra, flow_1, flow_2], 1))
        if record is not None:
            record["conv_offset_out"] = out
        o1, o2, m = out.chunk(3, dim=1)
        off_1, off_2 = (self.max_residue_magnitude * torch.tanh(torch.cat([o1, o2], 1))).chunk(2, dim=1)
        reps = off_1.shape[1] // 2
        # offsets are (dy, dx) per tap: the flows are (x, y)
        offset = torch.cat([off_1 + flow_1.flip(1).repeat(1, reps, 1, 1),
                            off_2 + flow_2.flip(1).repeat(1, reps, 1, 1)], 1)
        m1, m2 = m.chunk(2, dim=1)
        mask = torch.sigmoid(torch.cat([m1 + 0.1 * (2 * blur_1 - 1), m2 + 0.1 * (2 * blur_2 - 1)], 1))
        return deform_conv2d(x, offset, self.weight, self.bias, padding=1, mask=mask)


def _window_size(size: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...]
                 ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Windows larger than the input shrink to it (and stop shifting) along that axis."""
    w, s = list(window), list(shift)
    for i in range(len(size)):
        if size[i] <= window[i]:
            w[i], s[i] = size[i], 0
    return tuple(w), tuple(s)


def _partition(x: torch.Tensor, ws: tuple[int, int, int]) -> torch.Tensor:
    """(B, D, H, W, C) -> (B * windows, wd * wh * ww, C)."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // ws[0], ws[0], h // ws[1], ws[1], w // ws[2], ws[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, ws[0] * ws[1] * ws[2], c)


def _unpartition(x: torch.Tensor, ws: tuple[int, int, int], b: int, d: int, h: int, w: int) -> torch.Tensor:
    x = x.view(b, d // ws[0], h // ws[1], w // ws[2], ws[0], ws[1], ws[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def _shift_mask(d: int, h: int, w: int, ws: tuple[int, int, int], ss: tuple[int, int, int],
                device: torch.device) -> torch.Tensor:
    """(windows, N, N) additive mask (0 / -100) that keeps cyclically shifted windows from mixing regions."""
    img = torch.zeros(1, d, h, w, 1, device=device)
    cnt = 0
    for sd in (slice(-ws[0]), slice(-ws[0], -ss[0]), slice(-ss[0], None)):
        for sh in (slice(-ws[1]), slice(-ws[1], -ss[1]), slice(-ss[1], None)):
            for sw in (slice(-ws[2]), slice(-ws[2], -ss[2]), slice(-ss[2], None)):
                img[:, sd, sh, sw, :] = cnt
                cnt += 1
    win = _partition(img, ws).squeeze(-1)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """3-D window self-attention with a learned relative-position bias. (B_, N, C) -> same."""

    def __init__(self, dim: int, window: tuple[int, int, int], heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        wd, wh, ww = window
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), heads))
        coords = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij"))
        coords = coords.flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        rel = rel + torch.tensor([wd - 1, wh - 1, ww - 1])
        index = rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1) + rel[..., 2]
        self.register_buffer("relative_position_index", index, persistent=True)
        self.qkv_self = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv_self(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index[:n, :n].reshape(-1)]
        attn = attn + bias.reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(b // nw, nw, self.heads, n, n) + mask[:, :n, :n].unsqueeze(1).unsqueeze(0))
            attn = attn.view(-1, self.heads, n, n)
        attn = attn.softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinLayer(nn.Module):
    """Pre-norm (shifted) window attention + MLP on (B, D, H, W, C)."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int, int], shift: tuple[int, int, int],
                 mlp_ratio: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        ws, ss = _window_size((d, h, w), self.window, self.shift)
        y = self.norm1(x)
        pd, ph, pw = ((ws[i] - s % ws[i]) % ws[i] for i, s in enumerate((d, h, w)))
        y = F.pad(y, (0, 0, 0, pw, 0, ph, 0, pd))
        _, dp, hp, wp, _ = y.shape
        shifted = any(s > 0 for s in ss)
        if shifted:
            y = torch.roll(y, (-ss[0], -ss[1], -ss[2]), (1, 2, 3))
        y = self.attn(_partition(y, ws), mask if shifted else None)
        y = _unpartition(y, ws, b, dp, hp, wp)
        if shifted:
            y = torch.roll(y, ss, (1, 2, 3))
        x = x + y[:, :d, :h, :w]
        return x + self.mlp(self.norm2(x))


class SwinGroup(nn.Module):
    """``depth`` Swin layers, every other one shifted by half a window. (B, C, D, H, W) -> same."""

    def __init__(self, dim: int, depth: int, heads: int, window: tuple[int, int, int], mlp_ratio: float):
        super().__init__()
        self.window = window
        self.shift = tuple(s // 2 for s in window)
        self.blocks = nn.ModuleList(
            SwinLayer(dim, heads, window, (0, 0, 0) if i % 2 == 0 else self.shift, mlp_ratio) for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        ws, ss = _window_size((d, h, w), self.window, self.shift)
        dims = [math.ceil(s / ws[i]) * ws[i] for i, s in enumerate((d, h, w))]
        mask = _shift_mask(*dims, ws, ss, x.device).to(x.dtype)
        x = x.permute(0, 2, 3, 4, 1)
        for blk in self.blocks:
            x = blk(x, mask)
        return x.permute(0, 4, 1, 2, 3)


class RSTB(nn.Module):
    """x + Linear(SwinGroup(x)) on (B, C, D, H, W)."""

    def __init__(self, dim: int, depth: int, heads: int, window: tuple[int, int, int], mlp_ratio: float):
        super().__init__()
        self.residual_group = SwinGroup(dim, depth, heads, window, mlp_ratio)
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(self.residual_group(x).permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class _ToChannelsLast3d(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 4, 1)


class _ToChannelsFirst3d(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 4, 1, 2, 3)


class _SwapFramesChannels(nn.Module):
    """(N, D, C, H, W) <-> (N, C, D, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class FusionSwin(nn.Module):
    """(1, F, 5C, h, w) -> (1, F, C, h, w): grouped Conv3d, LayerNorm, residual Swin groups, LayerNorm.

    ``main`` keeps the official indices (1 Conv3d, 3 LN, 5 RSTBs, 7 LN); the others are layout changes.
    """

    def __init__(self, cfg: OfficialCPFPConfig):
        super().__init__()
        c = cfg.mid_channels
        self.main = nn.Sequential(
            _SwapFramesChannels(),
            nn.Conv3d(5 * c, c, (1, 3, 3), padding=(0, 1, 1), groups=cfg.fusion_groups),
            _ToChannelsLast3d(), nn.LayerNorm(c), _ToChannelsFirst3d(),
            nn.Sequential(*[RSTB(c, cfg.swin_depth, cfg.num_heads, cfg.window_size, cfg.mlp_ratio)
                            for _ in range(cfg.swin_groups)]),
            _ToChannelsLast3d(), nn.LayerNorm(c), _ToChannelsFirst3d(), _SwapFramesChannels())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def _fb_valid(flow: torch.Tensor, check: torch.Tensor) -> torch.Tensor:
    """1 where ``check`` (pointing back) warped by ``flow`` cancels it: (1, 2, h, w) x2 -> (1, 1, h, w)."""
    back = warp(check, flow)
    diff = (flow + back).pow(2).sum(1, keepdim=True)
    mag = flow.pow(2).sum(1, keepdim=True) + back.pow(2).sum(1, keepdim=True)
    return (diff < 0.01 * mag + 0.5).to(flow.dtype)


def residual_map(resis: torch.Tensor) -> torch.Tensor:
    """(n, T, 1, H, W) signed residuals -> (n, T, 1, H/4, W/4) guidance map, min-max over each clip."""
    n, t, _, h, w = resis.shape
    r = F.interpolate(resis.abs().flatten(0, 1), scale_factor=0.25, mode="bilinear", align_corners=False)
    r = r.view(n, t, 1, *r.shape[-2:])
    lo = r.flatten(1).min(1).values.view(n, 1, 1, 1, 1)
    hi = r.flatten(1).max(1).values.view(n, 1, 1, 1, 1)
    return (r - lo) / (hi - lo + 0.0025) + 0.002


class OfficialCPFP(nn.Module):
    """The official stage-one network. See the module docstring and :meth:`forward`."""

    def __init__(self, config: Optional[OfficialCPFPConfig] = None):
        super().__init__()
        cfg = self.config = config or OfficialCPFPConfig()
        e, c = cfg.channels, cfg.mid_channels
        self.concat = nn.Sequential(nn.Conv2d(3, e, 3, padding=1, bias=False), _lrelu(), CAB(e))
        self.down01 = nn.Sequential(nn.Conv2d(e, e, 3, stride=2, padding=1, bias=False), _lrelu())
        self.encoder_level1 = CAB(e)
        self.encoder_level1_1 = CAB(e)
        self.down12 = nn.Sequential(nn.Conv2d(e, c, 3, stride=2, padding=1, bias=False), _lrelu())
        self.encoder_level2 = CAB(c)
        self.encoder_level2_1 = CAB(c)

        self.deform_align = nn.ModuleDict()
        self.backbone = nn.ModuleDict()
        for i, name in enumerate(BRANCHES):
            self.deform_align[name] = SecondOrderAlignment(c, cfg.deform_groups, cfg.max_residue_magnitude)
            self.backbone[name] = nn.Sequential(nn.Conv2d((2 + i) * c, c, 3, padding=1), _lrelu(), CAB1(c, 3))
        self.reconstruction = FusionSwin(cfg)
        self.cabattn = nn.Sequential(CAB2(c, 5, c), CAB1(c, 5))

        self.skip_attn1 = CAB(e)
        self.up21 = SkipUpSample(e, c)
        self.decoder_level1 = ShiftBlock(e, cfg.shift_pixels)
        self.decoder_level1_1 = ShiftBlock(e, cfg.shift_pixels)
        self.upsample0 = PixelShufflePack(e, 2)
        self.conv_hr0 = nn.Conv2d(e, e, 3, padding=1, bias=False)
        self.skip_conv = CAB(e)
        self.out_conv = CAB(e)
        self.last_conv = nn.Conv2d(e, 3, 3, padding=1, bias=False)
        self.lrelu = _lrelu()

    def _propagate(self, feats: dict[str, list[torch.Tensor]], flows: torch.Tensor, checks: torch.Tensor,
                   resi: torch.Tensor, name: str, record: Optional[dict]) -> None:
        """One recurrent branch over the frames; appends ``feats[name]`` (indexed by frame).

        flows / checks: (1, T-1, 2, h, w) fields of this branch and of the opposite direction; resi
        (1, T, 1, h, w) the residual map.
        """
        n_frames = len(feats["spatial"])
        frames = list(range(n_frames))
        flow_idx = list(range(-1, n_frames - 1))
        if name.startswith("backward"):
            frames = frames[::-1]
            flow_idx = frames
        previous = list(feats)[-1]  # the previous branch's output is this branch's current-frame feature
        others = [k for k in feats if k != name]
        ref = feats["spatial"][0]
        feat_prop = ref.new_zeros(ref.shape)
        outs: list[torch.Tensor] = []
        for i, idx in enumerate(frames):
            if i > 0:
                flow_n1, check_n1 = flows[:, flow_idx[i]], checks[:, flow_idx[i]]
                cond_n1 = warp(feat_prop, flow_n1)
                r_n1 = warp(resi[:, frames[i - 1]], flow_n1)
                valid_n1 = _fb_valid(flow_n1, check_n1)
                feat_n2, cond_n2 = torch.zeros_like(feat_prop), torch.zeros_like(feat_prop)
                flow_n2, r_n2, valid_n2 = torch.zeros_like(flow_n1), torch.zeros_like(r_n1), torch.zeros_like(r_n1)
                if i > 1:
                    feat_n2 = outs[-2]
                    flow_n2 = flow_n1 + warp(flows[:, flow_idx[i - 1]], flow_n1)
                    check_n2 = check_n1 + warp(checks[:, flow_idx[i - 1]], check_n1)
                    cond_n2 = warp(feat_n2, flow_n2)
                    r_n2 = warp(resi[:, frames[i - 2]], flow_n2)
                    valid_n2 = _fb_valid(flow_n2, check_n2)
                extra = torch.cat([cond_n1, feats[previous][idx], cond_n2, r_n1, resi[:, idx], r_n2, valid_n1,
                                   valid_n2], 1)
                x = torch.cat([feat_prop, feat_n2], 1)
                rec = {} if record is not None and i == 2 else None
                feat_prop = self.deform_align[name](x, extra, flow_n1, flow_n2, r_n1 * valid_n1, r_n2 * valid_n2,
                                                    rec)
                if rec is not None:
                    record.update({f"dcn_{name}_step2_in_x": x, f"dcn_{name}_step2_in_extra_feat": extra,
                                   f"dcn_{name}_step2_in_flow_1": flow_n1, f"dcn_{name}_step2_in_flow_2": flow_n2,
                                   f"dcn_{name}_step2_in_blur_map_1": r_n1 * valid_n1,
                                   f"dcn_{name}_step2_in_blur_map_2": r_n2 * valid_n2,
                                   f"dcn_{name}_step2_conv_offset_out": rec["conv_offset_out"],
                                   f"dcn_{name}_step2_out": feat_prop})
            feat = torch.cat([feats[k][idx] for k in others] + [feat_prop], 1)
            feat_prop = feat_prop + self.backbone[name](feat)
            outs.append(feat_prop)
        feats[name] = outs[::-1] if name.startswith("backward") else outs

    def forward(self, lqs: torch.Tensor, flows_forwards: torch.Tensor, flows_backwards: torch.Tensor,
                resis: torch.Tensor, record: Optional[dict] = None) -> torch.Tensor:
        """Deblur clips (the official ``cpfp.forward`` interface).

        Args:
            lqs: (N, T, 3, H, W) RGB in [0, 1], H and W multiples of 4 (16 for the RAFT path, see
                :mod:`cpgd_core.models.official_stage_one`).
            flows_forwards: (N, T-1, 2, H/4, W/4); entry k is defined on frame k+1 and points into frame k
                (the codec MV), in 1/4-grid pixels, channel 0 = x.
            flows_backwards: (N, T-1, 2, H/4, W/4); entry k is defined on frame k and points into frame k+1.
            resis: (N, T, 1, H, W) signed coding residuals, one per frame.
            record: if a dict, intermediate tensors are stored in it (names as in the golden reference).
        Returns:
            (N, T, 3, H, W): ``lqs`` plus the predicted correction (not clamped).
        """
        n, t, _, h, w = lqs.shape
        if h % 4 or w % 4:
            raise CPGDInputError(f"official CPFP needs frame sizes that are multiples of 4, got {w}x{h}")
        return torch.stack([self._forward_one(lqs[i], flows_forwards[i:i + 1], flows_backwards[i:i + 1],
                                              resis[i:i + 1], record) for i in range(n)])

    def _forward_one(self, lq: torch.Tensor, flows_f: torch.Tensor, flows_b: torch.Tensor, resis: torch.Tensor,
                     record: Optional[dict]) -> torch.Tensor:
        t = lq.shape[0]
        rec = record if record is not None else {}
        shortcut = self.concat(lq)
        enc = self.encoder_level1(self.down01(shortcut))
        enc11 = rec["enc11"] = self.encoder_level1_1(enc)
        spatial = rec["spatial"] = self.encoder_level2_1(self.encoder_level2(self.down12(enc11)))
        resi = rec["resi_map"] = residual_map(resis)

        feats: dict[str, list[torch.Tensor]] = {"spatial": [spatial[i:i + 1] for i in range(t)]}
        for name in BRANCHES:
            if name.startswith("backward"):
                self._propagate(feats, flows_b, flows_f, resi, name, record)
            else:
                self._propagate(feats, flows_f, flows_b, resi, name, record)
            if record is not None:
                record[f"feats_{name}"] = torch.stack(feats[name], 1)

        fused_in = torch.stack([torch.cat([feats[k][i] for k in feats], 1) for i in range(t)], 1)
        fused = rec["fused_reconstruction"] = self.reconstruction(fused_in)
        fused = fused[0]
        att = rec["cabattn"] = self.cabattn(torch.cat([fused, torch.zeros_like(fused)], 1))

        x = self.up21(att, self.skip_attn1(enc11))
        x = rec["dec11"] = self.decoder_level1_1(self.decoder_level1(x))
        out = self.conv_hr0(self.lrelu(self.upsample0(x))) + self.skip_conv(shortcut)
        return self.last_conv(self.out_conv(out)) + lq

    def load_official_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load an official state dict (``module.`` prefixes and unused modules allowed); raises ValueError
        naming the first missing / unexpected / mis-shaped keys."""
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items() if not k.startswith(UNUSED_PREFIXES)}
        own = self.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        shapes = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
        if missing or unexpected or shapes:
            raise ValueError(f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {shapes[:5]}")
        self.load_state_dict(sd, strict=True)


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> OfficialCPFPConfig:
    """The config an official state dict was built with (widths read from the shapes)."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    try:
        c = sd["down12.0.weight"].shape[0]
        e = sd["concat.0.weight"].shape[0]
        table = sd["reconstruction.main.5.0.residual_group.blocks.0.attn.relative_position_bias_table"]
        groups = len({k.split(".")[3] for k in sd if k.startswith("reconstruction.main.5.")})
        depth = len({k.split(".")[6] for k in sd if k.startswith("reconstruction.main.5.0.residual_group.blocks.")})
        hidden = sd["reconstruction.main.5.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0]
        dgroups = sd["deform_align.backward_1.conv_offset.6.weight"].shape[0] // 27
        fusion_groups = 5 * c // sd["reconstruction.main.1.weight"].shape[1]
    except KeyError as e:
        raise ValueError(f"not an official CPFP state dict (no {e})") from None
    heads = table.shape[1]
    return OfficialCPFPConfig(channels=e, mid_channels=c, num_heads=heads, swin_groups=groups, swin_depth=depth,
                              mlp_ratio=hidden / c, fusion_groups=fusion_groups, deform_groups=dgroups)


__all__ = ["OfficialCPFPConfig", "OfficialCPFP", "config_from_state_dict", "residual_map", "UNUSED_PREFIXES",
           "BRANCHES"]
