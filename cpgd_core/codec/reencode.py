"""Priors for frames that have no usable bitstream: encode them with libx264 in memory and read its vectors.

Used for image sequences, for codecs whose FFmpeg decoder exports no motion vectors (HEVC, VP9, AV1,
ProRes...) and for training data (synthetic blur -> x264 -> priors, exactly as at inference).
The encoder runs with ``bframes=0:ref=1`` so every vector points into the previous frame and the
residual is the encoder's own. Encoder and decoder are chained packet by packet (no container), so the
stream is processed with a bounded number of frames in flight. x264 needs even sizes: odd frames are
padded by edge replication and every output is cropped back.
"""
from __future__ import annotations

import re
from collections import deque
from fractions import Fraction
from typing import Callable, Iterable, Iterator, Optional, Union

import av
import numpy as np
import torch

from ..errors import CPGDInputError
from .stream import DecodedFrame, frames_to_tensor, prior_stages, priors_from_decoded, raw_frame
from .encode import even_size, frame_rate, pad_to, tag_bt709, to_uint8_hwc, yuv_frame
from .hdr import hdr_transfer
from .priors import CodecPriors

SOURCE = "reencode:libx264"
X264_PARAMS = "bframes=0:ref=1"
_ONE_REF = re.compile(r"(^|:)ref=1(:|$)")


def _x264_input(f: DecodedFrame, width: int, height: int) -> "av.VideoFrame":
    """The frame x264 encodes: the decoded 8-bit 4:2:0 picture as it is where the frame has one of the encoding
    size (no YUV -> RGB -> YUV round trip: it costs more than the decoding), else its RGB converted."""
    pic, f.picture = f.picture, None  # (dropped from the frame: only the pixels in flight stay in memory)
    if (pic is not None and pic.format.name == "yuv420p" and (pic.width, pic.height) == (width, height)
            and pic.color_range != 2 and hdr_transfer(pic) is None):  # (limited-range SDR, as yuv_frame makes)
        return pic
    return yuv_frame(pad_to(f.rgb, width, height), "yuv420p")


def _x264_raws(frames: Iterable[DecodedFrame], width: int, height: int, fps: Fraction, crf: int, preset: str,
               x264_params: str, check_interrupt: Optional[Callable[[], None]] = None):
    """Encode frames (:func:`_x264_input`) and decode them again with motion-vector export; yields decoder
    _Raw frames."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1) / fps
    enc.framerate = fps
    enc.options = {"crf": str(crf), "preset": preset, "x264-params": x264_params}
    tag_bt709(enc)
    dec = av.CodecContext.create("h264", "r")
    dec.options = {"export_side_data": "mvs"}
    dec.thread_type = "SLICE"  # frame threading races with motion-vector export
    index = 0

    def drain(packets):
        nonlocal index
        for pkt in packets:
            for fr in dec.decode(pkt):
                yield raw_frame(fr, index, index / float(fps), True, False)
                index += 1

    for n, f in enumerate(frames):
        if check_interrupt is not None:
            check_interrupt()
        fr = _x264_input(f, width, height)
        fr.pts, fr.time_base = n, enc.time_base  # (a decoded picture comes with its file's time base)
        yield from drain(enc.encode(fr))
    yield from drain(enc.encode(None))
    yield from drain([None])


def reencode_pipeline(src: Iterator[DecodedFrame], fps: Union[float, Fraction] = 25, crf: int = 18,
                      preset: str = "superfast", residual_channels: str = "luma", signed: bool = True,
                      check_interrupt: Optional[Callable[[], None]] = None,
                      keep_decoded: bool = False, x264_params: str = X264_PARAMS) -> Iterator[DecodedFrame]:
    """Replace the priors of a stream of frames with those of their libx264 re-encode.

    The yielded frames keep the source's index/time and (unless ``keep_decoded``) its pixels. The default
    ``x264_params`` (one reference, no B-frames) give vectors that all point at the previous frame.
    """
    src = iter(src)
    first = next(src, None)
    if first is None:
        return
    h, w = first.rgb.shape[:2]
    hp, wp = even_size(h, w)
    held: deque[DecodedFrame] = deque()

    def frames():
        for f in _chain(first, src):
            held.append(f)
            yield f

    raws = _x264_raws(frames(), wp, hp, frame_rate(fps), crf, preset, x264_params, check_interrupt)
    # A stream encoded with one reference needs no multi-reference check (it could only err).
    refs = 1 if _ONE_REF.search(x264_params) else None
    for df in prior_stages(raws, (hp, wp), "h264", 0, 0, 1, None, residual_channels, signed, crop_hw=(h, w),
                           max_refs=refs, rgb=keep_decoded):
        s = held.popleft()
        df.index, df.time = s.index, s.time
        if not keep_decoded:
            df.rgb = s.rgb
        yield df


def _chain(first, rest):
    yield first
    yield from rest


def _frames_source(frames: Union[torch.Tensor, np.ndarray]) -> Iterator[DecodedFrame]:
    arr = to_uint8_hwc(frames)
    if len(arr) == 0:
        raise CPGDInputError("no frames given")
    empty = np.zeros((1, 1, 1), np.float32)
    for i, rgb in enumerate(arr):
        yield DecodedFrame(index=i, time=0.0, pict_type="I", rgb=rgb, flow_to_prev=empty, valid_to_prev=empty > 0,
                           flow_to_next=empty, valid_to_next=empty > 0, residual=empty)


def encode_and_extract(frames: Union[torch.Tensor, np.ndarray], fps: Union[float, Fraction] = 25, crf: int = 18,
                       preset: str = "superfast", residual_channels: str = "luma", x264_params: str = X264_PARAMS,
                       ) -> tuple[torch.Tensor, CodecPriors]:
    """Compress (T, 3, H, W) float [0, 1] frames with libx264 and return what a decoder sees.

    Returns the decoded frames (T, 3, H, W) float32 in [0, 1] and their CodecPriors
    (``source='reencode:libx264'``).
    """
    out = list(reencode_pipeline(_frames_source(frames), fps, crf, preset, residual_channels, keep_decoded=True,
                                 x264_params=x264_params))
    for i, f in enumerate(out):
        f.time = i / float(fps)
    return frames_to_tensor(out), priors_from_decoded(out, frame_rate(fps), SOURCE)


def priors_from_frames(frames: Union[torch.Tensor, np.ndarray], fps: Union[float, Fraction] = 25, crf: int = 18,
                       preset: str = "superfast", progress: Optional[Callable[[int, int], None]] = None,
                       check_interrupt: Optional[Callable[[], None]] = None) -> CodecPriors:
    """Codec priors of arbitrary frames (e.g. a ComfyUI IMAGE batch) through a libx264 re-encode."""
    total = int(frames.shape[0])
    out = []
    for f in reencode_pipeline(_frames_source(frames), fps, crf, preset, check_interrupt=check_interrupt):
        out.append(f)
        if progress is not None:
            progress(len(out), total)
    return priors_from_decoded(out, frame_rate(fps), SOURCE)
