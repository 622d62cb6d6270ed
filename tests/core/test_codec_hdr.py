"""HDR (HLG / PQ) phone video is decoded to SDR BT.709 frames that match the scene an SDR camera would give."""
from __future__ import annotations

import os

import av
import numpy as np
import pytest

from cpgd_core.codec.decode import load_video, probe
from cpgd_core.codec.hdr import hdr_to_sdr
from cpgd_core.data.synth import load_photo

# Written independently of cpgd_core.codec.hdr: ITU-R BT.2087 (709 -> 2020) and the BT.2100 forward curves.
BT709_TO_BT2020 = np.array([[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]])
LUMA_2020 = np.array([0.2627, 0.6780, 0.0593])


def _hlg_signal(nits: np.ndarray) -> np.ndarray:
    yd = np.maximum(nits @ LUMA_2020, 1e-9)
    ys = (yd / 1000.0) ** (1 / 1.2)
    e = nits / 1000.0 / (ys ** 0.2)[..., None]
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    return np.where(e <= 1 / 12, np.sqrt(3 * e), a * np.log(np.maximum(12 * e - b, 1e-9)) + c)


def _pq_signal(nits: np.ndarray) -> np.ndarray:
    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    y = (np.clip(nits, 0, None) / 10000.0) ** m1
    return ((c1 + c2 * y) / (1 + c3 * y)) ** m2


def _write_hdr(path: str, rgb_signal: np.ndarray, trc: int, frames: int = 3) -> None:
    """R'G'B' signal (H, W, 3) in [0, 1] -> 10-bit 4:4:4 lossless HEVC tagged BT.2020 + ``trc``."""
    out = av.open(path, "w")
    s = out.add_stream("libx265", rate=24, options={"x265-params": "lossless=1:log-level=error"})
    s.height, s.width = rgb_signal.shape[:2]
    s.pix_fmt = "yuv444p10le"
    cc = s.codec_context
    cc.color_trc, cc.color_primaries, cc.colorspace, cc.color_range = trc, 9, 9, 1
    src = av.VideoFrame.from_ndarray(np.round(rgb_signal * 65535).astype(np.uint16), format="rgb48le")
    yuv = src.reformat(format="yuv444p10le", dst_colorspace="bt2020", src_color_range="JPEG",
                       dst_color_range="MPEG")
    for i in range(frames):
        yuv.pts = i
        yuv.color_trc, yuv.color_primaries, yuv.colorspace, yuv.color_range = trc, 9, 9, 1
        for p in s.encode(yuv):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
    out.close()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


@pytest.mark.parametrize("transfer,trc", [("hlg", 18), ("pq", 16)])
def test_hdr_video_decodes_to_the_sdr_picture(tmp_path, transfer, trc):
    # An SDR BT.709 picture at up to 75 % of reference white (below the highlight roll-off)...
    sdr = load_photo("astronaut")[100:196:, 150:278]
    lin709 = 0.75 * (sdr / 255.0) ** 2.4
    expected = np.round(lin709 ** (1 / 2.4) * 255).astype(np.uint8)
    # ... as an HDR camera would record it: BT.2020 primaries, reference white 203 cd/m².
    nits = (lin709 @ BT709_TO_BT2020.T) * 203.0
    signal = _hlg_signal(nits) if transfer == "hlg" else _pq_signal(nits)
    path = os.path.join(tmp_path, f"{transfer}.mkv")
    _write_hdr(path, np.clip(signal, 0, 1), trc)
    info = probe(path)
    assert info.hdr == transfer and "SDR BT.709" in info.describe()
    x, _, _, _ = load_video(path)
    got = np.round(x[1].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert _psnr(got, expected) > 45.0
    # decoding the same file as if it were SDR is far off (what happened before HDR was handled)
    with av.open(path) as c:
        naive = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert _psnr(naive, expected) < 30.0


@pytest.mark.parametrize("transfer", ["hlg", "pq"])
def test_hdr_highlights_roll_off_monotonically(transfer):
    grey = np.repeat(np.linspace(0, 65535, 4096).astype(np.uint16)[:, None], 3, 1)[None]
    out = hdr_to_sdr(grey, transfer)[0, :, 0].astype(int)
    assert out[0] == 0 and 250 <= out[-1] <= 255
    assert np.all(np.diff(out) >= 0)
