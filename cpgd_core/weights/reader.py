"""The one reader of weight files: safetensors, or torch checkpoints loaded with ``weights_only=True``.

A pickle that would run code is refused with a message naming the global it calls (found by reading the
pickle's opcodes, never by executing them); torch's own advice to turn the safety off is not passed on.
"""
from __future__ import annotations

import os
import pickletools
import warnings
import zipfile
from typing import Iterator, Union

import torch

from ..errors import CPGDInputError

# what an ordinary torch.save of a state dict refers to (anything else is code the file wants to run)
_PLAIN_GLOBALS = ("collections.OrderedDict", "torch.", "builtins.set", "_codecs.encode")
# state dicts are often wrapped: {"state_dict": {...}}, BasicSR's {"params_ema": {...}}, {"model": {...}}
_CONTAINERS = ("params_ema", "params", "state_dict", "model")


def read_state_dict(path: str, load: bool = True) -> tuple[Union[dict[str, torch.Tensor], list[str]], dict]:
    """(tensors by name, metadata) of a weights file; with ``load=False`` the tensor names only (cheap).

    safetensors files give their metadata; torch files (.pt/.pth/.ckpt) an empty one. Containers such as
    ``{"state_dict": ...}`` are unwrapped. Raises CPGDInputError with one sentence naming the file and why.
    """
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise CPGDInputError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(path, "pt") as f:
                meta = dict(f.metadata() or {})
                if not load:
                    return list(f.keys()), meta
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except Exception:  # noqa: BLE001 - any parse failure is a bad user file
            raise CPGDInputError(f"cannot read {path}: not a valid safetensors file (corrupt or truncated)") from None
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise next to our own message
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception:  # noqa: BLE001 - torch's message would advise disabling the safety check
        code = _code_global(path)
        if code:
            raise CPGDInputError(f"refused: {path} contains code (pickle global {code}); only safetensors or "
                                 f"plain tensor state dicts are loaded") from None
        raise CPGDInputError(f"cannot read {path}: neither a safetensors file nor a torch state dict") from None
    for key in _CONTAINERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CPGDInputError(f"{name} holds no state dict of tensors ({path})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return (tensors if load else list(tensors)), {}


def _pickles(path: str) -> Iterator[bytes]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for n in z.namelist():
                if n.endswith(".pkl"):
                    yield z.read(n)
    else:
        with open(path, "rb") as f:
            yield f.read()


def _code_global(path: str) -> str:
    """The first global a pickle in ``path`` refers to that a plain state dict never does ('' if none)."""
    try:
        for data in _pickles(path):
            strings: list[str] = []
            for op, arg, _ in pickletools.genops(data):
                if isinstance(arg, str):
                    strings.append(arg)
                if op.name == "GLOBAL":
                    ref = str(arg).replace(" ", ".")
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    ref = f"{strings[-2]}.{strings[-1]}"
                else:
                    continue
                if not ref.startswith(_PLAIN_GLOBALS):
                    mod, _, attr = ref.rpartition(".")
                    return f"os.{attr}" if mod in ("posix", "nt") else ref
    except Exception:  # noqa: BLE001 - not a readable pickle at all: the caller says so
        return ""
    return ""
