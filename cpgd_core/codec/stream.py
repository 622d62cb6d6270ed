"""The decoding stream: decoded pictures -> kept frames with their codec priors, one at a time.

Stages, each a generator (memory stays flat in video length): ``_container_raws`` (PyAV decoding with side data,
seeking to a keyframe) -> ``_prefetch`` (a decoding thread a few frames ahead, rasterising and smoothing each
frame's vectors there) -> ``_motion_stage`` (fields into the adjacent frames, multi-reference check, residual)
-> ``_next_stage`` (``flow_to_next`` by inversion where no future vector exists) -> ``_select_stage`` (start /
cap / every_nth, chaining skipped frames' fields, resizing) -> :class:`DecodedFrame`. ``prior_stages`` runs the
stages after decoding (the re-encode fallback feeds it its own decoder's pictures). How vectors become fields is
told in ``decode.py``'s docstring.
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterable, Iterator, Optional

import av
import cv2
import numpy as np
import torch

from ..errors import CPGDInputError
from .hdr import hdr_to_sdr, hdr_transfer
from .motion import compose_np, grid_size, invert_np, mvs_to_flows, resize_grid, smooth_field
from .orientation import rotate_frame_arrays
from .priors import CodecPriors
from .residual import RESIDUAL_CHANNELS, half_size, pick_references_half, residual_of
from .container import _open, _video_stream, av_reason

# MPEG-4 part 2 family: B-frame vectors are exported as zeros (direct mode), i.e. unusable.
_ZERO_B_CODECS = {"mpeg4", "h263", "msmpeg4v2", "msmpeg4v3", "wmv1", "wmv2", "flv1"}
# Codecs whose P-frames may reference several past frames (FFmpeg exports no reference index), and how many
# past anchors are tried (x264's default --ref is 3). The check costs ~15 ms per 720p frame, so it stops for
# the rest of a GOP after MULTI_REF_PROBE P-frames none of which has MULTI_REF_SHARE of its blocks found
# to use a farther reference (one-reference encoders, e.g. most phone hardware encoders). A share, not
# any block: in one-reference x264 streams the test mistakes 0-1.1 % of a frame's blocks (textures that
# repeat along the motion), in three-reference ones up to 28 % of a frame's blocks use a farther one.
_MULTI_REF_CODECS = {"h264"}
MAX_REFS = 3
MULTI_REF_PROBE = 8
MULTI_REF_SHARE = 0.03
_PICT = {1: "I", 2: "P", 3: "B", 4: "P", 5: "I", 6: "P", 7: "B"}  # S -> P, SI -> I, SP -> P, BI -> B
_LUMA_PLANE_FORMATS = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv411p",
                       "yuv410p", "nv12", "nv21", "gray", "yuv440p", "yuvj440p"}
STRIDE = 4
# Output fields are smoothed (motion.smooth_field: closer to the true motion than raw block vectors); the
# residual always uses the codec's own vectors.
SMOOTH_FLOWS = True
# Fixed-point steps of the flow inversion (flow_to_next of P-frames). On smoothed fields two give the same
# median end-point error as three and a lower mean (720p pan/zoom 0.202 -> 0.191 px, moving-disc clip
# 0.410 -> 0.333: a third step overshoots at motion edges), for one grid remap less.
INVERT_ITERATIONS = 2


@dataclass
class DecodedFrame:
    """One kept frame with its priors (numpy, grid shapes as in CodecPriors with ``h, w = ceil(H/4), ceil(W/4)``)."""

    index: int                      # display-order index in the source
    time: float                     # presentation time, seconds
    pict_type: str                  # 'I' / 'P' / 'B'
    rgb: np.ndarray                 # (H, W, 3) uint8
    flow_to_prev: np.ndarray        # (2, h, w) float32 pixels
    valid_to_prev: np.ndarray       # (1, h, w) bool
    flow_to_next: np.ndarray        # (2, h, w) float32 pixels
    valid_to_next: np.ndarray       # (1, h, w) bool
    residual: np.ndarray            # (C, H, W) float16, C = 1 (luma) or 3 (rgb)
    qp: Optional[np.ndarray] = None  # (1, ceil(H/16), ceil(W/16)) float32
    # The decoded picture itself, on the re-encode fallback's source frames only (x264 takes its YUV as is).
    picture: Optional["av.VideoFrame"] = field(default=None, repr=False)


# ------------------------------------------------------------------------------------- raw decoding

@dataclass
class _Raw:
    index: int
    time: float
    pict: str
    frame: "av.VideoFrame"
    mvs: Optional[np.ndarray]
    qp: Optional[np.ndarray]
    _rgb: Optional[np.ndarray] = None
    _planes: dict = field(default_factory=dict)
    _fields: Optional[tuple] = None

    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = frame_to_rgb(self.frame)
        return self._rgb

    def image(self, channels: str) -> np.ndarray:
        """What the residual is computed on: (H, W) luma or (H, W, 3) RGB, uint8 (the luma may be a strided view),
        made once: a frame is the current frame of its own residual and the reference of the next ones."""
        key = ("image", channels)
        if key not in self._planes:
            self._planes[key] = _luma_view(self.frame) if channels == "luma" else self.rgb()
        return self._planes[key]

    def fields(self, height: int, width: int, zero_b_invalid: bool) -> tuple[tuple, tuple]:
        """((past flow, valid), (future flow, valid)) rasterised from the vectors (``motion.mvs_to_flows``),
        and the two flows smoothed (``SMOOTH_FLOWS``); made once, by the decoding thread (``prior_stages``)."""
        if self._fields is None:
            raw = mvs_to_flows(self.mvs, height, width, STRIDE, zero_b_invalid and self.pict == "B")
            self._fields = raw, tuple(smooth_field(f, v) if SMOOTH_FLOWS and v.any() else f for f, v in raw)
        return self._fields

    def half(self, channels: str) -> np.ndarray:
        """:meth:`image` at half resolution for the multi-reference check (residual.half_size), made once."""
        key = ("half", channels)
        if key not in self._planes:
            self._planes[key] = half_size(self.image(channels))
        return self._planes[key]


def frame_to_rgb(fr: "av.VideoFrame") -> np.ndarray:
    """Decoded frame -> (H, W, 3) uint8 RGB, honouring the stream's matrix and range tags; HDR (HLG / PQ)
    frames are converted to SDR BT.709 (``hdr.py``)."""
    kwargs = {"threads": 1}  # see encode.yuv_frame: no per-frame swscale thread pools
    if fr.color_range in (1, 2):  # MPEG (limited) / JPEG (full); unspecified -> pix_fmt decides
        kwargs["src_color_range"] = int(fr.color_range)
        kwargs["dst_color_range"] = 2
    transfer = hdr_transfer(fr)
    if transfer is not None:
        return hdr_to_sdr(fr.to_ndarray(format="rgb48le", **kwargs), transfer)
    return fr.to_ndarray(format="rgb24", **kwargs)


def frame_to_luma(fr: "av.VideoFrame") -> np.ndarray:
    """(H, W) uint8 decoded luma: the Y plane itself when the format has one (exactly what the codec predicted)."""
    return np.ascontiguousarray(_luma_view(fr))


def _luma_view(fr: "av.VideoFrame") -> np.ndarray:
    """:func:`frame_to_luma` without the copy: a strided view into the frame's Y plane where it has one."""
    if fr.format.name in _LUMA_PLANE_FORMATS:
        p = fr.planes[0]
        return np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :fr.width]
    return fr.to_ndarray(format="gray", threads=1)


