"""End-to-end training of the non-blind stage one: ``python -m cpgd_core.train deblur ...``.

The unrolled solver (:class:`~cpgd_core.blur.solver.UnrolledDeblur`: CG data steps on the trajectory blur, the
learned prior between them) is trained on real footage blurred by ``data.realblur`` (interpolated sub-frames
averaged over an exposure, then libx264 and decoding, as a user's clip). Its trajectories are the *estimated*
ones (``blur.field.estimate_blur_field`` on the decoded blurry frames, exposure 'auto'), never the generator's
true ones, so the prior learns to absorb kernel error, ringing and compression noise. The prior starts from the
denoiser pre-trained by ``python -m cpgd_core.train prior``.

Examples are made in a DataLoader worker (one core) while the main process trains (the other); each encoded
example gives several random crops. Step-based cosine schedule, resumable from ``OUT/checkpoint.pt``, one JSON
line per log step in ``OUT/log.jsonl``; validation on the held-out clips (``held_out``), estimated trajectories.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..blur.field import estimate_blur_field
from ..blur.solver import GUIDE_CHANNELS, UnrolledDeblur, UnrolledDeblurConfig
from ..data.synth import CRF_RANGE
from ..weights import load_network, save_network
from .common import (JsonLogger, add_run_args, charbonnier, cosine_lr, load_checkpoint, psnr, rng_state,
                     save_checkpoint, seed_everything, set_rng_state)

CKPT_NAME = "checkpoint.pt"
FINAL_NAME = "deblur_final.safetensors"
FORMAT = "unrolled_deblur"


def real_examples(seed: int, count: int, crop: int, frames: int, split: str = "val", sharp: bool = False,
                  crf_range: tuple[int, int] = CRF_RANGE) -> list[dict]:
    """``count`` encoded real-footage examples (``data.realblur.make_training_example``), deterministic per seed.

    With the seed, crop, frames and crf range of ``make-val --data real`` (``train.cpfp.make_val``) these are the
    same clips as the CPFP validation set, so both stage-one modes are scored on identical input."""
    from ..data import realblur

    rng = np.random.default_rng([seed, 987654321])
    return [realblur.make_training_example(rng, (crop, crop), frames, crf_range=tuple(crf_range), split=split,
                                           sharp_share=1.0 if sharp else 0.0) for _ in range(count)]


def trajectories(example: dict, source: str = "estimated", exposure: float | str = "auto") -> torch.Tensor:
    """(T, 2, H, W) trajectories of an example: the generator's 'true' ones or 'estimated' from the decoded
    blurry frames and their codec priors, as at inference."""
    if source == "true":
        return example["trajectory"].float()
    return estimate_blur_field(example["blurry_decoded"].float(), example.get("priors"), exposure).trajectory


class BlurCrops(IterableDataset):
    """Endless (blurry, estimated trajectory, sharp) crops from freshly generated real-footage examples."""

    def __init__(self, crop: int, size: int, frames: int, seed: int, start_step: int, crops_per_example: int,
                 sharp_share: float, long_blur: bool = False, line_share: float = 0.0) -> None:
        self.crop, self.size, self.frames = crop, size, frames
        self.seed, self.start_step, self.crops = seed, start_step, crops_per_example
        self.sharp_share = sharp_share
        self.long_blur = long_blur
        self.line_share = line_share

    def __iter__(self) -> Iterator[dict]:
        from ..data import realblur

        wi = get_worker_info()
        rng = np.random.default_rng([self.seed, wi.id if wi else 0, self.start_step])
        while True:
            ex = realblur.make_training_example(rng, (self.size, self.size), self.frames, split="train",
                                                sharp_share=self.sharp_share,
                                                steps=realblur.LONG_STEPS if self.long_blur else realblur.STEPS,
                                                line_share=self.line_share)
            y = ex["blurry_decoded"].float()
            traj = trajectories(ex)
            x = ex["sharp"].float()
            for _ in range(self.crops):
                t = int(rng.integers(len(y)))
                y0, x0 = (int(rng.integers(0, self.size - self.crop + 1)) for _ in range(2))
                win = (slice(y0, y0 + self.crop), slice(x0, x0 + self.crop))
                item = {"blurry": y[t][:, win[0], win[1]], "trajectory": traj[t][:, win[0], win[1]],
                        "sharp": x[t][:, win[0], win[1]]}
                if rng.random() < 0.5:   # horizontal flip: the x component of the trajectory changes sign
                    item = {k: v.flip(-1) for k, v in item.items()}
                    item["trajectory"] = item["trajectory"] * torch.tensor([-1.0, 1.0]).view(2, 1, 1)
                yield item


def _single_threaded(_worker: int) -> None:
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


@torch.no_grad()
def evaluate(model: UnrolledDeblur, examples: list[dict], fields: list[torch.Tensor]) -> dict[str, float]:
    """Mean PSNR over the frames of the examples: input and output (estimated trajectories)."""
    model.eval()
    dev = model.log_sigma.device
    inp, out = [], []
    for ex, traj in zip(examples, fields):
        y, x = ex["blurry_decoded"].float(), ex["sharp"].float()
        inp.append(psnr(y, x))
        out.append(psnr(model(y.to(dev), traj.to(dev)).clamp(0, 1).cpu(), x))
    model.train()
    return {"val_psnr": round(float(np.mean(out)), 4), "input_psnr": round(float(np.mean(inp)), 4)}


def build_model(args: argparse.Namespace) -> UnrolledDeblur:
    """The solver of ``args``' iterations x CG steps, its prior from ``--init``: a pre-trained prior, or a trained
    solver (its prior and its schedule, resampled to this run's iteration count by ``with_iterations``). With
    ``--guide`` the prior also reads the blurry frame and the trajectory; started from an unguided prior, it
    begins as exactly that prior (the new inputs at zero)."""
    from dataclasses import replace

    from ..pipeline.nonblind import with_iterations
    from ..weights import inspect_weights

    trained = prior = None
    if args.init and inspect_weights(args.init) == FORMAT:
        trained = with_iterations(load_network(args.init, FORMAT), args.iterations, args.cg_steps)
        prior = trained.denoiser
    elif args.init:
        prior = load_network(args.init, "prior_denoiser")
    config = UnrolledDeblurConfig(iterations=args.iterations, cg_steps=args.cg_steps, data_space=args.data_space)
    # the prior's widths and depths are the initialising network's (the pre-trained prior decides the size)
    base = prior.config if prior is not None else config.denoiser
    config.denoiser = replace(base, guide=GUIDE_CHANNELS if args.guide else 0)
    model = UnrolledDeblur(config)
    if trained is not None:
        with torch.no_grad():
            model.log_sigma.copy_(trained.log_sigma)
            model.log_mu.copy_(trained.log_mu)
    if prior is not None:
        model.denoiser.load_unguided(prior.state_dict())
    return model


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    os.makedirs(args.out, exist_ok=True)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(args).to(dev)
    opt = torch.optim.Adam([{"params": model.denoiser.parameters(), "lr": args.lr},
                            {"params": [model.log_sigma, model.log_mu], "lr": args.lr_schedule}])
    base_lrs = [args.lr, args.lr_schedule]
    step = 0
    ckpt_path = os.path.join(args.out, CKPT_NAME)
    if args.resume and os.path.isfile(ckpt_path):
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        model.to(dev)
        opt.load_state_dict(state["opt"])
        step = state["step"]
        set_rng_state(state["rng"])
    log = JsonLogger(os.path.join(args.out, "log.jsonl"))
    if step:
        log.log(event="resume", step=step)
    val = real_examples(args.val_seed, args.val_count, args.val_crop, 3)
    val_fields = [trajectories(ex) for ex in val]
    data = DataLoader(BlurCrops(args.crop, args.size, 3, args.seed, step, args.crops_per_example, args.sharp_share,
                                args.long_blur, args.line_share),
                      batch_size=args.batch, num_workers=args.workers, worker_init_fn=_single_threaded,
                      persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers else None,
                      # fork after the validation set was encoded and its flows computed left the worker
                      # deadlocked on the parent's codec / OpenCV thread pools
                      multiprocessing_context="spawn" if args.workers else None)
    if step == 0:
        log.log(event="val", step=0, **evaluate(model, val, val_fields))
    t_start, cpu_start = time.time(), time.process_time()
    losses = []
    for batch in data:
        if step >= args.steps or (args.stop_at and step >= args.stop_at) or \
                (args.time_limit and time.time() - t_start > args.time_limit):
            break
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * cosine_lr(step, args.steps, args.warmup)
        batch = {k: v.to(dev) for k, v in batch.items()}
        out = model(batch["blurry"], batch["trajectory"])
        loss = charbonnier(out, batch["sharp"])
        if not loss.requires_grad:   # every crop still (zero trajectories): nothing passes through the solver
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % args.log_every == 0:
            log.log(event="train", step=step, loss=round(float(np.mean(losses)), 6), lr=opt.param_groups[0]["lr"],
                    sigma=[round(float(s) * 255, 2) for s in model.log_sigma.detach().exp()],
                    mu=[round(float(m), 5) for m in model.log_mu.detach().exp()],
                    cpu_s=round(time.process_time() - cpu_start, 1))
            losses = []
        if step % args.val_every == 0:
            log.log(event="val", step=step, **evaluate(model, val, val_fields))
        if step % args.ckpt_every == 0:
            _save(model, opt, step, args, ckpt_path)
    _save(model, opt, step, args, ckpt_path)
    log.close()
    return {"step": step}


def _save(model: UnrolledDeblur, opt, step: int, args: argparse.Namespace, ckpt_path: str) -> None:
    save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), step=step, rng=rng_state())
    save_network(model, os.path.join(args.out, FINAL_NAME), FORMAT, {"step": step, "recipe": vars(args)})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cpgd_core.train deblur", description=__doc__.split("\n\n")[0])
    add_run_args(p, "checkpoint.pt, log.jsonl, deblur_final.safetensors", steps=4000, batch=4, crop=96, lr=1e-4,
                 warmup=50, log_every=25, val_every=250, ckpt_every=50)
    p.add_argument("--init", default="", help="pre-trained prior (prior_denoiser.safetensors) or a trained solver "
                                              "(deblur_final.safetensors: fine-tuned at this run's iterations)")
    p.add_argument("--guide", action="store_true", help="the prior also reads the blurry frame and the trajectory")
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--cg-steps", type=int, default=3)
    p.add_argument("--size", type=int, default=256, help="side of each generated example (crops are cut from it)")
    p.add_argument("--crops-per-example", type=int, default=6)
    p.add_argument("--sharp-share", type=float, default=0.1)
    p.add_argument("--long-blur", action="store_true",
                   help="also 4 and 5 source frames per output frame (realblur.LONG_STEPS): 20-40 px trajectories")
    p.add_argument("--data-space", choices=("srgb", "linear"), default="srgb",
                   help="where the data steps invert the blur: the frames as they are, or linear light (as a shutter "
                        "averages)")
    p.add_argument("--line-share", type=float, default=0.0,
                   help="share of clips whose blur follows the straight-path model exactly (realblur.line_blur), as "
                        "consistent with it as averaged high-frame-rate frames are")
    p.add_argument("--lr-schedule", type=float, default=1e-2, help="lr of the per-iteration sigma / mu")
    p.add_argument("--val-seed", type=int, default=11)
    p.add_argument("--val-count", type=int, default=6)
    p.add_argument("--val-crop", type=int, default=192)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    return p


def main(argv: list[str]) -> int:
    train(build_parser().parse_args(argv))
    return 0


def export_main(argv: list[str]) -> int:
    """Write the shipped solver: a trained one run at the (iterations, CG steps) chosen by measured gain per second
    (``bench/eval_quality.py``'s table), with where it came from in its metadata."""
    from ..pipeline.nonblind import load_deblur, with_iterations
    from ..weights import read_cpfp_metadata

    p = argparse.ArgumentParser(prog="python -m cpgd_core.train export-deblur", description=export_main.__doc__)
    p.add_argument("trained", help="the run's deblur_final.safetensors")
    p.add_argument("out", help="where to write the shipped file (e.g. cpgd_core/weights/deblur.safetensors)")
    p.add_argument("--iterations", type=int, required=True)
    p.add_argument("--cg-steps", type=int, required=True)
    a = p.parse_args(argv)
    meta = read_cpfp_metadata(a.trained)
    model = with_iterations(load_deblur(a.trained), a.iterations, a.cg_steps)
    save_network(model, a.out, FORMAT, {"step": meta.get("step", ""), "recipe": meta.get("recipe", ""),
                                        "exported_from": os.path.basename(a.trained),
                                        "trained_setting": f"{meta_config(meta)}"})
    print(f"wrote {a.out}: {a.iterations} iterations x {a.cg_steps} CG steps from step {meta.get('step', '?')}")
    return 0


def meta_config(meta: dict) -> str:
    """'iterations x cg_steps' of a solver file's config metadata."""
    import json

    cfg = json.loads(meta["config"])
    return f"{cfg['iterations']} x {cfg['cg_steps']}"
