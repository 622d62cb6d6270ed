"""Video decoding with codec priors (PyAV): probe, a streaming per-frame iterator, whole-clip and chunked loaders.

Motion comes from the decoder's exported motion vectors (``flags2=+export_mvs``); see ``motion.py`` for
the rasteriser and ``residual.py`` for the residual. How vectors become the per-frame fields of
:class:`~.priors.CodecPriors`:

- Frames come out of the decoder in display order. I and P frames are *anchors*; a P-frame's past
  vectors point into the previous anchor, a B-frame's past/future vectors into the anchors around it.
  (This is exact for ``ref=1`` streams without B-pyramid; with more references FFmpeg does not say which
  picture a vector uses, so the nearest anchor is assumed.)
- A vector into a reference ``d`` frames away is divided by ``d`` to give the field into the adjacent
  frame (constant velocity, as H.264 temporal direct mode assumes). B-frames are buffered until their
  future anchor has been decoded.
- ``flow_to_next[t]`` comes from B-frame future vectors where they exist; elsewhere it is the approximate
  inverse (``motion.invert_grid``) of ``flow_to_prev[t+1]``, valid where that back-projection lands on
  known motion. For P-only streams that is the whole field.
- With ``every_nth > 1`` the fields of the skipped frames are chained (``motion.compose_grid``) so that
  they connect *kept* frames; the residual stays the coding residual of the kept frame itself.
- Codecs whose decoder exports no vectors (HEVC, VP9, AV1, ProRes, image formats...) are re-encoded on
  the fly with libx264 (``bframes=0:ref=1``), and the priors of that stream are used; ``priors.source``
  then reads ``reencode:libx264``.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Callable, Iterable, Iterator, Optional

import av
import cv2
import numpy as np
import torch

from ..errors import CPGDInputError
from .h264sps import h264_ref_frames
from .hdr import hdr_to_sdr, hdr_transfer
from .motion import compose_np, grid_size, invert_np, mvs_to_flows, resize_grid, smooth_field
from .orientation import display_rotation, rotate_frame_arrays, rotated_hw
from .priors import CodecPriors
from .residual import RESIDUAL_CHANNELS, half_size, pick_references_half, residual_of

# Decoders whose FFmpeg implementation exports MOTION_VECTORS side data (measured, FFmpeg 8.1).
MV_CODECS = {"h264", "mpeg4", "mpeg2video", "mpeg1video", "h263", "msmpeg4v2", "msmpeg4v3", "wmv1", "wmv2", "flv1"}
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
class VideoInfo:
    """What ``probe`` learns about a file without decoding pictures."""

    path: str
    width: int
    height: int
    fps: Fraction            # average frame rate (frames / duration for variable-rate files)
    frame_count: int         # video packets in the file
    codec: str
    has_audio: bool
    variable_fps: bool
    duration: float          # seconds
    pix_fmt: str = ""
    exports_mvs: bool = True  # False: priors come from a libx264 re-encode
    rotation: int = 0        # clockwise degrees that turn the stored pictures upright; width/height are upright
    hdr: str = ""            # "hlg" / "pq" when the frames are HDR (converted to SDR BT.709 on decoding)
    # (display index, pts) of each keyframe, for seeking to a start frame; empty when timestamps are missing
    keyframes: tuple[tuple[int, int], ...] = field(default=(), repr=False)
    ref_frames: int = 0      # reference frames the H.264 stream declares (h264sps.py); 0: unknown / other codec

    @property
    def coded_hw(self) -> tuple[int, int]:
        """(height, width) of the pictures as stored, before the display rotation."""
        return rotated_hw(self.height, self.width, self.rotation)

    def describe(self) -> str:
        vfr = " (variable)" if self.variable_fps else ""
        rot = f", shown rotated {self.rotation}°" if self.rotation else ""
        hdr = f", HDR ({self.hdr.upper()}) converted to SDR BT.709" if self.hdr else ""
        return (f"{os.path.basename(self.path)}: {self.codec} {self.width}x{self.height}{rot}{hdr} @ "
                f"{float(self.fps):.3f} fps"
                f"{vfr}, {self.frame_count} frames, {self.duration:.2f} s, audio {'yes' if self.has_audio else 'no'}")


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


# --------------------------------------------------------------------------------------------- opening

# Container options for probe: FFmpeg's stream analysis reads the headers without decoding pictures (for an
# H.264 stream it decodes the first ones otherwise, most of the 17-21 ms an open costs at 720p: a second
# decoding of the frames the decoder starts with). probe decodes the one picture it needs itself.
_HEADERS_ONLY = {"skip_frame": "all"}


def _open(path: str, options: Optional[dict] = None) -> "av.container.InputContainer":
    if not isinstance(path, (str, os.PathLike)):
        raise CPGDInputError(f"video path must be a string, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CPGDInputError(f"video file not found: {path}")
    if os.path.isdir(path):
        raise CPGDInputError(f"expected a video file, got a folder: {path}")
    if os.path.getsize(path) == 0:
        raise CPGDInputError(f"video file is empty: {path}")
    try:
        return av.open(path, options=options)
    except av.error.EOFError:  # a valid header and nothing after it (e.g. a zero-frame .mkv)
        raise CPGDInputError(f"no video frames in {path}") from None
    except av.error.FFmpegError as e:
        raise CPGDInputError(f"not a readable media file (corrupt, truncated or not a video): {path} "
                             f"({av_reason(e)})") from None


def av_reason(e: Exception) -> str:
    """FFmpeg's reason for a failure without the errno number and the path PyAV adds to it."""
    reason = getattr(e, "strerror", None) or str(e)
    return reason[:1].lower() + reason[1:]


