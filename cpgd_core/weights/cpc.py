"""CPControlNet weights: our .safetensors format, the official CPC .pt, and initialisation from SD 2.x.

Our format: a flat safetensors state dict with the official key names and metadata
``{"cpgd_format": "cpcontrolnet", "config": <json of CPControlNetConfig>}``. Files without metadata (e.g. a
converted official checkpoint) are recognised by their keys and the config is inferred from the shapes.
"""
from __future__ import annotations

import json
import os
import re
from typing import Mapping, Optional

import torch

from ..errors import CPGDInputError
from ..fileio import atomic_write
from ..models.cpcontrolnet import CPControlNet, CPControlNetConfig
from .reader import read_state_dict

FORMAT_TAG = "cpcontrolnet"
_PREFIXES = ("control_model.", "controlnet.", "module.", "model.")
_SD_UNET_PREFIX = "model.diffusion_model."


def _strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(sd)
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if out and all(k.startswith(p) for k in out):
                out = {k[len(p):]: v for k, v in out.items()}
                changed = True
    # a full ControlLDM checkpoint: keep only the ControlNet part
    if not any(k.startswith("zero_convs.") for k in out):
        sub = {k[len("control_model."):]: v for k, v in out.items() if k.startswith("control_model.")}
        if sub:
            out = sub
    return out


def is_cpcontrolnet_state_dict(sd: Mapping[str, torch.Tensor]) -> bool:
    """True for a CPControlNet (8-channel input conv, zero convs, prior mask layers, no hint encoder)."""
    w = sd.get("input_blocks.0.0.weight")
    return (w is not None and "middle_block_out.0.weight" in sd and "zero_convs.0.0.weight" in sd
            and not any(k.startswith("input_hint_block.") for k in sd)
            and any(k.endswith("attn1.mask.weight") for k in sd))


def infer_config(sd: Mapping[str, torch.Tensor]) -> CPControlNetConfig:
    """Architecture from the shapes of a CPControlNet state dict (head size cannot be inferred: 64 unless tiny)."""
    w0 = sd["input_blocks.0.0.weight"]
    c0 = int(w0.shape[0])
    n_blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"input_blocks\.(\d+)\.", k)))
    downs = sorted(int(m.group(1)) for k in sd if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.weight", k)))
    levels = len(downs) + 1
    nrb = (n_blocks - 1 - len(downs)) // levels
    mults, attn = [], []
    for level in range(levels):
        first = 1 + level * (nrb + 1)
        mults.append(int(sd[f"input_blocks.{first}.0.in_layers.2.weight"].shape[0]) // c0)
        if f"input_blocks.{first}.1.proj_in.weight" in sd:
            attn.append(2 ** level)
    ctx_key = next(k for k in sd if k.endswith("attn2.to_k.weight"))
    mask_key = next(k for k in sd if k.endswith("attn1.mask.weight"))
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"middle_block\.1\.transformer_blocks\.(\d+)\.", k)))
    groups = 32 if c0 % 32 == 0 and c0 >= 64 else 8
    return CPControlNetConfig(in_channels=4, hint_channels=int(w0.shape[1]) - 4, model_channels=c0,
                              channel_mult=tuple(mults), num_res_blocks=nrb, attention_resolutions=tuple(attn),
                              num_head_channels=64 if c0 >= 64 * 4 else 16, transformer_depth=depth,
                              context_dim=int(sd[ctx_key].shape[1]), prior_channels=int(sd[mask_key].shape[1]),
                              norm_groups=groups)


