"""Stage-one (CPFP) training: ``python -m cpgd_core.train cpfp ...`` and ``... make-val ...``.

Data are made on the fly by ``cpgd_core.data.synth.make_training_example`` (sharp clip -> synthetic blur ->
real libx264 encode -> decoded frames + codec priors) in DataLoader worker processes, each seeded from
(seed, rank, worker, resume step) so runs are reproducible. Validation uses a FIXED file written once by
``make-val`` from the held-out image split. Works on CPU and CUDA, single process or torchrun/DDP.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import time
from dataclasses import asdict
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..codec.priors import PRIOR_FIELDS
from ..data.synth import CRF_RANGE, MOTION_RANGE
from ..errors import CPGDInputError
from ..fileio import atomic_write
from ..models.cpfp import CPFP, CPFPConfig, priors_to_model_inputs
from ..weights import load_cpfp, save_cpfp
from .common import (DistInfo, JsonLogger, barrier, charbonnier, cleanup_distributed, cosine_lr, init_distributed,
                     load_checkpoint, psnr, rng_state, save_checkpoint, seed_everything, set_rng_state, ssim)

CKPT_NAME = "checkpoint.pt"
FINAL_NAME = "cpfp_final.safetensors"


# -- data --------------------------------------------------------------------------------------------
def _synth_example(rng: np.random.Generator, crop: int, frames: int, crf_range: tuple[int, int],
                   split: str, motion_range: tuple[float, float] = MOTION_RANGE) -> dict:
    """One synthetic clip from cpgd_core.data.synth, from the requested image split."""
    from ..data import synth

    return synth.make_training_example(rng, (crop, crop), frames, crf_range=tuple(crf_range), split=split,
                                       motion_range=tuple(motion_range))


def _real_example(rng: np.random.Generator, crop: int, frames: int, crf_range: tuple[int, int], split: str,
                  motion_range=None, sharp_share: Optional[float] = None) -> dict:
    """One clip of real footage blurred by interpolation + exposure averaging (cpgd_core.data.realblur).
    By default validation clips are all blurred and training has realblur.SHARP_SHARE clips with no blur;
    ``sharp_share=1`` gives unblurred clips only (the identity check)."""
    from ..data import realblur

    if sharp_share is None:
        sharp_share = realblur.SHARP_SHARE if split == "train" else 0.0
    return realblur.make_training_example(rng, (crop, crop), frames, crf_range=tuple(crf_range), split=split,
                                          sharp_share=sharp_share)


def _mixed_example(rng: np.random.Generator, crop: int, frames: int, crf_range: tuple[int, int], split: str,
                   motion_range: tuple[float, float] = MOTION_RANGE, sharp_share: Optional[float] = None) -> dict:
    """Real footage, with realblur.STILL_SHARE still-photo clips (synth) mixed into training for variety."""
    from ..data import realblur

    if split == "train" and rng.random() < realblur.STILL_SHARE:
        return _synth_example(rng, crop, frames, crf_range, split, motion_range)
    return _real_example(rng, crop, frames, crf_range, split, motion_range, sharp_share)


def _random_example(rng: np.random.Generator, crop: int, frames: int, crf_range=None, split: str = "train",
                    motion_range=None) -> dict:
    """Debug data source (no codec): smooth random sharp clip translating by a known shift, box-blurred.

    Only for smoke tests of the training loop; it teaches nothing about real blur.
    """
    from ..codec.priors import CodecPriors

    g = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
    big = torch.nn.functional.interpolate(torch.rand(1, 3, crop // 4 + 4, crop // 4 + 4, generator=g),
                                          scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)[0]
    dx = int(rng.integers(-2, 3))
    sharp = torch.stack([torch.roll(big, shifts=(0, dx * i), dims=(1, 2))[:, :crop, :crop] for i in range(frames)])
    blurry = torch.nn.functional.avg_pool2d(sharp, 5, 1, 2, count_include_pad=False)
    gh = gw = crop // 4
    fp = torch.zeros(frames, 2, gh, gw)
    fp[:, 0] = -dx
    vp = torch.ones(frames, 1, gh, gw, dtype=torch.bool)
    vp[0] = False
    vn = torch.ones(frames, 1, gh, gw, dtype=torch.bool)
    vn[-1] = False
    pri = CodecPriors(flow_to_prev=fp.half(), valid_to_prev=vp, flow_to_next=(-fp).half(), valid_to_next=vn,
                      residual=(torch.randn(frames, 1, crop, crop, generator=g) * 0.01).half(),
                      frame_types=["I"] + ["P"] * (frames - 1), height=crop, width=crop)
    return {"blurry_decoded": blurry, "sharp": sharp, "priors": pri}


SOURCES = {"synth": _synth_example, "real": _real_example, "mix": _mixed_example,
           "sharp": functools.partial(_real_example, sharp_share=1.0), "random": _random_example}


def example_to_tensors(ex: dict) -> dict[str, torch.Tensor]:
    """synth example -> flat float32 tensors (batch dim removed) ready for collation."""
    inp = priors_to_model_inputs(ex["priors"], device="cpu", dtype=torch.float32)
    out = {k: inp[k][0] for k in PRIOR_FIELDS}
    out["blurry"] = torch.as_tensor(ex["blurry_decoded"]).float()
    out["sharp"] = torch.as_tensor(ex["sharp"]).float()
    h, w = out["blurry"].shape[-2:]
    if h % 4 or w % 4:
        raise CPGDInputError(f"training crops must be multiples of 4, got {h}x{w}")
    return out


def random_crop(sample: dict[str, torch.Tensor], crop: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """A crop x crop window (top-left on the 4-px grid so the 1/4-resolution priors crop exactly)."""
    h, w = sample["blurry"].shape[-2:]
    y0 = 4 * int(rng.integers(0, (h - crop) // 4 + 1))
    x0 = 4 * int(rng.integers(0, (w - crop) // 4 + 1))
    out = {}
    for k, v in sample.items():
        s = 4 if v.shape[-1] != w else 1  # priors grids live at 1/4 resolution
        out[k] = v[..., y0 // s:(y0 + crop) // s, x0 // s:(x0 + crop) // s]
    return out


def augment(sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Random horizontal flip (negate flow x) and time reversal (swap the prev/next priors)."""
    s = dict(sample)
    if rng.random() < 0.5:
        s = {k: v.flip(-1) for k, v in s.items()}
        for k in ("flow_to_prev", "flow_to_next"):
            s[k] = s[k] * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)
    if rng.random() < 0.5:
        s = {k: v.flip(0) for k, v in s.items()}
        s["flow_to_prev"], s["flow_to_next"] = s["flow_to_next"], s["flow_to_prev"]
        s["valid_to_prev"], s["valid_to_next"] = s["valid_to_next"], s["valid_to_prev"]
    return s


