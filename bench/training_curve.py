"""Stage-one training curves from the committed run logs (no training here): docs/bench/training*.md.

    python bench/training_curve.py [--only NAME ...]

Writes one markdown file per live run:

- ``training``: the 'quality' mode's first end-to-end run (4 iterations x 3 CG steps, docs/training/deblur_real/);
- ``training_3x2``: that solver fine-tuned at the 3 x 2 setting (docs/training/deblur_3x2/);
- ``training_guided``: that solver with a prior that also reads the blurry frame and the trajectory
  (docs/training/deblur_guided/);
- ``training_guided_ft``: that solver fine-tuned on the blur field as inference reads it (``make train-stage-one``,
  docs/training/deblur_guided_ft/);
- ``training_prior``: the pre-training of its learned prior (``make train-prior``, docs/training/prior_denoiser/);
- ``training_prior_wide``: a prior with 4x the parameters, pre-trained the same way (``make train-prior-wide``,
  docs/training/prior_wide/);
- ``training_wide``: the guided 3 x 2 solver trained end to end from that prior (docs/training/deblur_wide/);
- ``training_reader``: the shipped solver fine-tuned with the exposure read at the reading size
  (docs/training/deblur_reader/);
- ``training_long``: the shipped solver fine-tuned on blur up to 5 source frames per frame (``--long-blur``,
  ``make train-stage-one``, docs/training/deblur_long/);
- ``training_fast``: the 'fast' mode's CPFP lite run (``make train-fast``, docs/training/cpfp_lite_real/).

One row per validation, with the mean training loss since the previous row. A run is resumed across sessions, so
its wall time is the sum of several processes (each log line's ``time_s`` restarts with a process). Two log styles
are read: lines with an ``"event"`` key (the CPFP trainer), and lines without one (the prior and solver trainers:
a line with ``loss`` is a training line, one with ``val_psnr`` or ``psnr_s15`` a validation line).
"""
from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import os
import shlex
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TRAINING = os.path.join(ROOT, "docs", "training")
# markdown name in docs/bench -> run folder in docs/training
RUNS = {"training": "deblur_real", "training_3x2": "deblur_3x2", "training_guided": "deblur_guided",
        "training_guided_ft": "deblur_guided_ft", "training_wide": "deblur_wide", "training_reader": "deblur_reader",
        "training_long": "deblur_long", "training_4x2": "deblur_4x2", "training_line": "deblur_line",
        "training_linear": "deblur_linear", "training_longline": "deblur_longline",
        "training_prior": "prior_denoiser", "training_prior_wide": "prior_wide",
        "training_fast": "cpfp_lite_real"}


