"""Stage-one architecture sweep: ``python -m cpgd_core.train sweep [--steps N] [--only NAME ...]``.

Each candidate network is trained from scratch with the recipe of ``make train-stage-one`` (same data stream,
seed and held-out real-footage validation set) over a short schedule of its own, into
``docs/training/sweep/NAME/``. Runs resume, so the sweep can be stopped and continued. ``bench/stage_one_sweep.py``
turns the logs into the table of validation gain per CPU-hour (and measures each candidate's 720p speed).
"""
from __future__ import annotations

import argparse
import os

from . import cpfp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP_DIR = os.path.join(ROOT, "docs", "training", "sweep")
VAL_SET = os.path.join(ROOT, ".devdata", "val_real_128.pt")
# name -> (CPFPConfig.lite overrides, what the candidate tests)
CANDIDATES: dict[str, tuple[list[str], str]] = {
    "lite": ([], "the shipped layout: residual blocks, 32 channels at 1/4 res"),
    "wide48": (["mid_channels=48", "recon_blocks=4"], "wider 1/4-res features (48), fewer reconstruction blocks"),
    "gated48": (["block=gated", "mid_channels=48"], "the official gated blocks (NAFNet-style) at 48 channels"),
}
# The recipe of `make train-stage-one` minus its init, schedule length and sharp share (the sweep keeps the default
# realblur.SHARP_SHARE that the shipped run had when the sweep was run).
RECIPE = ["--config", "lite", "--data", "mix", "--batch", "4", "--crop", "128", "--frames", "5",
          "--crops-per-clip", "2", "--workers", "1", "--lr", "2e-4", "--warmup", "50", "--seed", "5", "--resume"]


def run_candidate(name: str, steps: int, time_limit: float = 0) -> None:
    overrides, _ = CANDIDATES[name]
    argv = RECIPE + ["--steps", str(steps), "--val", VAL_SET, "--val-every", str(max(steps // 4, 1)),
                     "--ckpt-every", "50", "--log-every", "25", "--out", os.path.join(SWEEP_DIR, name)]
    for item in overrides:
        argv += ["--set", item]
    if time_limit:
        argv += ["--time-limit", str(time_limit)]
    cpfp.main(argv)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m cpgd_core.train sweep", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300, help="schedule length of every candidate")
    p.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="run only these candidates")
    p.add_argument("--time-limit", type=float, default=0, help="per candidate, seconds (resume continues it)")
    a = p.parse_args(argv)
    if not os.path.isfile(VAL_SET):
        cpfp.make_val(VAL_SET, seed=0, count=16, crop=128, frames=5, source="real")
    for name in a.only or CANDIDATES:
        run_candidate(name, a.steps, a.time_limit)
    return 0
