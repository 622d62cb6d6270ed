"""Stage-one training curves from the committed run logs (no training here): docs/bench/training*.md.

    python bench/training_curve.py [--log docs/training/cpfp_lite_real/log.jsonl --md docs/bench/training.md]

Without --log every run of RUNS is written (the shipped lite run, and the deeper network grown from its step-2600
weights that is trained beside it as an A/B).

Validation rows are the run's fixed held-out real-footage set (make-val --data real, seed 0, 16 x 128² x 5);
one row per validation, plus the training-loss mean between validations and the wall time of each process
(the run is resumed across sessions, so its time is the sum of several processes).
"""
from __future__ import annotations

import argparse
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# markdown name in docs/bench -> run folder in docs/training
RUNS = {"training": "cpfp_lite_real", "training_deep": "cpfp_deep_real"}


def read_log(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def curve(events: list[dict]) -> tuple[list[list], list[float], int]:
    """(rows of [step, val PSNR, input PSNR, gain, val SSIM, mean loss since last row], process seconds, last step)."""
    rows, losses, seconds, last_time, last_step = [], [], [], 0.0, 0
    for e in events:
        t = float(e.get("time_s", 0.0))
        if t < last_time:  # time_s restarts with every process (a resume)
            seconds.append(last_time)
        last_time = t
        if e["event"] == "train":
            losses.append(e["loss"])
            last_step = e["step"]
        if e["event"] == "val":
            if rows and rows[-1][0] == e["step"]:
                continue
            loss = sum(losses) / len(losses) if losses else float("nan")
            rows.append([e["step"], e["val_psnr"], e["input_psnr"], e["val_psnr"] - e["input_psnr"], e["val_ssim"], loss])
            losses = []
    if last_time:
        seconds.append(last_time)
    return rows, seconds, last_step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--log", default=None, help="one run's log (default: every run of RUNS)")
    ap.add_argument("--md", default=os.path.join(ROOT, "docs", "bench", "training.md"))
    a = ap.parse_args(argv)
    if a.log:
        return write_curve(a.log, a.md)
    for name, run in RUNS.items():
        write_curve(os.path.join(ROOT, "docs", "training", run, "log.jsonl"),
                    os.path.join(ROOT, "docs", "bench", name + ".md"))
    return 0


def write_curve(log: str, md: str) -> int:
    events = read_log(log)
    rows, seconds, last_step = curve(events)
    start = next(e for e in events if e["event"] == "start")
    lines = [f"# Stage-one training curve (`bench/training_curve.py`, `{os.path.relpath(log, ROOT)}`)", "",
             f"Run: {start['config']} ({start['params']} parameters), batch {start['batch']}, {start['crop']}² crops, "
             f"{start['frames']} frames, schedule of {start['steps']} steps; reached step {last_step} in "
             f"{len(seconds)} process(es), {sum(seconds) / 3600:.2f} h of wall time on {start['device']}.", "",
             "| step | val PSNR dB | input PSNR dB | gain dB | val SSIM | mean train loss since previous row |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:+.2f} | {r[4]:.4f} | "
              f"{'–' if r[5] != r[5] else f'{r[5]:.5f}'} |" for r in rows]
    os.makedirs(os.path.dirname(os.path.abspath(md)), exist_ok=True)
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
