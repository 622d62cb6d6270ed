"""The frozen Stable Diffusion 2.x UNet that CPControlNet steers (training and benchmarks; ComfyUI uses its own).

LDM layout and key names, so ``model.diffusion_model.*`` of an SD 2.x checkpoint loads with the prefix
stripped. Built from the same blocks as :class:`cpgd_core.models.cpcontrolnet.CPControlNet`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .cpcontrolnet import (CPControlNetConfig, GroupNorm32, ResBlock, SpatialTransformer, Upsample, build_encoder,
                           run_block, timestep_embedding)


class SDUNet(nn.Module):
    """eps-prediction UNet: x (B, 4, h, w), timesteps (B,), context (B, L, C) -> (B, 4, h, w).

    ``control``: the 13 CPControlNet residuals (12 skips in input-block order, then the middle), each already
    scaled; added to the middle block output and to the skip connections as the ControlNet paper does.
    The config is a :class:`CPControlNetConfig` (same encoder hyper-parameters); hint/prior fields are unused.
    """

    def __init__(self, config: Optional[CPControlNetConfig] = None):
        super().__init__()
        self.config = config or CPControlNetConfig()
        cfg = replace(self.config, prior_channels=0)
        self.time_embed, self.input_blocks, self.middle_block, chans = build_encoder(cfg, cfg.in_channels)
        c0, emb, g, hc = cfg.model_channels, cfg.time_embed_dim, cfg.norm_groups, cfg.num_head_channels
        self.output_blocks = nn.ModuleList()
        ch = chans[-1]
        ds = 2 ** (len(cfg.channel_mult) - 1)
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                skip = chans.pop()
                layers: list[nn.Module] = [ResBlock(ch + skip, emb, c0 * mult, g)]
                ch = c0 * mult
                if ds in cfg.attention_resolutions:
                    layers.append(SpatialTransformer(ch, ch // hc, hc, cfg.transformer_depth, cfg.context_dim, g,
                                                     cfg.prior_channels))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(nn.ModuleList(layers))
        self.out = nn.Sequential(GroupNorm32(g, ch), nn.SiLU(), nn.Conv2d(ch, cfg.in_channels, 3, padding=1))

    @property
    def dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                control: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        dtype = self.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        context = context.to(dtype)
        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = run_block(block, h, emb, context, None, 1)
            skips.append(h)
        h = run_block(self.middle_block, h, emb, context, None, 1)
        control = list(control) if control is not None else None
        if control is not None:
            h = h + control[-1].to(dtype)
        for i, block in enumerate(self.output_blocks):
            skip = skips.pop()
            if control is not None:
                skip = skip + control[len(skips)].to(dtype)
            h = torch.cat([h, skip], dim=1)
            target = skips[-1].shape[-2:] if skips else None
            h = run_block(block, h, emb, context, None, 1, out_size=target)
        return self.out(h).to(x.dtype)
