"""The stage-one architecture sweep table from the committed sweep logs: docs/bench/stage_one_sweep.md.

    python bench/stage_one_sweep.py [--frames 2] [--md docs/bench/stage_one_sweep.md]

Training happens in ``python -m cpgd_core.train sweep`` (``make sweep-stage-one``); this script only reads its
logs (docs/training/sweep/NAME/log.jsonl) and measures each candidate's 1280x720 CPU speed here, with random
weights (speed does not depend on them). "CPU-h" is the training process's CPU time (all its threads, data
workers excluded, equal for all candidates since they see the same data stream).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(ROOT)
sys.path.append(os.path.dirname(os.path.abspath(__file__)))

from cpfp import throughput  # noqa: E402  (bench/cpfp.py)
from training_curve import read_log  # noqa: E402

from cpgd_core.models.cpfp import CPFPConfig  # noqa: E402
from cpgd_core.precision import resolve_dtype  # noqa: E402
from cpgd_core.train.cpfp import _config_overrides  # noqa: E402
from cpgd_core.train.sweep import CANDIDATES, SWEEP_DIR  # noqa: E402

SPEED_BAR_FPS = 0.5  # issue 12: the default model must run at >= 0.5 frames/s at 1280x720 on 2 CPU cores


def summarise(events: list[dict]) -> dict:
    """Last validation, schedule, steps reached and CPU seconds (summed over the resumed processes)."""
    start = next(e for e in events if e["event"] == "start")
    vals = [e for e in events if e["event"] == "val"]
    cpu, last_cpu = 0.0, 0.0
    for e in events:
        if e["event"] == "start":
            cpu, last_cpu = cpu + last_cpu, 0.0
        elif e["event"] == "train" and "cpu_s" in e:
            last_cpu = e["cpu_s"]
    steps = max((e["step"] for e in events if e["event"] == "train"), default=0)
    return {"params": start["params"], "schedule": start["steps"], "steps": steps, "cpu_h": (cpu + last_cpu) / 3600,
            "val0": vals[0]["val_psnr"] if vals else float("nan"), "val": vals[-1]["val_psnr"] if vals else float("nan"),
            "input": vals[-1]["input_psnr"] if vals else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=2, help="frames per 720p speed measurement")
    ap.add_argument("--md", default=os.path.join(ROOT, "docs", "bench", "stage_one_sweep.md"))
    a = ap.parse_args(argv)
    rows = []
    for name, (overrides, why) in CANDIDATES.items():
        log = os.path.join(SWEEP_DIR, name, "log.jsonl")
        if not os.path.isfile(log):
            print(f"{name}: no log at {os.path.relpath(log, ROOT)} (run make sweep-stage-one)", file=sys.stderr)
            continue
        s = summarise(read_log(log))
        fps = throughput(a.frames, "cpu", "auto", CPFPConfig.lite(**_config_overrides(overrides)))["fps"]
        gain = s["val"] - s["input"]
        per_h = (s["val"] - s["val0"]) / s["cpu_h"] if s["cpu_h"] else float("nan")
        rows.append(f"| {name} | {why} | {s['params'] / 1e6:.2f} M | {s['steps']}/{s['schedule']} | {s['cpu_h']:.2f} | "
                    f"{s['val']:.2f} ({gain:+.2f}) | {per_h:+.2f} | {fps:.2f}{'' if fps >= SPEED_BAR_FPS else ' (too slow)'} |")
        print(rows[-1], flush=True)
    dtype = resolve_dtype("auto", torch.device("cpu"), cpu_bf16=True)
    lines = ["# Stage-one architecture sweep (`bench/stage_one_sweep.py`, logs in `docs/training/sweep/`)", "",
             "Every candidate is trained from scratch by `make sweep-stage-one` with the recipe of "
             "`make train-stage-one` (same data stream and seed), over the same short schedule, and validated on "
             "the same held-out real-footage set (16 x 128² x 5). Gain per CPU-hour is (last val - step-0 val) / "
             f"training CPU-hours. Speed: 1280x720, {a.frames} frames, {torch.get_num_threads()} CPU threads, "
             f"precision auto ({dtype} here), measured by this script.", "",
             "| candidate | what it tests | parameters | steps | training CPU-h | val PSNR dB (vs input) | "
             "val dB per CPU-h | 720p frames/s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"] + rows
    os.makedirs(os.path.dirname(os.path.abspath(a.md)), exist_ok=True)
    with open(a.md, "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
