"""Stage one, 'quality' mode: measure each pixel's blur, then invert it (``cpgd_core.blur``).

Per frame: the blur field (``blur.field``: trajectory and exposure from the decoded frames) and the unrolled
solver with its learned prior (``blur.solver.UnrolledDeblur``, shipped as ``weights/deblur.safetensors``).
Frames are independent once their field is known, so memory is one frame's solver state plus the few frames the
field estimation holds back: flat in video length. Large frames are cut into feathered tiles whose margin covers
the longest trajectory (the blur reads up to half of it away) plus the prior's receptive field.
"""
from __future__ import annotations

import collections
import functools
import math
import os
from typing import Callable, Iterable, Iterator, Optional, Union

import torch

from ..blur.field import BlurField, BlurFieldStream, estimate_blur_field
from ..blur.solver import UnrolledDeblur
from ..blur import velocity
from ..codec.flow import magnitude
from ..errors import CPGDInputError
from .schedule import feather_weights, windows_1d

Progress = Optional[Callable[[int, int], None]]
Interrupt = Optional[Callable[[], None]]
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiles of at most this many pixels (plus margins): about 1 GiB of solver state at 32 path samples.
TILE_PIXELS = 1 << 20
# Beyond the half-trajectory the blur reads, the prior network's receptive field.
PRIOR_MARGIN = 24


def default_deblur_path() -> str:
    """The shipped non-blind solver weights (learned prior + schedule)."""
    return os.path.join(_HERE, "weights", "deblur.safetensors")


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, mtime: float) -> UnrolledDeblur:
    from ..weights import load_network

    return load_network(path, "unrolled_deblur")


def load_deblur(path: Optional[str] = None) -> UnrolledDeblur:
    """The solver of ``path`` (default: the shipped weights), cached per file version; eval mode, CPU."""
    path = path or default_deblur_path()
    if not os.path.isfile(path):
        raise CPGDInputError(f"non-blind solver weights not found: {path}")
    return _load_cached(os.path.abspath(path), os.path.getmtime(path))


def with_iterations(model: UnrolledDeblur, iterations: int, cg_steps: int = 0) -> UnrolledDeblur:
    """The same solver run for ``iterations`` HQS iterations of ``cg_steps`` CG steps each (0: its own count).
    Fewer iterations keep the first iterations' schedule and end on the last one's noise level; more repeat the
    last iteration."""
    n = model.config.iterations
    iterations = iterations if iterations > 0 else n
    cg_steps = cg_steps if cg_steps > 0 else model.config.cg_steps
    if iterations == n and cg_steps == model.config.cg_steps:
        return model
    from dataclasses import replace

    idx = [min(round(i * (n - 1) / max(iterations - 1, 1)), n - 1) for i in range(iterations)]
    out = UnrolledDeblur(replace(model.config, iterations=iterations, cg_steps=cg_steps))
    out.denoiser = model.denoiser
    with torch.no_grad():
        out.log_sigma.copy_(model.log_sigma[idx])
        out.log_mu.copy_(model.log_mu[idx])
    return out.eval()


def without_prior(model: UnrolledDeblur) -> UnrolledDeblur:
    """The same solver and schedule with the prior step removed (the data steps alone): the ablation that
    shows what the learned prior adds."""
    from dataclasses import replace

    out = UnrolledDeblur(replace(model.config, prior="none"))
    with torch.no_grad():
        out.log_sigma.copy_(model.log_sigma)
        out.log_mu.copy_(model.log_mu)
    return out.eval()