def _pict_of(fr, has_mvs: bool) -> str:
    try:
        return _PICT.get(int(fr.pict_type), "P" if has_mvs else "I")
    except (TypeError, ValueError):
        return "P" if has_mvs else "I"


def _side(fr, name: str):
    try:
        return fr.side_data.get(name)
    except (KeyError, ValueError, AttributeError):
        return None


def raw_frame(fr, index: int, time: float, export_mvs: bool, export_qp: bool) -> _Raw:
    """What the prior stages need of one decoded PyAV frame (picture, type, motion vectors, QP map)."""
    mvs = None
    if export_mvs:
        sd = _side(fr, "MOTION_VECTORS")
        mvs = sd.to_ndarray() if sd is not None else None
    qp = None
    if export_qp:
        ep = _side(fr, "VIDEO_ENC_PARAMS")
        if ep is not None and ep.nb_blocks:
            qp = np.asarray(ep.qp_map(), np.float32)
    return _Raw(index, time, _pict_of(fr, mvs is not None), fr, mvs, qp)


def _container_raws(path: str, export_mvs: bool, export_qp: bool,
                    check_interrupt: Optional[Callable[[], None]],
                    seek: Optional[tuple[int, int]] = None, container=None) -> Iterator[_Raw]:
    """Decoded frames in display order with their side data. ``seek`` = (display index, pts) of a keyframe
    (:func:`_seek_point`) to start decoding at; a file that does not land there is decoded from the start.
    ``container``: the file already opened (:func:`_open`), closed here like one opened here."""
    c = container if container is not None else _open(path)
    try:
        vs = _video_stream(c, path)
        opts = []
        if export_mvs:
            opts.append("mvs")
        if export_qp:
            opts.append("venc_params")
        if opts:
            vs.codec_context.options = {"export_side_data": "+".join(opts)}
        # Frame threading races with motion-vector export (seen: wrong vectors on the last frame under
        # load); slice threading is safe.
        vs.thread_type = "SLICE" if export_mvs else "AUTO"
        tb = vs.time_base or Fraction(1, 1000)
        index, key_pts = seek if seek is not None else (0, None)
        try:
            if seek is not None:
                c.seek(key_pts, stream=vs, backward=True, any_frame=False)
            for fr in c.decode(vs):
                if check_interrupt is not None:
                    check_interrupt()
                if seek is not None:
                    if fr.pts is not None and fr.pts < key_pts:
                        continue  # open-GOP leading pictures: shown before the keyframe, references missing
                    if fr.pts != key_pts:
                        break
                    seek = None
                t = float(fr.pts * tb) if fr.pts is not None else index / float(vs.average_rate or 25)
                yield raw_frame(fr, index, t, export_mvs, export_qp)
                index += 1
        except av.error.FFmpegError as e:
            if seek is None:  # (while seeking, the decode from the start below reports it)
                raise CPGDInputError(f"corrupt or truncated video {path} (decoding failed after {index} frames: "
                                     f"{av_reason(e)})") from None
    finally:
        c.close()
    if seek is not None:  # the demuxer did not land on the keyframe; nothing was yielded yet: from the start
        yield from _container_raws(path, export_mvs, export_qp, check_interrupt)


