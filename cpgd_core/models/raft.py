"""RAFT ("large") optical flow, loading ``raft-things.pth`` as the official CPGD-Net uses it to refine MVs.

Recurrent All-Pairs Field Transforms (Teed & Deng, ECCV 2020): features at 1/8 resolution, an all-pairs
correlation pyramid (4 levels, lookup radius 4), a convolutional GRU that iteratively updates the flow from
an initial estimate, and a learned convex 8x upsampling. Written from the paper and the behaviour documented
in ``shared/reference/golden/README.md`` §4; parameter names are those of ``raft-things.pth`` (without the
``module.`` prefix) so that file loads with ``strict=True``. torchvision's ``raft_large`` names its
parameters differently and cannot start from a flow estimate, which the CPGD path needs.

As in CPGD-Net, images are RGB in [0, 1] (mapped to [-1, 1] internally) and the correlation lookup is
done in float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class RAFTConfig:
    hidden_dim: int = 128
    context_dim: int = 128
    corr_levels: int = 4
    corr_radius: int = 4


class ResidualBlock(nn.Module):
    """Two 3x3 convs with norm + ReLU, projection shortcut when striding. (N, C_in, H, W) -> (N, C, H/s, W/s)."""

    def __init__(self, c_in: int, c: int, norm: str, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        make = (lambda: nn.BatchNorm2d(c)) if norm == "batch" else (lambda: nn.InstanceNorm2d(c))
        self.norm1, self.norm2 = make(), make()
        self.downsample = None
        if stride != 1:
            self.norm3 = make()  # registered twice (norm3 and downsample.1), as in the checkpoint
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c, 1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class BasicEncoder(nn.Module):
    """(N, 3, H, W) -> (N, out_dim, H/8, W/8)."""

    def __init__(self, out_dim: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.norm1 = nn.BatchNorm2d(64) if norm == "batch" else nn.InstanceNorm2d(64)
        self.relu1 = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(ResidualBlock(64, 64, norm), ResidualBlock(64, 64, norm))
        self.layer2 = nn.Sequential(ResidualBlock(64, 96, norm, 2), ResidualBlock(96, 96, norm))
        self.layer3 = nn.Sequential(ResidualBlock(96, 128, norm, 2), ResidualBlock(128, 128, norm))
        self.conv2 = nn.Conv2d(128, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


class MotionEncoder(nn.Module):
    def __init__(self, corr_planes: int):
        super().__init__()
        self.convc1 = nn.Conv2d(corr_planes, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(256, 126, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        c = F.relu(self.convc2(F.relu(self.convc1(corr))))
        f = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([c, f], 1))), flow], 1)


class SepConvGRU(nn.Module):
    """A ConvGRU run twice: with 1x5 kernels, then with 5x1 kernels."""

    def __init__(self, hidden: int, inp: int):
        super().__init__()
        for i, (k, p) in enumerate((((1, 5), (0, 2)), ((5, 1), (2, 0))), start=1):
            for gate in ("z", "r", "q"):
                setattr(self, f"conv{gate}{i}", nn.Conv2d(hidden + inp, hidden, k, padding=p))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for i in (1, 2):
            hx = torch.cat([h, x], 1)
            z = torch.sigmoid(getattr(self, f"convz{i}")(hx))
            r = torch.sigmoid(getattr(self, f"convr{i}")(hx))
            q = torch.tanh(getattr(self, f"convq{i}")(torch.cat([r * h, x], 1)))
            h = (1 - z) * h + z * q
        return h


class FlowHead(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 256, 3, padding=1)
        self.conv2 = nn.Conv2d(256, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
    def __init__(self, cfg: RAFTConfig):
        super().__init__()
        self.encoder = MotionEncoder(cfg.corr_levels * (2 * cfg.corr_radius + 1) ** 2)
        self.gru = SepConvGRU(cfg.hidden_dim, 128 + cfg.context_dim)
        self.flow_head = FlowHead(cfg.hidden_dim)
        self.mask = nn.Sequential(nn.Conv2d(cfg.hidden_dim, 256, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(256, 64 * 9, 1))

    def forward(self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net = self.gru(net, torch.cat([inp, self.encoder(flow, corr)], 1))
        # the 0.25 scales the mask logits down to balance gradients (RAFT paper)
        return net, 0.25 * self.mask(net), self.flow_head(net)


def _sample(img: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear sample img (B, C, H, W) at pixel coordinates xy (B, h, w, 2), zeros outside."""
    h, w = img.shape[-2:]
    grid = torch.stack([2 * xy[..., 0] / (w - 1) - 1, 2 * xy[..., 1] / (h - 1) - 1], -1)
    return F.grid_sample(img, grid, align_corners=True)