def _video_stream(container, path: str):
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
        raise CPGDInputError(f"no video stream in {path} (it contains {kinds})")
    return container.streams.video[0]


def probe(path: str) -> VideoInfo:
    """Size, average fps, frame count, codec, audio, variable-rate flag and duration of a video file.

    Demuxes to count frames and check the timestamps, so it is exact for files whose headers lie about the
    frame count (phones, mkv); decodes only the first picture, for its display rotation and HDR transfer.
    """
    with _open(path, _HEADERS_ONLY) as c:
        vs = _video_stream(c, path)
        tb = vs.time_base or Fraction(1, 1000)
        pts: list[int] = []
        key_pts: list[int] = []
        timed = True
        first: Optional[_FirstPicture] = None
        try:
            for pkt in c.demux(vs):
                if first is None:
                    first = _first_picture(vs, pkt, len(pts))
                if pkt.size and pkt.pts is not None:
                    pts.append(pkt.pts)
                    if pkt.is_keyframe:
                        key_pts.append(pkt.pts)
                elif pkt.size:
                    pts.append(len(pts))
                    timed = False
        except av.error.FFmpegError as e:
            raise CPGDInputError(f"corrupt or truncated video {path} ({av_reason(e)})") from None
        if not pts:
            raise CPGDInputError(f"no video frames in {path}")
        info = _header_info(c, vs, path, first or _FirstPicture())
    pts.sort()
    n = len(pts)
    # a keyframe's display index is the number of pictures shown before it
    keyframes = tuple((bisect_right(pts, p) - 1, p) for p in sorted(key_pts)) if timed else ()
    rate = info.fps
    variable = False
    duration = 0.0
    if n >= 2:
        deltas = np.diff(np.asarray(pts, np.int64))
        deltas = deltas[deltas > 0]
        if len(deltas):
            # Muxers round timestamps by a tick; anything beyond that (phones drop/stretch frames) is variable.
            variable = bool(deltas.max() - deltas.min() > max(2, 0.001 * float(np.median(deltas))))
            span = float((pts[-1] - pts[0]) * tb)
            duration = span * n / (n - 1)
            if variable and span > 0:
                rate = Fraction((n - 1) / span).limit_denominator(1001000) or info.fps
    elif n == 1:
        duration = float(1 / rate)
    return replace(info, fps=Fraction(rate), frame_count=n, variable_fps=variable, duration=duration,
                   keyframes=keyframes)


def _header_info(c, vs, path: str, first: "_FirstPicture") -> VideoInfo:
    """What the headers of an open file and its first picture say, without a scan of the file: the frame count
    is the header's (0 if none), the frame rate the average one, no keyframe table, constant rate assumed."""
    codec = vs.codec_context.name
    width, height = vs.codec_context.width, vs.codec_context.height
    if width <= 0 or height <= 0:  # headers without a size: the picture's
        width, height = first.width, first.height
    if width <= 0 or height <= 0:
        raise CPGDInputError(f"video stream without a picture size in {path} (corrupt or unsupported)")
    height, width = rotated_hw(height, width, first.rotation)
    rate = Fraction(vs.average_rate or vs.guessed_rate or 25)
    tb = vs.time_base or Fraction(1, 1000)
    return VideoInfo(path=os.fspath(path), width=width, height=height, fps=rate, frame_count=int(vs.frames or 0),
                     codec=codec, has_audio=bool(c.streams.audio), variable_fps=False,
                     duration=float(vs.duration * tb) if vs.duration else 0.0, pix_fmt=first.pix_fmt,
                     exports_mvs=codec in MV_CODECS, rotation=first.rotation, hdr=first.hdr,
                     ref_frames=h264_ref_frames(vs.codec_context.extradata) if codec == "h264" else 0)


