"""The official stage-one inference path: codec MVs and residuals -> flows (RAFT-refined) -> official CPFP.

Follows ``ModelBSST.test_by_patch`` / ``get_bi_flows`` as described in ``cpgd_official_spec.md`` §1.3 and
``golden/README.md`` §5:

- forward flows = the codec MVs on the 1/4 grid (bilinear 0.25x of the full-resolution field, / 4);
- backward flows = the crude inverse ``-warp(mv, mv)``, refined by ``raft_iters`` RAFT iterations on the
  half-resolution frames starting from it (skipped when no RAFT weights are given);
- frame 0's residual = frame 1's residual warped onto frame 0 with the backward flow.

:class:`OfficialStageOne` wraps this behind the pack's CPFP call signature, so the chunk/tile driver
(:mod:`cpgd_core.pipeline.restore`) runs the official network unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..codec.flow import warp
from ..errors import CPGDInputError
from .cpfp import Interrupt, poll_before_convs
from .cpfp_official import OfficialCPFP
from .raft import RAFT

RAFT_ITERS = 4  # with MVs as initialisation (the official value)


def quarter_grid_mvs(mv_f: torch.Tensor) -> torch.Tensor:
    """(n, T-1, 2, H, W) full-resolution MVs in pixels -> (n, T-1, 2, H/4, W/4) in 1/4-grid pixels."""
    n, k = mv_f.shape[:2]
    q = F.interpolate(mv_f.flatten(0, 1), scale_factor=0.25, mode="bilinear", align_corners=False) / 4
    return q.view(n, k, *q.shape[1:])


def backward_flows(lq: torch.Tensor, mv_f_rs: torch.Tensor, raft: Optional[RAFT], iters: int = RAFT_ITERS,
                   record: Optional[dict] = None) -> torch.Tensor:
    """Fields on frame k pointing into frame k+1, (n, T-1, 2, H/4, W/4) in 1/4-grid pixels.

    lq (n, T, 3, H, W) in [0, 1] (H, W multiples of 16 and >= 256 when ``raft`` is given);
    mv_f_rs (n, T-1, 2, H/4, W/4) forward MVs (on frame k+1 pointing into frame k).
    """
    n, k = mv_f_rs.shape[:2]
    f = mv_f_rs.flatten(0, 1)
    inverse = -warp(f, f)
    if record is not None:
        record["mv_b_rs"] = inverse.view(n, k, *inverse.shape[1:])
    if raft is None:
        return inverse.view(n, k, *inverse.shape[1:])
    h, w = lq.shape[-2:]
    if h % 16 or w % 16 or min(h, w) < 256:
        raise CPGDInputError(f"the RAFT refinement needs frames of at least 256x256 px in multiples of 16, got {w}x{h}")
    half = F.interpolate(lq.flatten(0, 1), scale_factor=0.5, mode="bilinear", align_corners=False)
    half = half.view(n, -1, *half.shape[1:])
    init = F.interpolate(inverse, scale_factor=0.25, mode="bilinear", align_corners=False) * 0.25
    raft_dtype = next(raft.parameters()).dtype
    flow = raft(half[:, :-1].flatten(0, 1).to(raft_dtype), half[:, 1:].flatten(0, 1).to(raft_dtype), iters=iters,
                flow_init=init.to(raft_dtype)).to(lq.dtype)
    if record is not None:
        record.update(raft_in_flow_init=init, raft_out_flow=flow)
    out = F.interpolate(flow, scale_factor=0.5, mode="bilinear", align_corners=False) / 2
    return out.view(n, k, *out.shape[1:])


def first_frame_residual(resi: torch.Tensor, flows_backward: torch.Tensor) -> torch.Tensor:
    """Frame 1's residual warped onto frame 0: resi (n, T-1, 1, H, W), flows (n, T-1, 2, H/4, W/4) ->
    (n, 1, 1, H, W)."""
    f = 4 * F.interpolate(flows_backward[:, 0], scale_factor=4, mode="bilinear", align_corners=False)
    return warp(resi[:, 0], f).unsqueeze(1)


def official_stage_one(net: OfficialCPFP, raft: Optional[RAFT], lq: torch.Tensor, mv_f_rs: torch.Tensor,
                       resi: torch.Tensor, iters: int = RAFT_ITERS, record: Optional[dict] = None) -> torch.Tensor:
    """The whole official path for one window.

    lq (n, T, 3, H, W) in [0, 1]; mv_f_rs (n, T-1, 2, H/4, W/4) codec MVs of frames 1..T-1 (see
    :func:`quarter_grid_mvs`); resi (n, T-1, 1, H, W) signed residuals of frames 1..T-1.
    Returns (n, T, 3, H, W), not clamped.
    """
    if lq.shape[1] == 1:  # a lone frame: nothing to align, no residual to place
        return net(lq, mv_f_rs, mv_f_rs, torch.zeros_like(lq[:, :, :1]))
    back = backward_flows(lq, mv_f_rs, raft, iters, record)
    r0 = first_frame_residual(resi, back)
    if record is not None:
        record.update(flows_backward_raft_refined=back, resi0_warped=r0)
    return net(lq, mv_f_rs, back, torch.cat([r0, resi], 1))


class OfficialStageOne(nn.Module):
    """Official CPFP (+ optional RAFT) behind the pack's CPFP interface (see :meth:`forward`).

    Frames must be multiples of :attr:`size_multiple` and at least :attr:`min_size` (the restore driver pads).
    """

    def __init__(self, net: OfficialCPFP, raft: Optional[RAFT] = None, raft_iters: int = RAFT_ITERS):
        super().__init__()
        self.net = net
        self.raft = raft
        self.raft_iters = raft_iters
        self.config = net.config

    @property
    def size_multiple(self) -> int:
        return 16

    @property
    def min_size(self) -> int:
        return 256 if self.raft is not None else 64

    def describe(self) -> str:
        if self.raft is None:
            return ("official CPFP; no RAFT weights: backward flows are the inverted codec MVs without RAFT "
                    "refinement (put raft-things.pth beside the checkpoint or select it)")
        return f"official CPFP with RAFT refinement ({self.raft_iters} iterations from the inverted codec MVs)"

    def forward(self, frames: torch.Tensor, flow_to_prev: torch.Tensor, valid_to_prev: torch.Tensor,
                flow_to_next: torch.Tensor, valid_to_next: torch.Tensor, residual: torch.Tensor,
                *, check_interrupt: Interrupt = None) -> torch.Tensor:
        """The arguments of :meth:`cpgd_core.models.cpfp.CPFP.forward` (1/4-grid flows in 1/4-grid pixels).

        Only the MVs towards the previous frame (zero where invalid, as the codec export stores intra blocks)
        and the residuals of frames 1..T-1 are used; the backward flows are derived as the official code does.
        ``check_interrupt`` runs before every convolution (RAFT's included); it cancels by raising.
        """
        mv = (flow_to_prev * valid_to_prev.to(flow_to_prev.dtype))[:, 1:]
        with poll_before_convs(self, check_interrupt):
            return official_stage_one(self.net, self.raft, frames, mv, residual[:, 1:], self.raft_iters)


__all__ = ["OfficialStageOne", "official_stage_one", "quarter_grid_mvs", "backward_flows", "first_frame_residual",
           "RAFT_ITERS"]
