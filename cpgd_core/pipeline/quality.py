"""Stage one's two modes at the front ends (restore node, ``deblur``, ``batch``), and 'quality' mode's plumbing.

'quality' (the default): the blur field and the unrolled non-blind solver (``nonblind.py``, which owns the
algorithm). 'fast': the CPFP network (``restore.py``). This module holds what the front ends share around them:
the choice of mode (one rule for a clip too short to measure blur on), the solver placed on a device, the streamed
file path with flat memory (and exact segment boundaries for ``batch``), and the trajectory picture.
"""
from __future__ import annotations

import copy
import itertools
from typing import Callable, Iterator, Optional, Union

import torch

from ..blur.exposure import SHARP_LENGTH
from ..blur.field import EXPOSURE_WINDOW, BlurField, estimate_blur_field, parse_exposure
from ..blur import velocity
from ..codec.flow import magnitude
from ..errors import CPGDInputError

MODES = ("quality", "fast")
DEFAULT_MODE = "quality"
# The blur field is measured between neighbouring frames: fewer and there is nothing to measure.
MIN_QUALITY_FRAMES = 2
# Trajectory length (px) drawn at full colour in the trajectory picture: a fixed scale (no legend needed, pictures
# of different clips compare); the median strong blur of the motion benchmark is about 14 px.
TRAJECTORY_FULL_PX = 16.0
# Fast mode's trajectory picture measures the motion at a working size whose short side is at most this (the
# default working size up to 720p; coarser above), so the picture costs little next to the network.
PREVIEW_SHORT_SIDE = 360
MAX_ITERATIONS = 64

Progress = Optional[Callable[[int, int], None]]
Interrupt = Optional[Callable[[], None]]


def resolve_mode(mode: str, frame_count: int) -> tuple[str, str]:
    """The mode that runs for a clip of ``frame_count`` frames and a note when it is not the one asked for.

    Quality mode needs motion between frames to know the blur; a single image falls back to fast mode (CPFP
    works on one frame) rather than failing, so still images keep working with the default settings."""
    if mode not in MODES:
        raise CPGDInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "quality" and frame_count < MIN_QUALITY_FRAMES:
        return "fast", (f"quality mode needs at least {MIN_QUALITY_FRAMES} frames to measure the blur, got "
                        f"{frame_count}: ran fast mode (CPFP) instead")
    return mode, ""


def check_iterations(iterations: int) -> int:
    if not 0 <= int(iterations) <= MAX_ITERATIONS:
        raise CPGDInputError(f"iterations must be in [0, {MAX_ITERATIONS}] (0 = the solver's own count), "
                             f"got {iterations}")
    return int(iterations)


def exposure_setting(exposure: Union[str, float]) -> Union[str, float]:
    """'auto' or the checked fixed exposure (CPGDInputError naming the allowed range otherwise)."""
    value = parse_exposure(exposure)
    return "auto" if value is None else value


