"""CPControlNet: the stage-two ControlNet of CPGD-Net with coding-prior query modulation.

A copy of the Stable Diffusion 2.x UNet encoder + middle block (LDM layout and key names, so the official
CPC checkpoint and an SD 2.x ``model.diffusion_model.*`` state dict load into it directly), with

- an input convolution over 8 channels: [noisy latent (4), VAE latent of the stage-one output (4)],
  no hint encoder;
- 12 + 1 zero-initialised 1x1 convolutions whose outputs are the residuals for the frozen UNet's skip
  connections (input-block order) and its middle block;
- coding-prior attention: in every self-attention the query is ``W_q(u * (1 + A(cp)))`` with
  ``A = Linear(3 -> C, bias=False)`` (zero-initialised) applied to the prior map
  [MV_x / m, MV_y / m, |CR|] resized to the block grid; keys and values are unchanged;
- optional joint attention: the tokens of ``frames_per_clip`` consecutive batch items attend together.

The building blocks (ResBlock, SpatialTransformer, ...) are reused by :mod:`cpgd_core.models.sd_unet`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..codec.priors import CodecPriors

# The text condition of every frame in the official CPGD-Net (training and inference).
QUALITY_PROMPT = ("high-quality, clear, fine details, sharp edges, realistic textures, detailed enhancement, "
                  "high resolution, high fidelity, fine-grained details.")


@dataclass
class CPControlNetConfig:
    """Architecture of a CPControlNet. Defaults reproduce the official SD 2.x CPC ControlNet (363.2 M params)."""

    in_channels: int = 4
    hint_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (1, 2, 4)  # downsampling factors ds that carry a transformer
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    prior_channels: int = 3
    joint_frames: bool = True  # default for callers; forward() takes frames_per_clip explicitly
    norm_groups: int = 32

    @classmethod
    def tiny(cls) -> "CPControlNetConfig":
        """A few-hundred-kB config with the same topology, for tests."""
        return cls(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                   num_head_channels=16, context_dim=64, norm_groups=8)

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CPControlNetConfig":
        known = {f for f in cls.__dataclass_fields__}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(**d)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim), [cos, sin] halves as in the LDM code the weights were trained with."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (the SD weights expect it; bf16 statistics drift)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class ResBlock(nn.Module):
    """LDM ResBlock: (B, C_in, h, w), emb (B, E) -> (B, C_out, h, w)."""

    def __init__(self, channels: int, emb_dim: int, out_channels: int, groups: int = 32):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(groups, out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="nearest") if size is not None else F.interpolate(x, scale_factor=2.0,
                                                                                               mode="nearest")
        return self.conv(x)


def clip_groups(batch: int, frames_per_clip: "int | Sequence[int]") -> list[int]:
    """Sizes of the joint-attention clips of a batch: an int t (batch must be a multiple of t) or explicit sizes."""
    if isinstance(frames_per_clip, int):
        t = max(1, frames_per_clip)
        if batch % t:
            raise ValueError(f"batch {batch} is not a multiple of frames_per_clip {t}")
        return [t] * (batch // t)
    groups = [int(g) for g in frames_per_clip]
    if sum(groups) != batch or min(groups) < 1:
        raise ValueError(f"clip sizes {groups} do not partition a batch of {batch}")
    return groups


def clip_first_context(context: torch.Tensor, frames_per_clip: "int | Sequence[int]") -> torch.Tensor:
    """(B, L, C) per-frame text context -> (B, L, C) where every frame carries its clip's first frame's row."""
    groups = clip_groups(context.shape[0], frames_per_clip)
    if all(g == 1 for g in groups):
        return context
    first = torch.repeat_interleave(torch.cumsum(torch.tensor([0] + groups[:-1]), 0), torch.tensor(groups))
    return context[first.to(context.device)]


class CPAttention(nn.Module):
    """Multi-head attention with the official ``mask`` layer (Linear(3 -> C), no bias, zero init).

    Self-attention (``context_dim`` None) applies the coding-prior query modulation when a prior token map is
    given; cross-attention carries an unused ``mask`` only so the official checkpoint keys match.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: Optional[int] = None,
                 prior_channels: int = 3):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        # prior_channels == 0: a plain attention (the frozen SD UNet has no mask layers)
        self.mask = nn.Linear(prior_channels, query_dim, bias=False) if prior_channels else None
        if self.mask is not None:
            nn.init.zeros_(self.mask.weight)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                prior: Optional[torch.Tensor] = None, frames_per_clip: "int | Sequence[int]" = 1) -> torch.Tensor:
        """x (B, N, C); context (B, L, C_ctx) or None; prior (B, N, 3) or None -> (B, N, C).

        Self-attention with ``frames_per_clip`` = t > 1: the N tokens of t consecutive batch items form one
        sequence (B must be a multiple of t); a list of clip sizes partitions the batch explicitly.
        """
        if prior is not None and context is None and self.mask is not None:
            q = self.to_q(x * (1 + self.mask(prior.to(x.dtype))))
        else:
            q = self.to_q(x)
        src = x if context is None else context
        k, v = self.to_k(src), self.to_v(src)
        if context is not None:
            return self.to_out(self._attend(q, k, v))
        groups = clip_groups(q.shape[0], frames_per_clip)
        if len(set(groups)) == 1:
            return self.to_out(self._attend(q, k, v, groups[0]))
        outs, s = [], 0
        for g in groups:  # unequal clips (e.g. a short last clip): one attention call per clip
            outs.append(self._attend(q[s:s + g], k[s:s + g], v[s:s + g], g))
            s += g
        return self.to_out(torch.cat(outs))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: int = 1) -> torch.Tensor:
        """(B, N, C) each; tokens of t consecutive batch items form one sequence (B % t == 0)."""
        b, n, _ = q.shape
        if t > 1:
            q, k, v = (z.reshape(b // t, t * z.shape[1], z.shape[2]) for z in (q, k, v))
        q, k, v = (z.unflatten(-1, (self.heads, -1)).transpose(1, 2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).flatten(2).reshape(b, n, -1)


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, prior_channels: int = 3):
        super().__init__()
        self.attn1 = CPAttention(dim, heads, dim_head, None, prior_channels)
        self.ff = FeedForward(dim)
        self.attn2 = CPAttention(dim, heads, dim_head, context_dim, prior_channels)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, prior: Optional[torch.Tensor] = None,
                frames_per_clip: "int | Sequence[int]" = 1) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), prior=prior, frames_per_clip=frames_per_clip)
        # The official block cross-attends every frame of a clip to the clip's first frame's context;
        # cross-attention is per token, so doing it per frame with that context is the same computation.
        x = x + self.attn2(self.norm2(x), context=clip_first_context(context, frames_per_clip))
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """(B, C, h, w) -> (B, C, h, w); linear proj_in/proj_out (SD 2.x)."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int,
                 groups: int = 32, prior_channels: int = 3):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, heads * dim_head)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(heads * dim_head, heads, dim_head, context_dim, prior_channels) for _ in range(depth))
        self.proj_out = nn.Linear(heads * dim_head, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, prior: Optional[torch.Tensor] = None,
                frames_per_clip: "int | Sequence[int]" = 1) -> torch.Tensor:
        """prior: (B, 3, H', W') at any resolution (resized bilinearly to this block's grid) or None."""
        b, c, h, w = x.shape
        tokens = self.norm(x.float()).to(x.dtype).flatten(2).transpose(1, 2)
        tokens = self.proj_in(tokens)
        prior_tokens = None
        if prior is not None:
            p = F.interpolate(prior.float(), size=(h, w), mode="bilinear", align_corners=False)
            prior_tokens = p.flatten(2).transpose(1, 2)
        for blk in self.transformer_blocks:
            tokens = blk(tokens, context, prior_tokens, frames_per_clip)
        tokens = self.proj_out(tokens)
        return x + tokens.transpose(1, 2).reshape(b, c, h, w)


def run_block(block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
              prior: Optional[torch.Tensor], frames_per_clip: "int | Sequence[int]",
              out_size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Apply one LDM ``TimestepEmbedSequential``-style block (list of layers) to h."""
    for layer in block:
        if isinstance(layer, ResBlock):
            h = layer(h, emb)
        elif isinstance(layer, SpatialTransformer):
            h = layer(h, context, prior, frames_per_clip)
        elif isinstance(layer, Upsample):
            h = layer(h, out_size)
        else:
            h = layer(h)
    return h


def zero_module(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


def build_encoder(cfg: "CPControlNetConfig", first_conv_in: int, prior_in_self_attention: bool = True
                  ) -> tuple[nn.Sequential, nn.ModuleList, nn.ModuleList, list[int]]:
    """SD encoder (time_embed, input_blocks, middle_block) and the channel count after each input block."""
    c0, emb = cfg.model_channels, cfg.time_embed_dim
    time_embed = nn.Sequential(nn.Linear(c0, emb), nn.SiLU(), nn.Linear(emb, emb))
    blocks = nn.ModuleList([nn.ModuleList([nn.Conv2d(first_conv_in, c0, 3, padding=1)])])
    chans, ch, ds = [c0], c0, 1
    g, hc = cfg.norm_groups, cfg.num_head_channels

    def transformer(c: int) -> SpatialTransformer:
        return SpatialTransformer(c, c // hc, hc, cfg.transformer_depth, cfg.context_dim, g, cfg.prior_channels)

    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            layers = [ResBlock(ch, emb, mult * c0, g)]
            ch = mult * c0
            if ds in cfg.attention_resolutions:
                layers.append(transformer(ch))
            blocks.append(nn.ModuleList(layers))
            chans.append(ch)
        if level != len(cfg.channel_mult) - 1:
            blocks.append(nn.ModuleList([Downsample(ch)]))
            chans.append(ch)
            ds *= 2
    middle = nn.ModuleList([ResBlock(ch, emb, ch, g), transformer(ch), ResBlock(ch, emb, ch, g)])
    return time_embed, blocks, middle, chans


class CPControlNet(nn.Module):
    """Coding-prior ControlNet. See the module docstring."""

    def __init__(self, config: Optional[CPControlNetConfig] = None):
        super().__init__()
        self.config = cfg = config or CPControlNetConfig()
        self.time_embed, self.input_blocks, self.middle_block, chans = build_encoder(
            cfg, cfg.in_channels + cfg.hint_channels)
        self.zero_convs = nn.ModuleList(nn.Sequential(zero_module(nn.Conv2d(c, c, 1))) for c in chans)
        self.middle_block_out = nn.Sequential(zero_module(nn.Conv2d(chans[-1], chans[-1], 1)))

    @property
    def dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                cp: Optional[torch.Tensor] = None, frames_per_clip: "int | Sequence[int]" = 1
                ) -> list[torch.Tensor]:
        """Control residuals for the frozen UNet.

        x (B, 4, h, w) noisy latent; hint (B, 4, h, w) VAE latent (x 0.18215) of the stage-one output;
        timesteps (B,) in [0, 1000); context (B, L, context_dim), per frame: as in the official code every
        frame cross-attends to its clip's first frame's row; cp (B, 3, h', w') prior map [MV_x/m, MV_y/m, |CR|],
        or the official 5-D (bs, t, 3, h', w') with B = bs * t clip-major, or None (no modulation);
        frames_per_clip: tokens of that many consecutive batch items attend together in the self-attentions
        (1 = per frame), or a list of clip sizes.
        Returns 13 tensors: 12 skip residuals in input-block order, then the middle residual.
        """
        if hint.shape != x.shape[:1] + (self.config.hint_channels,) + x.shape[2:]:
            raise ValueError(f"hint {tuple(hint.shape)} does not match latent {tuple(x.shape)}")
        if cp is not None and cp.dim() == 5:
            cp = cp.flatten(0, 1)
        dtype = self.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        h = torch.cat([x, hint], dim=1).to(dtype)
        context = context.to(dtype)
        outs = []
        for block, zc in zip(self.input_blocks, self.zero_convs):
            h = run_block(block, h, emb, context, cp, frames_per_clip)
            outs.append(zc(h))
        h = run_block(self.middle_block, h, emb, context, cp, frames_per_clip)
        outs.append(self.middle_block_out(h))
        return outs


def prior_map(priors: CodecPriors, size: Optional[tuple[int, int]] = None,
              max_motion: Optional[float] = None) -> torch.Tensor:
    """The CPC prior map of a chunk: (T, 3, H, W) float32 = [MV_x / m, MV_y / m, |CR|].

    - MV = ``flow_to_prev`` (the codec's P-block vectors, full-resolution pixels); m = the largest absolute
      vector component in the chunk (``max_motion`` overrides it so overlapping chunks can share one m).
    - Frames without any valid backward motion (frame 0, I-frames) take the map of the nearest frame that has
      motion, as the official pipeline duplicates entry 1 into frame 0. Intra blocks inside a predicted frame
      are zero motion in the map: the network was trained on codec exports where they carry no vector.
    - ``size`` = (H, W) of the output (e.g. the latent grid); default the video size. Bilinear resizing.
    """
    n = len(priors)
    size = size or (priors.height, priors.width)
    valid = priors.valid_to_prev.bool()
    flow = priors.flow_to_prev.float() * valid
    resid = priors.residual.float().abs()
    has_motion = valid.flatten(1).any(1)
    if has_motion.any():
        idx = torch.nonzero(has_motion).flatten()
        # nearest frame with motion (ties -> the later one, i.e. frame 0 copies frame 1)
        src = torch.tensor([int(idx[torch.argmin((idx - i).abs() * 2 - (idx > i).long())]) for i in range(n)])
        flow, resid = flow[src], resid[src]
    m = float(max_motion) if max_motion is not None else float(flow.abs().max()) if flow.numel() else 0.0
    flow = flow / (m if m > 0 else 1.0)
    full = (priors.height, priors.width)
    out = torch.empty(n, 3, *size)
    for i in range(n):  # per frame: a full-resolution map of a long video would not fit in memory
        # codec vectors are constant per block: nearest to full resolution, then the official bilinear resize
        f = F.interpolate(flow[i:i + 1], size=full, mode="nearest")
        r = resid[i:i + 1]
        if tuple(size) != full:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            r = F.interpolate(r, size=size, mode="bilinear", align_corners=False)
        out[i, :2], out[i, 2:] = f[0], r[0]
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["CPControlNetConfig", "CPControlNet", "CPAttention", "SpatialTransformer", "ResBlock", "Downsample",
           "Upsample", "GroupNorm32", "timestep_embedding", "build_encoder", "run_block", "prior_map",
           "count_parameters", "zero_module", "clip_groups", "clip_first_context"]
