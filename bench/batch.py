"""Batch throughput with 1 vs 2 Ray workers: ``python bench/batch.py [--clips 4 --frames 48 --size 320x240]``.

Writes N synthetic clips (a panning smooth texture, libx264, the pack's encoder), then for each worker count
starts a local Ray cluster with that many CPUs, warms its workers up (one short clip per worker: process
start and torch import are paid once per worker, not per video), and times ``run_batch`` over the N clips
with the shipped ``cpfp_lite`` weights (one CPU per task). Prints and writes frames/s for each and the
ratio to ``docs/bench/batch.json`` and the README block ``docs/bench/batch.md`` (``--render`` rewrites only
the latter from the former). The machine's load average is recorded: on a shared machine the ratio
says as much about the other jobs as about the batch. Ray lowers its workers' priority by 15 nice levels
(``RAY_worker_niceness``); here they run at the bench's own (``--worker-niceness 0``), or on a busy machine
the other jobs starve them and the bench measures only that.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from fractions import Fraction

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(ROOT)

from cpgd_core.codec.encode import write_video  # noqa: E402
from cpgd_core.pipeline.batch import build_parser, run_batch, start_ray  # noqa: E402


def make_clip(path: str, frames: int, width: int, height: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, height // 8, width // 8 + frames, generator=g),
                                           size=(height, width + 8 * frames), mode="bilinear")[0]
    clip = torch.stack([base[..., 3 * t: 3 * t + width] for t in range(frames)])
    write_video(path, clip, Fraction(24), crf=20, preset="veryfast")


def timed_batch(inputs: list[str], out: str) -> tuple[float, dict]:
    args = build_parser().parse_args([*inputs, "--out", out, "--no-progress"])
    t0 = time.perf_counter()
    report = run_batch(args)
    return time.perf_counter() - t0, report


def render(summary: dict) -> str:
    """docs/bench/batch.md (the README's ``bench:batch`` block) from the JSON summary."""
    runs = summary["runs"]
    loads = [r[k] for r in runs for k in ("load_avg_start", "load_avg_end")]
    rates = " → ".join(f"{r['frames_per_s']:.2f}" for r in runs)
    workers = " vs ".join(str(r["workers"]) for r in runs)
    return (f"# Batch throughput\n\n"
            f"Throughput with {workers} workers on this {summary['machine'].split(' CPUs')[0]}-CPU machine "
            f"(`python bench/batch.py` → `docs/bench/batch.json`; {runs[0]['clips']} clips of {summary['clip']}, "
            f"{summary['weights']}): {rates} frames/s, ×{summary['ratio_vs_first'][-1]:.2f}. The machine was "
            f"shared with a training run (load average {min(loads):.0f}–{max(loads):.0f}), so more workers also "
            f"won a larger share of it: the ratio shows that workers add up, not an efficiency above 100 %.\n")


def write_render(summary: dict, json_path: str) -> None:
    with open(os.path.splitext(json_path)[0] + ".md", "w") as f:
        f.write(render(summary))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--size", default="320x240")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "batch.json"))
    p.add_argument("--worker-niceness", type=int, default=0, help="RAY_worker_niceness for the local clusters")
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the existing --out JSON")
    a = p.parse_args()
    if a.render:
        with open(a.out) as f:
            write_render(json.load(f), a.out)
        return
    os.environ["RAY_worker_niceness"] = str(a.worker_niceness)
    import ray

    width, height = (int(v) for v in a.size.split("x"))
    tmp = tempfile.mkdtemp(prefix="cpgd_bench_batch_")
    try:
        clips = []
        for i in range(a.clips):
            clips.append(os.path.join(tmp, f"clip{i}.mp4"))
            make_clip(clips[-1], a.frames, width, height, i)
        results = []
        for workers in (int(w) for w in a.workers.split(",")):
            start_ray(num_cpus=workers, object_store_mb=200)
            try:
                warm = []
                for i in range(workers):
                    warm.append(os.path.join(tmp, f"warm{workers}_{i}.mp4"))
                    make_clip(warm[-1], 8, width, height, 100 + i)
                timed_batch(warm, os.path.join(tmp, f"warm_out{workers}"))
                load0 = os.getloadavg()[0]
                seconds, report = timed_batch(clips, os.path.join(tmp, f"out{workers}"))
                load1 = os.getloadavg()[0]
            finally:
                ray.shutdown()
            assert report["summary"]["done"] == a.clips, report["summary"]
            frames = report["summary"]["frames"]
            row = {"workers": workers, "clips": a.clips, "frames": frames, "seconds": round(seconds, 2),
                   "frames_per_s": round(frames / seconds, 3), "load_avg_start": round(load0, 2),
                   "load_avg_end": round(load1, 2)}
            print(json.dumps(row), flush=True)
            results.append(row)
        base = results[0]["frames_per_s"]
        summary = {"command": "python bench/batch.py " + " ".join(sys.argv[1:]),
                   "clip": f"{width}x{height}, {a.frames} frames, H.264", "weights": "cpfp_lite (shipped)",
                   "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
                   "ray_worker_niceness": a.worker_niceness, "runs": results,
                   "ratio_vs_first": [round(r["frames_per_s"] / base, 3) for r in results]}
        print(json.dumps({"ratio_vs_first": summary["ratio_vs_first"]}))
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
        write_render(summary, a.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
