"""Training utilities shared by the trainers: losses, metrics, schedules, distributed set-up, checkpoints,
JSON-lines logging. GPU-specific parts are guarded (everything runs on CPU)."""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..fileio import atomic_write


# -- losses / metrics --------------------------------------------------------------------------------
def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """mean(sqrt((pred - target)^2 + eps^2)): L1-like, smooth at 0."""
    return torch.sqrt((pred.float() - target.float()).pow(2) + eps * eps).mean()


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] (quantised to 8 bit like the usual benchmark protocol)."""
    p = (pred.clamp(0, 1) * 255).round()
    t = (target.clamp(0, 1) * 255).round()
    mse = (p - t).double().pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Gaussian-window (11, sigma 1.5) SSIM on 8-bit-quantised RGB, averaged over channels and frames.

    pred/target: (..., 3, H, W) in [0, 1].
    """
    p = (pred.clamp(0, 1) * 255).round().double().reshape(-1, 1, *pred.shape[-2:])
    t = (target.clamp(0, 1) * 255).round().double().reshape(-1, 1, *target.shape[-2:])
    g = _gauss()
    kx, ky = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kx), ky)  # valid region only, like skimage with gaussian weights

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mp, mt = blur(p), blur(t)
    vp, vt, cov = blur(p * p) - mp * mp, blur(t * t) - mt * mt, blur(p * t) - mp * mt
    s = ((2 * mp * mt + c1) * (2 * cov + c2)) / ((mp * mp + mt * mt + c1) * (vp + vt + c2))
    return float(s.mean())


# -- schedule ----------------------------------------------------------------------------------------
def cosine_lr(step: int, total: int, warmup: int, min_ratio: float = 1e-3) -> float:
    """Multiplier for the base lr: linear warm-up, then cosine down to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# -- distributed -------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: Optional[str] = None) -> DistInfo:
    """Initialise torch.distributed from torchrun's env vars when WORLD_SIZE > 1; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def cleanup_distributed() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist
        dist.barrier()


# -- rng / checkpoints -------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, **state: Any) -> None:
    """Atomic torch.save (a crash while writing never corrupts the previous checkpoint)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str) -> dict:
    # our own file (contains optimizer state and rng tuples), so a full unpickle is acceptable here
    return torch.load(path, map_location="cpu", weights_only=False)


# -- command line ------------------------------------------------------------------------------------
def add_run_args(p, out_files: str, steps: int, batch: int, crop: int, lr: float, warmup: int, log_every: int,
                 val_every: int, ckpt_every: int) -> None:
    """The options of a step-based, resumable training run (the prior and solver trainers), with its defaults."""
    p.add_argument("--out", required=True, help=f"run folder ({out_files})")
    p.add_argument("--steps", type=int, default=steps, help="length of the cosine schedule")
    p.add_argument("--stop-at", type=int, default=0, help="stop at this step (the schedule is unchanged)")
    p.add_argument("--time-limit", type=float, default=0, help="stop after this many seconds")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--crop", type=int, default=crop)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--log-every", type=int, default=log_every)
    p.add_argument("--val-every", type=int, default=val_every)
    p.add_argument("--ckpt-every", type=int, default=ckpt_every)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt when it exists")


# -- logging -----------------------------------------------------------------------------------------
class JsonLogger:
    """One JSON object per line, to stdout and (optionally) ``DIR/log.jsonl``; silent on non-main ranks."""

    def __init__(self, path: Optional[str], enabled: bool = True) -> None:
        self.enabled = enabled
        self.file = open(path, "a") if (path and enabled) else None
        self.t0 = time.time()

    def log(self, **fields: Any) -> None:
        if not self.enabled:
            return
        fields.setdefault("time_s", round(time.time() - self.t0, 2))
        line = json.dumps(fields, default=float)
        print(line, flush=True, file=sys.stdout)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
