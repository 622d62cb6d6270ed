"""Noise-level-conditioned denoiser: the learned image prior of the non-blind stage one.

Inside half-quadratic splitting (``cpgd_core.deblur.solver``) the prior step is a denoising step at the noise
level the splitting implies (sigma = sqrt(lambda / mu)); one network conditioned on sigma serves every iteration
(the plug-and-play scheme of DPIR, Zhang et al. 2021). It is small enough for 720p on two CPU cores: the image
is folded into 2x2 pixel blocks first (pixel unshuffle), so the finest convolutions run at half resolution,
then a three-level U-Net of residual blocks predicts a correction added to the input.

Trained first as a plain denoiser on sharp real frames (``cpgd_core.train.prior``), then end to end inside the
unrolled solver with estimated blur trajectories, so it also learns the deconvolution's ringing and kernel error.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import JsonConfig


@dataclass
class PriorDenoiserConfig(JsonConfig):
    """Widths of the three U-Net levels (1/2, 1/4, 1/8 of the input), residual blocks per level; guide: channels
    of side information read beside the image (0: a plain denoiser; inside the solver 5, the blurry frame and
    its trajectory, so the prior knows where the inversion rings or its kernel is wrong)."""

    channels: tuple[int, int, int] = (32, 64, 96)
    blocks: tuple[int, int, int] = (1, 1, 2)
    guide: int = 0


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class PriorDenoiser(nn.Module):
    """x_hat = x + net(x, sigma, guide).

    forward(x, sigma, guide): x (B, 3, H, W) in [0, 1] (any H, W: padded internally to a multiple of 8);
    sigma (B,) or a float, the noise standard deviation in [0, 1] units; guide (B, config.guide, H, W) or None
    when config.guide is 0. Returns (B, 3, H, W).
    """

    MULTIPLE = 8

    def __init__(self, config: PriorDenoiserConfig | None = None) -> None:
        super().__init__()
        self.config = config or PriorDenoiserConfig()
        c1, c2, c3 = self.config.channels
        b1, b2, b3 = self.config.blocks
        self.head = nn.Conv2d(4 * (4 + self.config.guide), c1, 3, padding=1)
        self.enc1 = nn.Sequential(*[_ResBlock(c1) for _ in range(b1)])
        self.down1 = nn.Conv2d(c1, c2, 2, stride=2)
        self.enc2 = nn.Sequential(*[_ResBlock(c2) for _ in range(b2)])
        self.down2 = nn.Conv2d(c2, c3, 2, stride=2)
        self.mid = nn.Sequential(*[_ResBlock(c3) for _ in range(b3)])
        self.up2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.dec2 = nn.Sequential(*[_ResBlock(c2) for _ in range(b2)])
        self.up1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.dec1 = nn.Sequential(*[_ResBlock(c1) for _ in range(b1)])
        self.tail = nn.Conv2d(c1, 3 * 4, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float,
                guide: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = x.shape
        if (guide.shape[1] if guide is not None else 0) != self.config.guide:
            raise ValueError(f"this prior reads {self.config.guide} guide channels, got "
                             f"{None if guide is None else guide.shape[1]}")
        m = self.MULTIPLE
        ph, pw = (-h) % m, (-w) % m
        pad = (lambda t: F.pad(t, (0, pw, 0, ph), mode="replicate")) if (ph or pw) else (lambda t: t)
        xp = pad(x)
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        s = s.expand(b, 1, xp.shape[2], xp.shape[3])
        z = F.pixel_unshuffle(torch.cat([xp, s] + ([pad(guide)] if guide is not None else []), 1), 2)
        e1 = self.enc1(self.head(z))
        e2 = self.enc2(self.down1(F.relu(e1)))
        m3 = self.mid(self.down2(F.relu(e2)))
        d2 = self.dec2(self.up2(m3) + e2)
        d1 = self.dec1(self.up1(d2) + e1)
        out = xp + F.pixel_shuffle(self.tail(F.relu(d1)), 2)
        return out[..., :h, :w]

    def load_unguided(self, state: dict[str, torch.Tensor]) -> None:
        """Start from a trained prior with fewer (or no) guide channels: its weights, the new guide inputs at zero,
        so this network begins as exactly that prior. (pixel_unshuffle keeps each input channel's four phases
        together, so the old inputs are the head's leading columns.)"""
        state = dict(state)
        old = state["head.weight"]
        head = torch.zeros_like(self.head.weight)
        head[:, : old.shape[1]] = old
        state["head.weight"] = head
        self.load_state_dict(state)
