"""Shipped weights, their load/save helpers and format detection.

CPFP files are flat safetensors state dicts with metadata ``{"cpgd_format": "cpfp", "config": <CPFPConfig
JSON>, ...extra}``. Official CPGD-Net stage-one checkpoints (BasicSR ``.pth``) and ``raft-things.pth`` are
recognised by their keys and loaded too. CPControlNet files are handled by ``weights.cpc``.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

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
    if {"fnet.conv1.weight", "cnet.conv1.weight", "update_block.gru.convz1.weight"} <= ks:
        return "raft"
    stripped = {k.split("control_model.", 1)[-1] for k in ks}
    if {"middle_block_out.0.weight", "zero_convs.0.0.weight"} <= stripped:
        return "cpcontrolnet"
    return "unknown"


def inspect_weights(path: str) -> str:
    """Detect a weights file's kind by its metadata/keys: 'cpfp' (ours), 'cpfp_official' (the official
    CPGD-Net stage-one layout, BasicSR ``params``/``params_ema`` wrappers included), 'raft' (raft-things.pth),
    'cpcontrolnet', or 'unknown'.
    Raises CPGDInputError if the file is missing or unreadable."""
    keys, meta = _read_keys(path)
    return _kind_from_keys(keys, meta)


def save_network(model, path: str, fmt: str, extra_metadata: Optional[Mapping[str, object]] = None) -> None:
    """Write ``model`` (a network with a ``config`` dataclass exposing ``to_json``, or a DDP/compiled wrapper
    around one) as safetensors with metadata ``{"cpgd_format": fmt, "config": ..., **extra}``."""
    from safetensors.torch import save_file

    net = getattr(model, "module", model)
    net = getattr(net, "_orig_mod", net)
    meta = {str(k): str(v) for k, v in (extra_metadata or {}).items()}
    meta.update({"cpgd_format": fmt, "config": net.config.to_json()})
    sd = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        save_file(sd, tmp, metadata=meta)


def save_cpfp(model, path: str, extra_metadata: Optional[Mapping[str, object]] = None) -> None:
    """Write ``model`` (a CPFP, or a DDP/compiled wrapper around one) as safetensors with its config."""
    save_network(model, path, CPFP_FORMAT, extra_metadata)


def read_cpfp_metadata(path: str) -> dict:
    """The metadata of a CPFP safetensors file (config JSON, training recipe, ...)."""
    return _read_keys(path)[1]


RAFT_FILE_NAMES = ("raft-things.pth", "raft-things.safetensors", "raft_things.pth", "raft_things.safetensors")


def find_raft_weights(cpfp_path: str, extra_dirs: Sequence[str] = ()) -> Optional[str]:
    """raft-things weights beside an official CPFP checkpoint (how the model zoo is laid out) or in one of
    ``extra_dirs`` (e.g. every models/cpgd folder), or None. ``cpfp_path`` '' searches ``extra_dirs`` only."""
    folders = ([os.path.dirname(os.path.abspath(cpfp_path))] if cpfp_path else []) + list(extra_dirs)
    for folder in folders:
        for name in RAFT_FILE_NAMES:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return None


def load_raft(path: str, device: str | torch.device = "cpu"):
    """Load RAFT-large weights in the ``raft-things.pth`` naming; returns the model in eval mode."""
    from ..models.raft import RAFT

    keys, meta = _read_keys(path)
    kind = _kind_from_keys(keys, meta)
    if kind != "raft":
        raise CPGDInputError(f"{path} is not RAFT weights (detected: {kind}); expected raft-things.pth")
    net = RAFT()
    try:
        net.load_official_state_dict(read_state_dict(path)[0])
    except (ValueError, RuntimeError) as e:
        raise CPGDInputError(f"{path} does not match RAFT large (raft-things.pth layout): {str(e)[:400]}") from e
    return net.eval().to(device)


def load_official_cpfp(path: str, device: str | torch.device = "cpu", raft: Optional[str] = "auto",
                       raft_dirs: Sequence[str] = ()):
    """Load an official CPGD-Net stage-one checkpoint as an :class:`~cpgd_core.models.official_stage_one.OfficialStageOne`.

    ``raft``: 'auto' (raft-things weights beside the checkpoint or in ``raft_dirs``, if present), None /
    'none' (no refinement: the backward flows are the inverted MVs), or a path to the RAFT weights.
    """
    from ..models.cpfp_official import OfficialCPFP, config_from_state_dict
    from ..models.official_stage_one import OfficialStageOne

    sd = read_state_dict(path)[0]
    try:
        net = OfficialCPFP(config_from_state_dict(sd))
        net.load_official_state_dict(sd)
    except (ValueError, RuntimeError) as e:
        raise CPGDInputError(f"{path} looks like an official CPGD-Net stage-one checkpoint but does not match the "
                             f"official CPFP layout: {str(e)[:400]}") from e
    raft_path = find_raft_weights(path, raft_dirs) if raft == "auto" else (None if raft in (None, "none") else raft)
    raft_net = load_raft(raft_path) if raft_path else None
    return OfficialStageOne(net.eval(), raft_net).eval().to(device)


def load_cpfp(path: str, device: str | torch.device = "cpu", raft: Optional[str] = "auto",
              raft_dirs: Sequence[str] = ()):
    """Load stage-one weights: a CPFP saved by :func:`save_cpfp` (returns a CPFP in eval mode), or an official
    checkpoint (returns an ``OfficialStageOne``, see :func:`load_official_cpfp` for ``raft`` and ``raft_dirs``)."""
    from safetensors.torch import load_file

    from ..models.cpfp import CPFP, CPFPConfig

    keys, meta = _read_keys(path)
    kind = _kind_from_keys(keys, meta)
    if kind == "cpfp_official":
        return load_official_cpfp(path, device, raft, raft_dirs)
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


def _network_classes(fmt: str):
    """(model class, config class) of the single-network formats written by :func:`save_network`."""
    if fmt == "prior_denoiser":
        from ..models.prior_denoiser import PriorDenoiser, PriorDenoiserConfig
        return PriorDenoiser, PriorDenoiserConfig
    if fmt == "unrolled_deblur":
        from ..blur.solver import UnrolledDeblur, UnrolledDeblurConfig
        return UnrolledDeblur, UnrolledDeblurConfig
    raise CPGDInputError(f"no network format {fmt!r}")


def load_network(path: str, fmt: str, device: str | torch.device = "cpu"):
    """Load a network written by :func:`save_network` with format ``fmt`` ('prior_denoiser', 'unrolled_deblur');
    returns it in eval mode. A file of another kind, or one that does not match its config, is refused with a
    message naming the file."""
    from safetensors.torch import load_file

    cls, config_cls = _network_classes(fmt)
    keys, meta = _read_keys(path)
    kind = _kind_from_keys(keys, meta)
    if kind != fmt:
        raise CPGDInputError(f"{path} is not {fmt} weights (detected: {kind})")
    try:
        model = cls(config_cls.from_json(meta["config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise CPGDInputError(f"{path}: missing or invalid {fmt} config metadata: {e}") from e
    try:
        model.load_state_dict(load_file(path), strict=True)
    except RuntimeError as e:
        raise CPGDInputError(f"{path} does not match its {fmt} config: {str(e)[:500]}") from e
    return model.eval().to(device)
