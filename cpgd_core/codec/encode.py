"""Writing video: files (with audio) and in-memory H.264 for the re-encode path.

Colour: frames are converted RGB -> YUV with the BT.709 matrix in limited ("tv") range and the stream is
tagged bt709/tv, so players and our own decoder (which honours the tags) convert back identically.
"""
from __future__ import annotations

import io
import os
from fractions import Fraction
from typing import Iterable, Iterator, Optional, Union

import av
import numpy as np
import torch

from ..errors import CPGDInputError
from ..fileio import temporary_path

FrameSource = Union[torch.Tensor, np.ndarray, Iterable[Union[torch.Tensor, np.ndarray]]]

# FFmpeg enum values (AVColorPrimaries / AVColorTransferCharacteristic / AVColorSpace / AVColorRange).
_BT709 = 1
_RANGE_TV = 1


def to_uint8_hwc(frames: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    """(T, 3, H, W) float in [0, 1] or uint8 (tensor or array) -> (T, H, W, 3) uint8."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        if frames.dtype != torch.uint8:
            frames = (frames.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
        frames = frames.numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise CPGDInputError(f"frames must be (T, 3, H, W), got shape {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames.astype(np.float32), 0, 1) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(frames.transpose(0, 2, 3, 1))


def _chunks(frames: FrameSource) -> Iterator[Union[torch.Tensor, np.ndarray]]:
    if isinstance(frames, (torch.Tensor, np.ndarray)):
        yield frames
        return
    yield from frames


_RGB_FORMATS = {"gbrp", "bgr0", "rgb24", "bgr24", "rgb0", "0rgb"}


def yuv_frame(rgb: np.ndarray, pix_fmt: str) -> "av.VideoFrame":
    """(H, W, 3) uint8 RGB -> a PyAV frame in ``pix_fmt`` (BT.709 limited range, tagged; RGB formats as is)."""
    # threads=1: FFmpeg 8's swscale otherwise starts one thread per core for every frame, and many
    # encoding processes at once (training data workers) then fail with EAGAIN from thread creation.
    fr = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    if pix_fmt in _RGB_FORMATS:  # lossless RGB storage (e.g. ffv1 ground truth): no matrix involved
        return fr.reformat(format=pix_fmt, threads=1)
    out = fr.reformat(format=pix_fmt, dst_colorspace="ITU709", src_color_range="JPEG", dst_color_range="MPEG",
                      threads=1)
    out.colorspace = _BT709
    out.color_range = _RANGE_TV
    out.color_primaries = _BT709
    out.color_trc = _BT709
    return out


def _tag_stream(stream) -> None:
    tag_bt709(stream.codec_context)


def tag_bt709(cc) -> None:
    """Tag an encoder context as BT.709 limited range, the matrix ``yuv_frame`` converts with; untagged
    streams are decoded with BT.601 and come back with shifted colours."""
    cc.colorspace = _BT709
    cc.color_range = _RANGE_TV
    cc.color_primaries = _BT709
    cc.color_trc = _BT709


class _StreamEncoder:
    """Encodes RGB chunks into a new video stream of an open container, creating the stream on the first
    frame (its size is only known then); ``on_stream`` runs right after, before anything is muxed, so more
    streams (audio) can still be added."""

    def __init__(self, container, rate: Fraction, codec: str, pix_fmt: str, options: dict, on_stream=None):
        self.container, self.rate, self.codec, self.pix_fmt = container, rate, codec, pix_fmt
        self.options, self.on_stream = options, on_stream
        self.stream = None
        self.count = 0

    def write(self, frames: Union[torch.Tensor, np.ndarray]) -> None:
        for rgb in to_uint8_hwc(frames):
            if self.stream is None:
                self._open(*rgb.shape[:2])
            elif rgb.shape[0] > self.stream.height or rgb.shape[1] > self.stream.width:
                raise CPGDInputError(f"frame size changed mid-video: {rgb.shape[1]}x{rgb.shape[0]} after "
                                     f"{self.stream.width}x{self.stream.height}")
            fr = yuv_frame(pad_to(rgb, self.stream.width, self.stream.height), self.stream.pix_fmt)
            fr.pts = self.count
            fr.time_base = Fraction(1) / self.rate
            for p in self.stream.encode(fr):
                self.container.mux(p)
            self.count += 1

    def _open(self, h: int, w: int) -> None:
        vs = self.container.add_stream(self.codec, rate=self.rate)
        vs.width, vs.height = w, h
        vs.pix_fmt = pix_fmt_for_size(self.pix_fmt, h, w)
        vs.time_base = Fraction(1) / self.rate
        vs.codec_context.options = self.options
        if self.pix_fmt not in _RGB_FORMATS:
            _tag_stream(vs)
        self.stream = vs
        if self.on_stream is not None:
            self.on_stream()

    def flush(self) -> None:
        if self.stream is None:
            raise CPGDInputError("no frames to encode")
        for p in self.stream.encode():
            self.container.mux(p)


def frame_rate(fps) -> Fraction:
    """``fps`` (float or Fraction) as the exact Fraction encoders take; CPGDInputError unless positive."""
    if not fps or float(fps) <= 0:
        raise CPGDInputError(f"fps must be positive, got {fps}")
    return Fraction(fps).limit_denominator(100000)


def _codec_options(codec: str, crf: int, preset: str, x264_params: Optional[str]) -> dict:
    if codec not in ("libx264", "libx265"):
        return {}
    options = {"crf": str(crf), "preset": preset}
    params = x264_params or ""
    if codec == "libx265":  # x265 prints its whole configuration to stderr otherwise
        params = ":".join(p for p in (params, "log-level=error") if p)
    if params:
        options["x264-params" if codec == "libx264" else "x265-params"] = params
    return options


class VideoWriter:
    """Incremental video file writer (bounded memory); the file appears atomically on a clean close.

    ``with VideoWriter(path, fps, audio=...) as w: w.write(chunk)`` where each chunk is (T, 3, H, W) float in
    [0, 1] or uint8. An exception inside the block discards the partial file. Arguments as ``write_video``;
    ``metadata`` are container tags (e.g. ``{"comment": ...}``), read back with ``av.open(path).metadata``.
    """

    def __init__(self, path: str, fps: Union[float, Fraction], audio: Optional[dict] = None, codec: str = "libx264",
                 crf: int = 18, preset: str = "medium", pix_fmt: str = "yuv420p", overwrite: bool = False,
                 x264_params: Optional[str] = None, metadata: Optional[dict[str, str]] = None):
        self.path = os.fspath(path)
        if os.path.exists(self.path) and not overwrite:
            raise CPGDInputError(f"output file already exists: {self.path} (pass overwrite=True to replace it)")
        rate = frame_rate(fps)
        self.audio = audio
        self._astream = []
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._tmp = temporary_path(self.path)
        # bitexact: no random segment UIDs or version strings, so the same frames give the same file.
        self._container = av.open(self._tmp, "w", format=_format_for(self.path), options={"fflags": "+bitexact"})
        self._container.metadata.update(metadata or {})
        add_audio = (lambda: self._astream.append(_add_audio(self._container, audio))) if audio is not None else None
        self._enc = _StreamEncoder(self._container, rate, codec, pix_fmt, _codec_options(codec, crf, preset, x264_params),
                                   add_audio)

    def write(self, frames: Union[torch.Tensor, np.ndarray]) -> None:
        try:
            self._enc.write(frames)
        except BaseException:
            self.abort()
            raise

    def close(self) -> str:
        try:
            try:
                self._enc.flush()
            except CPGDInputError as e:
                raise CPGDInputError(f"{e} ({self.path})") from e
            if self._astream:
                _mux_audio(self._container, self._astream[0], self.audio)
            self._container.close()
        except BaseException:
            self.abort()
            raise
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:  # closing a half-written container can fail; the file is removed anyway
            pass
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path: str, frames: FrameSource, fps: Union[float, Fraction], audio: Optional[dict] = None,
                codec: str = "libx264", crf: int = 18, preset: str = "medium", pix_fmt: str = "yuv420p",
                overwrite: bool = False, x264_params: Optional[str] = None,
                metadata: Optional[dict[str, str]] = None) -> str:
    """Encode frames to a video file, muxing ``audio`` (ComfyUI AUDIO dict) as AAC in sync with frame 0.

    Args:
        frames: (T, 3, H, W) float [0, 1] or uint8, or an iterator of such chunks (bounded memory).
        fps: frame rate. crf/preset: quality knobs for libx264/libx265 (ignored by ffv1 and similar).
        pix_fmt: yuv420p (frames of an odd size are stored 4:4:4, so the file keeps their exact size);
            ``bgr0`` with ffv1 stores RGB losslessly.
        overwrite: refuse to replace an existing file unless True.
        x264_params: extra encoder parameters, e.g. ``bframes=0:ref=1``.
        metadata: container tags, e.g. ``{"comment": ...}``.
    Returns the path. The container follows the extension (.mp4, .mkv, .mov). The file appears atomically
    (written to a temporary name first). Colour is BT.709, limited range, tagged.
    """
    w = VideoWriter(path, fps, audio, codec, crf, preset, pix_fmt, overwrite, x264_params, metadata)
    try:
        for chunk in _chunks(frames):
            w.write(chunk)
    except BaseException:
        w.abort()
        raise
    return w.close()


def _format_for(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return {".mp4": "mp4", ".m4v": "mp4", ".mkv": "matroska", ".mov": "mov", ".webm": "webm", ".avi": "avi"}.get(ext, "mp4")


# Chroma-subsampled formats store whole chroma samples only: 4:2:0 needs even sizes, 4:2:2 an even width.
_SUBSAMPLED = {"yuv420p": (2, 2), "yuvj420p": (2, 2), "nv12": (2, 2), "yuv422p": (2, 1)}
_FULL_CHROMA = {"yuvj420p": "yuvj444p"}


def pix_fmt_for_size(pix_fmt: str, h: int, w: int) -> str:
    """The format a frame of h x w is stored in: ``pix_fmt``, or its 4:4:4 counterpart when the size is odd
    where ``pix_fmt`` subsamples chroma, so the file has exactly the frames' size (H.264's frame cropping
    also counts in chroma samples and cannot help)."""
    sx, sy = _SUBSAMPLED.get(pix_fmt, (1, 1))
    if w % sx or h % sy:
        return _FULL_CHROMA.get(pix_fmt, "yuv444p")
    return pix_fmt


def even_size(h: int, w: int) -> tuple[int, int]:
    """(h, w) rounded up to even: what a 4:2:0 encoder needs (``pad_to`` fills the extra row/column)."""
    return h + h % 2, w + w % 2


def pad_to(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    if rgb.shape[1] == w and rgb.shape[0] == h:
        return rgb
    return np.pad(rgb, ((0, h - rgb.shape[0]), (0, w - rgb.shape[1]), (0, 0)), mode="edge")


def _add_audio(container, audio: dict):
    wav = audio["waveform"]
    sr = int(audio["sample_rate"])
    channels = int(wav.shape[-2])
    a = container.add_stream("aac", rate=sr)
    a.layout = "mono" if channels == 1 else "stereo"
    return a


def _mux_audio(container, a, audio: dict) -> None:
    wav = audio["waveform"]
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().float().numpy()
    wav = np.asarray(wav, np.float32)
    if wav.ndim == 3:
        wav = wav[0]
    channels = 1 if a.layout.name == "mono" else 2
    if wav.shape[0] > channels:  # more than stereo: keep the first two channels
        wav = wav[:channels]
    elif wav.shape[0] < channels:
        wav = np.repeat(wav, channels, 0)
    wav = np.ascontiguousarray(np.clip(wav, -1, 1))
    sr = int(audio["sample_rate"])
    fr = av.AudioFrame.from_ndarray(wav, format="fltp", layout=a.layout.name)
    fr.sample_rate = sr
    fr.pts = 0
    fr.time_base = Fraction(1, sr)
    # The encoder needs fixed-size frames: a resampler with frame_size does the re-chunking.
    rs = av.AudioResampler(format=a.codec_context.format or "fltp", layout=a.layout.name, rate=sr,
                           frame_size=a.codec_context.frame_size or 1024)
    for rf in list(rs.resample(fr)) + list(rs.resample(None)):
        for p in a.encode(rf):
            container.mux(p)
    for p in a.encode():
        container.mux(p)


def encode_h264_bytes(frames: FrameSource, fps: Union[float, Fraction], crf: int = 18, preset: str = "superfast",
                      x264_params: str = "bframes=0:ref=1") -> bytes:
    """Encode frames to an in-memory H.264 MP4 (no audio). Same frame arguments as ``write_video``."""
    buf = io.BytesIO()
    c = av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"})
    try:
        enc = _StreamEncoder(c, frame_rate(fps), "libx264", "yuv420p", _codec_options("libx264", crf, preset, x264_params))
        for chunk in _chunks(frames):
            enc.write(chunk)
        enc.flush()
    finally:
        c.close()
    return buf.getvalue()