# Frames decoded ahead by the decoding thread (bounded: streaming memory stays flat).
PREFETCH = 4
_DONE = object()
# OpenCV threads while priors are computed. The pipeline already keeps the cores busy (decoder threads, the
# decoding thread, the consumer), and OpenCV's own pool on top of that only burns CPU: on 2 cores at 720p,
# OpenCV at its default 2 threads costs 17-19 ms of CPU per frame, at 1 thread 14 (bench/priors.py). More
# cores leave some to OpenCV.
PIPELINE_CV_THREADS = max(1, (os.cpu_count() or 1) - 2)
_cv_lock = threading.Lock()
_cv_state = {"users": 0, "saved": 0}


@contextlib.contextmanager
def pipeline_cv_threads() -> Iterator[None]:
    """OpenCV limited to ``PIPELINE_CV_THREADS`` threads while any prior pipeline runs (a process-wide setting:
    it is restored when the last running pipeline ends)."""
    with _cv_lock:
        if _cv_state["users"] == 0:
            _cv_state["saved"] = cv2.getNumThreads()
            cv2.setNumThreads(min(PIPELINE_CV_THREADS, _cv_state["saved"]))
        _cv_state["users"] += 1
    try:
        yield
    finally:
        with _cv_lock:
            _cv_state["users"] -= 1
            if _cv_state["users"] == 0:
                cv2.setNumThreads(_cv_state["saved"])