class SynthClips(IterableDataset):
    """Endless stream of training clips; deterministic per (seed, rank, worker, start_step)."""

    def __init__(self, source: str, crop: int, frames: int, seed: int, rank: int = 0, start_step: int = 0,
                 crf_range: tuple[int, int] = CRF_RANGE, crops_per_clip: int = 1,
                 motion_range: tuple[float, float] = MOTION_RANGE, sharp_share: Optional[float] = None) -> None:
        if source not in SOURCES:
            raise CPGDInputError(f"unknown data source {source!r}: expected one of {sorted(SOURCES)}")
        self.source, self.crop, self.frames = source, crop, frames
        self.seed, self.rank, self.start_step, self.crf_range = seed, rank, start_step, crf_range
        self.crops_per_clip, self.motion_range = crops_per_clip, motion_range
        if sharp_share is not None and source not in ("real", "mix"):
            raise CPGDInputError(f"--sharp-share applies to the real-footage sources, not {source!r}")
        self.sharp_share = sharp_share

    def __iter__(self) -> Iterator[dict]:
        wi = get_worker_info()
        worker = wi.id if wi is not None else 0
        rng = np.random.default_rng([self.seed, self.rank, worker, self.start_step])
        make = SOURCES[self.source]
        if self.sharp_share is not None:
            make = functools.partial(make, sharp_share=self.sharp_share)
        # Encoding a clip costs far more than a training step on a GPU, so with crops_per_clip > 1 each
        # encoded clip is rendered twice as large and several random crops of it are used.
        size = self.crop * (2 if self.crops_per_clip > 1 else 1)
        while True:
            full = example_to_tensors(make(rng, size, self.frames, self.crf_range, "train", self.motion_range))
            for _ in range(self.crops_per_clip):
                yield augment(random_crop(full, self.crop, rng), rng)