@torch.no_grad()
def deblur_frame(model: UnrolledDeblur, frame: torch.Tensor, trajectory: torch.Tensor,
                 check_interrupt: Interrupt = None, tile_pixels: int = TILE_PIXELS) -> torch.Tensor:
    """One frame: (3, H, W) in [0, 1] and its (2, H, W) trajectory -> (3, H, W) in [0, 1]."""
    if frame.shape[-2:] != trajectory.shape[-2:]:
        raise CPGDInputError(f"frame {tuple(frame.shape[-2:])} and trajectory {tuple(trajectory.shape[-2:])} "
                             f"sizes differ")
    h, w = frame.shape[-2:]
    y, traj = frame.float()[None], trajectory.float()[None]
    if h * w <= tile_pixels:
        return model(y, traj, check_interrupt=check_interrupt)[0].clamp_(0, 1)
    margin = int(math.ceil(float(magnitude(traj).max()) / 2)) + PRIOR_MARGIN
    side = max(int(math.sqrt(tile_pixels)), 2 * margin + 64)
    ys, xs = windows_1d(h, side, 2 * margin), windows_1d(w, side, 2 * margin)
    wy, wx = feather_weights(ys, h), feather_weights(xs, w)
    out = torch.zeros(3, h, w)
    for (y0, y1), gy in zip(ys, wy):
        for (x0, x1), gx in zip(xs, wx):
            win = (..., slice(y0, y1), slice(x0, x1))
            pred = model(y[win], traj[win], check_interrupt=check_interrupt)[0]
            out[win] += pred * (gy.view(-1, 1) * gx.view(1, -1)).float()
    return out.clamp_(0, 1)


def measured(trajectory: torch.Tensor, exposure_confidence: Optional[float]) -> torch.Tensor:
    """The trajectory to invert: none where the exposure could not be read (confidence 0: the field's fallback
    exposure is a guess, and inverting a guessed blur damages sharp frames, 3 dB on a sharp held-out clip)."""
    if exposure_confidence is not None and float(exposure_confidence) <= 0:
        return torch.zeros_like(trajectory)
    return trajectory


def measured_field(field: BlurField) -> BlurField:
    """The field as it is inverted: :func:`measured` on each frame."""
    from dataclasses import replace

    confidence = field.exposure_confidence
    if confidence is None:
        return field
    return replace(field, trajectory=torch.stack([measured(traj, c) for traj, c in zip(field.trajectory, confidence)]))


def deblur_frames(model: UnrolledDeblur, frames: torch.Tensor, field: Optional[BlurField] = None,
                  exposure: Union[float, str] = "auto", progress: Progress = None,
                  check_interrupt: Interrupt = None) -> tuple[torch.Tensor, BlurField]:
    """In-memory front end: (T, 3, H, W) frames (T >= 2) -> deblurred (T, 3, H, W) and the blur field used
    (estimated from the frames when ``field`` is None)."""
    if field is None:
        field = estimate_blur_field(frames, exposure=exposure, check_interrupt=check_interrupt)
    if len(field) != len(frames) or tuple(field.trajectory.shape[-2:]) != tuple(frames.shape[-2:]):
        raise CPGDInputError(f"blur field ({len(field)} frames, {tuple(field.trajectory.shape[-2:])}) does not match "
                             f"the frames ({len(frames)} frames, {tuple(frames.shape[-2:])})")
    out = torch.empty_like(frames, dtype=torch.float32)
    inverted = measured_field(field).trajectory
    for t in range(len(frames)):
        out[t] = deblur_frame(model, frames[t], inverted[t], check_interrupt)
        if progress is not None:
            progress(t + 1, len(frames))
    return out, field


def deblur_stream(model: UnrolledDeblur, frames: Iterable[torch.Tensor], height: int, width: int,
                  exposure: Union[float, str] = "auto", check_interrupt: Interrupt = None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """Streaming front end: (3, H, W) frames in [0, 1] in, (deblurred frame, trajectory, exposure) out, in order.

    Holds only the frames whose blur field is still pending (the exposure is read over a window of frames)."""
    stream = BlurFieldStream(height, width, exposure)
    pending: collections.deque[torch.Tensor] = collections.deque()

    def emit(ready) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        for bf in ready:
            frame = pending.popleft()
            traj = measured(bf.trajectory, bf.exposure_confidence)
            yield deblur_frame(model, frame, traj, check_interrupt), traj, float(bf.exposure)

    for frame in frames:
        if check_interrupt is not None:
            check_interrupt()
        if tuple(frame.shape) != (3, height, width):
            raise CPGDInputError(f"frame of shape {tuple(frame.shape)} in a {width}x{height} stream")
        pending.append(frame)
        yield from emit(stream.push(velocity.grey_u8(frame)))
    yield from emit(stream.finish())
