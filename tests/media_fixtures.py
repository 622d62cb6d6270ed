"""Small real media files for the ComfyUI and server tests, written with PyAV.

Loaded by path from the test modules (``load_media_fixtures()``): ComfyUI's own top-level ``tests``
package shadows ours on sys.path once ComfyUI is booted, so ``import tests.x`` is not usable.
"""
from __future__ import annotations

import math
import os
from fractions import Fraction

import av
import numpy as np

PAN_W, PAN_H, PAN_FRAMES, PAN_FPS, PAN_DX = 128, 96, 12, 25, 4
AUDIO_RATE = 48000


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture (H, W, 3) uint8: block-matching needs structure at several scales."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for cell, amp in ((16, 0.5), (8, 0.3), (4, 0.2)):
        coarse = rng.random((h // cell + 2, w // cell + 2, 3)).astype(np.float32)
        up = np.kron(coarse, np.ones((cell, cell, 1), np.float32))
        # box blur of the blocky field -> smooth blobs without any scipy dependency
        k = cell
        c = np.cumsum(np.cumsum(np.pad(up, ((1, 0), (1, 0), (0, 0))), 0), 1)
        sm = (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)
        img += amp * sm[:h, :w]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def pan_frames(n: int = PAN_FRAMES, w: int = PAN_W, h: int = PAN_H, dx: int = PAN_DX) -> np.ndarray:
    """(n, H, W, 3) uint8; content moves right by ``dx`` px per frame: frame[t](x) = frame[t-1](x - dx),
    so the true flow_to_prev is (-dx, 0) everywhere (away from the entering left border)."""
    base = _texture(h, w + dx * n + 8)
    return np.stack([base[:, dx * (n - t):dx * (n - t) + w] for t in range(n)])


def _add_audio(container, seconds: float, freq: float = 440.0) -> None:
    stream = container.add_stream("aac", rate=AUDIO_RATE)
    stream.layout = "mono"
    total = int(round(seconds * AUDIO_RATE))
    t = np.arange(total, dtype=np.float32) / AUDIO_RATE
    wave = (0.3 * np.sin(2 * math.pi * freq * t)).astype(np.float32)
    pts = 0
    for i in range(0, total, 1024):
        chunk = wave[i:i + 1024][None]
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = pts
        pts += chunk.shape[1]
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_video(path: str, frames: np.ndarray, fps: int = PAN_FPS, audio: bool = False,
                codec: str = "libx264") -> str:
    """Encode (T, H, W, 3) uint8 frames; libx264 with 1 reference, no B-frames, one GOP (exact MVs)."""
    with av.open(path, "w") as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "12", "preset": "veryfast", "x264-params": "bframes=0:ref=1:keyint=250:scenecut=0"}
        if audio:
            _add_audio(c, frames.shape[0] / fps)
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    return path


def write_audio_only(path: str, seconds: float = 0.5) -> str:
    with av.open(path, "w", format="mp4") as c:
        _add_audio(c, seconds)
    return path


def write_no_video_stream(path: str) -> str:
    """A valid MPEG-TS file whose only stream is a data stream (no video, no audio)."""
    with av.open(path, "w", format="mpegts") as c:
        s = c.add_data_stream()
        for i in range(3):
            p = av.Packet(b"not a picture")
            p.stream, p.pts, p.dts = s, i, i
            p.time_base = Fraction(1, 1000)
            c.mux(p)
    return path


def write_truncated(src: str, path: str, keep: float = 0.4) -> str:
    with open(src, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])
    return path


def write_text(path: str) -> str:
    with open(path, "w") as f:
        f.write("this is a text file, not a video\n" * 20)
    return path


def probe(path: str) -> dict:
    """What a player would see: frame count, fps, and video/audio durations in seconds."""
    with av.open(path) as c:
        v = c.streams.video[0] if c.streams.video else None
        out = {"audio": bool(c.streams.audio), "video": v is not None}
        if v is not None:
            frames = [f for f in c.decode(v)]
            out.update(frames=len(frames), fps=float(v.average_rate), width=v.width, height=v.height,
                       video_duration=len(frames) / float(v.average_rate),
                       first=frames[0].to_ndarray(format="rgb24") if frames else None)
    if out["audio"]:
        with av.open(path) as c:
            a = c.streams.audio[0]
            samples = sum(fr.samples for fr in c.decode(a))
            out["audio_duration"] = samples / a.rate
    return out