# A decoder may hold back its first picture for a few packets (B-frame reordering, frame threads).
_FIRST_PICTURE_PACKETS = 32


@dataclass
class _FirstPicture:
    """What the first decoded picture says of a file (probe, and decoding without it); the defaults: none decoded."""

    rotation: int = 0
    hdr: str = ""
    pix_fmt: str = ""
    width: int = 0
    height: int = 0

    @classmethod
    def of(cls, fr: "av.VideoFrame") -> "_FirstPicture":
        return cls(display_rotation(fr), hdr_transfer(fr) or "", fr.format.name, fr.width, fr.height)


def _first_picture(vs, pkt, seen: int) -> Optional[_FirstPicture]:
    """The first picture this packet yields; None while none came out yet, the defaults when the first packets
    give none."""
    try:
        for fr in vs.decode(pkt):
            return _FirstPicture.of(fr)
    except av.error.FFmpegError:
        return _FirstPicture()  # an undecodable start is reported by the decoding itself, with its frame number
    return _FirstPicture() if seen >= _FIRST_PICTURE_PACKETS else None


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


def _seek_point(info: VideoInfo, start: int) -> Optional[tuple[int, int]]:
    """The last keyframe (display index, pts) before frame ``start``, or None when there is none past frame 0.

    Decoding from there gives the frames from ``start`` on, with their priors, without decoding everything
    before (minutes for a late start in a long file). It must lie *before* ``start``: an I-frame's residual is
    taken against the picture shown just before it, which must be decoded too.
    """
    best = None
    for index, pts in info.keyframes:
        if index >= start:
            break
        best = (index, pts)
    return best if best is not None and best[0] > 0 else None


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


# -------------------------------------------------------------------------------------- public API

def iter_decoded(path: str, start: int = 0, cap: int = 0, every_nth: int = 1, size: Optional[tuple[int, int]] = None,
                 export_mvs: bool = True, export_qp: bool = False,
                 check_interrupt: Optional[Callable[[], None]] = None, residual_channels: str = "luma",
                 signed_residual: bool = True, info: Optional[VideoInfo] = None) -> Iterator[DecodedFrame]:
    """Stream the kept frames of a video with their priors, one :class:`DecodedFrame` at a time.

    Args:
        path: video file.
        start: first display-order frame to keep. cap: at most this many kept frames (0 = all).
        every_nth: keep every n-th frame from ``start``; the fields connect kept frames.
        size: (width, height) to resize frames and priors to, or None.
        export_mvs: False skips motion (all fields invalid, residual = frame difference).
        export_qp: also return the per-macroblock QP map (H.264 / MPEG-4 only).
        residual_channels / signed_residual: see ``residual.py``.

    Memory is bounded by a few decoded frames (plus the run of B-frames waiting for their anchor).
    Non-MV codecs are re-encoded with libx264 on the fly (see module docstring).
    """
    _check_range(start, cap, every_nth)
    size = _check_size(size)
    if info is None and start == 0:
        info, raws = _unscanned(path, export_mvs, export_qp, check_interrupt)
    else:
        info = info or probe(path)
        raws = None
    coded_hw = info.coded_hw
    if size is not None and info.rotation in (90, 270):  # size is upright; decoding works on stored pictures
        size = (size[1], size[0])
    reencode = _reencodes(info.exports_mvs, export_mvs)
    if raws is None:
        raws = _container_raws(path, export_mvs and not reencode, export_qp and not reencode, check_interrupt,
                               _seek_point(info, start))
    if reencode:
        from .reencode import reencode_pipeline
        want = _wanted(start, cap, every_nth)
        raws = _prefetch(raws, lambda r: r.rgb() if want(r.index) else None)
        src = _select_stage(_next_stage(_motion_stage(raws, coded_hw[0], coded_hw[1], False, lambda i: False, "luma",
                                                      True)), start, cap, every_nth, size, coded_hw, None,
                            picture=True)
        frames = reencode_pipeline(src, info.fps / every_nth, residual_channels=residual_channels,
                                   signed=signed_residual, check_interrupt=check_interrupt)
    else:
        # A stream declaring one reference frame needs no multi-reference check (it could only err).
        frames = prior_stages(raws, coded_hw, info.codec, start, cap, every_nth, size, residual_channels,
                              signed_residual, max_refs=1 if info.ref_frames == 1 else None)
    for df in frames:
        yield _upright(df, info.rotation)


