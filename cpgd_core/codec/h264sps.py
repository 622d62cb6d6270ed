"""The number of reference frames an H.264 stream declares (``max_num_ref_frames`` of its sequence parameter set).

FFmpeg exports no reference index with the motion vectors, so the decoding loop checks P-frames against several
past frames (``residual.pick_references``); a stream whose SPS allows one reference frame needs no such check.
"""
from __future__ import annotations

from typing import Optional

# profile_idc values whose SPS carries chroma format, bit depths and scaling matrices (H.264 7.3.2.1.1)
_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def bit(self) -> int:
        byte = self.data[self.pos >> 3]  # IndexError past the end: the caller gives up
        self.pos += 1
        return (byte >> (7 - ((self.pos - 1) & 7))) & 1

    def bits(self, n: int) -> int:
        v = 0
        for _ in range(n):
            v = (v << 1) | self.bit()
        return v

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _unescape(nal: bytes) -> bytes:
    """NAL payload without its emulation-prevention bytes (00 00 03 -> 00 00)."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def _sps_nals(extradata: bytes) -> list[bytes]:
    """SPS NAL units (header byte included) of avcC (MP4 / MKV) or Annex B (start codes) extradata."""
    if len(extradata) > 6 and extradata[0] == 1:  # avcC
        n, pos, out = extradata[5] & 0x1F, 6, []
        for _ in range(n):
            size = int.from_bytes(extradata[pos:pos + 2], "big")
            out.append(extradata[pos + 2:pos + 2 + size])
            pos += 2 + size
        return out
    parts = extradata.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01").split(b"\x00\x00\x01")
    return [p for p in parts if p and p[0] & 0x1F == 7]


def _scaling_list(b: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + b.se() + 256) % 256
        last = nxt or last


def _ref_frames(sps: bytes) -> int:
    b = _Bits(_unescape(sps[1:]))
    profile = b.bits(8)
    b.bits(16)  # constraint flags, level_idc
    b.ue()  # seq_parameter_set_id
    if profile in _HIGH_PROFILES:
        chroma = b.ue()
        if chroma == 3:
            b.bit()  # separate_colour_plane_flag
        b.ue()
        b.ue()  # bit depths
        b.bit()  # qpprime_y_zero_transform_bypass_flag
        if b.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if b.bit():
                    _scaling_list(b, 16 if i < 6 else 64)
    b.ue()  # log2_max_frame_num_minus4
    poc_type = b.ue()
    if poc_type == 0:
        b.ue()
    elif poc_type == 1:
        b.bit()
        b.se()
        b.se()
        for _ in range(b.ue()):
            b.se()
    return b.ue()


def h264_ref_frames(extradata: Optional[bytes]) -> int:
    """``max_num_ref_frames`` of the stream's SPS, or 0 when the extradata has none or cannot be read."""
    try:
        refs = [_ref_frames(s) for s in _sps_nals(bytes(extradata or b""))]
    except (IndexError, ValueError):
        return 0
    return max(refs) if refs else 0