def _single_threaded(_worker: int) -> None:
    """Each data worker encodes on one core: N workers x all-core thread pools oversubscribe the machine."""
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


# -- validation --------------------------------------------------------------------------------------
def make_val(out: str, seed: int = 0, count: int = 8, crop: int = 128, frames: int = 7, source: str = "synth",
             crf_range: tuple[int, int] = CRF_RANGE, motion_range: tuple[float, float] = MOTION_RANGE) -> str:
    """Write the fixed validation set (held-out image split) to ``out`` (torch file of fp16 tensors)."""
    rng = np.random.default_rng([seed, 987654321])
    clips = []
    for _ in range(count):
        t = example_to_tensors(SOURCES[source](rng, crop, frames, crf_range, "val", motion_range))
        clips.append({k: (v if k.startswith("valid") else v.half()) for k, v in t.items()})
    meta = {"seed": seed, "count": count, "crop": crop, "frames": frames, "source": source,
            "crf_range": list(crf_range), "motion_range": list(motion_range)}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with atomic_write(out) as tmp:
        torch.save({"meta": json.dumps(meta), "clips": clips}, tmp)
    return out


def load_val(path: str) -> list[dict[str, torch.Tensor]]:
    if not os.path.isfile(path):
        raise CPGDInputError(f"validation set not found: {path} (create it with python -m cpgd_core.train make-val)")
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data["clips"]


@torch.no_grad()
def clip_scores(model: torch.nn.Module, clips: list[dict], device: torch.device) -> list[dict[str, float]]:
    """Per validation clip: PSNR/SSIM of the model output (val_*) and of the blurry input (input_*)."""
    was_training = model.training
    model.eval()
    rows = []
    for c in clips:
        args = [c["blurry"].float()] + [c[k].float() for k in PRIOR_FIELDS]
        y = model(*[a.unsqueeze(0).to(device) for a in args])[0].float().cpu()
        sharp, blurry = c["sharp"].float(), c["blurry"].float()
        rows.append({"val_psnr": psnr(y, sharp), "val_ssim": ssim(y, sharp),
                     "input_psnr": psnr(blurry, sharp), "input_ssim": ssim(blurry, sharp)})
    model.train(was_training)
    return rows


def evaluate(model: torch.nn.Module, clips: list[dict], device: torch.device) -> dict[str, float]:
    """Mean PSNR/SSIM over the validation clips for the model output and for the blurry input."""
    rows = clip_scores(model, clips, device)
    keys = ("val_psnr", "val_ssim", "input_psnr", "input_ssim")
    return {k: round(sum(r[k] for r in rows) / max(len(rows), 1), 4) for k in keys}


# -- training ----------------------------------------------------------------------------------------
def _param_groups(model: CPFP, lr: float, offset_ratio: float, weight_decay: float) -> list[dict]:
    offset, rest = [], []
    for name, p in model.named_parameters():
        (offset if ".conv_offset." in name else rest).append(p)
    return [{"params": rest, "lr": lr, "lr_mult": 1.0, "weight_decay": weight_decay},
            {"params": offset, "lr": lr * offset_ratio, "lr_mult": offset_ratio, "weight_decay": weight_decay}]