def _reencodes(exports_mvs: bool, export_mvs: bool) -> bool:
    """Whether the priors come from a libx264 re-encode (motion asked for, none exported by the codec): the
    source is then decoded without side data."""
    return export_mvs and not exports_mvs


def _unscanned(path: str, export_mvs: bool, export_qp: bool,
               check_interrupt: Optional[Callable[[], None]]) -> tuple[VideoInfo, Iterator[_Raw]]:
    """Decoding from the first frame without :func:`probe`: the headers of the decoding's own container and its
    first picture say what the decoding needs (codec, size, rotation), and the file is opened once and not scanned
    (probe decodes that first picture too, and reads every packet of the file first).
    Returns the header info (:func:`_header_info`) and the decoded frames, the first one included."""
    c = _open(path)
    try:
        vs = _video_stream(c, path)
    except BaseException:
        c.close()
        raise
    plain = _reencodes(vs.codec_context.name in MV_CODECS, export_mvs)  # the fallback's source decodes plainly
    raws = _container_raws(path, export_mvs and not plain, export_qp and not plain, check_interrupt, container=c)
    try:
        first = next(raws, None)
        if first is None:
            raise CPGDInputError(f"no video frames in {path}")
        info = _header_info(c, vs, path, _FirstPicture.of(first.frame))
    except BaseException:
        raws.close()
        c.close()
        raise
    return info, itertools.chain([first], raws)


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


def _source_name(info: VideoInfo, export_mvs: bool) -> str:
    if not export_mvs:
        return "none"
    return f"bitstream:{info.codec}" if info.exports_mvs else "reencode:libx264"


