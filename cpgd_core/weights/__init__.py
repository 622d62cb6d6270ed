"""Shipped weights, their load/save helpers and format detection.

CPFP files are flat safetensors state dicts with metadata ``{"cpgd_format": "cpfp", "config": <CPFPConfig
JSON>, ...extra}``. CPControlNet files are handled by ``weights.cpc``.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import torch

from ..errors import CPGDInputError
from ..fileio import atomic_write
from .reader import read_state_dict

CPFP_FORMAT = "cpfp"
_HERE = os.path.dirname(os.path.abspath(__file__))


def default_cpfp_path() -> str:
    """The bundled lite CPFP weights (may be absent in a source checkout before training)."""
    return os.path.join(_HERE, "cpfp_lite.safetensors")


def _read_keys(path: str) -> tuple[list[str], dict]:
    """Tensor names and metadata without loading the tensors."""
    return read_state_dict(path, load=False)


def _kind_from_keys(keys: list[str], meta: Mapping[str, str]) -> str:
    fmt = meta.get("cpgd_format")
    if fmt:
        return fmt
    ks = {k.removeprefix("module.") for k in keys}
    if any(k.startswith("deform_align.") for k in ks) and any(k.startswith("backbone.") for k in ks):
        # the official BSST-derived layout has a Swin fusion ("reconstruction.main.") and Shift-Net decoder
        official = any(k.startswith("reconstruction.main.") for k in ks) or "concat.0.weight" in ks
        return "cpfp_official" if official else CPFP_FORMAT
    stripped = {k.split("control_model.", 1)[-1] for k in ks}
    if {"middle_block_out.0.weight", "zero_convs.0.0.weight"} <= stripped:
        return "cpcontrolnet"
    return "unknown"


def inspect_weights(path: str) -> str:
    """Detect a weights file's kind by its metadata/keys: 'cpfp' (ours), 'cpfp_official' (the official
    CPGD-Net stage-one layout, not loadable by this architecture), 'cpcontrolnet', or 'unknown'.
    Raises CPGDInputError if the file is missing or unreadable."""
    keys, meta = _read_keys(path)
    return _kind_from_keys(keys, meta)


def save_cpfp(model, path: str, extra_metadata: Optional[Mapping[str, object]] = None) -> None:
    """Write ``model`` (a CPFP, or a DDP/compiled wrapper around one) as safetensors with its config."""
    from safetensors.torch import save_file

    net = getattr(model, "module", model)
    net = getattr(net, "_orig_mod", net)
    meta = {str(k): str(v) for k, v in (extra_metadata or {}).items()}
    meta.update({"cpgd_format": CPFP_FORMAT, "config": net.config.to_json()})
    sd = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        save_file(sd, tmp, metadata=meta)


def read_cpfp_metadata(path: str) -> dict:
    """The metadata of a CPFP safetensors file (config JSON, training recipe, ...)."""
    return _read_keys(path)[1]


def load_cpfp(path: str, device: str | torch.device = "cpu"):
    """Load a CPFP saved by :func:`save_cpfp`; returns the model in eval mode on ``device``."""
    from safetensors.torch import load_file

    from ..models.cpfp import CPFP, CPFPConfig

    keys, meta = _read_keys(path)
    kind = _kind_from_keys(keys, meta)
    if kind == "cpfp_official":
        raise CPGDInputError(f"{path} is an official CPGD-Net stage-one checkpoint (BSST layout with a Swin fusion); "
                             f"this pack's CPFP is a different architecture and cannot load it. Expected a CPFP "
                             f".safetensors written by cpgd_core (python -m cpgd_core.train cpfp).")
    if kind != CPFP_FORMAT:
        raise CPGDInputError(f"{path} is not CPFP weights (detected: {kind}); expected a CPFP .safetensors "
                             f"written by cpgd_core")
    if "config" not in meta:
        raise CPGDInputError(f"{path} has CPFP keys but no 'config' metadata; expected a file written by save_cpfp")
    try:
        config = CPFPConfig.from_json(meta["config"])
    except (ValueError, TypeError) as e:
        raise CPGDInputError(f"{path}: invalid CPFP config metadata: {e}") from e
    if not path.endswith(".safetensors"):
        raise CPGDInputError(f"{path}: CPFP weights must be a .safetensors file")
    sd = load_file(path)
    model = CPFP(config)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CPGDInputError(f"{path} does not match its CPFP config: {str(e)[:500]}") from e
    if missing or unexpected:
        raise CPGDInputError(f"{path} does not match its CPFP config: missing {sorted(missing)[:5]}"
                             f"{'...' if len(missing) > 5 else ''}, unexpected {sorted(unexpected)[:5]}"
                             f"{'...' if len(unexpected) > 5 else ''}")
    return model.eval().to(device)
