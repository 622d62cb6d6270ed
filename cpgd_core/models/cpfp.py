"""CPFP: coding-prior feature propagation, the stage-one (regression) network of CPGD-Net.

A clean reimplementation of the paper's design (arXiv 2504.12222, "CPFP" / "CPFA"), not of the official
module layout (that one is BSSTNet with a Swin fusion and Shift-Net decoder; see
``docs/MODEL_CARD.md``). Structure:

- encoder: full-res conv + residual block (``shortcut``), stride-2 to 1/2 res (``enc_half``),
  stride-2 to 1/4 res + blocks (``spatial``);
- bidirectional recurrent propagation at 1/4 res: branches ``backward_1, forward_1[, backward_2,
  forward_2]``; each step aligns the propagated features of the previous two frames with a CPFA block
  (codec-MV-initialised, residual-modulated, second-order deformable alignment), then a backbone
  refines ``aligned + backbone(concat[earlier branches at this frame, aligned])``;
- reconstruction: fuse all branches, upsample x2 with the ``enc_half`` skip, x2 with the ``shortcut``
  skip, predict an RGB correction and add it to the input frame (global skip).

Codec priors enter only through :class:`CPFA`; ``CPFPConfig.use_priors=False`` zeroes them (motion,
validity and residual), which leaves a plain second-order recurrent deformable alignment network with
the same parameters (the priors ablation).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..codec.flow import compose, warp
from ..codec.priors import CodecPriors
from ..errors import CPGDInputError
from .config import JsonConfig
from .cpfp_official import CAB1

# |residual| (in [0,1]-luma units) -> [0, 1) guidance map. A fixed curve instead of the official per-clip
# min-max normalisation, so that a frame gets the same map whatever chunk or tile it is processed in.
RESIDUAL_GAIN = 16.0
# 2 * 1/4-res neighbours, 9 taps each
_TAPS = 9
# config fields a trained network can be deepened along (CPFP.grow_from)
GROWABLE = ("num_enc_blocks", "backbone_blocks", "recon_blocks")
# The full-resolution encoder and decoder run over groups of frames of at most this many pixels (at least
# one frame): at 720p one frame per group, so no single convolution (where Cancel is polled) runs over a
# whole chunk. Frames are independent in these stages: the grouping does not change the result, and the
# largest intermediate activations shrink with it.
FRAME_GROUP_PIXELS = 1 << 20
Interrupt = Optional[Callable[[], None]]


@contextlib.contextmanager
def poll_before_convs(module: nn.Module, check_interrupt: Interrupt) -> Iterator[None]:
    """While active, ``check_interrupt()`` runs before every convolution of ``module`` (2-D and 3-D), as
    ComfyUI's own layers poll Cancel at every op; nothing is installed when it is None."""
    if check_interrupt is None:
        yield
        return
    hooks = [m.register_forward_pre_hook(lambda *_: check_interrupt())
             for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@dataclass
class CPFPConfig(JsonConfig):
    """Hyper-parameters of :class:`CPFP`. ``lite()`` is sized for CPUs, ``base()`` follows the official widths."""

    enc_channels: int = 16        # full and 1/2 resolution
    mid_channels: int = 32        # 1/4 resolution (propagation)
    num_enc_blocks: int = 2       # residual blocks at 1/4 res in the encoder
    num_branches: int = 2         # 2: backward_1, forward_1; 4: + backward_2, forward_2
    backbone_blocks: int = 2      # residual blocks per propagation backbone
    recon_blocks: int = 6         # residual blocks at 1/4 res after fusion
    deform_groups: int = 4        # total DCN offset groups (half per neighbour, so must be even)
    offset_channels: int = 0      # hidden width of the offset/mask predictor (0: mid_channels)
    max_residue_magnitude: float = 5.0  # learned offsets around the MV are bounded by this (1/4-res px)
    residual_mask_bias: float = 0.1     # M = sigmoid(C_m + bias * (2 * r * valid - 1))
    block: str = "res"            # 1/4-res blocks: "res" (ResidualBlock) or "gated" (the official CAB1)
    use_priors: bool = True

    @classmethod
    def lite(cls, **overrides) -> "CPFPConfig":
        return cls(**overrides)

    @classmethod
    def base(cls, **overrides) -> "CPFPConfig":
        kw = dict(enc_channels=64, mid_channels=192, num_enc_blocks=2, num_branches=4, backbone_blocks=2,
                  recon_blocks=4, deform_groups=16)
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_name(cls, name: str, **overrides) -> "CPFPConfig":
        if name not in ("lite", "base"):
            raise CPGDInputError(f"unknown CPFP config {name!r}: expected 'lite' or 'base'")
        return getattr(cls, name)(**overrides)

    def __post_init__(self) -> None:
        if self.num_branches not in (2, 4):
            raise CPGDInputError(f"CPFPConfig.num_branches must be 2 or 4, got {self.num_branches}")
        if self.block not in BLOCKS:
            raise CPGDInputError(f"CPFPConfig.block must be one of {sorted(BLOCKS)}, got {self.block!r}")
        if self.deform_groups % 2 or self.mid_channels % (self.deform_groups // 2):
            raise CPGDInputError(f"CPFPConfig.deform_groups={self.deform_groups} must be even and divide "
                                 f"mid_channels={self.mid_channels} in halves")

    @property
    def branch_names(self) -> list[str]:
        names = ["backward_1", "forward_1", "backward_2", "forward_2"]
        return names[: self.num_branches]


class ChannelAttention(nn.Module):
    """Squeeze-excitation gate: x * sigmoid(MLP(mean_hw(x))). (N, C, H, W) -> same."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(w)


class ResidualBlock(nn.Module):
    """conv3x3 - LReLU - conv3x3 - channel attention, plus the input. (N, C, H, W) -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.attn = ChannelAttention(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.conv2(F.leaky_relu(self.conv1(x), 0.1, inplace=True)))


# The 1/4-resolution block types (CPFPConfig.block). "gated" is the official network's gated block (LayerNorm,
# 1x1 expansions, 5x5 depthwise, simple gates, channel attention): per pixel about a third of the
# multiply-adds of a ResidualBlock of the same width, so it affords wider features on a CPU.
BLOCKS: dict[str, Callable[[int], nn.Module]] = {"res": ResidualBlock, "gated": lambda c: CAB1(c, 5)}


def _blocks(channels: int, n: int, kind: str = "res") -> nn.Sequential:
    return nn.Sequential(*[BLOCKS[kind](channels) for _ in range(n)])


def _make_identity(block: nn.Module) -> None:
    """Zero a block's residual branch, so that it passes its input through unchanged."""
    if isinstance(block, ResidualBlock):
        nn.init.zeros_(block.conv2.weight)
        nn.init.zeros_(block.conv2.bias)
    else:
        nn.init.zeros_(block.beta)


class CPFA(nn.Module):
    """Coding-prior feature alignment: second-order modulated deformable alignment guided by codec priors.

    For the current frame t and its two propagation neighbours (n1 = one step back, n2 = two steps back):

    - warp each neighbour's propagated features with its (validity-gated) MV flow;
    - predict offsets and masks from ``[warped n1, current, warped n2, r_n1, r_t, r_n2, valid_n1,
      valid_n2, flow_n1, flow_n2]``:  ``offset = flow (as torchvision (dy, dx)) + max_res * tanh(C_o)``,
      ``mask = sigmoid(C_m + b * (2 * r * valid - 1))``;
    - modulated deformable 3x3 conv over ``[feat_n1, feat_n2]`` (first half of the offset groups reads
      n1, the second half n2).

    All spatial tensors are on the 1/4 grid, flows in 1/4-grid pixels.
    """

    def __init__(self, cfg: CPFPConfig) -> None:
        super().__init__()
        c, g = cfg.mid_channels, cfg.deform_groups
        hidden = cfg.offset_channels or c
        self.groups = g
        self.max_residue = cfg.max_residue_magnitude
        self.mask_bias = cfg.residual_mask_bias
        in_ch = 3 * c + 3 + 2 + 4  # features, residual maps, validity, flows
        self.conv_offset = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(hidden, 3 * _TAPS * g, 3, padding=1),
        )
        # zero: training starts from pure MV alignment with neutral masks
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)
        self.weight = nn.Parameter(torch.empty(c, 2 * c, 3, 3))
        self.bias = nn.Parameter(torch.zeros(c))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, feat_n1: torch.Tensor, feat_n2: torch.Tensor, feat_current: torch.Tensor,
                flow_n1: torch.Tensor, flow_n2: torch.Tensor, valid_n1: torch.Tensor, valid_n2: torch.Tensor,
                r_current: torch.Tensor, r_n1: torch.Tensor, r_n2: torch.Tensor,
                check_interrupt: Interrupt = None) -> torch.Tensor:
        """feat_*: (N, C, h, w); flow_*: (N, 2, h, w) already multiplied by valid_*; valid_*, r_*: (N, 1, h, w).

        ``r_n1``/``r_n2`` are the neighbours' residual maps already warped onto frame t. Returns (N, C, h, w).
        ``check_interrupt()`` is called before the deformable convolution.
        """
        from ..ops import deform_conv2d  # late: the kernel module may pick a backend at import

        cond_n1 = warp(feat_n1, flow_n1)
        cond_n2 = warp(feat_n2, flow_n2)
        extra = torch.cat([cond_n1, feat_current, cond_n2, r_n1, r_current, r_n2, valid_n1, valid_n2,
                           flow_n1, flow_n2], 1)
        out = self.conv_offset(extra)
        half = _TAPS * self.groups // 2
        o1, o2, m = torch.split(out, [2 * half, 2 * half, 2 * half], 1)
        # torchvision layout: per offset group, per tap, (dy, dx); our flows are (x, y)
        base_n1 = flow_n1.flip(1).repeat(1, half, 1, 1)
        base_n2 = flow_n2.flip(1).repeat(1, half, 1, 1)
        offset = torch.cat([base_n1 + self.max_residue * torch.tanh(o1),
                            base_n2 + self.max_residue * torch.tanh(o2)], 1)
        m1, m2 = torch.split(m, [half, half], 1)
        b = self.mask_bias
        mask = torch.sigmoid(torch.cat([m1 + b * (2 * r_n1 * valid_n1 - 1),
                                        m2 + b * (2 * r_n2 * valid_n2 - 1)], 1))
        x = torch.cat([feat_n1, feat_n2], 1)
        if check_interrupt is not None:  # the one heavy operation that is not a convolution module
            check_interrupt()
        # offset and mask keep their precision: under bf16 autocast a 40 px offset would be rounded to 0.25 px
        # (deform_conv2d samples in float32 whatever it is given)
        return deform_conv2d(x, offset, self.weight.to(x.dtype), self.bias.to(x.dtype), padding=1, mask=mask)


