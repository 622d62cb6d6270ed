"""``python -m cpgd_core.train cpcontrolnet``: train the stage-two CPControlNet on a frozen SD 2.x.

Frozen: the SD 2.x UNet (:class:`cpgd_core.models.sd_unet.SDUNet`, loaded from the checkpoint's
``model.diffusion_model.*``), the VAE encoder and the text encoder. Trainable: the CPControlNet including the
prior mask layers (initialised from the same UNet's encoder unless ``--init`` gives CPControlNet weights).
Loss: eps-prediction MSE at a uniformly drawn timestep of the SD "scaled linear" schedule; the official quality
prompt with probability 0.5, else the empty prompt. Data: synthetic blurry clips (``cpgd_core.data.synth``) with
their codec priors; the condition is the blurry decoded clip (stage-one weights are not assumed).

``--tiny``: a randomly initialised SD-like UNet/ControlNet, a fixed random 8x "VAE" and random prompt embeddings,
for testing the loop on a CPU. Real weights: ``--sd-checkpoint v2-1_512-ema-pruned.safetensors`` for the UNet and
``--sd-components DIR`` = a local diffusers folder of SD 2.1-base for ``vae/``, ``text_encoder/``, ``tokenizer/``.
Resumable (``--out DIR`` holds ``last.pt``), torchrun-ready (DDP over ranks, rank 0 writes).
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CPGDInputError
from ..models.cpcontrolnet import QUALITY_PROMPT, CPControlNet, CPControlNetConfig, prior_map
from ..models.sd_unet import SDUNet
from ..weights import cpc as cpc_weights
from .common import (JsonLogger, cleanup_distributed, init_distributed, load_checkpoint, rng_state,
                     save_checkpoint, seed_everything, set_rng_state)

LATENT_SCALE = 0.18215


def sd_alphas_cumprod(steps: int = 1000, start: float = 0.00085, end: float = 0.012) -> torch.Tensor:
    """SD 2.x 'scaled linear' schedule: betas = linspace(sqrt(start), sqrt(end))^2."""
    betas = torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class TinyLatentEncoder(nn.Module):
    """Test stand-in for the SD VAE encoder: (B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8), fixed random."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(4, 3, 1, 1, generator=g))
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.avg_pool2d(x, 8)) / LATENT_SCALE  # so that x LATENT_SCALE gives unit-scale latents


class Components:
    """Frozen parts: unet, encode(img01 (B,3,H,W)) -> scaled latent, text(list[str]) -> (B, L, C)."""

    def __init__(self, unet: SDUNet, encode: Callable[[torch.Tensor], torch.Tensor],
                 text: Callable[[list[str]], torch.Tensor], config: CPControlNetConfig):
        self.unet, self.encode, self.text, self.config = unet, encode, text, config


def tiny_components(device: torch.device, seed: int = 0) -> Components:
    cfg = CPControlNetConfig.tiny()
    torch.manual_seed(seed)
    unet = SDUNet(cfg).to(device).eval().requires_grad_(False)
    enc = TinyLatentEncoder(seed).to(device).requires_grad_(False)
    g = torch.Generator().manual_seed(seed + 1)
    table = {QUALITY_PROMPT: torch.randn(7, cfg.context_dim, generator=g), "": torch.zeros(7, cfg.context_dim)}

    def encode(img01: torch.Tensor) -> torch.Tensor:
        return enc(img01 * 2 - 1) * LATENT_SCALE

    def text(prompts: list[str]) -> torch.Tensor:
        return torch.stack([table[p] for p in prompts]).to(device)

    return Components(unet, encode, text, cfg)


def sd_components(checkpoint: str, components_dir: str, device: torch.device,
                  dtype: torch.dtype = torch.float16) -> Components:
    """Real SD 2.x: UNet from the LDM checkpoint, VAE + OpenCLIP text encoder from a local diffusers folder."""
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, CLIPTextModel

    sd, _ = cpc_weights.read_state_dict(checkpoint)
    cfg = CPControlNetConfig()
    unet = SDUNet(cfg)
    unet.load_state_dict(cpc_weights.unet_state_dict_from_sd(sd), strict=True)
    unet = unet.to(device, dtype).eval().requires_grad_(False)
    for sub in ("vae", "text_encoder", "tokenizer"):
        if not os.path.isdir(os.path.join(components_dir, sub)):
            raise CPGDInputError(f"{components_dir} lacks {sub}/ (a local diffusers folder of SD 2.1-base)")
    vae = AutoencoderKL.from_pretrained(components_dir, subfolder="vae", local_files_only=True)
    vae = vae.to(device, torch.float32).eval().requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(components_dir, subfolder="tokenizer", local_files_only=True)
    te = CLIPTextModel.from_pretrained(components_dir, subfolder="text_encoder", local_files_only=True)
    te = te.to(device, dtype).eval().requires_grad_(False)

    @torch.no_grad()
    def encode(img01: torch.Tensor) -> torch.Tensor:  # posterior mode, as the official hint encoding
        return vae.encode((img01 * 2 - 1).float()).latent_dist.mode() * LATENT_SCALE

    @torch.no_grad()
    def text(prompts: list[str]) -> torch.Tensor:
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(device)
        return te(ids).last_hidden_state  # SD 2.x diffusers text encoders are already cut at the penultimate layer

    return Components(unet, encode, text, cfg)


