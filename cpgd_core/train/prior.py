"""Pre-training of the learned prior: ``python -m cpgd_core.train prior ...``.

The prior of the non-blind solver (:class:`~cpgd_core.models.prior_denoiser.PriorDenoiser`) is first trained as
a denoiser conditioned on the noise level, on crops of the sharp real frames of ``shared/data/real_motion/train``
(the held-out clips of ``data.realblur.VAL_CLIPS`` excluded). Denoisers learn quickly, so this runs on the CPU.
Noise levels are drawn from [0, ``--sigma-max``] so that sigma 0 teaches the identity (sharp input must come back
unchanged). Step-based cosine schedule, resumable from ``OUT/checkpoint.pt``; one JSON line per log step in
``OUT/log.jsonl``; validation on fixed crops of the held-out clips at sigma 0, 5, 15, 25 (/255).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from ..models.prior_denoiser import PriorDenoiser, PriorDenoiserConfig
from ..weights import save_network
from .common import (JsonLogger, add_run_args, charbonnier, cosine_lr, load_checkpoint, psnr, rng_state,
                     save_checkpoint, seed_everything, set_rng_state)

CKPT_NAME = "checkpoint.pt"
FINAL_NAME = "prior_denoiser.safetensors"
VAL_SIGMAS = (0.0, 5 / 255, 15 / 255, 25 / 255)


def _frames(split: str) -> list[np.ndarray]:
    from ..data import realblur

    return [realblur.load_clip(n) for n in realblur.clip_names(split)]


def random_crops(clips: list[np.ndarray], rng: np.random.Generator, count: int, crop: int) -> torch.Tensor:
    """``count`` random crops (count, 3, crop, crop) float32 in [0, 1]: a random frame, scale in [0.5, 1]
    (area-downscaled, as sharper texture per pixel), flips and transposition."""
    import cv2

    sizes = np.array([len(c) for c in clips], np.float64)
    out = []
    for _ in range(count):
        clip = clips[int(rng.choice(len(clips), p=sizes / sizes.sum()))]
        frame = clip[int(rng.integers(len(clip)))]
        h, w = frame.shape[:2]
        scale = float(rng.uniform(max(0.5, crop / min(h, w) * 1.01), 1.0))
        side = int(np.ceil(crop / scale))
        y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        patch = frame[y0:y0 + side, x0:x0 + side]
        if side != crop:
            patch = cv2.resize(patch, (crop, crop), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch[::-1]
        if rng.random() < 0.5:
            patch = patch.transpose(1, 0, 2)
        out.append(np.ascontiguousarray(patch))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0


def make_val(seed: int = 0, count: int = 24, crop: int = 128) -> dict[str, torch.Tensor]:
    """Fixed validation crops of the held-out clips and their noise (same seed, same tensors)."""
    rng = np.random.default_rng(seed)
    clean = random_crops(_frames("val"), rng, count, crop)
    g = torch.Generator().manual_seed(seed)
    return {"clean": clean, "noise": torch.randn(clean.shape, generator=g)}


@torch.no_grad()
def evaluate(model: PriorDenoiser, val: dict[str, torch.Tensor]) -> dict[str, float]:
    """PSNR of the denoised validation crops at each of VAL_SIGMAS (8-bit input, as decoded video is)."""
    model.eval()
    scores = {}
    for s in VAL_SIGMAS:
        noisy = ((val["clean"] + s * val["noise"]).clamp(0, 1) * 255).round() / 255
        out = torch.cat([model(noisy[i:i + 8], s) for i in range(0, len(noisy), 8)])
        scores[f"psnr_s{round(s * 255)}"] = round(psnr(out, val["clean"]), 3)
        scores[f"input_s{round(s * 255)}"] = round(psnr(noisy, val["clean"]), 3)
    model.train()
    return scores


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    os.makedirs(args.out, exist_ok=True)
    model = PriorDenoiser(PriorDenoiserConfig(channels=args.channels, blocks=args.blocks))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = 0
    ckpt_path = os.path.join(args.out, CKPT_NAME)
    if args.resume and os.path.isfile(ckpt_path):
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        set_rng_state(state["rng"])
    rng = np.random.default_rng([args.seed, step])
    log = JsonLogger(os.path.join(args.out, "log.jsonl"))
    if step:
        log.log(event="resume", step=step)
    clips = _frames("train")
    val = make_val()
    t_start, cpu_start = time.time(), time.process_time()
    if step == 0:
        log.log(event="val", step=0, **evaluate(model, val))
    losses = []
    while step < args.steps:
        if args.time_limit and time.time() - t_start > args.time_limit:
            break
        if args.stop_at and step >= args.stop_at:
            break
        clean = random_crops(clips, rng, args.batch, args.crop)
        sigma = torch.from_numpy(rng.uniform(0, args.sigma_max, args.batch).astype(np.float32))
        sigma[torch.from_numpy(rng.random(args.batch) < args.zero_share)] = 0.0
        noisy = clean + sigma.view(-1, 1, 1, 1) * torch.randn_like(clean)
        noisy = (noisy.clamp(0, 1) * 255).round() / 255   # decoded video is 8-bit
        for g in opt.param_groups:
            g["lr"] = args.lr * cosine_lr(step, args.steps, args.warmup)
        loss = charbonnier(model(noisy, sigma), clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % args.log_every == 0:
            log.log(event="train", step=step, loss=round(float(np.mean(losses)), 6), lr=opt.param_groups[0]["lr"],
                    cpu_s=round(time.process_time() - cpu_start, 1))
            losses = []
        if step % args.val_every == 0 or step == args.steps:
            log.log(event="val", step=step, **evaluate(model, val))
        if step % args.ckpt_every == 0 or step == args.steps:
            save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), step=step, rng=rng_state())
            save_network(model, os.path.join(args.out, FINAL_NAME), "prior_denoiser",
                         {"step": step, "recipe": vars(args)})
    save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), step=step, rng=rng_state())
    save_network(model, os.path.join(args.out, FINAL_NAME), "prior_denoiser", {"step": step, "recipe": vars(args)})
    log.close()
    return {"step": step}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cpgd_core.train prior", description=__doc__.split("\n\n")[0])
    add_run_args(p, "checkpoint.pt, log.jsonl, prior_denoiser.safetensors", steps=20000, batch=8, crop=96, lr=1e-3,
                 warmup=100, log_every=50, val_every=500, ckpt_every=250)
    p.add_argument("--sigma-max", type=float, default=50 / 255)
    p.add_argument("--zero-share", type=float, default=0.1, help="share of crops with no noise (identity)")
    default = PriorDenoiserConfig()
    p.add_argument("--channels", type=_triple, default=default.channels,
                   help="widths of the three U-Net levels, e.g. 32,80,160")
    p.add_argument("--blocks", type=_triple, default=default.blocks, help="residual blocks per level, e.g. 1,2,4")
    return p


def _triple(text: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers like 32,64,96, got {text!r}")
    return values  # type: ignore[return-value]


def main(argv: list[str]) -> int:
    train(build_parser().parse_args(argv))
    return 0
