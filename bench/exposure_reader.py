"""The exposure reader on training clips, against the truth: ``python bench/exposure_reader.py``.

``blur/exposure.py`` reads the exposure from the widths of the along- and across-motion derivative correlations.
This measures the reading on clips of the real-footage generator (``realblur``, split 'train': the held-out clips
never enter), 256x256 and 7 frames as the training and held-out benches use them, so read at full resolution:

- blurred clips (two disjoint draws): mean relative error, median estimated / true, read as shipped and at the
  frames' own size (before ``exposure.READ_SPEED``), and the least-squares factor that would map the readings onto
  the truth (not applied: see ``exposure.exposure_from_reading``);
- sharp clips (no blur added; some sources carry their own motion blur): what they read, the reason for
  ``exposure.SHARP_BELOW``; and the blurred clips that read under it (left as they are).

Writes ``docs/bench/exposure_reader.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import cv2
import numpy as np

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cpgd_core.blur import exposure as expo  # noqa: E402
from cpgd_core.blur.field import estimate_blur_field  # noqa: E402
from cpgd_core.blur.velocity import grey_u8, working_scale  # noqa: E402
from cpgd_core.codec.flow import magnitude  # noqa: E402
from cpgd_core.train.deblur import real_examples  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, FRAMES = 256, 7
DRAW_SEEDS, SHARP_SEED = (21, 22), 23   # two draws of blurred clips, one of sharp ones


def raw_reading(ex: dict, full_size: bool = False) -> tuple[float, float, float]:
    """(raw reading, confidence, the voting pixels' mean speed in px per frame) of an example's frames, all in one
    window, as the blur field reads them; with ``full_size`` read at the frames' own size instead of the size
    ``exposure._reading_size`` chooses."""
    y = ex["blurry_decoded"].float()
    field = estimate_blur_field(y, ex.get("priors"), 1.0)   # exposure 1: the trajectories are the velocities
    scale = working_scale(*y.shape[-2:])
    size = (round(y.shape[-1] * scale), round(y.shape[-2] * scale))
    at_scale = lambda a: a if scale == 1.0 else cv2.resize(a, size, interpolation=cv2.INTER_AREA)  # noqa: E731
    shipped = expo.READ_SPEED
    expo.READ_SPEED = None if full_size else shipped
    try:
        total = expo.Curves()
        for t in range(len(y)):
            v = at_scale(np.ascontiguousarray(field.trajectory[t].permute(1, 2, 0).numpy())) * scale
            total = total + expo.frame_curves(at_scale(grey_u8(y[t])), v, at_scale(field.confidence[t, 0].numpy()),
                                              scale)
    finally:
        expo.READ_SPEED = shipped
    return (*expo.read_curves(total), total.speed / max(total.votes, 1))


def readings(seed: int, count: int, sharp: bool = False) -> list[dict]:
    rows = []
    for ex in real_examples(seed, count, SIZE, FRAMES, split="train", sharp=sharp):
        raw, conf, speed = raw_reading(ex)
        full, full_conf, full_speed = raw_reading(ex, full_size=True)
        rows.append({"clip": ex["clip"], "crf": ex["crf"], "true": float(ex["exposure_fraction"]), "raw": raw,
                     "confidence": conf, "speed": speed, "raw_full_size": full, "confidence_full_size": full_conf,
                     "speed_full_size": full_speed,
                     "true_length_px": float(magnitude(ex["trajectory"].float()).median())})
        print(f"  {ex['clip']}: true {rows[-1]['true']:.2f} read {raw:.2f} (confidence {conf:.2f}), at full size "
              f"{full:.2f}", flush=True)
    return rows


def at_full_size(rows: list[dict]) -> list[dict]:
    """The same rows with the full-size reading in place of the shipped one."""
    return [{**r, "raw": r["raw_full_size"], "confidence": r["confidence_full_size"], "speed": r["speed_full_size"]}
            for r in rows]


def inverted(r: dict) -> bool:
    """Whether a reading is inverted: read as a blur (above ``SHARP_BELOW``) at least ``SHARP_LENGTH`` px long."""
    return expo.exposure_from_reading(r["raw"], r["raw"] * r["speed"]) > 0


def usable(rows: list[dict]) -> list[dict]:
    """Blurred clips whose exposure could be read, above the sharp thresholds (those are inverted)."""
    return [r for r in rows if r["true"] > 0 and r["confidence"] >= 0.9 and inverted(r)]


def errors(rows: list[dict]) -> dict:
    est = np.array([expo.exposure_from_reading(r["raw"]) for r in rows])
    true = np.array([r["true"] for r in rows])
    rel = np.abs(est - true) / true
    return {"mean_relative_error": float(rel.mean()), "median_ratio": float(np.median(est / true)),
            "clips": len(rows)}


LONG_SEED, LONG_SIZE, LONG_FRAMES = 31, 480, 5
LONG_DRAW_STEPS = ((3, 0.3), (4, 0.35), (5, 0.35))   # 3-5 frame intervals only


def long_readings(count: int) -> dict:
    """480p training clips blurred over 3-5 frame intervals (trajectories of 10 px and more) and as many sharp ones,
    read through the whole blur field (half size, as the product reads 480p) with ``MIN_READ_SIDE`` as shipped and
    at its earlier 96 px: where the reading size bottoms out, long blur reads short."""
    from cpgd_core.data import realblur

    rng = np.random.default_rng(LONG_SEED)
    blurred = []
    while len(blurred) < count:
        ex = realblur.make_training_example(rng, (LONG_SIZE, LONG_SIZE), LONG_FRAMES, split="train", sharp_share=0.0,
                                            steps=LONG_DRAW_STEPS)
        if float(magnitude(ex["trajectory"]).median()) >= 10:
            blurred.append(ex)
    sharp = [realblur.make_training_example(rng, (LONG_SIZE, LONG_SIZE), LONG_FRAMES, split="train", sharp_share=1.0)
             for _ in range(count // 2)]
    shipped, out = expo.MIN_READ_SIDE, {}
    try:
        for side in (shipped, 96):
            expo.MIN_READ_SIDE = side
            fields = [estimate_blur_field(ex["blurry_decoded"].float(), ex["priors"], "auto") for ex in blurred]
            sharp_fields = [estimate_blur_field(ex["blurry_decoded"].float(), ex["priors"], "auto") for ex in sharp]
            ratio = np.array([float(f.exposure.median()) / ex["exposure_fraction"] for f, ex in zip(fields, blurred)
                              if float(f.exposure_confidence.median()) >= 0.9])
            out[side] = {"clips": len(ratio), "of": len(blurred), "median_ratio": float(np.median(ratio)),
                         "mean_relative_error": float(np.abs(ratio - 1).mean()),
                         "sharp_inverted": sum(bool(((f.exposure > 0) & (f.exposure_confidence > 0)).any())
                                               for f in sharp_fields), "sharp": len(sharp)}
            print(f"  long blur, MIN_READ_SIDE {side}: {out[side]}", flush=True)
    finally:
        expo.MIN_READ_SIDE = shipped
    return out


def high_rate_readings() -> list[dict]:
    """bench/motion.py's sharp small-motion clips (crf 16), read through the blur field: raw reading, the blur it
    means in px, and whether it is inverted with and without ``SHARP_LENGTH``."""
    from motion import decode, high_rate_clips

    rows = []
    for name, frames in high_rate_clips():
        y, _ = decode(frames)
        raw, conf, speed = raw_reading({"blurry_decoded": y})
        motion = float(magnitude(estimate_blur_field(y, None, 1.0).trajectory).median())
        rows.append({"clip": name, "raw": raw, "confidence": conf, "speed": speed, "median_motion_px": motion,
                     "inverted": conf > 0 and inverted({"raw": raw, "speed": speed}),
                     "inverted_without_length": conf > 0 and raw >= expo.SHARP_BELOW})
        print(f"  {name}: read {raw:.2f} (confidence {conf:.2f}), blur {raw * speed:.1f} px", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=48, help="clips per draw (about half blurred and readable)")
    ap.add_argument("--md", default=os.path.join(ROOT, "docs", "bench", "exposure_reader.md"))
    a = ap.parse_args(argv)
    t0 = time.time()
    draws = {seed: readings(seed, a.count) for seed in DRAW_SEEDS}
    sharp_rows = readings(SHARP_SEED, a.count // 2, sharp=True)
    long_blur = long_readings(14)
    high_rate = high_rate_readings()
    blurred = [r for rows in draws.values() for r in usable(rows)]
    x, y = np.array([r["raw"] for r in blurred]), np.array([r["true"] for r in blurred])
    factor = float((x * y).sum() / (x * x).sum())
    sharp_read = [r for r in sharp_rows if r["confidence"] > 0]
    readable = [r for rows in draws.values() for r in rows if r["true"] > 0 and r["confidence"] >= 0.9]
    under = [r for r in readable if not inverted(r)]
    report = {"draws": {str(seed): errors(usable(rows)) for seed, rows in draws.items()},
              "draws_full_size": {str(seed): errors(usable(at_full_size(rows))) for seed, rows in draws.items()},
              "least_squares_factor": factor,
              "sharp": {"read": len(sharp_read), "clips": len(sharp_rows),
                        "readings": sorted(round(r["raw"], 2) for r in sharp_read),
                        "blur_px_of_those_above_sharp_below": sorted(round(r["raw"] * r["speed"], 1) for r in sharp_read
                                                                     if r["raw"] >= expo.SHARP_BELOW),
                        "above_threshold": sum(inverted(r) for r in sharp_read)},
              "blurred_read_px_min": min(r["raw"] * r["speed"] for r in readable if r["raw"] >= expo.SHARP_BELOW),
              "high_rate": high_rate,
              "blurred_under_threshold": {"clips": len(under), "of": len(readable),
                                          "true_lengths_px": sorted(round(r["true_length_px"], 1) for r in under)},
              "long_blur": {str(k): v for k, v in long_blur.items()},
              "rows": {"draws": {str(k): v for k, v in draws.items()}, "sharp": sharp_rows},
              "seconds": round(time.time() - t0, 1)}
    with open(os.path.splitext(a.md)[0] + ".json", "w") as f:
        json.dump(report, f, indent=1)
    md = ["# Exposure reader on training clips (`bench/exposure_reader.py`)", "",
          f"Clips of the real-footage generator ({SIZE}x{SIZE}, {FRAMES} frames, crf 18-30; split 'train', no "
          "held-out clip), their motion measured at full resolution as the blur field measures frames under 360p. "
          f"Blurred clips whose exposure could be read (confidence >= 0.9) and that are inverted: read as a blur (above "
          f"`SHARP_BELOW` = {expo.SHARP_BELOW}) at least `SHARP_LENGTH` = {expo.SHARP_LENGTH:g} px long at their "
          "pixels' speed.", "",
          "| draw | read at | clips | mean relative error | median estimated / true |",
          "| --- | --- | --- | --- | --- |",
          *[f"| seed {seed} | {where} | {e['clips']} | {100 * e['mean_relative_error']:.0f} % | "
            f"{e['median_ratio']:.2f} |"
            for seed in report["draws"]
            for where, e in ((f"moving pixels' median speed {expo.READ_SPEED:g} px/frame (shipped)",
                              report["draws"][seed]),
                             ("the frames' own size (before)", report["draws_full_size"][seed]))], "",
          "Read at the frames' own size, strong blur reads short (`exposure.py` says why); read where the blur is "
          f"a few pixels long, the least-squares factor from reading to truth over both draws is {factor:.2f}. "
          "No factor is applied (`exposure.exposure_from_reading`).", "",
          f"Sharp clips (seed {SHARP_SEED}, no blur added; some sources carry their own motion blur): "
          f"{len(sharp_read)} of {len(sharp_rows)} could be read; readings "
          f"{', '.join(f'{v:.2f}' for v in report['sharp']['readings'])}; "
          f"those at or above `SHARP_BELOW` mean a blur of "
          f"{', '.join(f'{v:.1f}' for v in report['sharp']['blur_px_of_those_above_sharp_below'])} px at their "
          f"pixels' speed (the blurred clips above `SHARP_BELOW` read from "
          f"{report['blurred_read_px_min']:.1f} px up, so the two overlap): "
          f"{report['sharp']['above_threshold']} read a blur of `SHARP_LENGTH` = {expo.SHARP_LENGTH:g} px or "
          f"more (those are inverted). Blurred clips (exposure 0.3-1.0) that are not inverted, left as they are: "
          f"{len(under)} of {len(readable)} (median true trajectory "
          f"{', '.join(f'{r:.1f}' for r in report['blurred_under_threshold']['true_lengths_px'])} px).", "",
          "## Sharp frames with small motion (bench/motion.py's high-rate clips, crf 16, read through the blur "
          "field)", "",
          "As a high-speed camera records them (the sharp 240 fps control evaluated outside this repository moves "
          "about 2.7 px per frame). A blur of a few pixels is as wide as the texture's own derivative correlation, "
          "so some read one; under `SHARP_LENGTH` it reads sharp (the field keeps the length as `blur_length`).", "",
          "| clip | median motion px/frame | reading | blur it means px | inverted (shipped) | inverted without "
          "`SHARP_LENGTH` |", "| --- | --- | --- | --- | --- | --- |",
          *[f"| {r['clip']} | {r['median_motion_px']:.1f} | {r['raw']:.2f} | {r['raw'] * r['speed']:.1f} | "
            f"{'yes' if r['inverted'] else 'no'} | {'yes' if r['inverted_without_length'] else 'no'} |"
            if r["confidence"] > 0 else
            f"| {r['clip']} | {r['median_motion_px']:.1f} | too few moving pixels | | no | no |" for r in high_rate],
          "",
          f"## Long blur at 480p (seed {LONG_SEED}: {LONG_SIZE}x{LONG_SIZE}, {LONG_FRAMES} frames, 3-5 frame intervals "
          "per frame, trajectories of 10 px and more; read through the blur field at half size)", "",
          "Where the reading size reaches `MIN_READ_SIDE` the blur stays long there and reads short.", "",
          "| `MIN_READ_SIDE` | blurred clips read | median estimated / true | mean relative error | sharp clips "
          "inverted |", "| --- | --- | --- | --- | --- |",
          *[f"| {side} px{' (shipped)' if side == expo.MIN_READ_SIDE else ''} | {v['clips']} of {v['of']} | "
            f"{v['median_ratio']:.2f} | {100 * v['mean_relative_error']:.0f} % | {v['sharp_inverted']} of "
            f"{v['sharp']} |" for side, v in long_blur.items()], ""]
    with open(a.md, "w") as f:
        f.write("\n".join(md))
    print(f"least-squares factor {factor:.3f} ({len(blurred)} clips); wrote {a.md} [{time.time() - t0:.0f}s]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