class CorrPyramid:
    """All-pairs correlation of two (N, D, H, W) feature maps, average-pooled into ``levels`` levels."""

    def __init__(self, f1: torch.Tensor, f2: torch.Tensor, levels: int, radius: int):
        n, d, h, w = f1.shape
        corr = (f1.flatten(2).transpose(1, 2) @ f2.flatten(2)) / d ** 0.5  # (N, HW, HW)
        corr = corr.reshape(n * h * w, 1, h, w)
        self.levels = [corr]
        for _ in range(levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.levels.append(corr)
        self.radius = radius
        r = torch.arange(-radius, radius + 1, dtype=f1.dtype, device=f1.device)
        # channel c of a level samples x-offset c // (2r+1) - r and y-offset c % (2r+1) - r
        ox, oy = torch.meshgrid(r, r, indexing="ij")
        self.delta = torch.stack([ox, oy], -1)  # (2r+1, 2r+1, 2) as (x, y)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (N, 2, H, W) absolute (x, y) on the 1/8 grid -> (N, levels * (2r+1)^2, H, W) float32."""
        n, _, h, w = coords.shape
        centre = coords.permute(0, 2, 3, 1).reshape(n * h * w, 1, 1, 2)
        out = []
        for i, corr in enumerate(self.levels):
            s = _sample(corr, centre / 2 ** i + self.delta.to(centre.dtype))
            out.append(s.view(n, h, w, -1))
        return torch.cat(out, -1).permute(0, 3, 1, 2).float()


def _grid(n: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype),
                            indexing="ij")
    return torch.stack([xs, ys]).unsqueeze(0).expand(n, -1, -1, -1)


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) flow on the 1/8 grid, (N, 576, H, W) mask logits -> (N, 2, 8H, 8W) in full-res pixels."""
    n, _, h, w = flow.shape
    weights = mask.view(n, 1, 9, 8, 8, h, w).softmax(2)
    nb = F.unfold(8 * flow, (3, 3), padding=1).view(n, 2, 9, 1, 1, h, w)
    up = (weights * nb).sum(2)  # (N, 2, 8, 8, H, W)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(n, 2, 8 * h, 8 * w)


class RAFT(nn.Module):
    """RAFT large. ``forward(image1, image2, iters, flow_init)`` -> (N, 2, H, W) flow on image1 into image2."""

    def __init__(self, config: Optional[RAFTConfig] = None):
        super().__init__()
        self.config = cfg = config or RAFTConfig()
        self.fnet = BasicEncoder(256, "instance")
        self.cnet = BasicEncoder(cfg.hidden_dim + cfg.context_dim, "batch")
        self.update_block = UpdateBlock(cfg)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = 12,
                flow_init: Optional[torch.Tensor] = None, all_iterations: bool = False,
                record: Optional[dict] = None) -> torch.Tensor:
        """image1, image2: (N, 3, H, W) RGB in [0, 1], H and W >= 128 and multiples of 8 (the correlation
        pyramid pools the 1/8 grid three times). flow_init: (N, 2, H/8, W/8) in 1/8-grid pixels or None.
        Returns the upsampled flow in input pixels, (N, 2, H, W); with ``all_iterations`` (iters, N, 2, H, W).
        """
        f1, f2 = self.features(torch.cat([image1, image2])).chunk(2)
        return self.iterate(f1, f2, self.context(image1), iters, flow_init, all_iterations, record)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> (N, 256, H/8, W/8) float32 matching features. Per image (instance
        norm), so a video's frames are encoded once and paired in both directions."""
        return self.fnet(2 * images - 1).float()

    def context(self, image1: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> (N, hidden + context, H/8, W/8): the context of the frame the flow is on."""
        return self.cnet(2 * image1 - 1)

    def iterate(self, f1: torch.Tensor, f2: torch.Tensor, ctx: torch.Tensor, iters: int,
                flow_init: Optional[torch.Tensor] = None, all_iterations: bool = False,
                record: Optional[dict] = None) -> torch.Tensor:
        """The recurrent updates from features (``features``) and context (``context``); as ``forward``."""
        cfg = self.config
        corr_fn = CorrPyramid(f1, f2, cfg.corr_levels, cfg.corr_radius)
        net, inp = torch.tanh(ctx[:, :cfg.hidden_dim]), torch.relu(ctx[:, cfg.hidden_dim:])
        if record is not None:
            record.update(fmap1=f1, fmap2=f2, cnet_out=ctx, update0_in_net=net, update0_in_inp=inp)
        n, _, h, w = f1.shape
        coords0 = _grid(n, h, w, f1.device, f1.dtype)
        coords1 = coords0 + flow_init if flow_init is not None else coords0.clone()
        preds = []
        for it in range(iters):
            corr = corr_fn(coords1)
            flow = coords1 - coords0
            net, mask, delta = self.update_block(net, inp, corr, flow)
            if record is not None:
                record[f"iter{it}_flow_coarse_in"] = flow
                record[f"iter{it}_delta_flow"] = delta
                if it == 0:
                    record["update0_in_corr"] = corr
            coords1 = coords1 + delta
            if all_iterations or it == iters - 1:
                preds.append(convex_upsample(coords1 - coords0, mask))
        return torch.stack(preds) if all_iterations else preds[-1]

    def load_official_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load ``raft-things.pth`` (``module.`` prefixes allowed); raises ValueError on any key mismatch."""
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        shapes = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
        if missing or unexpected or shapes:
            raise ValueError(f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {shapes[:5]}")
        self.load_state_dict(sd, strict=True)


def is_raft_state_dict(keys) -> bool:
    ks = {k.removeprefix("module.") for k in keys}
    return {"fnet.conv1.weight", "cnet.conv1.weight", "update_block.gru.convz1.weight"} <= ks


__all__ = ["RAFT", "RAFTConfig", "CorrPyramid", "convex_upsample", "is_raft_state_dict"]
