"""The CodecPriors container: per-frame motion and residual priors of a video."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Optional

import torch


# The per-frame prior tensors of CodecPriors, the CPFP inputs of the same names and the dataset files' arrays.
PRIOR_FIELDS = ("flow_to_prev", "valid_to_prev", "flow_to_next", "valid_to_next", "residual")


@dataclass
class CodecPriors:
    """Coding priors of T frames, aligned 1:1 with the frames they were extracted with.

    Shapes (T frames of H x W; flows are stored on the 1/``flow_stride`` grid, which loses nothing
    because codec blocks are >= 8 px, but their values are in FULL-resolution pixels):

    - ``flow_to_prev``  (T, 2, H/s, W/s) float16: field on frame t pointing into frame t-1 (x, y).
    - ``valid_to_prev`` (T, 1, H/s, W/s) bool: where ``flow_to_prev`` is known (False on I-frames,
      intra blocks, frame 0).
    - ``flow_to_next``  (T, 2, H/s, W/s) float16: field on frame t pointing into frame t+1
      (from B-frame future MVs or, for P-only streams, the inverted next backward field).
    - ``valid_to_next`` (T, 1, H/s, W/s) bool (False on the last frame).
    - ``residual``      (T, 1, H, W) float16: signed luma coding residual in [0,1]-luma units.
    - ``frame_types``   list of 'I' / 'P' / 'B' per frame.
    - ``qp``            optional (T, 1, H/16, W/16) float16 per-macroblock QP (H.264 only).
    - ``fps``, ``source_indices`` (decode-order indices of the kept frames in the source),
      ``source`` ("bitstream:h264", "bitstream:mpeg4", "reencode:libx264", ...).
    """

    flow_to_prev: torch.Tensor
    valid_to_prev: torch.Tensor
    flow_to_next: torch.Tensor
    valid_to_next: torch.Tensor
    residual: torch.Tensor
    frame_types: list[str]
    height: int
    width: int
    fps: Fraction = Fraction(25)
    flow_stride: int = 4
    qp: Optional[torch.Tensor] = None
    source_indices: list[int] = field(default_factory=list)
    source: str = "unknown"

    def __len__(self) -> int:
        return int(self.residual.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-frame prior tensors by field name (``PRIOR_FIELDS``, in that order)."""
        return {name: getattr(self, name) for name in PRIOR_FIELDS}

    def slice(self, start: int, stop: int) -> "CodecPriors":
        """Frames [start, stop). Motion that points outside the slice is marked invalid."""
        n = len(self)
        start, stop = max(0, start), min(n, stop)
        if stop <= start:
            raise ValueError(f"empty prior slice [{start}, {stop}) of {n} frames")
        vp = self.valid_to_prev[start:stop].clone()
        vn = self.valid_to_next[start:stop].clone()
        vp[0] = False  # its previous frame is not in the slice
        vn[-1] = False
        return replace(
            self,
            flow_to_prev=self.flow_to_prev[start:stop],
            valid_to_prev=vp,
            flow_to_next=self.flow_to_next[start:stop],
            valid_to_next=vn,
            residual=self.residual[start:stop],
            frame_types=self.frame_types[start:stop],
            qp=None if self.qp is None else self.qp[start:stop],
            source_indices=self.source_indices[start:stop] if self.source_indices else [],
        )

    def dense_flow(self, which: str = "prev", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Full-resolution (T, 2, H, W) flow in pixels (nearest upsampling of the block grid)."""
        flow = self.flow_to_prev if which == "prev" else self.flow_to_next
        return torch.nn.functional.interpolate(flow.to(dtype), size=(self.height, self.width), mode="nearest")

    def nbytes(self) -> int:
        tensors = list(self.tensors().values())
        if self.qp is not None:
            tensors.append(self.qp)
        return sum(t.numel() * t.element_size() for t in tensors)

    def summary(self) -> str:
        counts = {k: self.frame_types.count(k) for k in "IPB"}
        cover = float(self.valid_to_prev.float().mean()) * 100 if len(self) else 0.0
        return (f"{len(self)} frames {self.width}x{self.height} @ {float(self.fps):.3f} fps, priors from {self.source}; "
                f"I/P/B = {counts['I']}/{counts['P']}/{counts['B']}; motion coverage {cover:.1f}%")
