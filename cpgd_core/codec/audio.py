"""Audio of a video file, for keeping it with the restored frames (ComfyUI AUDIO layout)."""
from __future__ import annotations

from typing import Optional

import av
import numpy as np
import torch

from ..errors import CPGDInputError
from .container import _open, av_reason


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
