"""The one precision policy: which dtype ``auto`` means on a device, and autocast for the CPFP driver."""
from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch

from .errors import CPGDInputError

DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (``model name``, ``flags``, ...); empty where unreadable."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86 AMX, from /proc/cpuinfo; False where that is unreadable).
    Elsewhere bf16 on the CPU is emulated and slower than fp32."""
    return "amx_bf16" in cpu_info().get("flags", "").split()


def validated_in_bf16(model: object) -> bool:
    """Whether a network declares itself validated in bf16 (a ``cpu_bf16`` class attribute, as CPFP does; the
    official networks and CPC do not): what ``resolve_dtype``'s ``cpu_bf16`` is given."""
    return bool(getattr(model, "cpu_bf16", False))


def resolve_dtype(name: str, device: torch.device, bf16_ok: Optional[bool] = None,
                  fp16_ok: Optional[bool] = None, cpu_bf16: bool = False) -> str:
    """``name`` itself, or for 'auto': on the CPU fp32, or bf16 where ``cpu_bf16`` and the CPU multiplies bf16 in
    hardware; on an accelerator bf16 where it is supported, else fp16 where it is, else fp32. ``bf16_ok``/``fp16_ok``
    default to what torch reports for CUDA (ComfyUI passes its model management's view of the device).
    ``cpu_bf16`` is for networks validated in bf16 (CPFP: the same validation PSNR to 0.001 dB, 1.65x faster at
    720p on AMX); the convolutions run in bf16 under autocast, the frames and the deformable sampling in fp32."""
    if name not in DTYPE_CHOICES:
        raise CPGDInputError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}; got {name!r}")
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise CPGDInputError("dtype 'fp16' is not supported on CPU: use 'fp32' or 'bf16'")
        return name
    if device.type == "cpu":
        return "bf16" if cpu_bf16 and cpu_multiplies_bf16() else "fp32"
    cuda = device.type == "cuda"
    if bf16_ok if bf16_ok is not None else (cuda and torch.cuda.is_bf16_supported()):
        return "bf16"
    if fp16_ok if fp16_ok is not None else cuda:
        return "fp16"
    return "fp32"


def element_bytes(name: str) -> int:
    """Bytes per activation element of a resolved dtype name."""
    return 4 if name == "fp32" else 2


def autocast(device: torch.device, name: str):
    """Mixed precision for a resolved dtype name (nothing for fp32)."""
    if name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=TORCH_DTYPES[name])
