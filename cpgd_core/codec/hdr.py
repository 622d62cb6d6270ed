"""HDR video (HLG, PQ / HDR10 / Dolby Vision 8.4 base layers) to the SDR BT.709 frames the pack works in.

Recent phones record HDR by default (BT.2020 primaries, HLG or PQ transfer, 10 bit). Decoded as if it were SDR,
such video looks flat and desaturated, and the restored file keeps that colour shift. Here the decoded
R'G'B' (already through the stream's own BT.2020 matrix) is turned into display light relative to the
BT.2408 reference white (203 cd/m²), highlights above it are rolled off smoothly towards SDR peak white,
the primaries are converted BT.2020 -> BT.709 and the result is encoded with the BT.1886 display gamma.
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np

# FFmpeg AVColorTransferCharacteristic values
_TRANSFERS = {16: "pq", 18: "hlg"}
REFERENCE_WHITE_NITS = 203.0  # ITU-R BT.2408: HDR graphics / diffuse white
HLG_PEAK_NITS = 1000.0        # nominal HLG display (BT.2100 system gamma 1.2)
SDR_GAMMA = 2.4               # BT.1886
KNEE = 0.8                    # relative luminance where the highlight roll-off starts

# ITU-R BT.2087: linear BT.2020 RGB -> linear BT.709 RGB
BT2020_TO_BT709 = np.array([[1.6605, -0.5876, -0.0728],
                            [-0.1246, 1.1329, -0.0083],
                            [-0.0182, -0.1006, 1.1187]], np.float32)
BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], np.float32)

_HLG_A, _HLG_B, _HLG_C = 0.17883277, 0.28466892, 0.55991073
_PQ_M1, _PQ_M2 = 2610 / 16384, 2523 / 4096 * 128
_PQ_C1, _PQ_C2, _PQ_C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32


def hdr_transfer(frame) -> Optional[str]:
    """'hlg', 'pq' or None (SDR) from a decoded ``av.VideoFrame``'s transfer characteristic tag."""
    try:
        return _TRANSFERS.get(int(frame.color_trc or 0))
    except (AttributeError, TypeError, ValueError):
        return None


def _hlg_scene(e: np.ndarray) -> np.ndarray:
    """HLG signal in [0, 1] -> normalised scene light (BT.2100 inverse OETF)."""
    e = np.clip(e, 0.0, 1.0)
    return np.where(e <= 0.5, e * e / 3.0, (np.exp((e - _HLG_C) / _HLG_A) + _HLG_B) / 12.0)


def _pq_nits(e: np.ndarray) -> np.ndarray:
    """PQ signal in [0, 1] -> display light in cd/m² (SMPTE ST 2084 EOTF)."""
    p = np.power(np.clip(e, 0.0, 1.0), 1.0 / _PQ_M2)
    return 10000.0 * np.power(np.maximum(p - _PQ_C1, 0.0) / (_PQ_C2 - _PQ_C3 * p), 1.0 / _PQ_M1)


@functools.lru_cache(maxsize=2)
def _signal_lut(transfer: str) -> np.ndarray:
    """16-bit code -> HLG scene light, or PQ display light relative to reference white (per channel)."""
    e = np.arange(65536, dtype=np.float64) / 65535.0
    lut = _hlg_scene(e) if transfer == "hlg" else _pq_nits(e) / REFERENCE_WHITE_NITS
    return lut.astype(np.float32)


@functools.lru_cache(maxsize=1)
def _gamma_lut() -> np.ndarray:
    """sqrt(linear) in 65536 steps -> SDR 8-bit code. Indexing by the square root keeps the steep start of
    the 1/2.4 power below one code value per step."""
    s = np.arange(65536, dtype=np.float64) / 65535.0
    return np.round(np.power(s, 2.0 / SDR_GAMMA) * 255.0).astype(np.uint8)


def roll_off(y: np.ndarray) -> np.ndarray:
    """Relative luminance -> [0, 1): identity up to KNEE, then an exponential shoulder towards 1."""
    span = 1.0 - KNEE
    return np.where(y <= KNEE, y, KNEE + span * (1.0 - np.exp(-(np.maximum(y, KNEE) - KNEE) / span)))


def hdr_to_sdr(rgb16: np.ndarray, transfer: str) -> np.ndarray:
    """(H, W, 3) uint16 HDR R'G'B' (BT.2020 primaries, full range) -> (H, W, 3) uint8 SDR BT.709 R'G'B'."""
    lin = _signal_lut(transfer)[rgb16]
    y = lin @ BT2020_LUMA
    if transfer == "hlg":  # OOTF: display = 1000 cd/m² * Ys^0.2 * scene, then relative to reference white
        gain = (HLG_PEAK_NITS / REFERENCE_WHITE_NITS) * np.power(np.maximum(y, 1e-12), 0.2)
        lin, y = lin * gain[..., None], y * gain
    lin = lin * (roll_off(y) / np.maximum(y, 1e-12))[..., None]
    lin = np.clip(lin @ BT2020_TO_BT709.T, 0.0, 1.0)
    return _gamma_lut()[(np.sqrt(lin) * 65535.0 + 0.5).astype(np.int32)]
