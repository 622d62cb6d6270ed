"""Quality report of the shipped stage-one model (issue 3, "Quality bar"), CPU only.

    python bench/eval_quality.py [--model W] [--ablation W] [--out .build/eval] [--images docs/images]
                                 [--skip-real] [--skip-sample]

Sections (each prints a markdown table; one JSON line with every number closes the run):
  a. the training validation set (make-val seed 0, 16 clips, 128 px, 7 frames, about 1-18 px of blur per
     frame — identical to training's): PSNR/SSIM of the blurry input, the shipped lite model and the no-prior
     ablation;
  b. a larger held-out check: 8 clips of 256x256x7 from the same held-out image split (make-val seed 1),
     a mild-blur set (seed 2, 16 x 128², 0.75-3 px of blur) to check that little blur is not damaged, and a
     fast-motion set (seed 3, 8 x 256², 4.5-30 px per frame, beyond the ±20 px the no-prior ablation's
     learned offsets can reach) where codec motion vectors should matter most; with the ablation, each set
     also gets the per-clip paired PSNR difference (mean, standard error, clips won);
  c. the real phone clips in ../shared/data/real_blurry_clips (skipped if absent): ~6 frames from the middle
     of each, restored at full 1280x768 with restore_video; NIQE (and BRISQUE when installed) before/after,
     mean over frames; one side-by-side JPEG per clip in --images;
  d. the bundled sample (python -m cpgd_core sample): PSNR/SSIM against its lossless sharp ground truth over
     the first 24 frames.
Took 163 s on two idle CPU cores with --real-frames 3 (real clips ~10 s each).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cpgd_core import metrics  # noqa: E402
from cpgd_core.codec.decode import load_video, probe  # noqa: E402
from cpgd_core.pipeline.restore import restore_video  # noqa: E402
from cpgd_core.data.synth import MOTION_RANGE  # noqa: E402
from cpgd_core.train.cpfp import clip_scores, load_val, make_val  # noqa: E402
from cpgd_core.weights import default_cpfp_path, load_cpfp  # noqa: E402

ABLATION = os.path.join(ROOT, "docs", "training", "cpfp_lite_noprior.safetensors")
REAL_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "real_blurry_clips"))


def _md(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) and abs(v) < 2 else (f"{v:.2f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def synthetic_rows(models: dict, path: str, seed: int, count: int, crop: int, frames: int,
                   motion: tuple[float, float] = MOTION_RANGE) -> dict:
    """PSNR/SSIM of the input and of each model on a make-val set (regenerated deterministically).

    With two models, also their per-clip paired PSNR difference (first minus second): mean, standard error
    and how many clips the first wins, so a small gap can be told apart from clip-to-clip noise.
    """
    # Always regenerated: a cached set would silently keep the output of an older codec pipeline.
    make_val(path, seed=seed, count=count, crop=crop, frames=frames, motion_range=motion)
    clips = load_val(path)
    res, per_clip = {}, {}
    for name, model in models.items():
        rows = clip_scores(model, clips, torch.device("cpu"))
        per_clip[name] = np.array([r["val_psnr"] for r in rows])
        mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
        res.setdefault("blurry input", {"psnr": mean("input_psnr"), "ssim": mean("input_ssim")})
        res[name] = {"psnr": mean("val_psnr"), "ssim": mean("val_ssim")}
    if len(per_clip) == 2:
        a, b = per_clip.values()
        d = a - b
        res["paired"] = {"mean_db": float(d.mean()), "stderr_db": float(d.std(ddof=1) / np.sqrt(len(d))),
                         "wins": int((d > 0).sum()), "clips": len(d)}
    return res


def _to_uint8(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) [0, 1] -> (H, W, 3) uint8 RGB."""
    return (frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def side_by_side(path: str, panels: list[tuple[str, torch.Tensor]], zoom: float = 0.25) -> int:
    """Write one JPEG: the full frames side by side (scaled so the row is <= 1280 px wide) and, below, a 2x
    crop of the centre of each (``zoom`` of the frame width). Returns the file size in bytes."""
    import cv2

    imgs = [_to_uint8(f) for _, f in panels]
    h, w = imgs[0].shape[:2]
    scale = min(1.0, 1280 / (w * len(imgs)))
    pw, ph = int(w * scale) // 2 * 2, int(h * scale) // 2 * 2
    top = [cv2.resize(im, (pw, ph), interpolation=cv2.INTER_AREA) for im in imgs]
    cw = int(w * zoom) // 2 * 2
    ch = cw * ph // pw // 2 * 2
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    bottom = [cv2.resize(im[y0:y0 + ch, x0:x0 + cw], (pw, ph), interpolation=cv2.INTER_CUBIC) for im in imgs]
    for (label, _), a, b in zip(panels, top, bottom):
        for im, text in ((a, label), (b, label + " (centre crop)")):
            # one white label on a dark box: OpenCV 5 spaces thick and thin strokes differently, so the usual
            # outline-then-fill trick draws two offset copies of the text
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
            cv2.rectangle(im, (4, 6), (12 + tw, 14 + th), (0, 0, 0), -1)
            cv2.putText(im, text, (8, 10 + th), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    out = np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    quality = 85
    while True:  # the docs budget is 250 KB per image
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if len(buf) < 250_000 or quality <= 60:
            break
        quality -= 5
    with open(path, "wb") as f:
        f.write(buf.tobytes())
    return len(buf)


def real_clips(model, frames: int, images: str) -> dict:
    """No-reference scores before/after on the middle ``frames`` frames of each real clip."""
    res = {}
    names = sorted(n for n in os.listdir(REAL_DIR) if n.lower().endswith(".mp4"))
    for name in names:
        path = os.path.join(REAL_DIR, name)
        t0 = time.time()
        n = probe(path).frame_count
        start = max(0, n // 2 - frames // 2)
        x, priors, _, _ = load_video(path, start=start, cap=frames)
        y = restore_video(model, x, priors, chunk_size=frames, chunk_overlap=0)
        row = {"frames": f"{start}-{start + x.shape[0] - 1}", "size": f"{x.shape[-1]}x{x.shape[-2]}",
               "niqe_before": float(np.mean([metrics.niqe(f) for f in x])),
               "niqe_after": float(np.mean([metrics.niqe(f) for f in y]))}
        if metrics.brisque_available():
            row["brisque_before"] = float(np.mean([metrics.brisque(f) for f in x]))
            row["brisque_after"] = float(np.mean([metrics.brisque(f) for f in y]))
        mid = x.shape[0] // 2
        img = os.path.join(images, f"real_{os.path.splitext(name)[0]}.jpg")
        row["image"] = os.path.relpath(img, ROOT)
        row["image_bytes"] = side_by_side(img, [("blurry input", x[mid]), ("CPFP lite", y[mid])])
        row["seconds"] = round(time.time() - t0, 1)
        res[name] = row
        print(f"  {name}: {row}", flush=True)
    return res


def sample_rows(models: dict, out: str, frames: int, images: str) -> dict:
    """PSNR/SSIM of the bundled sample (blurry H.264 vs lossless sharp ground truth), first ``frames``."""
    from cpgd_core.data.sample import make_sample

    blurry_path, sharp_path = make_sample(os.path.join(out, "sample"))
    x, priors, _, _ = load_video(blurry_path, cap=frames)
    gt, _, _, _ = load_video(sharp_path, cap=frames, export_mvs=False)
    res = {"blurry input": {"psnr": metrics.psnr(x, gt), "ssim": metrics.ssim(x, gt)}}
    outs = {}
    for name, model in models.items():
        outs[name] = restore_video(model, x, priors, chunk_size=12, chunk_overlap=4)
        res[name] = {"psnr": metrics.psnr(outs[name], gt), "ssim": metrics.ssim(outs[name], gt)}
    mid = x.shape[0] // 2
    first = next(iter(outs))
    res["image"] = os.path.relpath(os.path.join(images, "sample_side_by_side.jpg"), ROOT)
    side_by_side(os.path.join(ROOT, res["image"]),
                 [("blurry input", x[mid]), (first, outs[first][mid]), ("sharp ground truth", gt[mid])])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, ".build", "eval"), help="scratch folder (val sets, sample)")
    ap.add_argument("--images", default=os.path.join(ROOT, "docs", "images"))
    ap.add_argument("--real-frames", type=int, default=6)
    ap.add_argument("--sample-frames", type=int, default=24)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-sample", action="store_true")
    ap.add_argument("--model", default=default_cpfp_path(), help="CPFP weights to report (default: the shipped lite)")
    ap.add_argument("--ablation", default=ABLATION, help="the no-prior ablation's weights")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    os.makedirs(a.out, exist_ok=True)
    models = {"CPFP lite (shipped)": load_cpfp(a.model), "CPFP lite, no priors": load_cpfp(a.ablation)}
    report: dict = {"event": "eval_quality", "torch_threads": torch.get_num_threads()}
    t0 = time.time()

    headers = ["data", "metric"] + ["blurry input"] + list(models)
    rows, paired = [], []
    for key, label, seed, count, crop, motion in (
            ("val", "synthetic val (make-val seed 0, 16x128², 7 fr)", 0, 16, 128, MOTION_RANGE),
            ("heldout256", "held-out (make-val seed 1, 8x256², 7 fr)", 1, 8, 256, MOTION_RANGE),
            ("mild", "mild blur (seed 2, 16x128², 7 fr, --motion 0.5 0.5)", 2, 16, 128, (0.5, 0.5)),
            ("fast", "fast motion (seed 3, 8x256², 7 fr, --motion 3 5)", 3, 8, 256, (3.0, 5.0))):
        r = synthetic_rows(models, os.path.join(a.out, f"val_s{seed}_c{crop}.pt"), seed, count, crop, 7, motion)
        report[key] = r
        rows.append([label, "PSNR dB"] + [r[c]["psnr"] for c in headers[2:]])
        rows.append([label, "SSIM"] + [r[c]["ssim"] for c in headers[2:]])
        if "paired" in r:
            p = r["paired"]
            paired.append(f"- {label}: {p['mean_db']:+.3f} ± {p['stderr_db']:.3f} dB (standard error), "
                          f"ahead on {p['wins']}/{p['clips']} clips")
        print(f"[{time.time() - t0:.0f}s] {key} done", flush=True)
    if not a.skip_sample:
        r = sample_rows(models, a.out, a.sample_frames, a.images)
        report["sample"] = r
        label = f"bundled sample (640x360, first {a.sample_frames} fr)"
        rows.append([label, "PSNR dB"] + [r[c]["psnr"] for c in headers[2:]])
        rows.append([label, "SSIM"] + [r[c]["ssim"] for c in headers[2:]])
        print(f"[{time.time() - t0:.0f}s] sample done", flush=True)
    print("\n" + _md(headers, rows) + "\n")
    if paired:
        print(f"Per-clip PSNR difference, {headers[3]} minus {headers[4]}:\n" + "\n".join(paired) + "\n")

    if not a.skip_real:
        if os.path.isdir(REAL_DIR):
            r = real_clips(models["CPFP lite (shipped)"], a.real_frames, a.images)
            report["real"] = r
            nr = ["NIQE"] + (["BRISQUE"] if metrics.brisque_available() else [])
            hdr = ["clip", "frames"] + [f"{m} {w}" for m in nr for w in ("blurry", "restored")]
            body = [[k, v["frames"]] + [v[f"{m.lower()}_{w}"] for m in nr for w in ("before", "after")]
                    for k, v in r.items()]
            print("\n" + _md(hdr, body) + "\n(no-reference scores: lower is better; mean over the frames)\n")
        else:
            report["real"] = f"skipped: {REAL_DIR} not found"
            print(report["real"])
    report["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(report, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