def build_from_state_dict(sd: Mapping[str, torch.Tensor], config: Optional[CPControlNetConfig] = None,
                          source: str = "state dict") -> CPControlNet:
    sd = _strip_prefixes(sd)
    if not is_cpcontrolnet_state_dict(sd):
        hint = (" It looks like a standard ControlNet (it has a hint encoder); use ComfyUI's ControlNet loader."
                if any(k.startswith("input_hint_block.") for k in sd) else
                " It looks like a full Stable Diffusion checkpoint; use the checkpoint loader, or initialise a new "
                "CPControlNet from it with `python -m cpgd_core.train cpcontrolnet --sd-checkpoint`."
                if any(k.startswith("input_blocks.") for k in sd) and "zero_convs.0.0.weight" not in sd else "")
        raise CPGDInputError(f"{source} is not a CPControlNet checkpoint (expected input_blocks.0.0 with 8 input "
                             f"channels, zero_convs.*, middle_block_out.* and attn1.mask.weight keys).{hint}")
    cfg = config or infer_config(sd)
    with torch.device("meta"):
        net = CPControlNet(cfg)
    try:
        net.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise CPGDInputError(f"{source}: CPControlNet weights do not match the architecture: {str(e)[:600]}") from e
    return net


def save_cpcontrolnet(net: CPControlNet, path: str, dtype: Optional[torch.dtype] = None) -> None:
    """Write our .safetensors (official key names, config in the metadata)."""
    from safetensors.torch import save_file
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
          for k, v in net.state_dict().items()}
    meta = {"cpgd_format": FORMAT_TAG, "config": json.dumps(net.config.to_dict())}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        save_file(sd, tmp, metadata=meta)


def load_cpcontrolnet(path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
                      ) -> CPControlNet:
    """Load our .safetensors or an official CPC .pt; raises CPGDInputError for anything else."""
    sd, meta = read_state_dict(path)
    cfg = None
    if meta.get("cpgd_format") == FORMAT_TAG and "config" in meta:
        cfg = CPControlNetConfig.from_dict(json.loads(meta["config"]))
    net = build_from_state_dict(sd, cfg, source=os.path.basename(path))
    return net.to(device=device, dtype=dtype).eval()


def convert_official(src: str, dst: str, dtype: Optional[torch.dtype] = torch.float16) -> CPControlNetConfig:
    """Official CPC .pt -> our .safetensors."""
    net = load_cpcontrolnet(src)
    save_cpcontrolnet(net, dst, dtype)
    return net.config


def unet_state_dict_from_sd(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The UNet part of an SD 2.x LDM checkpoint (``model.diffusion_model.*``), prefix stripped."""
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    unet = {k[len(_SD_UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(_SD_UNET_PREFIX)}
    if not unet:
        raise CPGDInputError("not a Stable Diffusion LDM checkpoint: no model.diffusion_model.* keys "
                             "(diffusers folders are not supported; use the single-file .ckpt/.safetensors)")
    return unet


def init_from_sd(sd: Mapping[str, torch.Tensor], config: Optional[CPControlNetConfig] = None) -> CPControlNet:
    """A new CPControlNet initialised from an SD 2.x checkpoint: encoder + middle weights copied, the 4 extra
    input channels, all zero convs and all prior mask layers zero."""
    unet = unet_state_dict_from_sd(sd)
    cfg = config or CPControlNetConfig()
    net = CPControlNet(cfg)
    own = net.state_dict()
    copied = 0
    for k, v in own.items():
        if k.startswith(("zero_convs.", "middle_block_out.")) or k.endswith(".mask.weight"):
            continue
        src = unet.get(k)
        if src is None:
            raise CPGDInputError(f"SD checkpoint lacks {_SD_UNET_PREFIX}{k}: not an SD 2.x UNet of this size")
        if k == "input_blocks.0.0.weight":
            w = torch.zeros_like(v)
            w[:, :src.shape[1]] = src
            src = w
        if tuple(src.shape) != tuple(v.shape):
            raise CPGDInputError(f"SD checkpoint {_SD_UNET_PREFIX}{k} has shape {tuple(src.shape)}, a CPControlNet "
                                 f"with this config needs {tuple(v.shape)} (is it SD 2.x?)")
        v.copy_(src)
        copied += 1
    return net
