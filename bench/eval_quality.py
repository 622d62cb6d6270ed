"""Quality report of the shipped stage-one model (issue 12), CPU only. Writes docs/bench/eval_quality.md.

    python bench/eval_quality.py [--model W] [--previous W] [--out .build/eval] [--images docs/images]
                                 [--skip-real] [--skip-sample] [--md docs/bench/eval_quality.md]

Sections (each a markdown table in --md; one JSON line with every number closes the run):
  a. held-out REAL footage (whole clips never trained on, cpgd_core.data.realblur.VAL_CLIPS): real consecutive
     frames blurred by interpolation + exposure averaging, encoded with libx264 (make-val --data real, seed 1,
     12 clips of 256x256x7): PSNR/SSIM of the blurry input, the shipped model, the SAME network with its codec
     priors zeroed (MVs, validity, residual), and the previous synthetic-only weights; per-clip paired PSNR
     difference of priors vs zeroed priors (mean, standard error, clips won);
  b. identity: the same held-out clips with no blur (make-val --data sharp, seed 2, 8 x 256x256x7), encoded:
     PSNR(output, input) — the network must leave sharp video alone — and, against the unencoded original,
     PSNR(input, original) vs PSNR(output, original): whether what it changes is compression damage it repairs
     or new damage;
  c. the still-photo synthetic held-out set of earlier reports (make-val --data synth, seed 1, 8 x 256² x 7);
  d. real GoPro blur without ground truth (../shared/data/real_motion/real_blur_no_gt, 20 frames 1280x720):
     NIQE (and BRISQUE when installed) before/after, and a committed before/after image with a 2x crop;
  e. the real phone clips in ../shared/data/real_blurry_clips: NIQE/BRISQUE before/after, side-by-side images;
  f. the bundled sample (python -m cpgd_core sample): PSNR/SSIM against its lossless sharp ground truth.
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
from cpgd_core.models.cpfp import CPFP  # noqa: E402
from cpgd_core.codec.priors import PRIOR_FIELDS  # noqa: E402
from cpgd_core.train.cpfp import clip_scores, load_val, make_val  # noqa: E402
from cpgd_core.weights import default_cpfp_path, load_cpfp  # noqa: E402

PREVIOUS = os.path.join(ROOT, "docs", "training", "cpfp_lite_synth.safetensors")
REAL_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "real_blurry_clips"))
GOPRO_NO_GT = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "real_motion", "real_blur_no_gt"))


def _md(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) and abs(v) < 2 else (f"{v:.2f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def zero_priors(model: CPFP) -> CPFP:
    """The same network and weights, run with its codec priors zeroed (motion, validity and residual)."""
    from dataclasses import replace

    out = CPFP(replace(model.config, use_priors=False))
    out.load_state_dict(model.state_dict())
    return out.eval()


def val_rows(models: dict, path: str, seed: int, count: int, crop: int, frames: int, source: str,
             paired: tuple[str, str] | None = None) -> dict:
    """PSNR/SSIM of the input and of each model on a make-val set of ``source`` (regenerated deterministically).

    ``paired`` names two models whose per-clip PSNR difference (first minus second) is reported: mean, standard
    error and clips won, so a small gap can be told apart from clip-to-clip noise.
    """
    # Always regenerated: a cached set would silently keep the output of an older codec pipeline.
    make_val(path, seed=seed, count=count, crop=crop, frames=frames, source=source)
    clips = load_val(path)
    res, per_clip = {}, {}
    for name, model in models.items():
        rows = clip_scores(model, clips, torch.device("cpu"))
        per_clip[name] = np.array([r["val_psnr"] for r in rows])
        mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
        res.setdefault("blurry input", {"psnr": mean("input_psnr"), "ssim": mean("input_ssim")})
        res[name] = {"psnr": mean("val_psnr"), "ssim": mean("val_ssim")}
    if paired:
        d = per_clip[paired[0]] - per_clip[paired[1]]
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


@torch.no_grad()
def identity_rows(models: dict, path: str, seed: int, count: int, crop: int, frames: int) -> dict:
    """Sharp (unblurred, encoded) held-out clips in: PSNR/SSIM of each model's output against its input, and
    PSNR of input and output against the unencoded original frames."""
    make_val(path, seed=seed, count=count, crop=crop, frames=frames, source="sharp")
    clips = load_val(path)
    res = {}
    for name, model in models.items():
        model.eval()
        ps, ss, p_in, p_out = [], [], [], []
        for c in clips:
            x, orig = c["blurry"].float(), c["sharp"].float()
            y = model(x[None], *[c[k].float()[None] for k in PRIOR_FIELDS])[0].float()
            ps.append(metrics.psnr(y, x))
            ss.append(metrics.ssim(y, x))
            p_in.append(metrics.psnr(x, orig))
            p_out.append(metrics.psnr(y, orig))
        res[name] = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "min_psnr": float(np.min(ps)),
                     "input_vs_original": float(np.mean(p_in)), "output_vs_original": float(np.mean(p_out))}
    return res


def real_clips(model, frames: int, images: str, folder: str = REAL_DIR, middle: bool = True,
               exts: tuple[str, ...] = (".mp4",)) -> dict:
    """No-reference scores before/after on ``frames`` frames (the middle ones, or the first) of each clip."""
    res = {}
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(exts))
    for name in names:
        path = os.path.join(folder, name)
        t0 = time.time()
        n = probe(path).frame_count
        start = max(0, n // 2 - frames // 2) if middle else 0
        x, priors, _, _ = load_video(path, start=start, cap=frames)
        y = restore_video(model, x, priors, chunk_size=min(frames, 16), chunk_overlap=4 if frames > 16 else 0)
        row = {"frames": f"{start}-{start + x.shape[0] - 1}", "size": f"{x.shape[-1]}x{x.shape[-2]}",
               "niqe_before": float(np.mean([metrics.niqe(f) for f in x])),
               "niqe_after": float(np.mean([metrics.niqe(f) for f in y]))}
        if metrics.brisque_available():
            row["brisque_before"] = float(np.mean([metrics.brisque(f) for f in x]))
            row["brisque_after"] = float(np.mean([metrics.brisque(f) for f in y]))
        mid = x.shape[0] // 2
        img = os.path.join(images, f"real_{os.path.splitext(name)[0]}.jpg")
        row["image"] = os.path.relpath(img, ROOT)
        row["image_bytes"] = side_by_side(img, [("blurry input", x[mid]), ("CPFP lite (shipped)", y[mid])])
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


def _paired_line(label: str, p: dict, a: str, b: str) -> str:
    return (f"- {label}: {a} minus {b}: {p['mean_db']:+.3f} ± {p['stderr_db']:.3f} dB (standard error), "
            f"ahead on {p['wins']}/{p['clips']} clips")


def summary_md(report: dict, ship: str, zero: str) -> str:
    """The README's short table: issue 12's acceptance figures, each with its bar."""
    r, ident = report["real"], report["identity"][ship]
    gain = r[ship]["psnr"] - r["blurry input"]["psnr"]
    p = r["paired"]
    rows = [["held-out real footage: output vs blurry input (PSNR)",
             f"{r['blurry input']['psnr']:.2f} → {r[ship]['psnr']:.2f} dB ({gain:+.2f})", ">= +2.5 dB",
             "yes" if gain >= 2.5 else "no"],
            ["same, priors vs the same network with priors zeroed",
             f"{p['mean_db']:+.3f} ± {p['stderr_db']:.3f} dB ({p['wins']}/{p['clips']} clips)", ">= +0.3 dB",
             "yes" if p["mean_db"] >= 0.3 else "no"],
            ["sharp clips in: PSNR(output, input)", f"{ident['psnr']:.2f} dB (lowest clip {ident['min_psnr']:.2f})",
             ">= 40 dB", "yes" if ident["psnr"] >= 40 else "no"],
            ["sharp clips in: PSNR against the unencoded original, input → output",
             f"{ident['input_vs_original']:.2f} → {ident['output_vs_original']:.2f} dB", "(diagnostic) not lower",
             "yes" if ident["output_vs_original"] >= ident["input_vs_original"] else "no"]]
    g = report.get("gopro_no_gt")
    if isinstance(g, dict):
        for name, v in g.items():
            ok = v["niqe_after"] < v["niqe_before"]
            rows.append([f"real GoPro blur, no ground truth (frames {v['frames']}): NIQE",
                         f"{v['niqe_before']:.2f} → {v['niqe_after']:.2f}", "lower than input", "yes" if ok else "no"])
    if "sample" in report:
        sm = report["sample"]
        rows.append(["bundled sample vs its sharp ground truth (PSNR)",
                     f"{sm['blurry input']['psnr']:.2f} → {sm[ship]['psnr']:.2f} dB", "", ""])
    return "\n".join(["# Stage-one summary (`bench/eval_quality.py`)", "",
                      _md(["what", "measured", "bar (issue 12)", "met"], rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, ".build", "eval"), help="scratch folder (val sets, sample)")
    ap.add_argument("--images", default=os.path.join(ROOT, "docs", "images"))
    ap.add_argument("--md", default=os.path.join(ROOT, "docs", "bench", "eval_quality.md"),
                    help="markdown report (README tables are filled from it by scripts/fill_readme.py)")
    ap.add_argument("--real-frames", type=int, default=6)
    ap.add_argument("--sample-frames", type=int, default=24)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-sample", action="store_true")
    ap.add_argument("--model", default=default_cpfp_path(), help="CPFP weights to report (default: the shipped lite)")
    ap.add_argument("--previous", default=PREVIOUS, help="earlier weights shown for comparison (synthetic-only training)")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    os.makedirs(a.out, exist_ok=True)
    shipped = load_cpfp(a.model).eval()
    ship, zero, prev = "CPFP lite (shipped)", "same, priors zeroed", "previous (synthetic-only)"
    models = {ship: shipped, zero: zero_priors(shipped)}
    if a.previous and os.path.isfile(a.previous):
        models[prev] = load_cpfp(a.previous).eval()
    report: dict = {"event": "eval_quality", "torch_threads": torch.get_num_threads(), "model": os.path.relpath(a.model, ROOT)}
    t0 = time.time()
    md = [f"# Stage-one quality (`bench/eval_quality.py`, weights `{os.path.relpath(a.model, ROOT)}`)", ""]

    headers = ["data", "metric", "blurry input"] + list(models)
    rows, paired = [], []
    for key, label, seed, count, crop, source in (
            ("real", "held-out real footage (make-val --data real seed 1, 12x256², 7 fr)", 1, 12, 256, "real"),
            ("synth", "still photos, held-out (make-val --data synth seed 1, 8x256², 7 fr)", 1, 8, 256, "synth")):
        r = val_rows(models, os.path.join(a.out, f"val_{source}_s{seed}_c{crop}.pt"), seed, count, crop, 7, source,
                     paired=(ship, zero))
        report[key] = r
        rows.append([label, "PSNR dB"] + [r[c]["psnr"] for c in headers[2:]])
        rows.append([label, "SSIM"] + [r[c]["ssim"] for c in headers[2:]])
        paired.append(_paired_line(label, r["paired"], ship, zero))
        print(f"[{time.time() - t0:.0f}s] {key} done", flush=True)
    if not a.skip_sample:
        r = sample_rows({k: v for k, v in models.items() if k != zero}, a.out, a.sample_frames, a.images)
        report["sample"] = r
        label = f"bundled sample (640x360, first {a.sample_frames} fr)"
        rows.append([label, "PSNR dB"] + [r[c]["psnr"] if c in r else "" for c in headers[2:]])
        rows.append([label, "SSIM"] + [r[c]["ssim"] if c in r else "" for c in headers[2:]])
        print(f"[{time.time() - t0:.0f}s] sample done", flush=True)
    r = report["real"]
    gain = r[ship]["psnr"] - r["blurry input"]["psnr"]
    md += ["## Full-reference", "", _md(headers, rows), "",
           f"Gain on held-out real footage: {gain:+.2f} dB over the blurry input; priors vs the same network with "
           f"priors zeroed: {r['paired']['mean_db']:+.3f} dB.", "", "Per-clip paired PSNR difference:", *paired, ""]

    ident = identity_rows(models, os.path.join(a.out, "val_sharp_s2_c256.pt"), 2, 8, 256, 7)
    report["identity"] = ident
    md += ["## Identity: sharp held-out real clips in (make-val --data sharp seed 2, 8x256², 7 fr)", "",
           _md(["model", "PSNR(output, input) dB", "lowest clip dB", "SSIM(output, input)",
                "PSNR(input, original) dB", "PSNR(output, original) dB"],
               [[k, v["psnr"], v["min_psnr"], v["ssim"], v["input_vs_original"], v["output_vs_original"]]
                for k, v in ident.items()]), "",
           "\"original\" is the unencoded real frame: x264 (crf 18-30) already costs the input a few dB, so an "
           "output closer to the original than the input is repairing compression, one further from it is damage.",
           ""]
    print(f"[{time.time() - t0:.0f}s] identity done", flush=True)

    if not a.skip_real:
        nr = ["NIQE"] + (["BRISQUE"] if metrics.brisque_available() else [])
        hdr = ["clip", "frames"] + [f"{m} {w}" for m in nr for w in ("blurry", "restored")]
        for key, folder, frames, middle, exts, title in (
                ("gopro_no_gt", GOPRO_NO_GT, 20, False, (".mkv",), "Real GoPro blur, no ground truth"),
                ("phone", REAL_DIR, a.real_frames, True, (".mp4",), "Real handheld phone clips")):
            if not os.path.isdir(folder):
                report[key] = f"skipped: {folder} not found"
                md += [f"## {title}", "", report[key], ""]
                continue
            r = real_clips(shipped, frames, a.images, folder, middle, exts)
            report[key] = r
            body = [[k, v["frames"]] + [v[f"{m.lower()}_{w}"] for m in nr for w in ("before", "after")]
                    for k, v in r.items()]
            imgs = [f"![{k}](../../{v['image']})" for k, v in r.items()]
            md += [f"## {title} (`{os.path.relpath(folder, os.path.dirname(ROOT))}`)", "", _md(hdr, body), "",
                   "No-reference scores: lower is better; mean over the frames. Images: the middle frame, full and a "
                   "2x centre crop.", "", *imgs, ""]
            print(f"[{time.time() - t0:.0f}s] {key} done", flush=True)
    report["seconds"] = round(time.time() - t0, 1)
    md += [f"Run time {report['seconds']:.0f} s on {report['torch_threads']} CPU threads.", ""]
    os.makedirs(os.path.dirname(os.path.abspath(a.md)), exist_ok=True)
    with open(a.md + ".part", "w") as f:
        f.write("\n".join(md))
    os.replace(a.md + ".part", a.md)
    with open(os.path.splitext(a.md)[0] + ".json", "w") as f:
        json.dump(report, f, default=float, indent=1)
    summary = os.path.join(os.path.dirname(os.path.abspath(a.md)), "stage_one_summary.md")
    with open(summary, "w") as f:
        f.write(summary_md(report, ship, zero) + "\n")
    print("\n".join(md))
    print(json.dumps(report, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