class CPFP(nn.Module):
    """Stage-one deblurring network. See the module docstring and :meth:`forward`."""

    # Validated under bf16 autocast (the same validation PSNR to 0.001 dB): precision 'auto' may pick bf16 on
    # CPUs that multiply bf16 in hardware (precision.resolve_dtype, ``cpu_bf16``).
    cpu_bf16 = True

    def __init__(self, config: Optional[CPFPConfig] = None) -> None:
        super().__init__()
        cfg = self.config = config or CPFPConfig.lite()
        e, c = cfg.enc_channels, cfg.mid_channels
        self.conv_in = nn.Conv2d(3, e, 3, padding=1)
        self.enc_full = ResidualBlock(e)
        self.down1 = nn.Conv2d(e, e, 3, stride=2, padding=1)
        self.enc_half = ResidualBlock(e)
        self.down2 = nn.Conv2d(e, c, 3, stride=2, padding=1)
        self.enc_quarter = _blocks(c, cfg.num_enc_blocks, cfg.block)

        self.deform_align = nn.ModuleDict()
        self.backbone = nn.ModuleDict()
        for i, name in enumerate(cfg.branch_names):
            self.deform_align[name] = CPFA(cfg)
            self.backbone[name] = nn.Sequential(
                nn.Conv2d((2 + i) * c, c, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
                _blocks(c, cfg.backbone_blocks, cfg.block))

        self.fuse = nn.Conv2d((1 + cfg.num_branches) * c, c, 1)
        self.recon = _blocks(c, cfg.recon_blocks, cfg.block)
        self.up1 = nn.Conv2d(c, 4 * e, 3, padding=1)
        self.dec_half = ResidualBlock(e)
        self.up2 = nn.Conv2d(e, 4 * e, 3, padding=1)
        self.dec_full = ResidualBlock(e)
        self.conv_out = nn.Conv2d(e, 3, 3, padding=1)
        # start close to the identity mapping (the global skip): early training sees the blurry input
        with torch.no_grad():
            self.conv_out.weight.mul_(0.1)
            self.conv_out.bias.zero_()

    def use_channels_last(self) -> "CPFP":
        """Store the convolution weights channels-last (idempotent; values unchanged). For the CPU: oneDNN then
        keeps activations channels-last and skips its per-call layout reorders (inference ~15-20 % and
        training steps ~17 % faster at CPFP shapes, bench/cpfp.py). ``save_cpfp`` writes contiguous copies."""
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d) and not mod.weight.is_contiguous(memory_format=torch.channels_last):
                mod.weight.data = mod.weight.data.contiguous(memory_format=torch.channels_last)
        return self

    def _block_stacks(self) -> dict[str, list[nn.Sequential]]:
        """The residual-block stacks whose depth a config sets, by the config field that sets it."""
        return {"num_enc_blocks": [self.enc_quarter], "recon_blocks": [self.recon],
                "backbone_blocks": [self.backbone[name][2] for name in self.config.branch_names]}

    def grow_from(self, smaller: "CPFP") -> "CPFP":
        """Start this network from a shallower trained one with the same output.

        The configs may differ only in the block counts of :data:`GROWABLE`, each at least the smaller's.
        Shared parameters are copied; every appended residual block gets a zero last convolution, which
        makes it the identity, so the grown network computes exactly what ``smaller`` does and training
        continues from there instead of from scratch.
        """
        old, new = asdict(smaller.config), asdict(self.config)
        differing = {k for k in new if new[k] != old[k]}
        if differing - set(GROWABLE) or any(new[k] < old[k] for k in differing):
            raise CPGDInputError(f"cannot grow CPFP {smaller.config.to_json()} into {self.config.to_json()}: "
                                 f"only {', '.join(GROWABLE)} may differ, and only upwards")
        missing, unexpected = self.load_state_dict(smaller.state_dict(), strict=False)
        appended = set()
        for name, stacks in self._block_stacks().items():
            for stack in stacks:
                for block in list(stack)[old[name]:]:
                    _make_identity(block)
                    appended.update(id(p) for p in block.parameters())
        params = dict(self.named_parameters())
        if unexpected or any(id(params[k]) not in appended for k in missing):
            raise CPGDInputError(f"CPFP growth mismatch: missing {sorted(missing)[:5]}, "
                                 f"unexpected {sorted(unexpected)[:5]}")
        return self

    # -- helpers -------------------------------------------------------------------------------------
    def _prior_maps(self, residual: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(N, T, 1, H, W) signed residual -> (N, T, 1, h, w) guidance in [0, 1)."""
        n, t = residual.shape[:2]
        r = residual.reshape(n * t, 1, *residual.shape[-2:]).abs()
        r = F.adaptive_avg_pool2d(r, (h, w)) if r.shape[-2:] != (h, w) else r
        return torch.tanh(RESIDUAL_GAIN * r).reshape(n, t, 1, h, w)

    def _propagate(self, feats: dict, name: str, flows: torch.Tensor, valids: torch.Tensor,
                   rmap: torch.Tensor, check_interrupt: Interrupt = None) -> None:
        """Fill ``feats[name]`` (list over frames of (N, C, h, w)).

        ``flows``/``valids``: (N, T, 2|1, h, w), field on frame t pointing into the neighbour this branch
        comes from (t+1 for backward branches, t-1 for forward ones), already gated by validity.
        ``check_interrupt`` goes to the alignment's deformable convolution.
        """
        t_len = flows.shape[1]
        order = list(range(t_len))[::-1] if name.startswith("backward") else list(range(t_len))
        prev_names = [k for k in feats if k != name]
        cpfa, backbone = self.deform_align[name], self.backbone[name]
        ref = feats["spatial"][0]
        zeros_feat = ref.new_zeros(ref.shape)
        # in the priors' dtype, not the features' (bf16 under autocast): they become sampling offsets
        zeros1 = flows.new_zeros((ref.shape[0], 1, *ref.shape[-2:]))
        zeros2 = flows.new_zeros((ref.shape[0], 2, *ref.shape[-2:]))
        out: list = [None] * t_len
        prop = zeros_feat
        for i, idx in enumerate(order):
            current = feats[prev_names[-1]][idx]
            if i == 0:
                # no neighbour yet: zero features with valid = 0, not zero motion
                feat_n1 = feat_n2 = zeros_feat
                flow_n1 = flow_n2 = zeros2
                valid_n1 = valid_n2 = r_n1 = r_n2 = zeros1
            else:
                n1_idx = order[i - 1]
                flow_n1, valid_n1 = flows[:, idx], valids[:, idx]
                feat_n1 = prop
                r_n1 = warp(rmap[:, n1_idx], flow_n1)
                if i >= 2:
                    n2_idx = order[i - 2]
                    feat_n2 = out[n2_idx]
                    # the chained field is only valid where both links are
                    link_valid = warp(valids[:, n1_idx], flow_n1, mode="nearest")
                    valid_n2 = valid_n1 * (link_valid > 0.5).to(valid_n1.dtype)
                    flow_n2 = compose(flow_n1, flows[:, n1_idx]) * valid_n2
                    r_n2 = warp(rmap[:, n2_idx], flow_n2)
                else:
                    feat_n2, flow_n2, valid_n2, r_n2 = zeros_feat, zeros2, zeros1, zeros1
            aligned = cpfa(feat_n1, feat_n2, current, flow_n1, flow_n2, valid_n1, valid_n2,
                           rmap[:, idx], r_n1, r_n2, check_interrupt=check_interrupt)
            stack = [feats[k][idx] for k in prev_names] + [aligned]
            prop = aligned + backbone(torch.cat(stack, 1))
            out[idx] = prop
        feats[name] = out

    # -- forward -------------------------------------------------------------------------------------
    def _frame_groups(self, n: int, t: int, hh: int, ww: int) -> list[slice]:
        """Consecutive frame ranges for the full-resolution stages (see :data:`FRAME_GROUP_PIXELS`)."""
        size = max(1, FRAME_GROUP_PIXELS // (n * hh * ww))
        return [slice(i, min(i + size, t)) for i in range(0, t, size)]

    def forward(self, frames: torch.Tensor, flow_to_prev: torch.Tensor, valid_to_prev: torch.Tensor,
                flow_to_next: torch.Tensor, valid_to_next: torch.Tensor, residual: torch.Tensor,
                *, check_interrupt: Interrupt = None) -> torch.Tensor:
        """Deblur a clip.

        Args:
            frames: (N, T, 3, H, W) RGB in [0, 1]; H, W multiples of 4.
            flow_to_prev: (N, T, 2, H/4, W/4) field on frame t pointing into t-1, in 1/4-grid pixels (x, y).
            valid_to_prev: (N, T, 1, H/4, W/4) 1 where ``flow_to_prev`` is known, else 0 (bool or float).
            flow_to_next, valid_to_next: the same towards t+1.
            residual: (N, T, 1, H, W) signed coding residual in [0,1]-luma units.
            check_interrupt: called before every convolution and deformable convolution (as ComfyUI's own
                layers poll Cancel at every op); it cancels the computation by raising. It does not change
                the result.
        Returns:
            (N, T, 3, H, W) restored frames (not clamped).
        """
        with poll_before_convs(self, check_interrupt):
            return self._forward(frames, flow_to_prev, valid_to_prev, flow_to_next, valid_to_next, residual,
                                 check_interrupt)

    def _forward(self, frames: torch.Tensor, flow_to_prev: torch.Tensor, valid_to_prev: torch.Tensor,
                 flow_to_next: torch.Tensor, valid_to_next: torch.Tensor, residual: torch.Tensor,
                 check_interrupt: Interrupt) -> torch.Tensor:
        n, t, ch, hh, ww = frames.shape
        if ch != 3 or hh % 4 or ww % 4:
            raise CPGDInputError(f"CPFP needs (N, T, 3, H, W) frames with H, W multiples of 4, got "
                                 f"{tuple(frames.shape)}")
        h, w = hh // 4, ww // 4
        for label, x, c in (("flow_to_prev", flow_to_prev, 2), ("valid_to_prev", valid_to_prev, 1),
                            ("flow_to_next", flow_to_next, 2), ("valid_to_next", valid_to_next, 1)):
            if tuple(x.shape) != (n, t, c, h, w):
                raise CPGDInputError(f"CPFP input {label} has shape {tuple(x.shape)}, expected {(n, t, c, h, w)}")
        if tuple(residual.shape) != (n, t, 1, hh, ww):
            raise CPGDInputError(f"CPFP input residual has shape {tuple(residual.shape)}, "
                                 f"expected {(n, t, 1, hh, ww)}")
        dt = frames.dtype
        vp, vn = valid_to_prev.to(dt), valid_to_next.to(dt)
        if self.config.use_priors:
            # invalid motion is not zero motion: gate it so the network only sees it through valid = 0
            fp = torch.where(vp > 0, flow_to_prev.to(dt), 0.0)
            fn = torch.where(vn > 0, flow_to_next.to(dt), 0.0)
            rmap = self._prior_maps(residual.to(dt), h, w)
        else:
            fp, fn = torch.zeros_like(flow_to_prev, dtype=dt), torch.zeros_like(flow_to_next, dtype=dt)
            vp, vn = torch.zeros_like(vp), torch.zeros_like(vn)
            rmap = frames.new_zeros((n, t, 1, h, w))

        groups = self._frame_groups(n, t, hh, ww)
        shortcuts, halves, spatial = [], [], []
        for g in groups:
            k = g.stop - g.start
            x = frames[:, g].reshape(n * k, 3, hh, ww)
            shortcut = self.enc_full(F.leaky_relu(self.conv_in(x), 0.1, inplace=True))
            half = self.enc_half(F.leaky_relu(self.down1(shortcut), 0.1, inplace=True))
            quarter = self.enc_quarter(F.leaky_relu(self.down2(half), 0.1, inplace=True)).reshape(n, k, -1, h, w)
            shortcuts.append(shortcut)
            halves.append(half)
            spatial += [quarter[:, i] for i in range(k)]

        feats: dict = {"spatial": spatial}
        for name in self.config.branch_names:
            if name.startswith("backward"):
                self._propagate(feats, name, fn, vn, rmap, check_interrupt)
            else:
                self._propagate(feats, name, fp, vp, rmap, check_interrupt)

        out = []
        for g, shortcut, half in zip(groups, shortcuts, halves):
            k = g.stop - g.start
            fused = torch.stack([torch.cat([feats[key][i] for key in feats], 1) for i in range(g.start, g.stop)], 1)
            y = self.recon(self.fuse(fused.reshape(n * k, -1, h, w)))
            y = self.dec_half(F.leaky_relu(F.pixel_shuffle(self.up1(y), 2), 0.1, inplace=True) + half)
            y = self.dec_full(F.leaky_relu(F.pixel_shuffle(self.up2(y), 2), 0.1, inplace=True) + shortcut)
            out.append(self.conv_out(y).reshape(n, k, 3, hh, ww) + frames[:, g])
        return out[0] if len(out) == 1 else torch.cat(out, 1)


def priors_to_model_inputs(priors: CodecPriors, device: torch.device | str | None = None,
                           dtype: torch.dtype = torch.float32,
                           size: Optional[tuple[int, int]] = None) -> dict[str, torch.Tensor]:
    """CodecPriors -> the keyword inputs of :meth:`CPFP.forward` (without ``frames``), batch of 1.

    Flows go from the stride-``s`` grid in FULL-res pixels to the 1/4 grid in 1/4-grid pixels (/4).
    ``size`` = (H, W), multiples of 4, is the (padded) frame size the model will see: default the priors'
    own size rounded up to multiples of 4. The extra border repeats the edge values (residual and flows)
    and is marked valid like its edge. The residual stays signed and full-res; the model takes |r| and
    normalises it with a fixed curve (chunk and tile independent).
    """
    hh, ww = size or (-(-priors.height // 4) * 4, -(-priors.width // 4) * 4)
    if hh % 4 or ww % 4 or hh < priors.height or ww < priors.width:
        raise CPGDInputError(f"model input size {(hh, ww)} must be multiples of 4 and at least the priors' "
                             f"{(priors.height, priors.width)}")
    h, w = hh // 4, ww // 4

    def grid(x: torch.Tensor, is_mask: bool) -> torch.Tensor:
        x = x.to(device=device, dtype=torch.float32)
        s = priors.flow_stride
        if s != 4:
            # values are already full-res pixels: resample the grid without rescaling the vectors
            gh, gw = -(-priors.height // 4), -(-priors.width // 4)
            x = F.interpolate(x, size=(gh, gw), mode="nearest")
        pad_h, pad_w = h - x.shape[-2], w - x.shape[-1]
        if pad_h < 0 or pad_w < 0:
            x = x[..., :h, :w]
            pad_h, pad_w = max(pad_h, 0), max(pad_w, 0)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return (x > 0.5 if is_mask else x / 4.0).to(dtype)

    res = priors.residual.to(device=device, dtype=torch.float32)
    if res.shape[1] == 3:  # some decoders keep an RGB residual: the guidance is luma
        res = (res * torch.tensor([0.299, 0.587, 0.114], device=res.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if res.shape[-2:] != (hh, ww):
        res = F.pad(res, (0, ww - res.shape[-1], 0, hh - res.shape[-2]), mode="replicate")
    return {
        "flow_to_prev": grid(priors.flow_to_prev, False).unsqueeze(0),
        "valid_to_prev": grid(priors.valid_to_prev, True).unsqueeze(0),
        "flow_to_next": grid(priors.flow_to_next, False).unsqueeze(0),
        "valid_to_next": grid(priors.valid_to_next, True).unsqueeze(0),
        "residual": res.to(dtype).unsqueeze(0),
    }