def kept_frame_count(info: VideoInfo, start: int, cap: int, every_nth: int) -> int:
    """How many frames ``load_video(path, start, cap, every_nth)`` returns for a file with this info."""
    n = max(0, -(-(info.frame_count - start) // every_nth))
    return min(n, cap) if cap else n


# Peak bytes per pixel of one frame loaded by load_video: decoded uint8 RGB and fp16 residual while decoding,
# the residual stacked into the priors, and the float32 frame tensor (with ``channels_last`` it is the ComfyUI
# IMAGE itself: no further copy) make 19; measured peak growth 22.9 (48 frames of 1280x720, either layout:
# frames in flight, fields, allocator slack), rounded up.
LOADED_BYTES_PER_PIXEL = 24


def loaded_bytes(frames: int, width: int, height: int) -> int:
    """Approximate peak memory of loading ``frames`` frames of width x height (see LOADED_BYTES_PER_PIXEL)."""
    return frames * width * height * LOADED_BYTES_PER_PIXEL


def load_video(path: str, start: int = 0, cap: int = 0, every_nth: int = 1, size: Optional[tuple[int, int]] = None,
               progress: Optional[Callable[[int, int], None]] = None,
               check_interrupt: Optional[Callable[[], None]] = None, export_qp: bool = False,
               max_frames_in_memory: Optional[int] = None, export_mvs: bool = True,
               info: Optional[VideoInfo] = None,
               channels_last: bool = False) -> tuple[torch.Tensor, CodecPriors, Optional[dict], str]:
    """Decode a clip with its priors.

    Returns:
        frames (T, 3, H, W) float32 in [0, 1] ((T, H, W, 3) with ``channels_last``); CodecPriors aligned with them; audio trimmed to the kept
        time range as ``{"waveform": (1, C, N) float32, "sample_rate": int}`` or None; an info line.
    Raises:
        CPGDInputError for a missing/unreadable file, no video stream, an empty frame range, or more
        frames than ``max_frames_in_memory`` (use ``iter_video_chunks`` for long videos).
    """
    _check_range(start, cap, every_nth)
    info = info or probe(path)  # callers that probed already pass it: probing demuxes the whole file
    if info.frame_count and start >= info.frame_count:
        raise CPGDInputError(f"start frame {start} is past the end of {path} ({info.frame_count} frames)")
    expected = kept_frame_count(info, start, cap, every_nth)
    if max_frames_in_memory is not None and expected > max_frames_in_memory:
        raise CPGDInputError(f"{path}: {expected} frames would be loaded, more than the limit of "
                             f"{max_frames_in_memory}; lower the frame cap, raise every_nth, or process it in chunks")
    frames: list[DecodedFrame] = []
    for f in iter_decoded(path, start, cap, every_nth, size, export_mvs, export_qp, check_interrupt, info=info):
        frames.append(f)
        if progress is not None:
            progress(len(frames), max(expected, len(frames)))
    if not frames:
        raise CPGDInputError(f"no frames in the requested range of {path} (start {start}, cap {cap})")
    fps = info.fps / every_nth
    priors = priors_from_decoded(frames, fps, _source_name(info, export_mvs))
    audio = None
    if info.has_audio:
        t0 = frames[0].time
        t1 = frames[-1].time + float(1 / fps)
        audio = read_audio(path, t0, t1)
    nth = f", every {every_nth}th" if every_nth > 1 else ""
    fallback = " (no motion vectors in this codec: priors from a libx264 re-encode)" \
        if export_mvs and not info.exports_mvs else ""
    text = (f"{info.describe()}; loaded {len(frames)} frames from {start}{nth} at "
            f"{priors.width}x{priors.height}; {priors.summary()}{fallback}")
    return frames_to_tensor(frames, channels_last), priors, audio, text


def iter_video_chunks(path: str, chunk: int, overlap: int = 0, start: int = 0, cap: int = 0, every_nth: int = 1,
                      size: Optional[tuple[int, int]] = None, export_qp: bool = False,
                      check_interrupt: Optional[Callable[[], None]] = None,
                      ) -> Iterator[tuple[torch.Tensor, CodecPriors, int]]:
    """Bounded-memory processing: yield (frames (T,3,H,W), CodecPriors, first_index) windows of ``chunk`` kept frames.

    Consecutive windows share ``overlap`` frames; ``first_index`` counts kept frames. The last window may be
    shorter. Motion crossing a window edge is marked invalid (as ``CodecPriors.slice`` does).
    """
    if chunk < 1 or overlap < 0 or overlap >= chunk:
        raise CPGDInputError(f"chunk must be >= 1 and 0 <= overlap < chunk, got chunk={chunk}, overlap={overlap}")
    info = probe(path)
    fps = info.fps / every_nth
    src = _source_name(info, True)
    buf: deque[DecodedFrame] = deque()
    first = 0
    emitted_to = 0  # kept frames [0, emitted_to) have been emitted
    total = 0
    for f in iter_decoded(path, start, cap, every_nth, size, True, export_qp, check_interrupt, info=info):
        buf.append(f)
        total += 1
        if len(buf) == chunk:
            yield frames_to_tensor(list(buf)), priors_from_decoded(list(buf), fps, src), first
            emitted_to = first + chunk
            for _ in range(chunk - overlap):
                buf.popleft()
            first += chunk - overlap
    if total == 0:
        raise CPGDInputError(f"no frames in the requested range of {path} (start {start}, cap {cap})")
    if buf and first + len(buf) > emitted_to:
        yield frames_to_tensor(list(buf)), priors_from_decoded(list(buf), fps, src), first


def read_audio(path: str, start_s: float = 0.0, end_s: Optional[float] = None) -> Optional[dict]:
    """Decode the first audio stream between ``start_s`` and ``end_s`` seconds.

    Returns ``{"waveform": (1, C, N) float32 in [-1, 1], "sample_rate": int}`` (ComfyUI AUDIO layout) or None
    when the file has no audio.
    """
    with _open(path) as c:
        if not c.streams.audio:
            return None
        a = c.streams.audio[0]
        sr = a.codec_context.sample_rate or a.rate
        resampler = av.AudioResampler(format="fltp", layout=a.codec_context.layout, rate=sr)
        chunks, first_t = [], None
        try:
            for fr in c.decode(a):
                for rf in resampler.resample(fr):
                    if first_t is None:
                        first_t = float(rf.pts * rf.time_base) if rf.pts is not None else 0.0
                    chunks.append(rf.to_ndarray())
            for rf in resampler.resample(None):
                chunks.append(rf.to_ndarray())
        except av.error.FFmpegError as e:
            raise CPGDInputError(f"corrupt audio in {path} ({av_reason(e)})") from None
    if not chunks:
        return None
    data = np.concatenate(chunks, axis=1).astype(np.float32)
    # Sample index of a time: relative to the first decoded sample (AAC priming is already removed by FFmpeg).
    first_t = first_t or 0.0
    i0 = max(0, int(round((start_s - first_t) * sr)))
    i1 = data.shape[1] if end_s is None else max(i0, int(round((end_s - first_t) * sr)))
    return {"waveform": torch.from_numpy(np.ascontiguousarray(data[:, i0:i1]))[None], "sample_rate": int(sr)}
