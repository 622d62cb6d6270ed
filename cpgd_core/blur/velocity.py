"""Per-pixel velocity between consecutive decoded frames, in the pack's flow convention.

The velocity of frame t is ``v = (f(t->t+1) - f(t->t-1)) / 2``: the central difference of where each pixel of t
is found in its neighbours, in pixels per frame interval. A blurry frame's trajectory is that velocity times the
exposure (``field.py``).

How it is measured (docs/bench/motion.md has the numbers): OpenCV DIS (medium preset) on frames downscaled to
half size where they are large enough (motion-blurred frames have little detail to lose, each pyramid level
covers twice the motion, at a quarter of the cost), both directions. The two neighbours are weighted by their
forward-backward agreement, so at an occlusion the side that still sees the pixel decides (one-sided where only
one agrees), and the result is smoothed by a confidence-weighted Gaussian (a blur kernel varies slowly; single
wrong matches should not make their own).

Two frames a frame interval either side say where a pixel goes over two intervals, not how it moves during the
exposure: a shaken camera changes speed and direction faster than that (real footage blurred over 3-5 source frames:
the best per-frame "time centre" below roughly halves the error of some frames, docs/bench/motion.md). The
exposure's velocity is taken as ``v + alpha * a`` with ``a = (f(t->t+1) + f(t->t-1)) / 2`` (the change of velocity
across the frame: ``alpha`` -1 is the backward flow, 0 the central difference, +1 the forward flow), one ``alpha``
per frame, chosen where the blur says so (``select_time_centre``): blurs commute, so frame t blurred
with its neighbour's trajectory must match the neighbour, aligned to t, blurred with t's, once both trajectories
are right.

The codec's vectors can start the search (``refined_flow``: DIS from them and from zero, per pixel the better
explanation of the frames), but on real blur they did not help: x264's search range cuts fast motion short and
starting there traps DIS (docs/bench/motion.md; the held-out GoPro evaluation found the same), and it doubles the
cost. It is off by default (``codec_start``).

With RAFT weights (``raft-things.pth``, the file the official CPGD-Net path runs) ``RaftRefiner`` refines each DIS
field as the official path refines the codec vectors: RAFT at the working size, started from the field, a few
iterations; each frame's features are computed once and paired in both directions.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import torch

PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
HALF_SIZE_FROM = 360   # frames at least this many px on their short side are measured at half size
SMOOTH_SIGMA = 2.0     # px of the working scale
# Time centres tried per frame (``select_time_centre``), the scale of the working size they are compared at (a
# quarter of the pixels: the comparison is of blur tens of pixels long), the share by which one must explain the
# neighbours better than the central difference to replace it (below it, as on mild blur, the choice is noise:
# it raised the error there), and the exposure the comparison blurs with when the clip's is still unknown (the
# choice barely depends on it: blurs scale together).
TIME_CENTRES = (-1.0, -0.5, 0.0, 0.5, 1.0)
SELECT_SCALE = 0.5
SELECT_MARGIN = 0.01
SELECT_EXPOSURE = 0.75


def working_scale(height: int, width: int) -> float:
    """The scale the motion is measured at: 0.5 for frames of 360p and more, else full size."""
    return 0.5 if min(height, width) >= HALF_SIZE_FROM else 1.0


def rgb_u8(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) float RGB in [0, 1] -> (H, W, 3) uint8."""
    return (frame.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def grey_u8(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) float RGB in [0, 1] -> (H, W) uint8 luma, the input DIS takes."""
    return cv2.cvtColor(rgb_u8(frame), cv2.COLOR_RGB2GRAY)


def downscale(image: np.ndarray, scale: float) -> np.ndarray:
    """(H, W) or (H, W, C) image resized by ``scale`` (area averaging)."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def dis(preset: str = "medium") -> "cv2.DISOpticalFlow":
    """A fresh DIS instance (instances keep state between calls, so each caller owns its own)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown DIS preset {preset!r}; one of {sorted(PRESETS)}")
    return cv2.DISOpticalFlow_create(PRESETS[preset])


def dis_flow(engine: "cv2.DISOpticalFlow", a: np.ndarray, b: np.ndarray,
             init: Optional[np.ndarray] = None) -> np.ndarray:
    """Field on ``a`` pointing into ``b`` ((H, W, 2) float32, x then y): ``a(p) ~ b(p + flow(p))``.

    ``init`` starts the search from a given field instead of zero (OpenCV's DIS takes a flow argument of the
    frame's size as its initial flow).
    """
    if init is None:
        return engine.calc(a, b, None)
    return engine.calc(a, b, np.array(init, dtype=np.float32, order="C"))


def photometric_error(a: np.ndarray, b: np.ndarray, flow: np.ndarray, window: int = 7) -> np.ndarray:
    """Local mean of |a(p) - b(p + flow(p))| over a window (H, W) float32: how well a field explains the frames."""
    return cv2.blur(cv2.absdiff(a, _warp(b, flow)).astype(np.float32), (window, window))


def refined_flow(engine: "cv2.DISOpticalFlow", a: np.ndarray, b: np.ndarray,
                 init: Optional[np.ndarray]) -> np.ndarray:
    """Field on ``a`` into ``b``: DIS from zero and DIS started from the codec field, per pixel the one that explains
    the frames better (local photometric error).

    Either start alone loses somewhere: the codec's vectors help where the motion is ambiguous to DIS's coarse
    levels, and trap it where x264's search range cut them short (fast motion, x264 medium searches +-16 px).
    """
    scratch = dis_flow(engine, a, b)
    if init is None:
        return scratch
    started = dis_flow(engine, a, b, init)
    better = photometric_error(a, b, started) < photometric_error(a, b, scratch)
    return np.where(better[..., None], started, scratch)


# The official path refines codec vectors with 4 RAFT iterations (cpgd_official_spec.md, get_bi_flows); a DIS
# field is a closer start than those vectors.
RAFT_ITERS = 4


class RaftRefiner:
    """RAFT-large refining DIS fields at the working size (``raft-things.pth``, loaded by ``weights.load_raft``).

    ``encode`` a frame once ((h, w, 3) uint8 RGB at the working size), then ``refine`` a field on one encoded frame
    into another, started from that field ((h, w, 2) px). RAFT needs sides that are multiples of 8 and at least 128,
    and its convex upsampling reads zeros beyond the outer cells of its 1/8 grid, so frames are padded by one cell
    all round and up to the next multiple (edge pixels repeated) and the result cropped.
    """

    def __init__(self, model: torch.nn.Module, iters: int = RAFT_ITERS) -> None:
        if iters < 1:
            raise ValueError(f"RAFT refinement needs at least 1 iteration, got {iters}")
        self.model = model.eval()
        self.iters = iters
        self.device = next(model.parameters()).device

    @classmethod
    def from_file(cls, path: str, device: Optional[str] = None, iters: int = RAFT_ITERS) -> "RaftRefiner":
        """Load ``raft-things.pth`` (CPGDInputError if it is not RAFT-large weights) onto ``device`` (default:
        CUDA when available)."""
        from ..weights import load_raft

        return cls(load_raft(path, device or ("cuda" if torch.cuda.is_available() else "cpu")), iters)

    @staticmethod
    def _pads(h: int, w: int) -> tuple[int, int]:
        """(bottom, right) padding after the 8 px added above and to the left."""
        return (max(128, -(-(h + 16) // 8) * 8) - h - 8, max(128, -(-(w + 16) // 8) * 8) - w - 8)

    @torch.inference_mode()
    def encode(self, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(matching features, context) of one frame."""
        bottom, right = self._pads(*rgb.shape[:2])
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)[None].float() / 255
        x = torch.nn.functional.pad(x, (8, right, 8, bottom), mode="replicate")
        return self.model.features(x), self.model.context(x)

    @torch.inference_mode()
    def refine(self, a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor],
               flow: np.ndarray) -> np.ndarray:
        """The field on frame ``a`` into ``b`` (both from ``encode``), started from ``flow`` (h, w, 2) float32."""
        h, w = flow.shape[:2]
        bottom, right = self._pads(h, w)
        start = np.pad(flow, ((8, bottom), (8, right), (0, 0)), mode="edge")
        grid = (start.shape[1] // 8, start.shape[0] // 8)
        start = cv2.resize(start, grid, interpolation=cv2.INTER_AREA) / 8   # in 1/8-grid pixels
        init = torch.from_numpy(np.ascontiguousarray(start.transpose(2, 0, 1)))[None].to(self.device)
        out = self.model.iterate(a[0], b[0], a[1], self.iters, init)
        return np.ascontiguousarray(out[0, :, 8:8 + h, 8:8 + w].permute(1, 2, 0).float().cpu().numpy())


def central_velocity(to_next: Optional[np.ndarray], to_prev: Optional[np.ndarray]) -> np.ndarray:
    """v = (f(t->t+1) - f(t->t-1)) / 2, one-sided where a neighbour is missing. (H, W, 2) float32."""
    if to_next is not None and to_prev is not None:
        return 0.5 * (to_next - to_prev)
    if to_next is not None:
        return to_next
    if to_prev is not None:
        return -to_prev
    raise ValueError("a velocity needs at least one neighbouring frame")


_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    if (h, w) not in _GRIDS:
        _GRIDS[(h, w)] = tuple(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
    return _GRIDS[(h, w)]


def _warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image`` sampled at ``p + flow(p)`` (bilinear, edges replicated): the frame a field points into, on its own
    grid."""
    xs, ys = _grid(*flow.shape[:2])
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def fb_confidence(f_ab: np.ndarray, f_ba: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Soft forward-backward agreement of a field on a (into b) with the field on b (into a), (H, W) in [0, 1].

    Where a pixel of a does not come back to itself (occlusion, wrong match) its motion is not to be trusted;
    the tolerance grows with the motion (Sundaram et al.), since long vectors carry proportionally more error.
    """
    back = _warp(f_ba, f_ab)
    # (per channel, not .sum(-1): numpy reduces a last axis of 2 several times slower, and this runs per frame)
    sx, sy = f_ab[..., 0] + back[..., 0], f_ab[..., 1] + back[..., 1]
    err = sx * sx + sy * sy
    tol = sigma ** 2 + 0.01 * (_square_norm(f_ab) + _square_norm(back))
    return np.exp(-err / (2 * tol)).astype(np.float32)


def _square_norm(v: np.ndarray) -> np.ndarray:
    x, y = v[..., 0], v[..., 1]
    return x * x + y * y


def frame_velocity(to_next: Optional[np.ndarray], next_back: Optional[np.ndarray],
                   to_prev: Optional[np.ndarray], prev_back: Optional[np.ndarray],
                   sides: Optional[tuple[Optional[np.ndarray], Optional[np.ndarray]]] = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Velocity (H, W, 2) and its confidence (H, W) of one frame from its fields to and from its neighbours.

    ``to_next`` is on t into t+1, ``next_back`` on t+1 into t; ``to_prev`` on t into t-1, ``prev_back`` on t-1
    into t (None where the neighbour does not exist). Each side is weighted by its forward-backward agreement
    (``sides``: those agreements, next then previous, where the caller has them already).
    """
    cn, cp = sides or side_confidences(to_next, next_back, to_prev, prev_back)
    if to_next is not None and to_prev is not None:
        wn, wp = cn + 1e-3, cp + 1e-3
        v = (wn[..., None] * to_next - wp[..., None] * to_prev) / (wn + wp)[..., None]
        return v.astype(np.float32), np.maximum(cn, cp)
    if to_next is not None:
        return to_next.astype(np.float32), cn
    if to_prev is not None:
        return (-to_prev).astype(np.float32), cp
    raise ValueError("a velocity needs at least one neighbouring frame")


def side_confidences(to_next: Optional[np.ndarray], next_back: Optional[np.ndarray], to_prev: Optional[np.ndarray],
                     prev_back: Optional[np.ndarray]) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Forward-backward agreement (``fb_confidence``) of the next and of the previous side (None where absent)."""
    return (None if to_next is None else fb_confidence(to_next, next_back),
            None if to_prev is None else fb_confidence(to_prev, prev_back))


def smooth_velocity(v: np.ndarray, confidence: np.ndarray, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
    """Confidence-weighted Gaussian smoothing of a velocity field (H, W, 2)."""
    if sigma <= 0:
        return v
    w = confidence + 1e-3
    den = cv2.GaussianBlur(w, (0, 0), sigma)
    num = cv2.GaussianBlur(v * w[..., None], (0, 0), sigma)
    return (num / den[..., None]).astype(np.float32)


def fill_invalid(flow: torch.Tensor, valid: torch.Tensor, radius: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill cells without a vector (intra, skipped, I-frames) by normalised convolution of their valid neighbours.

    flow (T, 2, h, w), valid (T, 1, h, w) bool on the codec grid. Returns the filled field and the share of valid
    cells around each one (T, 1, h, w) in [0, 1]: 0 where nothing valid lies within ``radius`` cells (left 0).
    """
    v = valid.float()
    k = torch.ones(1, 1, 2 * radius + 1, 2 * radius + 1) / (2 * radius + 1) ** 2
    f = flow.float() * v
    num = torch.nn.functional.conv2d(f.reshape(-1, 1, *f.shape[-2:]), k, padding=radius).reshape(f.shape)
    den = torch.nn.functional.conv2d(v, k, padding=radius)
    filled = torch.where(valid, f, num / den.clamp_min(1e-3)) * (den > 1e-3)
    return filled, den


def codec_init(flow: np.ndarray, valid: np.ndarray, size: tuple[int, int], scale: float) -> Optional[np.ndarray]:
    """A codec field (2, h, w) on its grid, in full-resolution px, as a DIS start at the working size (H, W, 2).

    None where the frame has no valid vector that way (I-frame, first / last frame): DIS then starts from zero.
    """
    if valid is None or not bool(np.any(valid)):
        return None
    filled, _ = fill_invalid(torch.from_numpy(np.asarray(flow, np.float32))[None],
                             torch.from_numpy(np.asarray(valid, bool))[None])
    f = filled[0].permute(1, 2, 0).numpy() * scale
    return cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def codec_velocity(priors, index: Optional[slice] = None) -> torch.Tensor:
    """Central velocity (T, 2, H, W) from codec vectors alone, invalid cells filled, at the frames' resolution.

    One-sided where a frame has vectors only one way (first / last frame, I-frames); zero where it has none.
    (The bench's "codec vectors" row.)
    """
    sl = index if index is not None else slice(None)
    nxt, _ = fill_invalid(priors.flow_to_next[sl], priors.valid_to_next[sl])
    prv, _ = fill_invalid(priors.flow_to_prev[sl], priors.valid_to_prev[sl])
    vn = priors.valid_to_next[sl].flatten(1).any(1).view(-1, 1, 1, 1)
    vp = priors.valid_to_prev[sl].flatten(1).any(1).view(-1, 1, 1, 1)
    v = torch.where(vn & vp, 0.5 * (nxt - prv), torch.where(vn, nxt, -prv))
    return torch.nn.functional.interpolate(v, size=(priors.height, priors.width), mode="bilinear",
                                           align_corners=False)


def acceleration(to_next: Optional[np.ndarray], to_prev: Optional[np.ndarray], conf_next: Optional[np.ndarray],
                 conf_prev: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """``a = (f(t->t+1) + f(t->t-1)) / 2`` (H, W, 2), smoothed and faded out where either side disagrees with its
    way back (``conf_*``: ``fb_confidence`` of each side; an occlusion makes it meaningless); None without both
    neighbours."""
    if to_next is None or to_prev is None:
        return None
    both = np.minimum(conf_next, conf_prev)
    return (smooth_velocity(0.5 * (to_next + to_prev), both) * both[..., None]).astype(np.float32)


def _shrink(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(a, size, interpolation=cv2.INTER_AREA) if a.shape[1::-1] != size else a


def select_time_centre(grey: np.ndarray, velocity: np.ndarray, accel: np.ndarray, sides: list[tuple],
                       exposure: float = SELECT_EXPOSURE) -> float:
    """The ``alpha`` of ``TIME_CENTRES`` whose velocity ``velocity + alpha * accel`` best explains the neighbours.

    Args:
        grey: (h, w) float32 luma of frame t at the working size; ``velocity``, ``accel``: (h, w, 2) of frame t.
        sides: per neighbour ``(grey_n, velocity_n, flow_to_n, agreement)``: its luma and (central) velocity at
            the working size, the field on t into it, and that field's ``fb_confidence``.
        exposure: the fraction the trajectories are velocities times.

    Per neighbour, ``|B(k_n) y_t - B(k_t) y_n|`` over the pixels whose match holds both ways (``y_n`` and ``k_n``
    aligned to t): zero for the right pair of trajectories, since blurs commute. 0 (the central difference) unless
    another is better by ``SELECT_MARGIN``.
    """
    from .operator import TrajectoryBlur, sample_count

    h, w = grey.shape
    size = (max(8, round(w * SELECT_SCALE)), max(8, round(h * SELECT_SCALE)))
    r = size[0] / w
    k_t = torch.from_numpy(np.stack([_shrink(exposure * (velocity + a * accel), size) * r for a in TIME_CENTRES])
                           ).permute(0, 3, 1, 2)
    y_t = torch.from_numpy(_shrink(grey, size))[None, None]
    m = 2  # px at the reduced size: the warps' replicated borders say nothing
    terms = []
    for grey_n, velocity_n, to_n, agreement in sides:
        ok = torch.from_numpy(_shrink(agreement, size) > 0.5)[m:-m, m:-m]
        if bool(ok.any()):
            k_n = torch.from_numpy(_shrink(_warp(exposure * velocity_n, to_n), size) * r).permute(2, 0, 1)[None]
            terms.append((k_n, torch.from_numpy(_shrink(_warp(grey_n, to_n), size))[None, None], ok))
    if not terms:
        return 0.0
    # one sample count for every blur here: torch.quantile over every pixel of each would cost more than the blurs
    samples = sample_count(torch.cat([k_t] + [k_n for k_n, _, _ in terms])[:, :, ::4, ::4])
    cost = torch.zeros(len(TIME_CENTRES))
    for k_n, y_n, ok in terms:
        lhs = TrajectoryBlur(k_n, samples)(y_t)[0, 0]
        rhs = TrajectoryBlur(k_t, samples)(y_n.expand(len(TIME_CENTRES), 1, -1, -1).contiguous())[:, 0]
        cost += (rhs - lhs).abs()[:, m:-m, m:-m][:, ok].mean(1)
    centre = TIME_CENTRES.index(0.0)
    best = int(torch.argmin(cost))
    if float(cost[best]) >= float(cost[centre]) * (1 - SELECT_MARGIN):
        return 0.0
    return float(TIME_CENTRES[best])
