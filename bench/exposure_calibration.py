"""The exposure reader's calibration, fit on training clips: ``python bench/exposure_calibration.py``.

``blur/exposure.py`` reads the exposure from the widths of the along- and across-motion derivative correlations.
Read at full resolution (frames under 360p, the crops of training and of the held-out benches) the codec's and
the sensor's pixel-level noise shortens the along-motion correlation, so strong blur reads short. This script
measures that on blurred TRAINING clips of the real-footage generator (``realblur``, split 'train', the held-out
clips never enter) and fits the factor ``true = gain * reading`` (least squares) over the readings above
``SHARP_BELOW``; a second, disjoint draw of training clips checks the fit, and sharp training clips show what
sharp footage reads (the reason for ``SHARP_BELOW``). ``exposure.FULL_SIZE_GAIN`` is this factor, rounded.

Writes ``docs/bench/exposure_calibration.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cpgd_core.blur import exposure as expo  # noqa: E402
from cpgd_core.blur.field import estimate_blur_field  # noqa: E402
from cpgd_core.blur.velocity import grey_u8, working_scale  # noqa: E402
from cpgd_core.train.deblur import real_examples  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, FRAMES = 256, 7
FIT_SEED, CHECK_SEED, SHARP_SEED = 21, 22, 23


def raw_reading(ex: dict) -> tuple[float, float]:
    """(raw reading, confidence) of an example's frames, all in one window, as the blur field reads them."""
    y = ex["blurry_decoded"].float()
    field = estimate_blur_field(y, ex.get("priors"), 1.0)   # exposure 1: the trajectories are the velocities
    assert working_scale(*y.shape[-2:]) == 1.0
    total = expo.Curves()
    for t in range(len(y)):
        v = np.ascontiguousarray(field.trajectory[t].permute(1, 2, 0).numpy())
        total = total + expo.frame_curves(grey_u8(y[t]), v, field.confidence[t, 0].numpy(), 1.0)
    return expo.read_curves(total)


def readings(seed: int, count: int, sharp: bool = False) -> list[dict]:
    rows = []
    for ex in real_examples(seed, count, SIZE, FRAMES, split="train", sharp=sharp):
        raw, conf = raw_reading(ex)
        rows.append({"clip": ex["clip"], "crf": ex["crf"], "true": float(ex["exposure_fraction"]), "raw": raw,
                     "confidence": conf,
                     "true_length_px": float(ex["trajectory"].float().norm(dim=1).median())})
        print(f"  {ex['clip']}: true {rows[-1]['true']:.2f} read {raw:.2f} (confidence {conf:.2f})", flush=True)
    return rows


def usable(rows: list[dict]) -> list[dict]:
    """Blurred clips whose exposure could be read, above the sharp threshold: where the calibration applies."""
    return [r for r in rows if r["true"] > 0 and r["confidence"] >= 0.9 and r["raw"] >= expo.SHARP_BELOW]


def errors(rows: list[dict], calibrated: bool) -> dict:
    est = np.array([expo.calibrate(r["raw"], 1.0) if calibrated else min(r["raw"], 1.0) for r in rows])
    true = np.array([r["true"] for r in rows])
    rel = np.abs(est - true) / true
    return {"mean_relative_error": float(rel.mean()), "median_ratio": float(np.median(est / true)),
            "clips": len(rows)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=48, help="clips per draw (about 60 %% blurred and readable)")
    ap.add_argument("--md", default=os.path.join(ROOT, "docs", "bench", "exposure_calibration.md"))
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    fit_rows, check_rows = readings(FIT_SEED, a.count), readings(CHECK_SEED, a.count)
    sharp_rows = readings(SHARP_SEED, a.count // 2, sharp=True)
    fit = usable(fit_rows)
    x, y = np.array([r["raw"] for r in fit]), np.array([r["true"] for r in fit])
    gain = float((x * y).sum() / (x * x).sum())
    check = usable(check_rows)
    sharp_read = [r for r in sharp_rows if r["confidence"] > 0]
    report = {"fit": {"gain": gain, "clips": len(fit)}, "shipped": {"gain": expo.FULL_SIZE_GAIN},
              "check_raw": errors(check, False), "check_calibrated": errors(check, True),
              "fit_raw": errors(fit, False), "fit_calibrated": errors(fit, True),
              "sharp": {"read": len(sharp_read), "clips": len(sharp_rows),
                        "readings": sorted(round(r["raw"], 2) for r in sharp_read),
                        "above_threshold": sum(r["raw"] >= expo.SHARP_BELOW for r in sharp_read)},
              "rows": {"fit": fit_rows, "check": check_rows, "sharp": sharp_rows},
              "seconds": round(time.time() - t0, 1)}
    with open(os.path.splitext(a.md)[0] + ".json", "w") as f:
        json.dump(report, f, indent=1)

    def line(name: str, e: dict) -> list:
        return [name, e["clips"], f"{100 * e['mean_relative_error']:.0f} %", f"{e['median_ratio']:.2f}"]

    md = ["# Exposure reader calibration (`bench/exposure_calibration.py`)", "",
          f"Training clips of the real-footage generator ({SIZE}x{SIZE}, {FRAMES} frames, crf 18-30; split 'train', "
          f"no held-out clip), read at full resolution as the blur field reads frames under 360p. Blurred clips "
          f"whose exposure could be read (confidence >= 0.9) and that read above `SHARP_BELOW` = "
          f"{expo.SHARP_BELOW}.", "",
          f"Least-squares factor over the fit draw (seed {FIT_SEED}, {len(fit)} clips): true = {gain:.3f} x "
          f"reading. Shipped (`exposure.FULL_SIZE_GAIN`): {expo.FULL_SIZE_GAIN}.", "",
          "| clips | n | mean relative error | median estimated / true |", "| --- | --- | --- | --- |",
          *["| " + " | ".join(str(v) for v in line(n, e)) + " |" for n, e in (
              (f"fit draw (seed {FIT_SEED}), raw reading", report["fit_raw"]),
              ("fit draw, calibrated (shipped factor)", report["fit_calibrated"]),
              (f"check draw (seed {CHECK_SEED}), raw reading", report["check_raw"]),
              ("check draw, calibrated (shipped factor)", report["check_calibrated"]))], "",
          f"Sharp training clips (seed {SHARP_SEED}, no blur added; some sources carry their own motion blur): "
          f"{len(sharp_read)} of {len(sharp_rows)} could be read; readings "
          f"{', '.join(f'{v:.2f}' for v in report['sharp']['readings'])}; "
          f"{report['sharp']['above_threshold']} at or above `SHARP_BELOW` (those are inverted).", ""]
    with open(a.md, "w") as f:
        f.write("\n".join(md))
    print(f"fit: true = {gain:.3f} x reading ({len(fit)} clips); wrote {a.md} "
          f"[{time.time() - t0:.0f}s]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