def _prefetch(items: Iterable, prepare: Optional[Callable] = None, depth: Optional[int] = None) -> Iterator:
    """Run an iterator in a background thread, ``depth`` items ahead of the consumer.

    Decoding (PyAV), colour conversion (swscale) and OpenCV release the GIL, so with two or more cores the
    decoder works on the next frames while the priors of the current one are computed. ``prepare(item)``
    runs in that thread too. An exception (a corrupt file, a user interrupt from ``check_interrupt``) is
    re-raised in the consumer; a consumer that stops early stops the thread. With one core, or with
    ``depth`` 0, the iterator is consumed in place.
    """
    depth = PREFETCH if depth is None else depth
    if depth <= 0 or (os.cpu_count() or 1) < 2:
        for item in items:
            if prepare is not None:
                prepare(item)
            yield item
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        it = iter(items)
        try:
            for item in it:
                if prepare is not None:
                    prepare(item)
                if not put((item, None)):
                    break
            else:
                put((_DONE, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put((_DONE, e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    t = threading.Thread(target=work, name="cpgd-decode", daemon=True)
    t.start()
    try:
        while True:
            item, err = q.get()
            if item is _DONE:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        t.join()


# ------------------------------------------------------------------------------------ motion stages

@dataclass
class _Motion:
    raw: _Raw
    fprev: np.ndarray
    vprev: np.ndarray
    fnext: np.ndarray  # from future vectors only (B-frames)
    vnext: np.ndarray
    residual: Optional[np.ndarray]


def _motion_stage(raws: Iterable[_Raw], height: int, width: int, zero_b_invalid: bool, want_residual: Callable[[int], bool],
                  residual_channels: str, signed: bool, max_refs: int = 1) -> Iterator[_Motion]:
    """Attach per-frame fields into the adjacent frames (+ residual) to raw frames, in display order.

    With ``max_refs`` > 1 the vectors of a P-frame are checked against that many past anchors
    (:func:`pick_references`) and rescaled to the previous one.
    """
    gh, gw = grid_size(height, width, STRIDE)
    zf = np.zeros((2, gh, gw), np.float32)
    zv = np.zeros((1, gh, gw), bool)
    ch = residual_channels
    prev_anchor: Optional[_Raw] = None
    last: Optional[_Raw] = None
    pending_b: list[_Raw] = []

    anchors: deque[_Raw] = deque(maxlen=max_refs)  # past anchors, nearest last
    probe = {"checked": 0, "far": 0}

    def finish(r: _Raw, past: Optional[_Raw], future: Optional[_Raw]) -> _Motion:
        ((fp, vp), (fn, vn)), (sp, sn) = r.fields(height, width, zero_b_invalid)
        multi_ref = probe["far"] > 0 or probe["checked"] < MULTI_REF_PROBE
        if multi_ref and r.pict == "P" and len(anchors) > 1 and past is anchors[-1] and vp.any():
            refs = [(a.half(ch), r.index - a.index) for a in reversed(anchors)]
            fp, dist = pick_references_half(r.half(ch), refs, fp, vp, STRIDE)
            probe["checked"] += 1
            probe["far"] += int(((dist != refs[0][1]) & vp[0]).sum() >= MULTI_REF_SHARE * vp.sum())
            if (dist != refs[0][1]).any():  # vectors rescaled: smooth them anew
                sp = smooth_field(fp, vp) if SMOOTH_FLOWS else fp
        if past is None:
            vp = zv.copy()
        if future is None:
            vn = zv.copy()
        res = None
        if want_residual(r.index):
            res = residual_of(r.image(ch), past.image(ch) if past is not None else None, fp, vp,
                              future.image(ch) if future is not None else None, fn, vn, STRIDE, signed, np.float16)
        dp = r.index - past.index if past is not None else 1
        dn = future.index - r.index if future is not None else 1
        return _Motion(r, sp / dp if dp > 1 else sp, vp, sn / dn if dn > 1 else sn, vn, res)

    for r in raws:
        if r.pict == "B":
            pending_b.append(r)
            continue
        # The vectors of a P frame point into the previous anchor; a frame without vectors (I) gets the
        # zero-motion residual against the frame displayed just before it (mc_residual's fallback).
        ref = prev_anchor if r.mvs is not None else _last_before(pending_b, prev_anchor, last)
        for b in pending_b:
            yield finish(b, prev_anchor, r)
        pending_b = []
        if r.mvs is None and r.frame.key_frame:
            # A keyframe starts a GOP that references nothing before it, and the multi-reference probe
            # restarts with it: a GOP's priors come out the same whether decoding started there (seeking)
            # or at frame 0.
            anchors.clear()
            probe.update(checked=0, far=0)
        yield finish(r, ref, None)
        prev_anchor = r
        last = r
        anchors.append(r)
    for b in pending_b:
        yield finish(b, prev_anchor, None)


def _last_before(pending_b: list, prev_anchor, last):
    """Frame displayed just before the current anchor (for the zero-motion residual of an I-frame)."""
    return pending_b[-1] if pending_b else (last if last is not None else prev_anchor)


def _next_stage(motions: Iterable[_Motion]) -> Iterator[tuple[_Motion, np.ndarray, np.ndarray]]:
    """Fill ``flow_to_next`` where no future vector exists with the inverse of the next frame's past field."""
    pend: Optional[_Motion] = None
    for m in motions:
        if pend is not None:
            yield pend, *_merge_next(pend, m)
        pend = m
    if pend is not None:
        yield pend, pend.fnext, pend.vnext & False


def _merge_next(cur: _Motion, nxt: _Motion) -> tuple[np.ndarray, np.ndarray]:
    if nxt.raw.index != cur.raw.index + 1 or not nxt.vprev.any():
        return cur.fnext, cur.vnext
    if cur.vnext.all():
        return cur.fnext, cur.vnext
    g, gv = invert_np(nxt.fprev, nxt.vprev, STRIDE, INVERT_ITERATIONS)
    if not cur.vnext.any():  # no future vectors of its own (P-frames): the inverse alone
        return g, gv
    flow = np.where(cur.vnext, cur.fnext, g)
    return flow.astype(np.float32), cur.vnext | gv


# ---------------------------------------------------------------------------------------- selection

def _check_range(start: int, cap: int, every_nth: int) -> None:
    if start < 0:
        raise CPGDInputError(f"start frame must be >= 0, got {start}")
    if cap < 0:
        raise CPGDInputError(f"frame cap must be >= 0 (0 = all), got {cap}")
    if every_nth < 1:
        raise CPGDInputError(f"every_nth must be >= 1, got {every_nth}")


def _check_size(size) -> Optional[tuple[int, int]]:
    if size is None:
        return None
    w, h = int(size[0]), int(size[1])
    if w < 8 or h < 8:
        raise CPGDInputError(f"output size must be at least 8x8 pixels, got {w}x{h}")
    return w, h


def _select_stage(items: Iterable[tuple[_Motion, np.ndarray, np.ndarray]], start: int, cap: int, every_nth: int,
                  size: Optional[tuple[int, int]], src_hw: tuple[int, int], crop_hw: Optional[tuple[int, int]],
                  rgb: bool = True, picture: bool = False) -> Iterator[DecodedFrame]:
    """Keep frames start, start+n, ...; chain skipped frames' fields; resize; yield DecodedFrame (with an
    empty (H, W, 0) ``rgb`` when ``rgb`` is False: a caller that brings its own pixels; with the decoded
    ``picture`` when asked and the frame is neither resized nor cropped)."""
    back_f = back_v = None      # field from the current frame into the last kept frame
    fwd_f = fwd_v = None        # field from the last kept frame into the current frame
    held: Optional[DecodedFrame] = None  # kept frame waiting for its flow_to_next
    kept = 0
    for m, fnext, vnext in items:
        i = m.raw.index
        if i < start:
            continue
        fp, vp = m.fprev, m.vprev
        # Chaining only when frames were skipped: a plain field keeps its out-of-frame vectors valid.
        back_f, back_v = (fp, vp) if back_f is None else compose_np(fp, vp, back_f, back_v, STRIDE)
        is_kept = (i - start) % every_nth == 0
        if held is not None and is_kept:
            held.flow_to_next, held.valid_to_next = _finish_grid(fwd_f, fwd_v, size, src_hw, crop_hw)
            yield held
            held = None
        if is_kept:
            if kept == 0:
                back_v = np.zeros_like(back_v)
            df = _make_frame(m, back_f, back_v, size, src_hw, crop_hw, rgb)
            if picture and crop_hw is None and (size is None or (size[1], size[0]) == tuple(src_hw)):
                df.picture = m.raw.frame
            kept += 1
            back_f = back_v = None
            fwd_f, fwd_v = fnext, vnext
            if cap and kept >= cap:
                df.valid_to_next = np.zeros_like(df.valid_to_next)
                yield df
                return
            held = df
        elif held is not None:
            fwd_f, fwd_v = compose_np(fwd_f, fwd_v, fnext, vnext, STRIDE)
    if held is not None:
        held.valid_to_next = np.zeros_like(held.valid_to_next)
        yield held


def _finish_grid(f: np.ndarray, v: np.ndarray, size, src_hw, crop_hw) -> tuple[np.ndarray, np.ndarray]:
    if crop_hw is not None:
        gh, gw = grid_size(crop_hw[0], crop_hw[1], STRIDE)
        f, v = f[..., :gh, :gw], v[..., :gh, :gw]
        src_hw = crop_hw
    if size is not None and (size[1], size[0]) != tuple(src_hw):
        ft, vt = resize_grid(torch.from_numpy(np.ascontiguousarray(f))[None],
                             torch.from_numpy(np.ascontiguousarray(v))[None], (size[1], size[0]), src_hw, STRIDE)
        f, v = ft[0].numpy(), vt[0].numpy()
    return np.ascontiguousarray(f, dtype=np.float32), np.ascontiguousarray(v, dtype=bool)


def _resize_img(a: np.ndarray, size) -> np.ndarray:
    h, w = a.shape[:2]
    if size is None or (w, h) == tuple(size):
        return a
    interp = cv2.INTER_AREA if size[0] < w else cv2.INTER_CUBIC
    out = cv2.resize(a, tuple(size), interpolation=interp)
    return np.clip(out, 0, 255) if out.dtype == np.uint8 else out


def _make_frame(m: _Motion, back_f, back_v, size, src_hw, crop_hw, with_rgb: bool = True) -> DecodedFrame:
    fr = m.raw.frame
    rgb = m.raw.rgb() if with_rgb else np.empty((fr.height, fr.width, 0), np.uint8)
    res = m.residual
    qp = m.raw.qp
    if crop_hw is not None:
        rgb = rgb[:crop_hw[0], :crop_hw[1]]
        if res is not None:
            res = res[:, :crop_hw[0], :crop_hw[1]]
        if qp is not None:
            qp = qp[:-(-crop_hw[0] // 16), :-(-crop_hw[1] // 16)]
    h, w = rgb.shape[:2]
    if res is None:
        res = np.zeros((1, h, w), np.float16)
    fp, vp = _finish_grid(back_f, back_v, size, src_hw, crop_hw)
    rgb = _resize_img(np.ascontiguousarray(rgb), size)
    if size is not None and (w, h) != tuple(size):
        res = np.stack([cv2.resize(c.astype(np.float32), tuple(size),
                                   interpolation=cv2.INTER_AREA if size[0] < w else cv2.INTER_LINEAR) for c in res], 0)
        if qp is not None:
            qp = cv2.resize(qp, (-(-size[0] // 16), -(-size[1] // 16)), interpolation=cv2.INTER_NEAREST)
    return DecodedFrame(index=m.raw.index, time=m.raw.time, pict_type=m.raw.pict, rgb=rgb,
                        flow_to_prev=fp, valid_to_prev=vp, flow_to_next=np.zeros_like(fp),
                        valid_to_next=np.zeros_like(vp), residual=res.astype(np.float16, copy=False),
                        qp=None if qp is None else qp[None].astype(np.float32))


def _wanted(start: int, cap: int, every_nth: int) -> Callable[[int], bool]:
    """Whether the frame of a display index is kept (start, cap, every_nth)."""
    return lambda i: i >= start and (i - start) % every_nth == 0 and (not cap or (i - start) // every_nth < cap)


def prior_stages(raws: Iterable[_Raw], src_hw: tuple[int, int], codec: str, start: int = 0, cap: int = 0,
                 every_nth: int = 1, size=None, residual_channels: str = "luma", signed: bool = True,
                 crop_hw=None, max_refs: Optional[int] = None, rgb: bool = True) -> Iterator[DecodedFrame]:
    """Decoded pictures (``raw_frame``, in decode order) -> kept frames with their priors, in display order.

    Motion vectors become block-grid flows both ways with validity, the motion-compensated residual is
    computed, frames are selected (start, cap, every_nth), resized to ``size`` and cropped to ``crop_hw``
    (the picture size before an encoder's padding). ``codec`` decides the B-frame and multi-reference rules;
    ``max_refs`` (past references a P-frame may use) overrides the latter: 1 skips the multi-reference check,
    for streams known to have one reference. ``rgb`` False leaves the pixels out (empty (H, W, 0) arrays: the
    re-encode fallback keeps its source's). The pictures are pulled by a decoding thread (``_prefetch``).
    """
    if residual_channels not in RESIDUAL_CHANNELS:
        raise CPGDInputError(f"residual channels must be one of {RESIDUAL_CHANNELS}, got {residual_channels!r}")

    return _cv_limited(_prior_stages(raws, src_hw, codec, start, cap, every_nth, size, residual_channels, signed,
                                     crop_hw, max_refs, rgb))


def _cv_limited(items: Iterator) -> Iterator:
    with pipeline_cv_threads():
        yield from items


def _prior_stages(raws, src_hw, codec, start, cap, every_nth, size, residual_channels, signed, crop_hw, max_refs,
                  rgb) -> Iterator[DecodedFrame]:
    want = _wanted(start, cap, every_nth)
    zero_b = codec in _ZERO_B_CODECS

    def prepare(r: _Raw) -> None:  # in the decoding thread: what depends on the frame alone
        r.fields(src_hw[0], src_hw[1], zero_b)
        # (RGB is converted by the consumer, _make_frame: measured 4-7 % less wall time at 720p and 4K than
        # here, where the decoding thread is the busier side)

    motions = _motion_stage(_prefetch(raws, prepare), src_hw[0], src_hw[1], zero_b, want,
                            residual_channels, signed,
                            max_refs or (MAX_REFS if codec in _MULTI_REF_CODECS else 1))
    return _select_stage(_next_stage(motions), start, cap, every_nth, size, src_hw, crop_hw, rgb)


def _upright(df: DecodedFrame, rotation: int) -> DecodedFrame:
    """The frame and all its priors turned by the file's display rotation (see ``orientation.py``)."""
    if rotation == 0:
        return df
    fields = [(df.flow_to_prev, df.valid_to_prev), (df.flow_to_next, df.valid_to_next)]
    df.rgb, df.residual, df.qp, fields = rotate_frame_arrays(df.rgb, df.residual, df.qp, fields, rotation, STRIDE)
    (df.flow_to_prev, df.valid_to_prev), (df.flow_to_next, df.valid_to_next) = fields
    return df


def priors_from_decoded(frames: list[DecodedFrame], fps: Fraction, source: str) -> CodecPriors:
    """Stack DecodedFrames into a CodecPriors (fp16 fields); motion out of the list is marked invalid."""
    if not frames:
        raise CPGDInputError("no frames to build priors from")
    h, w = frames[0].rgb.shape[:2]
    st = lambda k: torch.from_numpy(np.stack([getattr(f, k) for f in frames], 0))  # noqa: E731
    vp, vn = st("valid_to_prev"), st("valid_to_next")
    vp[0] = False
    vn[-1] = False
    qps = [f.qp for f in frames]
    qp = torch.from_numpy(np.stack(qps, 0)).half() if all(q is not None for q in qps) else None
    return CodecPriors(flow_to_prev=st("flow_to_prev").half(), valid_to_prev=vp, flow_to_next=st("flow_to_next").half(),
                       valid_to_next=vn, residual=st("residual").half(), frame_types=[f.pict_type for f in frames],
                       height=h, width=w, fps=Fraction(fps), flow_stride=STRIDE, qp=qp,
                       source_indices=[f.index for f in frames], source=source)


def frames_to_tensor(frames: list[DecodedFrame], channels_last: bool = False) -> torch.Tensor:
    """(T, 3, H, W) float32 in [0, 1]; ``channels_last``: (T, H, W, 3), the decoded pixels' own layout (and
    ComfyUI's IMAGE layout), which takes one straight converting copy per frame."""
    h, w = frames[0].rgb.shape[:2]
    if channels_last:
        out = torch.empty((len(frames), h, w, 3), dtype=torch.float32)
        for i, f in enumerate(frames):
            out[i].copy_(torch.from_numpy(np.ascontiguousarray(f.rgb)))
        return out.div_(255.0)
    out = torch.empty((len(frames), 3, h, w), dtype=torch.float32)
    for i, f in enumerate(frames):  # one converting copy per plane, no stacked uint8 or channel-last copies
        o = out[i].numpy()
        # OpenCV splits the channels contiguously (a strided channel-last read costs twice as much)
        for c, plane in enumerate(cv2.split(np.ascontiguousarray(f.rgb))):
            o[c] = plane
    return out.div_(255.0)
