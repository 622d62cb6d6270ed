"""Opening a video file and reading what it is: ``probe`` (size, rate, exact frame count, keyframe table, rotation,
HDR transfer, reference-frame count), the container errors worded for the user, and where to seek for a start frame.

Decoding itself is ``stream.py`` (the prior pipeline) and ``decode.py`` (the entry points).
"""
from __future__ import annotations

import os
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Optional

import av
import numpy as np

from ..errors import CPGDInputError
from .h264sps import h264_ref_frames
from .hdr import hdr_transfer
from .orientation import display_rotation, rotated_hw

# Decoders whose FFmpeg implementation exports MOTION_VECTORS side data (measured, FFmpeg 8.1).
MV_CODECS = {"h264", "mpeg4", "mpeg2video", "mpeg1video", "h263", "msmpeg4v2", "msmpeg4v3", "wmv1", "wmv2", "flv1"}


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


def _source_name(info: VideoInfo, export_mvs: bool) -> str:
    if not export_mvs:
        return "none"
    return f"bitstream:{info.codec}" if info.exports_mvs else "reencode:libx264"


def kept_frame_count(info: VideoInfo, start: int, cap: int, every_nth: int) -> int:
    """How many frames ``load_video(path, start, cap, every_nth)`` returns for a file with this info."""
    n = max(0, -(-(info.frame_count - start) // every_nth))
    return min(n, cap) if cap else n
