"""BlurField: the trajectory each pixel sweeps during a frame's exposure, the interface of the non-blind stage.

Blur model (``operator.py``): ``y(p) = mean over s in [-1/2, 1/2] of x(p + s * trajectory(p))``, sign-invariant.
The trajectory is the per-pixel velocity between decoded frames (``velocity.py``) times the exposure, as a
fraction of the frame interval.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..codec.priors import CodecPriors
from ..errors import CPGDInputError
from . import velocity as vel


@dataclass
class BlurField:
    """Per-pixel blur of T frames.

    - ``trajectory`` (T, 2, H, W) float32: displacement (x, y) in pixels of the decoded frame swept during frame
      t's exposure (sign-invariant: the blur is symmetric about the frame's centre instant).
    - ``exposure`` (T,) float32: exposure as a fraction of the frame interval (0 = sharp).
    - ``confidence`` (T, 1, H, W) float32 in [0, 1]: where the trajectory is trustworthy (low at occlusions
      and where the motion could not be matched).
    """

    trajectory: torch.Tensor
    exposure: torch.Tensor
    confidence: torch.Tensor

    def __len__(self) -> int:
        return int(self.trajectory.shape[0])


def _parse_exposure(exposure: Union[float, str]) -> Optional[float]:
    """None for 'auto', else the fixed fraction (checked)."""
    if isinstance(exposure, str):
        if exposure == "auto":
            return None
        try:
            exposure = float(exposure)
        except ValueError:
            raise CPGDInputError(f"exposure must be 'auto' or a fraction of the frame interval in [0, 1], "
                                 f"got {exposure!r}") from None
    value = float(exposure)
    if not 0.0 <= value <= 1.0:
        raise CPGDInputError(f"exposure must be a fraction of the frame interval in [0, 1], got {value}")
    return value


def estimate_blur_field(frames: torch.Tensor, priors: Optional[CodecPriors] = None,
                        exposure: Union[float, str] = "auto",
                        progress: Optional[Callable[[int, int], None]] = None,
                        check_interrupt: Optional[Callable[[], None]] = None) -> BlurField:
    """The blur field of decoded frames.

    Args:
        frames: (T, 3, H, W) float32 RGB in [0, 1], consecutive decoded frames (T >= 2).
        priors: codec priors aligned 1:1 with ``frames`` (their vectors start the search), or None.
        exposure: fraction of the frame interval the shutter was open, or 'auto' to estimate it per clip.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise CPGDInputError(f"frames must be (T, 3, H, W), got {tuple(frames.shape)}")
    t_count = frames.shape[0]
    if t_count < 2:
        raise CPGDInputError(f"a blur field needs at least 2 consecutive frames, got {t_count}")
    fixed = _parse_exposure(exposure)
    engine = vel.dis("medium")
    greys = [vel.grey_u8(f) for f in frames]
    fwd, bwd = [], []  # fwd[i]: on frame i into i+1; bwd[i]: on frame i+1 into i
    for i in range(t_count - 1):
        if check_interrupt is not None:
            check_interrupt()
        fwd.append(vel.dis_flow(engine, greys[i], greys[i + 1]))
        bwd.append(vel.dis_flow(engine, greys[i + 1], greys[i]))
        if progress is not None:
            progress(i + 1, t_count - 1)
    velocities, confidences = [], []
    for t in range(t_count):
        to_next = fwd[t] if t < t_count - 1 else None
        to_prev = bwd[t - 1] if t > 0 else None
        velocities.append(vel.central_velocity(to_next, to_prev))
        conf = [vel.fb_confidence(to_next, bwd[t])] if to_next is not None else []
        if to_prev is not None:
            conf.append(vel.fb_confidence(to_prev, fwd[t - 1]))
        confidences.append(np.minimum.reduce(conf) if len(conf) > 1 else conf[0])
    v = torch.from_numpy(np.stack(velocities)).permute(0, 3, 1, 2).contiguous()
    e = 1.0 if fixed is None else fixed
    return BlurField(trajectory=v * e, exposure=torch.full((t_count,), e, dtype=torch.float32),
                     confidence=torch.from_numpy(np.stack(confidences))[:, None].contiguous())
