"""The blur field of a video file as ``<stem>_blur_field.npz`` (``python -m cpgd_core priors IN --blur-field``).

Arrays (NumPy ``.npz``, uncompressed):

- ``trajectory`` float32 (T, 2, H, W): displacement (x, y) in pixels of the decoded frame that each pixel sweeps
  during frame t's exposure (sign-invariant);
- ``exposure`` float32 (T,): exposure as a fraction of the frame interval (estimated unless given);
- ``exposure_confidence`` float32 (T,): how well it could be read (1 where given);
- ``blur_length`` float32 (T,), only where the exposure was read: the blur the reading means at the moving pixels'
  mean speed, px (under ``exposure.SHARP_LENGTH`` the exposure reads 0);
- ``confidence`` float16 (T, 1, H, W): where the trajectory is trustworthy (half precision: it is a weight).

Written while streaming: each frame's arrays go to scratch files beside the output as they come, and are copied
into the archive at the end (the frame count is only known then), so memory stays flat in video length.
"""
from __future__ import annotations

import os
import shutil
import zipfile
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..codec.flow import magnitude
from ..errors import CPGDInputError
from ..fileio import atomic_write, temporary_path
from .field import BlurField, iter_blur_field
from .velocity import RaftRefiner

_COPY_CHUNK = 16 << 20


def _add_array(zf: zipfile.ZipFile, name: str, raw_path: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """Add ``name.npy`` to the archive: an .npy header, then the raw C-order bytes of ``raw_path``."""
    with zf.open(name + ".npy", "w", force_zip64=True) as dst:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(dst, header)
        with open(raw_path, "rb") as src:
            shutil.copyfileobj(src, dst, _COPY_CHUNK)


def write_blur_field(path: str, out_path: str, exposure: Union[float, str] = "auto", start: int = 0, cap: int = 0,
                     every_nth: int = 1, size: Optional[tuple[int, int]] = None, overwrite: bool = False,
                     progress: Optional[Callable[[int], None]] = None,
                     check_interrupt: Optional[Callable[[], None]] = None,
                     raft: Optional[RaftRefiner] = None) -> dict:
    """Stream the blur field of ``path`` into ``out_path`` (.npz); returns a summary (frames, size, exposures,
    median |trajectory|). ``raft``: refine the motion with RAFT (``velocity.RaftRefiner``)."""
    if os.path.exists(out_path) and not overwrite:
        raise CPGDInputError(f"output file already exists: {out_path} (use --overwrite)")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)) or ".", exist_ok=True)
    scratch = {k: temporary_path(f"{out_path}.{k}") for k in ("trajectory", "confidence")}  # (hidden)
    exposures, exp_conf, lengths, medians = [], [], [], []
    hw = None
    try:
        with open(scratch["trajectory"], "wb") as ft, open(scratch["confidence"], "wb") as fc:
            for f in iter_blur_field(path, exposure, start, cap, every_nth, size, check_interrupt, raft=raft):
                hw = tuple(f.trajectory.shape[-2:])
                ft.write(f.trajectory.numpy().astype(np.float32, copy=False).tobytes())
                fc.write(f.confidence.numpy().astype(np.float16).tobytes())
                exposures.append(f.exposure)
                exp_conf.append(f.exposure_confidence)
                lengths.append(f.blur_length)
                medians.append(float(magnitude(f.trajectory, dim=0).median()))
                if progress is not None:
                    progress(len(exposures))
        t = len(exposures)
        with atomic_write(out_path) as tmp:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                _add_array(zf, "trajectory", scratch["trajectory"], np.float32, (t, 2) + hw)
                _add_array(zf, "confidence", scratch["confidence"], np.float16, (t, 1) + hw)
                zf.writestr("exposure.npy", _npy(np.asarray(exposures, np.float32)))
                zf.writestr("exposure_confidence.npy", _npy(np.asarray(exp_conf, np.float32)))
                if lengths and all(v is not None for v in lengths):
                    zf.writestr("blur_length.npy", _npy(np.asarray(lengths, np.float32)))
    finally:
        for p in scratch.values():
            if os.path.exists(p):
                os.remove(p)
    return {"path": out_path, "frames": t, "height": hw[0], "width": hw[1],
            "exposure": np.asarray(exposures, np.float32), "exposure_confidence": np.asarray(exp_conf, np.float32),
            "median_trajectory": float(np.median(medians))}


def _npy(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def load_blur_field(path: str) -> BlurField:
    """Read a ``_blur_field.npz`` back (whole, into memory)."""
    if not os.path.isfile(path):
        raise CPGDInputError(f"blur field file not found: {path}")
    with np.load(path) as z:
        missing = [k for k in ("trajectory", "exposure") if k not in z.files]
        if missing:
            raise CPGDInputError(f"{path} is not a blur field file (no {', '.join(missing)})")
        traj = torch.from_numpy(z["trajectory"].astype(np.float32, copy=False))
        conf = (torch.from_numpy(z["confidence"].astype(np.float32)) if "confidence" in z.files
                else torch.ones(traj.shape[0], 1, *traj.shape[-2:]))
        ec = torch.from_numpy(z["exposure_confidence"]) if "exposure_confidence" in z.files else None
        length = torch.from_numpy(z["blur_length"]) if "blur_length" in z.files else None
        return BlurField(traj, torch.from_numpy(z["exposure"].astype(np.float32)), conf, ec, length)