def synthetic_set(n: int, size: int, frames: int, seed: int) -> list[dict]:
    """n fixed examples: sharp (T,3,H,W), cond (T,3,H,W) = blurry decoded clip, priors."""
    from ..data.synth import make_training_example
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ex = make_training_example(rng, size=(size, size), num_frames=frames)
        out.append({"sharp": ex["sharp"], "cond": ex["blurry_decoded"], "priors": ex["priors"]})
    return out


def training_loss(net: nn.Module, comp: Components, batch: dict, alphas: torch.Tensor, device: torch.device,
                  generator: Optional[torch.Generator] = None, p_empty: float = 0.5) -> torch.Tensor:
    """eps-MSE of one clip; the clip's frames attend jointly in the ControlNet (as at inference)."""
    sharp, cond = batch["sharp"].to(device), batch["cond"].to(device)
    t_frames = sharp.shape[0]
    with torch.no_grad():
        x0 = comp.encode(sharp).float()
        hint = comp.encode(cond).float()
        cp = prior_map(batch["priors"], size=tuple(x0.shape[-2:])).to(device)
        empty = torch.rand((), generator=generator).item() < p_empty
        ctx = comp.text(["" if empty else QUALITY_PROMPT]).float().expand(t_frames, -1, -1)
    t = torch.randint(0, len(alphas), (1,), generator=generator).expand(t_frames).to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    ab = alphas.to(device)[t].view(-1, 1, 1, 1)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    ctrl = net(xt, hint, t, ctx, cp, frames_per_clip=t_frames)
    eps = comp.unet(xt, t, ctx, [c.to(comp.unet.dtype) for c in ctrl])
    return F.mse_loss(eps.float(), noise)


def train(args: argparse.Namespace) -> list[float]:
    info = init_distributed(args.device)
    seed_everything(args.seed + info.rank)
    device = info.device
    if args.tiny:
        comp = tiny_components(device, args.seed)
    else:
        if not args.sd_checkpoint or not args.sd_components:
            raise CPGDInputError("give --sd-checkpoint and --sd-components (or --tiny)")
        comp = sd_components(args.sd_checkpoint, args.sd_components, device)
    if args.init:
        net = cpc_weights.load_cpcontrolnet(args.init)
    elif args.tiny:
        net = CPControlNet(comp.config)
    else:
        sd, _ = cpc_weights.read_state_dict(args.sd_checkpoint)
        net = cpc_weights.init_from_sd(sd, comp.config)
    net = net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    step = 0
    last = os.path.join(args.out, "last.pt")
    if os.path.isfile(last):  # resume
        ck = load_checkpoint(last)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        step = int(ck["step"])
        set_rng_state(ck["rng"])
    model = net
    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    data = synthetic_set(args.examples, args.size, args.frames, args.seed)
    alphas = sd_alphas_cumprod()
    log = JsonLogger(os.path.join(args.out, "log.jsonl"), info.is_main)
    losses = []
    use_amp = device.type == "cuda"
    while step < args.steps:
        batch = data[(step * info.world_size + info.rank) % len(data)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = training_loss(model, comp, batch, alphas, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % args.log_every == 0 or step == args.steps:
            log.log(step=step, loss=float(np.mean(losses[-args.log_every:])))
        if info.is_main and (step % args.save_every == 0 or step == args.steps):
            save_checkpoint(last, net=net.state_dict(), opt=opt.state_dict(), step=step, rng=rng_state())
            cpc_weights.save_cpcontrolnet(net, os.path.join(args.out, "cpcontrolnet.safetensors"),
                                          dtype=None if args.tiny else torch.float16)
    log.close()
    cleanup_distributed()
    return losses


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cpgd_core.train cpcontrolnet", description=__doc__.split("\n")[0])
    p.add_argument("--sd-checkpoint", help="SD 2.x LDM checkpoint (.safetensors/.ckpt), e.g. v2-1_512-ema-pruned")
    p.add_argument("--sd-components", help="local diffusers folder of SD 2.1-base (vae/, text_encoder/, tokenizer/)")
    p.add_argument("--tiny", action="store_true", help="tiny random SD-like models (tests, CPU)")
    p.add_argument("--init", help="start from these CPControlNet weights instead of the UNet encoder")
    p.add_argument("--out", required=True, help="output folder (resumes from OUT/last.pt)")
    p.add_argument("--steps", type=int, default=30000)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--size", type=int, default=512, help="training crop (pixels)")
    p.add_argument("--frames", type=int, default=4, help="frames per clip (official: 4)")
    p.add_argument("--examples", type=int, default=1000, help="synthetic clips generated up front")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=1000)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    train(args)
    return 0