class DeviceSolver:
    """The solver behind ``nonblind``'s drivers, run on ``device``.

    The drivers keep frames, trajectories and the blended tiles on the CPU and only call ``model(y, trajectory,
    check_interrupt=...)``; this moves each call's inputs to the device and the result back, so the solver runs on
    a GPU without the drivers knowing. ``skip``: return the input unchanged (frames decoded only as context for
    their neighbours' blur field, see ``quality_blocks``)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = torch.device(device)
        self.skip = False

    @property
    def config(self):
        return self.model.config

    @property
    def iterations(self) -> int:
        return int(self.model.config.iterations)

    def __call__(self, y: torch.Tensor, trajectory: torch.Tensor, check_interrupt: Interrupt = None) -> torch.Tensor:
        if self.skip:
            return y
        out = self.model(y.to(self.device), trajectory.to(self.device), check_interrupt=check_interrupt)
        return out.float().cpu()


def load_solver(iterations: int = 0, device: Union[str, torch.device] = "cpu") -> DeviceSolver:
    """The shipped solver (``nonblind.load_deblur``) at ``iterations`` (0 = its own count) on ``device``."""
    from .nonblind import load_deblur, with_iterations

    device = torch.device(device)
    model = with_iterations(load_deblur(), check_iterations(iterations))
    if device.type != "cpu":
        # load_deblur's model is cached and shared (with_iterations shares its denoiser): move a copy
        model = copy.deepcopy(model).to(device)
    return DeviceSolver(model, device)


def context_frames(exposure: Union[str, float]) -> int:
    """Frames on either side that decide a frame's blur field: its neighbours for the velocity and theirs (a
    frame's time centre is chosen against its neighbours' velocities), and with an estimated exposure the window
    the exposure is read over (each of whose frames needs the same)."""
    return 2 if parse_exposure(exposure) is not None else EXPOSURE_WINDOW // 2 + 2


def quality_blocks(solver: DeviceSolver, path: str, exposure: Union[str, float] = "auto", start: int = 0,
                   cap: int = 0, progress: Optional[Callable[[int], None]] = None,
                   check_interrupt: Interrupt = None) -> Iterator[torch.Tensor]:
    """Deblurred (1, 3, H, W) float32 frames of the kept frames [start, start + cap) of a video file (cap 0: to the
    end), streamed through ``nonblind.deblur_stream`` (flat memory). A segment that starts or stops inside the
    video decodes ``context_frames`` more on each side (not deblurred, not returned), so its frames get the blur
    field of a whole-video run and ``batch``'s segments join into the same result."""
    from ..codec.decode import iter_decoded
    from .nonblind import deblur_stream

    reach = context_frames(exposure)
    lead = min(start, reach)
    decoded = iter_decoded(path, start - lead, (lead + cap + reach) if cap else 0, export_mvs=False,
                           check_interrupt=check_interrupt)
    first = next(decoded, None)
    if first is None:
        raise CPGDInputError(f"no frames in the requested range of {path}")
    height, width = first.rgb.shape[:2]
    frames = (torch.from_numpy(f.rgb).permute(2, 0, 1).float().div_(255.0) for f in itertools.chain([first], decoded))
    stream = deblur_stream(solver, frames, height, width, exposure, check_interrupt)
    done = 0
    try:
        for i in itertools.count():
            # deblur_stream deblurs exactly one frame per item, when it is asked for: skip the lead's
            solver.skip = i < lead
            item = next(stream, None)
            if item is None:
                break
            if i < lead:
                continue
            yield item[0][None]
            done += 1
            if progress is not None:
                progress(done)
            if cap and done >= cap:
                break
    finally:
        solver.skip = False
        stream.close()


def preview_trajectory(frames: torch.Tensor, exposure: Union[str, float] = "auto", progress: Progress = None,
                       check_interrupt: Interrupt = None) -> torch.Tensor:
    """(T, 2, H, W) blur trajectories of (T >= 2, 3, H, W) frames for the picture only (fast mode): the blur field
    estimated as quality mode does, with the motion measured at a working size whose short side is at most
    ``PREVIEW_SHORT_SIDE`` (the default size up to 720p)."""
    h, w = frames.shape[-2:]
    scale = min(velocity.working_scale(h, w), PREVIEW_SHORT_SIDE / max(min(h, w), 1))
    return estimate_blur_field(frames, exposure=exposure, progress=progress, check_interrupt=check_interrupt,
                               scale=scale).trajectory


def trajectory_picture(trajectory: torch.Tensor) -> torch.Tensor:
    """(T, 3, H, W) picture of (T, 2, H, W) trajectories on the fixed scale ``TRAJECTORY_FULL_PX``: the Visualise
    Codec Priors node's drawing (hue = axis of the blur, saturation = length, white = sharp)."""
    from ..codec.visualize import trajectory_to_color

    return trajectory_to_color(trajectory, TRAJECTORY_FULL_PX)


def describe_field(field: BlurField, given: bool) -> str:
    """Exposure and blur lengths of a field as it is inverted (``nonblind.measured_field``), in words (the node's
    info), naming the frames left as they came in because their exposure could not be read."""
    e = field.exposure.float()
    length = magnitude(field.trajectory).flatten()
    length = length[:: max(1, length.numel() // 1_000_000)]
    how = "given" if given else f"estimated, per frame {float(e.min()):.2f}-{float(e.max()):.2f}"
    text = (f"exposure {float(e.median()):.2f} ({how}), blur length median {float(length.median()):.1f} px, "
            f"99th percentile {float(torch.quantile(length, 0.99)):.1f} px")
    conf = field.exposure_confidence
    unread = 0 if conf is None else int((conf <= 0).sum())
    if unread:
        text += (f"; the exposure could not be read on {unread} of {len(field)} frames (too little moves): they are "
                 f"returned as they came in (set exposure to a value to deblur them)")
    short = 0 if field.blur_length is None else int(((field.blur_length > 0) & (field.blur_length < SHARP_LENGTH)
                                                      & (field.exposure == 0)).sum())
    if short:
        text += (f"; {short} of {len(field)} frames read as sharp, their blur under {SHARP_LENGTH:g} px (too short to "
                 f"tell from the texture): they are returned as they came in (set exposure to a value to deblur them)")
    return text