def read_log(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def kind(e: dict) -> str | None:
    """'train', 'val', another event name ('start', 'resume', ...) or None, whichever style the line has."""
    if "event" in e:
        return e["event"]
    if "loss" in e:
        return "train"
    if "val_psnr" in e or "psnr_s15" in e:
        return "val"
    return None


def curve(events: list[dict]) -> tuple[list[tuple[dict, float, dict | None]], list[float], int]:
    """(rows of (validation line, mean train loss since the previous row, training line at the same step or None),
    wall seconds of each process, last step trained)."""
    rows, losses, seconds, last_time, last_step = [], [], [], 0.0, 0
    train_at: dict[int, dict] = {}
    for e in events:
        t = float(e.get("time_s", 0.0))
        if t < last_time:  # time_s restarts with every process (a resume)
            seconds.append(last_time)
        last_time = t
        k = kind(e)
        if k == "train":
            if e["step"] <= last_step:  # resumed from an earlier checkpoint: those steps are trained again
                losses = [(s, v) for s, v in losses if s < e["step"]]
            losses.append((e["step"], e["loss"]))
            train_at[e["step"]] = e
            last_step = e["step"]
        elif k == "val":
            if rows and rows[-1][0]["step"] == e["step"]:
                continue
            loss = sum(v for _, v in losses) / len(losses) if losses else float("nan")
            rows.append((e, loss, train_at.get(e["step"])))
            losses = []
    if last_time:
        seconds.append(last_time)
    return rows, seconds, last_step


def _db(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.2f}"


def _loss(x: float) -> str:
    return "–" if x != x else f"{x:.5f}"


def _progress(last_step: int, seconds: list[float]) -> str:
    return (f"reached step {last_step} in {len(seconds)} process(es), {sum(seconds) / 3600:.2f} h of wall time")


def _safetensors_header(path: str) -> tuple[dict, int]:
    """(metadata, parameter count) of a safetensors file, from its header alone."""
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    meta = header.pop("__metadata__", {})
    return meta, sum(math.prod(v["shape"]) for v in header.values())


def quality_curve(run: str) -> list[str]:
    """The unrolled solver trained end to end (cpgd_core.train.deblur); recipe = recipe.txt read by its parser."""
    from cpgd_core.train import deblur

    with open(os.path.join(run, "recipe.txt")) as f:
        recipe_text = f.read().strip()
    args = deblur.build_parser().parse_args(shlex.split(recipe_text) + ["--out", run])
    rows, seconds, last_step = curve(read_log(os.path.join(run, "log.jsonl")))
    init = os.path.relpath(os.path.join(ROOT, args.init), ROOT) if args.init else "no pre-trained prior"
    lines = [f"Run: `python -m cpgd_core.train deblur` with the current `{os.path.relpath(run, ROOT)}/recipe.txt` "
             f"(`{recipe_text}`; where the recipe changed during the run, the file's git history has the earlier "
             "versions and the lr column shows where): the unrolled solver with "
             f"{args.iterations} iterations of {args.cg_steps} CG steps"
             f"{', its prior reading the blurry frame and the trajectory beside the estimate' if args.guide else ''}, "
             "initialised from "
             f"`{init}`, batch {args.batch}, {args.crop}² crops of 3 frames, {args.sharp_share:.0%} sharp examples, "
             f"schedule of {args.steps} steps; {_progress(last_step, seconds)}.", "",
             f"Validation: {args.val_count} examples of {args.val_crop}² x 3 frames from the held-out clips "
             f"(`realblur.VAL_CLIPS`, seed {args.val_seed}), blurred and encoded like the training data; the solver "
             "uses trajectories estimated from the decoded blurry frames (exposure 'auto'), never the true ones. "
             "Input PSNR is the blurry decoded frames'. lr and sigma at the row's step (sigma: "
             "the learned per-iteration noise level of the half-quadratic splitting, x255, first iteration first).", "",
             "| step | val PSNR dB | input PSNR dB | gain dB | mean train loss since previous row | lr "
             "| sigma per iteration (x255) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for v, loss, t in rows:
        sigma = " / ".join(f"{s:.1f}" for s in t["sigma"]) if t and "sigma" in t else "–"
        lr = f"{t['lr']:.2e}" if t and "lr" in t else "–"
        lines.append(f"| {v['step']} | {v['val_psnr']:.2f} | {v['input_psnr']:.2f} | "
                     f"{v['val_psnr'] - v['input_psnr']:+.2f} | {_loss(loss)} | {lr} | {sigma} |")
    return lines


def prior_curve(run: str) -> list[str]:
    """The prior's pre-training as a noise-conditioned denoiser (cpgd_core.train.prior); recipe from the metadata
    of the run's exported weights (what the process that wrote them ran with)."""
    from cpgd_core.train import prior

    meta, params = _safetensors_header(os.path.join(run, "prior_denoiser.safetensors"))
    recipe = ast.literal_eval(meta["recipe"])
    val = {k: p.default for k, p in inspect.signature(prior.make_val).parameters.items()}
    levels = [round(s * 255) for s in prior.VAL_SIGMAS]
    rows, seconds, last_step = curve(read_log(os.path.join(run, "log.jsonl")))
    lines = [f"Run: `make train-prior` (PriorDenoiser, {params} parameters), batch {recipe['batch']}, "
             f"{recipe['crop']}² crops of sharp real frames (training clips), noise sigma uniform in "
             f"[0, {recipe['sigma_max'] * 255:.0f}/255] with {recipe['zero_share']:.0%} of crops noise-free, schedule "
             f"of {recipe['steps']} steps (recipe from the metadata of `{os.path.relpath(run, ROOT)}/"
             f"prior_denoiser.safetensors`, exported at step {meta['step']}); {_progress(last_step, seconds)}.", "",
             f"Validation: {val['count']} fixed {val['crop']}² crops of the held-out clips (`realblur.VAL_CLIPS`, "
             f"seed {val['seed']}) with fixed Gaussian noise at each sigma, quantised to 8 bits as decoded video is. "
             "Cells: PSNR of the denoised crops (of the noisy input in brackets); at sigma 0 the input is the clean "
             "crop itself, so the output's PSNR measures how exactly sharp input comes back.", "",
             "| step | " + " | ".join(f"sigma {s}/255 dB" for s in levels) + " | mean train loss since previous row |",
             "| --- | " + " | ".join("---" for _ in levels) + " | --- |"]
    for v, loss, _ in rows:
        cells = [_db(v[f"psnr_s{s}"]) + ("" if math.isinf(v[f"input_s{s}"]) else f" ({_db(v[f'input_s{s}'])})")
                 for s in levels]
        lines.append(f"| {v['step']} | " + " | ".join(cells) + f" | {_loss(loss)} |")
    return lines


def fast_curve(run: str) -> list[str]:
    """The CPFP lite run (cpgd_core.train.cpfp, event-style log with a 'start' line per process)."""
    events = read_log(os.path.join(run, "log.jsonl"))
    rows, seconds, last_step = curve(events)
    start = next(e for e in events if kind(e) == "start")
    lines = [f"Run: `make train-fast`, {start['config']} ({start['params']} parameters), batch {start['batch']}, "
             f"{start['crop']}² crops, {start['frames']} frames, schedule of {start['steps']} steps; "
             f"{_progress(last_step, seconds)} on {start['device']}.", "",
             "Validation: the run's fixed held-out real-footage set (`make-val --data real`, seed 0, 16 x 128² x 5).",
             "", "| step | val PSNR dB | input PSNR dB | gain dB | val SSIM | mean train loss since previous row |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {v['step']} | {v['val_psnr']:.2f} | {v['input_psnr']:.2f} | {v['val_psnr'] - v['input_psnr']:+.2f} | "
              f"{v['val_ssim']:.4f} | {_loss(loss)} |" for v, loss, _ in rows]
    return lines


CURVES = {"training": quality_curve, "training_3x2": quality_curve, "training_guided": quality_curve,
          "training_guided_ft": quality_curve, "training_wide": quality_curve, "training_reader": quality_curve,
          "training_long": quality_curve, "training_4x2": quality_curve, "training_line": quality_curve, "training_linear": quality_curve,
          "training_longline": quality_curve,
          "training_prior": prior_curve,
          "training_prior_wide": prior_curve, "training_fast": fast_curve}
TITLES = {"training": "Stage one 'quality': end-to-end training of the unrolled solver",
          "training_3x2": "Stage one 'quality': the solver fine-tuned at the 3 x 2 setting",
          "training_guided": "Stage one 'quality': the guided prior",
          "training_guided_ft": "Stage one 'quality': the guided prior fine-tuned on the blur field as shipped",
          "training_wide": "Stage one 'quality': the guided solver with the wide prior",
          "training_reader": "Stage one 'quality': the shipped solver fine-tuned on the exposure reader as shipped",
          "training_long": "Stage one 'quality': the shipped solver fine-tuned on long blur",
          "training_4x2": "Stage one 'quality': the shipped solver fine-tuned at 4 iterations x 2 CG steps",
          "training_line": "Stage one 'quality': the shipped solver fine-tuned with half its blur along straight paths",
          "training_linear": "Stage one 'quality': the shipped solver fine-tuned with linear-light data steps",
          "training_longline": "Stage one 'quality': the shipped solver fine-tuned on long blur, mostly along "
                               "straight paths (make train-stage-one)",
          "training_prior": "Stage one 'quality': pre-training of the learned prior",
          "training_prior_wide": "Stage one 'quality': pre-training of the wide prior (4x the parameters)",
          "training_fast": "Stage one 'fast': CPFP lite training"}


def write_curve(name: str) -> None:
    run = os.path.join(TRAINING, RUNS[name])
    lines = [f"# {TITLES[name]} (`bench/training_curve.py`, `{os.path.relpath(run, ROOT)}/log.jsonl`)", ""]
    if os.path.isfile(os.path.join(run, "log.jsonl")):
        lines += CURVES[name](run)
    else:
        lines += [f"Not started yet (no `{os.path.relpath(run, ROOT)}/log.jsonl`)."]
    md = os.path.join(ROOT, "docs", "bench", name + ".md")
    os.makedirs(os.path.dirname(md), exist_ok=True)
    with open(md + ".part", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(md + ".part", md)
    print("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=sorted(RUNS), action="append", help="write only this curve (repeatable)")
    a = ap.parse_args(argv)
    for name in a.only or RUNS:
        write_curve(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