def _amp_settings(device: torch.device, amp: bool) -> tuple[Optional[torch.dtype], bool]:
    """(autocast dtype or None, use GradScaler). CUDA: bf16 where supported, else fp16 with a GradScaler.
    CPU: bf16, which pays only where the CPU multiplies bf16 in hardware (AMX: 1.5x per step on these machines;
    the deformable sampling stays float32 either way)."""
    if not amp:
        return None, False
    if device.type == "cpu":
        return torch.bfloat16, False
    if device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


def train(args: argparse.Namespace) -> dict:
    info: DistInfo = init_distributed(args.device)
    dev = info.device
    seed_everything(args.seed + 1000 * info.rank)
    os.makedirs(args.out, exist_ok=True)
    log = JsonLogger(os.path.join(args.out, "log.jsonl"), enabled=info.is_main)
    cfg = CPFPConfig.from_name(args.config, use_priors=not args.no_priors, **_config_overrides(args.set))
    model = CPFP(cfg).to(dev)
    if dev.type == "cpu" and not info.enabled:  # DDP's gradient buckets expect the default layout
        model.use_channels_last()
    opt = torch.optim.AdamW(_param_groups(model, args.lr, args.offset_lr_ratio, args.weight_decay),
                            lr=args.lr, betas=(0.9, 0.99))
    amp_dtype, use_scaler = _amp_settings(dev, args.amp)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    if args.amp and amp_dtype is None:
        log.log(event="note", message=f"--amp ignored: no mixed precision on {dev.type}")

    start = 0
    ckpt_path = os.path.join(args.out, CKPT_NAME)
    if args.resume and os.path.isfile(ckpt_path):
        ck = load_checkpoint(ckpt_path)
        if CPFPConfig.from_json(ck["config"]) != cfg:  # fields added since default to the old behaviour
            raise CPGDInputError(f"{ckpt_path} was trained with config {ck['config']}, not {cfg.to_json()}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start = int(ck["step"])
        if ck.get("rng") and info.rank in ck["rng"]:
            set_rng_state(ck["rng"][info.rank])
        log.log(event="resume", step=start, checkpoint=ckpt_path)
    elif args.resume:
        log.log(event="note", message=f"--resume: no checkpoint at {ckpt_path}, starting from scratch")
    if start == 0 and args.init:
        init = load_cpfp(args.init)
        if init.config == cfg:
            model.load_state_dict(init.state_dict())
            log.log(event="init", weights=args.init)
        else:  # a deeper network continues from a trained shallower one (raises for any other difference)
            model.grow_from(init)
            log.log(event="init", weights=args.init, grown_from=init.config.to_json())

    commit = _git_commit()  # of the code that starts training, before anyone edits the tree under it
    net = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    val_clips = load_val(args.val) if (args.val and info.is_main) else []
    data = SynthClips(args.data, args.crop, args.frames, args.seed, info.rank, start, tuple(args.crf),
                      args.crops_per_clip, tuple(args.motion), args.sharp_share)
    loader = DataLoader(data, batch_size=args.batch, num_workers=args.workers, worker_init_fn=_single_threaded,
                        pin_memory=dev.type == "cuda", persistent_workers=args.workers > 0,
                        prefetch_factor=2 if args.workers > 0 else None)
    it = iter(loader)
    nparams = sum(p.numel() for p in model.parameters())
    log.log(event="start", config=args.config, params=nparams, device=str(dev), world_size=info.world_size,
            steps=args.steps, batch=args.batch, crop=args.crop, frames=args.frames, use_priors=cfg.use_priors,
            data=args.data, sharp_share=args.sharp_share,
            amp=str(amp_dtype) if amp_dtype else "off")
    last = {}
    if val_clips and start == 0:
        last = evaluate(model, val_clips, dev)
        log.log(event="val", step=0, **last)
    net.train()
    loss_acc, n_acc = 0.0, 0
    t0 = time.monotonic()
    cpu0 = time.process_time()  # this process's CPU time (all its threads), logged as cpu_s
    done = start
    data_wait = 0.0
    # --stop-at at or before the resumed step only exports the checkpoint's weights (with validation)
    end = min(args.steps, args.stop_at) if args.stop_at else args.steps
    if start >= end and val_clips:
        last = evaluate(model, val_clips, dev)
        log.log(event="val", step=start, **last)
    for step in range(start, end):
        t_wait = time.monotonic()
        batch = {k: v.to(dev, non_blocking=True) for k, v in next(it).items()}
        data_wait += time.monotonic() - t_wait
        # The schedule depends on the step only: a run stopped by --time-limit or --stop-at and resumed later
        # (in another session, on another machine) follows exactly the schedule of an uninterrupted run.
        mult = cosine_lr(step, args.steps, args.warmup)
        for g in opt.param_groups:
            g["lr"] = args.lr * g["lr_mult"] * mult
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            pred = net(batch["blurry"], *[batch[k] for k in PRIOR_FIELDS])
        loss = charbonnier(pred, batch["sharp"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        loss_acc += loss.item()
        n_acc += 1
        done = step + 1
        out_of_time = (bool(args.time_limit) and time.monotonic() - t0 >= args.time_limit) or \
            (bool(args.stop_at) and done >= args.stop_at)
        if info.enabled:  # every rank must stop at the same step
            flag = torch.tensor([float(out_of_time)], device=dev)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        last_step = done == args.steps or out_of_time
        if done % args.log_every == 0 or last_step:
            # data_wait_s: time this process waited for the data workers since the last log line
            log.log(event="train", step=done, loss=round(loss_acc / n_acc, 6), grad_norm=round(float(gnorm), 4),
                    lr=args.lr * mult, data_wait_s=round(data_wait, 2), cpu_s=round(time.process_time() - cpu0, 1))
            loss_acc, n_acc, data_wait = 0.0, 0, 0.0
        if val_clips and (done % args.val_every == 0 or last_step):
            last = evaluate(model, val_clips, dev)
            log.log(event="val", step=done, **last)
        if done % args.ckpt_every == 0 or last_step:
            if info.is_main:
                save_checkpoint(ckpt_path, model=model.state_dict(), optimizer=opt.state_dict(),
                                scaler=scaler.state_dict() if scaler is not None else None, step=done,
                                config=cfg.to_json(), rng={info.rank: rng_state()}, args=vars(args))
            barrier(info)
        if out_of_time:
            log.log(event="time_limit", step=done, seconds=round(time.monotonic() - t0, 1))
            break
    final = os.path.join(args.out, FINAL_NAME)
    if info.is_main:
        meta = {"recipe": json.dumps({k: v for k, v in vars(args).items() if k != "func"}), "steps": done,
                "train_seconds": round(time.monotonic() - t0, 1), "seed": args.seed, "data": args.data,
                "commit": commit, "data_manifest": json.dumps(data_manifest(args.data))}
        if args.val:
            meta["val_set"] = os.path.basename(args.val)
        meta.update({k: v for k, v in last.items()})
        save_cpfp(model, final, meta)
        log.log(event="done", step=done, weights=final, **last)
    log.close()
    cleanup_distributed()
    return {"weights": final, "step": done, **last}


def _git_commit() -> str:
    """The commit of the code that trained (with '+dirty' for uncommitted changes), or 'unknown'."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def data_manifest(source: str) -> dict:
    """What the data source reads: real clips (train/val names, file sizes) and/or still photos (names)."""
    from ..data import realblur, synth

    out: dict = {"source": source}
    if source in ("real", "mix"):
        root = realblur.default_dir()
        out["real_train"] = {n: os.path.getsize(os.path.join(root, n + ".mkv")) for n in realblur.clip_names("train")}
        out["real_val"] = list(realblur.VAL_CLIPS)
    if source in ("synth", "mix"):
        out["photos_train"] = synth.photo_names("train")
        out["photos_val"] = synth.photo_names("val")
    return out


# -- CLI ---------------------------------------------------------------------------------------------
def _config_overrides(items: Optional[list[str]]) -> dict:
    """``["recon_blocks=6", ...]`` -> CPFPConfig keyword overrides, typed like the dataclass defaults."""
    defaults = asdict(CPFPConfig())
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or key not in defaults or key == "use_priors":
            raise CPGDInputError(f"--set {item!r}: expected KEY=VALUE with KEY one of "
                                 f"{sorted(k for k in defaults if k != 'use_priors')}")
        try:
            out[key] = type(defaults[key])(value)
        except ValueError as e:
            raise CPGDInputError(f"--set {item!r}: {e}") from e
    return out


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """Options of the synthetic clips, shared by training and make-val so both describe the same data."""
    p.add_argument("--crf", type=int, nargs=2, default=CRF_RANGE, metavar=("MIN", "MAX"))
    p.add_argument("--motion", type=float, nargs=2, default=MOTION_RANGE, metavar=("MIN", "MAX"),
                   help="camera speed range as a multiple of 1.5-6 px/frame (default: about 1-18 px of blur)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cpgd_core.train cpfp", description="train the stage-one CPFP network")
    p.add_argument("--config", choices=("lite", "base"), default="lite")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set recon_blocks=6 (repeatable); with --init from a "
                        "network with fewer blocks, the extra blocks start as the identity")
    p.add_argument("--steps", type=int, default=100000)
    p.add_argument("--batch", type=int, default=4, help="clips per process (per GPU under torchrun)")
    p.add_argument("--crop", type=int, default=128, help="square crop size in px (multiple of 4)")
    p.add_argument("--frames", type=int, default=7, help="frames per training clip")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.jsonl, cpfp_final.safetensors")
    p.add_argument("--init", default=None, help="start from these CPFP weights (.safetensors), e.g. to fine-tune")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    p.add_argument("--no-priors", action="store_true", help="ablation: same network with MV/CR priors zeroed")
    p.add_argument("--crops-per-clip", type=int, default=1,
                   help="random crops taken from each encoded clip (>1 renders clips at twice the crop size)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=0,
                   help="wall-clock budget in seconds (0 = none): stop, validate, checkpoint and export when it is "
                        "spent; the learning-rate schedule does not change (resume with --resume)")
    p.add_argument("--stop-at", type=int, default=0,
                   help="stop (validate, checkpoint, export) at this step without changing the schedule of --steps")
    p.add_argument("--amp", action="store_true", help="mixed precision: bf16 on CPU (fast where it has AMX), on CUDA bf16 if supported, else fp16")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--offset-lr-ratio", type=float, default=0.25, help="lr multiplier of the DCN offset predictors")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--grad-clip", type=float, default=1.0)
    _add_data_args(p)
    p.add_argument("--sharp-share", type=float, default=None,
                   help="share of real-footage training clips left unblurred (default: realblur.SHARP_SHARE)")
    p.add_argument("--val", default=None, help="fixed validation set written by make-val")
    p.add_argument("--val-every", type=int, default=2000)
    p.add_argument("--ckpt-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--data", choices=sorted(SOURCES), default="mix",
                   help="'mix' (real footage + still photos), 'real' (real footage), 'synth' (still photos "
                        "moved along camera paths) or 'random' (debug only: smoke tests without the codec)")
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.crop % 4 or args.crop < 16:
        raise CPGDInputError(f"--crop must be a multiple of 4 and >= 16, got {args.crop}")
    if args.frames < 2:
        raise CPGDInputError(f"--frames must be >= 2, got {args.frames}")
    train(args)
    return 0


def make_val_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m cpgd_core.train make-val",
                                description="write the fixed CPFP validation set from held-out images")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--frames", type=int, default=7)
    p.add_argument("--data", choices=sorted(SOURCES), default="real")
    _add_data_args(p)
    a = p.parse_args(argv)
    path = make_val(a.out, a.seed, a.count, a.crop, a.frames, a.data, tuple(a.crf), tuple(a.motion))
    print(json.dumps({"event": "make-val", "out": path, "count": a.count, "seed": a.seed}))
    return 0
