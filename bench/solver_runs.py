"""Trained solvers that were not shipped, against the shipped one: ``python bench/solver_runs.py``.

Each run's ``deblur_final.safetensors`` (``RUNS``) and the shipped ``cpgd_core/weights/deblur.safetensors``, in
quality mode as the product runs it (``nonblind.deblur_frames``: the length rule and the gate included), on the
four held-out sets of ``bench/eval_quality.py``: the real-footage clips (seed 1, 12 clips of 256x256), the same
clips with their blur rendered along the straight paths, long blur at crf 16, and that long blur rendered along the
straight paths. PSNR gain over the blurry input,
with the blur field estimated from the decoded frames and with the generator's true trajectories. Writes
``docs/bench/solver_runs.md``; the model card cites it for each run it did not ship.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cpgd_core import metrics  # noqa: E402
from cpgd_core.pipeline import nonblind  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING = os.path.join(ROOT, "docs", "training")
# run folder: what it changed (the model card has each run's recipe and curve)
RUNS = {"deblur_reader": "run 7: exposure read at the reading size",
        "deblur_long": "run 8: long blur (--long-blur)",
        "deblur_4x2": "run 9: 4 iterations x 2 CG steps",
        "deblur_line": "run 10: half the blur along straight paths (--line-share 0.5)",
        "deblur_linear": "run 11: linear-light data steps (--data-space linear), --line-share 0.5",
        "deblur_longline": "run 12: the shipped solver fine-tuned on long blur, --line-share 0.75"}


@torch.no_grad()
def main() -> int:
    from eval_quality import Modes, line_examples, long_blur_examples, long_line_examples, real_examples

    t0 = time.time()
    modes = Modes()
    solvers = {"shipped (run 4)": modes.quality}
    for run, what in RUNS.items():
        path = os.path.join(TRAINING, run, "deblur_final.safetensors")
        if os.path.isfile(path):
            solvers[what] = nonblind.load_deblur(path)
    held_out = real_examples(1, 12, 256, 7)
    long_blur = long_blur_examples()
    sets = {"held-out": held_out, "straight-path blur": line_examples(held_out), "long blur": long_blur,
            "long blur, straight paths": long_line_examples(long_blur)}
    gains: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in solvers}
    for set_name, examples in sets.items():
        fields = [(modes.field(ex), modes.true_field(ex)) for ex in examples]
        inputs = [metrics.psnr(ex["blurry_decoded"].float(), ex["sharp"]) for ex in examples]
        for name, model in solvers.items():
            est, true = ([metrics.psnr(modes.solve(model, ex, f[k]), ex["sharp"]) - p
                          for ex, f, p in zip(examples, fields, inputs)] for k in (0, 1))
            gains[name][set_name] = (float(np.mean(est)), float(np.mean(true)))
            print(f"[{time.time() - t0:.0f}s] {set_name}, {name}: {gains[name][set_name][0]:+.3f} / "
                  f"{gains[name][set_name][1]:+.3f}", flush=True)
    lines = ["# Trained solvers not shipped, against the shipped one (`bench/solver_runs.py`)", "",
             "Quality mode as the product runs it; gain in dB over the blurry input, mean of the clips' PSNR: blur "
             "field estimated / the generator's true trajectories. Sets as in `docs/bench/eval_quality.md`: "
             "held-out real footage (12 clips of 256x256, crf 18-30), the same clips with their blur rendered along "
             "the straight paths, long blur at crf 16, the same long blur rendered along the straight paths (the closest "
             "set here to the 11-frame GoPro evaluation).", "",
             "| solver | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for name, row in gains.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[s][0]:+.2f} / {row[s][1]:+.2f}" for s in sets) + " |")
    out = os.path.join(ROOT, "docs", "bench", "solver_runs.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out} [{time.time() - t0:.0f}s]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
