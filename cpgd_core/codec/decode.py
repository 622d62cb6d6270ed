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
Where things are: ``container.py`` opens and probes files, ``stream.py`` is the decoding pipeline (vectors ->
fields, residual, selection), ``audio.py`` reads the sound; this module holds the entry points and re-exports the
names callers have always imported from here.
"""
from __future__ import annotations

import itertools
from collections import deque
from typing import Callable, Iterator, Optional

import av
import torch

from ..errors import CPGDInputError
from .audio import read_audio
from .container import (MV_CODECS, VideoInfo, _FirstPicture, _header_info, _open, _seek_point, _source_name,
                        _video_stream, av_reason, kept_frame_count, probe)
from .priors import CodecPriors
from .reencode import reencode_pipeline
from .stream import (INVERT_ITERATIONS, MAX_REFS, MULTI_REF_PROBE, MULTI_REF_SHARE, PIPELINE_CV_THREADS,
                     PREFETCH, SMOOTH_FLOWS, STRIDE, DecodedFrame, _check_range, _check_size, _container_raws,
                     _motion_stage, _next_stage, _prefetch, _Raw, _select_stage, _upright, _wanted, frame_to_luma,
                     frame_to_rgb, frames_to_tensor, pipeline_cv_threads, prior_stages, priors_from_decoded,
                     raw_frame)

__all__ = ["MV_CODECS", "VideoInfo", "DecodedFrame", "probe", "av_reason", "kept_frame_count", "frame_to_rgb",
           "frame_to_luma", "raw_frame", "prior_stages", "priors_from_decoded", "frames_to_tensor",
           "pipeline_cv_threads", "PIPELINE_CV_THREADS", "PREFETCH", "STRIDE", "SMOOTH_FLOWS", "MAX_REFS",
           "MULTI_REF_PROBE", "MULTI_REF_SHARE", "INVERT_ITERATIONS", "iter_decoded", "load_video",
           "iter_video_chunks", "read_audio", "loaded_bytes", "LOADED_BYTES_PER_PIXEL"]


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
