"""BlurField: the trajectory each pixel sweeps during a frame's exposure, the interface of the non-blind stage.

Blur model (``operator.py``): ``y(p) = mean over s in [-1/2, 1/2] of x(p + s * trajectory(p))``, sign-invariant.
The trajectory is the per-pixel velocity between decoded frames (``velocity.py``: DIS at half size, both ways,
refined by RAFT where its weights are given, occlusion-aware, its time centre chosen per frame by re-blurring the
neighbours) times the exposure as a fraction of the frame interval (``exposure.py``: read from the blur along the
motion, per window of ``EXPOSURE_WINDOW`` frames, so it follows a clip whose exposure changes).

Streaming (``BlurFieldStream``, ``iter_blur_field``): frames go in one at a time and come out a few frames later
(``EXPOSURE_WINDOW // 2 + 2``), holding only those frames' half-size motion: flat memory in video length.
``estimate_blur_field`` is the same stream over frames in memory.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Union

import cv2
import numpy as np
import torch

from ..codec.priors import CodecPriors
from ..errors import CPGDInputError
from . import exposure as expo
from . import velocity as vel

# Frames whose correlation curves are summed for one frame's exposure (a segment, centred on it): one frame's
# reading varies by +-0.2 on real footage (GoPro clip, exposure constant: 0.38-0.87 over 9-frame windows, 0.68-0.83
# over 25), while a camera's exposure changes over seconds. The stream holds half of it ahead (half-size fp16 motion).
EXPOSURE_WINDOW = 25


@dataclass
class BlurField:
    """Per-pixel blur of T frames.

    - ``trajectory`` (T, 2, H, W) float32: displacement (x, y) in pixels of the decoded frame swept during frame
      t's exposure (sign-invariant: the blur is symmetric about the frame's centre instant).
    - ``exposure`` (T,) float32: exposure as a fraction of the frame interval (0 = sharp).
    - ``confidence`` (T, 1, H, W) float32 in [0, 1]: where the trajectory is trustworthy (low at occlusions
      and where the motion could not be matched).
    - ``exposure_confidence`` (T,) float32 in [0, 1] or None: how well the exposure could be read (1 when given).
    - ``blur_length`` (T,) float32 or None: the blur the exposure reading means at the moving pixels' mean speed, px,
      before the sharp thresholds (``exposure.blur_length``: under ``exposure.SHARP_LENGTH`` the exposure reads 0);
      None when the exposure was given, not read.
    """

    trajectory: torch.Tensor
    exposure: torch.Tensor
    confidence: torch.Tensor
    exposure_confidence: Optional[torch.Tensor] = None
    blur_length: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.trajectory.shape[0])


@dataclass
class BlurFrame:
    """One frame of a streamed blur field: trajectory (2, H, W), confidence (1, H, W), exposure and its
    confidence, the blur length it was read as (None when given), and its index in the stream."""

    index: int
    trajectory: torch.Tensor
    confidence: torch.Tensor
    exposure: float
    exposure_confidence: float
    blur_length: Optional[float] = None


def parse_exposure(exposure: Union[float, str]) -> Optional[float]:
    """None for 'auto', else the fixed fraction of the frame interval (checked: CPGDInputError outside [0, 1])."""
    if isinstance(exposure, str):
        if exposure.strip().lower() == "auto":
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


@dataclass
class _Pending:
    grey: np.ndarray                      # working-size luma
    init_prev: Optional[np.ndarray]       # codec field on this frame into the previous one, working size
    init_next: Optional[np.ndarray]       # codec field on this frame into the next one
    to_prev: Optional[np.ndarray] = None  # DIS fields, working size
    prev_back: Optional[np.ndarray] = None
    to_next: Optional[np.ndarray] = None
    next_back: Optional[np.ndarray] = None
    agree_next: Optional[np.ndarray] = None  # forward-backward agreement of each side (velocity.fb_confidence)
    agree_prev: Optional[np.ndarray] = None
    central: Optional[np.ndarray] = None  # smoothed central-difference velocity, working size (float32)
    accel: Optional[np.ndarray] = None    # its change across the frame (velocity.acceleration), or None
    velocity: Optional[np.ndarray] = None  # the final one (time centre chosen), float16
    confidence: Optional[np.ndarray] = None
    curves: Optional[expo.Curves] = None
    codes: Optional[tuple] = None          # RAFT features and context (velocity.RaftRefiner.encode), while paired


class BlurFieldStream:
    """Frames in, blur-field frames out, in order, a few frames behind (flat memory).

    ``push`` a frame (with its codec fields, if any) and iterate what it returns; ``finish`` returns the rest.
    """

    def __init__(self, height: int, width: int, exposure: Union[float, str] = "auto", preset: str = "medium",
                 scale: Optional[float] = None, codec_start: bool = False, time_centre: bool = True,
                 raft: Optional[vel.RaftRefiner] = None) -> None:
        self.height, self.width = height, width
        self.fixed = parse_exposure(exposure)
        self.scale = vel.working_scale(height, width) if scale is None else float(scale)
        self.size = (max(1, round(height * self.scale)), max(1, round(width * self.scale)))
        self.engine = vel.dis(preset)
        self.codec_start = codec_start
        self.raft = raft
        self.time_centre = time_centre and self.fixed != 0.0
        self.settled: Optional[_Pending] = None  # the last frame whose velocity is final (a neighbour of the next)
        self.frames: deque[_Pending] = deque()   # from the oldest not yet emitted
        self.first = 0                           # stream index of frames[0]
        self.count = 0
        self.half = EXPOSURE_WINDOW // 2
        self.behind: deque[expo.Curves] = deque(maxlen=self.half)  # curves of the frames just emitted

    def push(self, grey: np.ndarray, flow_to_prev: Optional[np.ndarray] = None,
             valid_to_prev: Optional[np.ndarray] = None, flow_to_next: Optional[np.ndarray] = None,
             valid_to_next: Optional[np.ndarray] = None, rgb: Optional[np.ndarray] = None) -> list[BlurFrame]:
        """Add the next frame: (H, W) uint8 luma, its codec fields on the codec grid ((2, h, w) px, (1, h, w)
        bool) or None, and (H, W, 3) uint8 RGB (needed with ``raft``). Returns the frames that are complete."""
        if grey.shape != (self.height, self.width):
            raise CPGDInputError(f"frame {self.count} is {grey.shape[1]}x{grey.shape[0]}, the stream's frames are "
                                 f"{self.width}x{self.height}")
        codec = self.codec_start and flow_to_prev is not None
        cur = _Pending(vel.downscale(grey, self.scale),
                       vel.codec_init(flow_to_prev, valid_to_prev, self.size, self.scale) if codec else None,
                       vel.codec_init(flow_to_next, valid_to_next, self.size, self.scale) if codec else None)
        if self.raft is not None:
            if rgb is None:
                raise ValueError("RAFT refinement needs each frame's RGB (push(..., rgb=...))")
            cur.codes = self.raft.encode(vel.downscale(rgb, self.scale))
        if self.frames:  # (the previous frame is always held: it is measured only now)
            prev = self.frames[-1]
            prev.to_next = vel.refined_flow(self.engine, prev.grey, cur.grey, prev.init_next)
            cur.to_prev = vel.refined_flow(self.engine, cur.grey, prev.grey, cur.init_prev)
            if self.raft is not None:
                prev.to_next = self.raft.refine(prev.codes, cur.codes, prev.to_next)
                cur.to_prev = self.raft.refine(cur.codes, prev.codes, cur.to_prev)
                prev.codes = None
            cur.prev_back = prev.to_next
            prev.next_back = cur.to_prev
            self._measure(prev)
            if len(self.frames) >= 2:
                self._settle(self.frames[-2], prev)
        self.frames.append(cur)
        self.count += 1
        return self._emit(final=False)

    def finish(self) -> list[BlurFrame]:
        """The frames still held (call once, after the last push)."""
        if not self.frames:
            return []
        if self.count < 2:
            raise CPGDInputError(f"a blur field needs at least 2 consecutive frames, got {self.count}")
        last = self.frames[-1]
        self._measure(last)
        if len(self.frames) >= 2:
            self._settle(self.frames[-2], last)
        self._settle(last, None)
        return self._emit(final=True)

    def _measure(self, p: _Pending) -> None:
        p.agree_next, p.agree_prev = vel.side_confidences(p.to_next, p.next_back, p.to_prev, p.prev_back)
        v, conf = vel.frame_velocity(p.to_next, p.next_back, p.to_prev, p.prev_back, (p.agree_next, p.agree_prev))
        p.central = vel.smooth_velocity(v, conf)
        p.accel = vel.acceleration(p.to_next, p.to_prev, p.agree_next, p.agree_prev) if self.time_centre else None
        # (held until the exposure window ahead is measured: half precision keeps that small at 4K)
        p.confidence = conf.astype(np.float16)
        p.init_prev = p.init_next = p.next_back = p.prev_back = None  # (what is no longer needed leaves memory now)

    def _settle(self, p: _Pending, after: Optional[_Pending]) -> None:
        """Make ``p``'s velocity final once both its neighbours are measured (``after`` None: it has no next)."""
        before = self.settled
        alpha = 0.0
        if p.accel is not None and before is not None and after is not None:
            sides = [(q.grey.astype(np.float32), q.central, to_q, agreement) for q, to_q, agreement in
                     ((after, p.to_next, p.agree_next), (before, p.to_prev, p.agree_prev))]
            alpha = vel.select_time_centre(p.grey.astype(np.float32), p.central, p.accel, sides,
                                           self.fixed or vel.SELECT_EXPOSURE)
        v = p.central + alpha * p.accel if alpha else p.central
        p.velocity = v.astype(np.float16)
        if self.fixed is None:
            # Read along the central difference, as the exposure thresholds were calibrated (SHARP_LENGTH sits
            # just above sharp readings made that way: read along a chosen time centre, a DAVIS clip whose source
            # carries a blur of about 5 px crossed it and lost 6.5 dB inverted, docs/bench/eval_quality.md history)
            p.curves = expo.frame_curves(p.grey, p.central.astype(np.float16).astype(np.float32),
                                         p.confidence.astype(np.float32), self.scale)
        p.accel = None
        p.to_prev = p.to_next = p.agree_next = p.agree_prev = None
        if before is not None:  # (its luma and central velocity were kept for p alone)
            before.grey = before.central = None
        self.settled = p

    def _emit(self, final: bool) -> list[BlurFrame]:
        out = []
        while self.frames and self.frames[0].velocity is not None:
            measured = sum(1 for p in self.frames if p.velocity is not None)
            # An estimated exposure waits for the window's frames ahead of it (fewer at the end of the stream).
            if not final and self.fixed is None and measured <= self.half:
                break
            out.append(self._finish_frame())
        return out

    def _finish_frame(self) -> BlurFrame:
        p = self.frames.popleft()
        index = self.first
        self.first += 1
        length = None
        if self.fixed is not None:
            e, ec = self.fixed, 1.0
        else:
            total = expo.Curves()
            ahead = [q.curves for q in list(self.frames)[:self.half] if q.curves is not None]
            for c in [*self.behind, p.curves, *ahead]:
                total = total + c
            e, ec, length = expo.exposure_from_curves(total)
            self.behind.append(p.curves)
        traj, conf = self._full_size(p.velocity, p.confidence)
        return BlurFrame(index, traj * e, conf, float(e), float(ec), length)

    def _full_size(self, v: np.ndarray, conf: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        v, conf = v.astype(np.float32), conf.astype(np.float32)
        if self.scale != 1.0:
            v = cv2.resize(v, (self.width, self.height), interpolation=cv2.INTER_LINEAR) / self.scale
            conf = cv2.resize(conf, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        return (torch.from_numpy(np.ascontiguousarray(v.transpose(2, 0, 1))),
                torch.from_numpy(np.clip(conf, 0, 1)[None].astype(np.float32)))


def _stack(frames: list[BlurFrame]) -> BlurField:
    return BlurField(trajectory=torch.stack([f.trajectory for f in frames]),
                     exposure=torch.tensor([f.exposure for f in frames], dtype=torch.float32),
                     confidence=torch.stack([f.confidence for f in frames]),
                     exposure_confidence=torch.tensor([f.exposure_confidence for f in frames], dtype=torch.float32),
                     blur_length=None if any(f.blur_length is None for f in frames)
                     else torch.tensor([f.blur_length for f in frames], dtype=torch.float32))


def estimate_blur_field(frames: torch.Tensor, priors: Optional[CodecPriors] = None,
                        exposure: Union[float, str] = "auto",
                        progress: Optional[Callable[[int, int], None]] = None,
                        check_interrupt: Optional[Callable[[], None]] = None, *,
                        codec_start: bool = False, scale: Optional[float] = None,
                        time_centre: bool = True, raft: Optional[vel.RaftRefiner] = None) -> BlurField:
    """The blur field of decoded frames.

    Args:
        frames: (T, 3, H, W) float32 RGB in [0, 1], consecutive decoded frames (T >= 2).
        priors: codec priors aligned 1:1 with ``frames``, or None; with ``codec_start`` their vectors start the
            motion search (off by default: no better on real blur, twice the cost; see ``velocity.py``).
        exposure: fraction of the frame interval the shutter was open, or 'auto' to estimate it (per window of
            ``EXPOSURE_WINDOW`` frames).
        time_centre: choose each frame's time centre (``velocity.select_time_centre``); False: the central
            difference everywhere (the bench's ablation).
        raft: refine each DIS field with RAFT (``velocity.RaftRefiner``), or None.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise CPGDInputError(f"frames must be (T, 3, H, W), got {tuple(frames.shape)}")
    t_count, _, h, w = frames.shape
    if t_count < 2:
        raise CPGDInputError(f"a blur field needs at least 2 consecutive frames, got {t_count}")
    if priors is not None and (len(priors) != t_count or (priors.height, priors.width) != (h, w)):
        raise CPGDInputError(f"priors ({len(priors)} frames, {priors.width}x{priors.height}) are not aligned with "
                             f"the frames ({t_count} frames, {w}x{h})")
    stream = BlurFieldStream(h, w, exposure, codec_start=codec_start, scale=scale, time_centre=time_centre,
                             raft=raft)
    out: list[BlurFrame] = []
    for t in range(t_count):
        if check_interrupt is not None:
            check_interrupt()
        fields = {}
        if priors is not None and codec_start:
            fields = dict(flow_to_prev=priors.flow_to_prev[t].float().numpy(),
                          valid_to_prev=priors.valid_to_prev[t].numpy(),
                          flow_to_next=priors.flow_to_next[t].float().numpy(),
                          valid_to_next=priors.valid_to_next[t].numpy())
        if raft is not None:
            fields["rgb"] = vel.rgb_u8(frames[t])
        out += stream.push(vel.grey_u8(frames[t]), **fields)
        if progress is not None:
            progress(t + 1, t_count)
    out += stream.finish()
    return _stack(out)


def iter_blur_field(path: str, exposure: Union[float, str] = "auto", start: int = 0, cap: int = 0,
                    every_nth: int = 1, size: Optional[tuple[int, int]] = None,
                    check_interrupt: Optional[Callable[[], None]] = None,
                    codec_start: bool = False, raft: Optional[vel.RaftRefiner] = None) -> Iterator[BlurFrame]:
    """Stream the blur field of a video file frame by frame (flat memory). Frame selection as
    ``codec.decode.iter_decoded``; ``codec_start`` and ``raft`` as in :func:`estimate_blur_field`."""
    from ..codec.decode import iter_decoded

    stream: Optional[BlurFieldStream] = None
    for f in iter_decoded(path, start, cap, every_nth, size, export_mvs=codec_start,
                          check_interrupt=check_interrupt):
        if stream is None:
            stream = BlurFieldStream(f.rgb.shape[0], f.rgb.shape[1], exposure, codec_start=codec_start, raft=raft)
        rgb = np.ascontiguousarray(f.rgb)
        yield from stream.push(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), f.flow_to_prev, f.valid_to_prev,
                               f.flow_to_next, f.valid_to_next, rgb if raft is not None else None)
    if stream is None:
        raise CPGDInputError(f"no frames in the requested range of {path}")
    yield from stream.finish()
