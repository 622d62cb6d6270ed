"""CPFP stage-one benchmarks (timings live here, never in tests).

1. 720p throughput of the lite model (frames/s) on the current device.
2. Peak memory of the streaming path for N1 vs N2 frames at a small size, each in a fresh subprocess
   (ru_maxrss on CPU, torch.cuda.max_memory_allocated on CUDA); flat memory means ratio ~1.

    .build/venv/bin/python bench/cpfp.py [--frames 4] [--mem 100 1000] [--mem-size 32] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from fractions import Fraction

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(ROOT)

import torch  # noqa: E402

from cpgd_core.codec.priors import CodecPriors  # noqa: E402
from cpgd_core.models.cpfp import CPFP, CPFPConfig  # noqa: E402
from cpgd_core.pipeline.restore import restore_chunk, restore_stream  # noqa: E402
from cpgd_core.precision import resolve_dtype  # noqa: E402


def fake_priors(t: int, h: int, w: int) -> CodecPriors:
    gh, gw = -(-h // 4), -(-w // 4)
    v = torch.ones(t, 1, gh, gw, dtype=torch.bool)
    return CodecPriors(flow_to_prev=torch.randn(t, 2, gh, gw).half(), valid_to_prev=v,
                       flow_to_next=torch.randn(t, 2, gh, gw).half(), valid_to_next=v.clone(),
                       residual=(torch.randn(t, 1, h, w) * 0.01).half(), frame_types=["P"] * t,
                       height=h, width=w, fps=Fraction(25))


def throughput(frames: int, device: str, dtype: str, config: CPFPConfig | None = None) -> dict:
    model = CPFP(config or CPFPConfig.lite()).eval().to(device)
    x, p = torch.rand(frames, 3, 720, 1280), fake_priors(frames, 720, 1280)
    restore_chunk(model, x[:2], p.slice(0, 2), dtype=dtype, device=device)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    restore_chunk(model, x, p, dtype=dtype, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    resolved = resolve_dtype(dtype, torch.device(device), cpu_bf16=True)
    return {"bench": "cpfp_lite_720p", "device": device, "dtype": resolved, "frames": frames,
            "seconds": round(dt, 3), "fps": round(frames / dt, 4), "threads": torch.get_num_threads()}


def stream_peak(n: int, size: int, device: str) -> dict:
    """Run inside a fresh process: stream n frames through restore_stream, report peak memory."""
    torch.manual_seed(0)
    model = CPFP(CPFPConfig.lite()).eval().to(device)
    chunk, overlap = 16, 4

    def chunks():
        s = 0
        while True:
            e = min(s + chunk, n)
            yield torch.rand(e - s, 3, size, size), fake_priors(e - s, size, size), s
            if e == n:
                return
            s = e - overlap

    count = 0
    for block in restore_stream(model, chunks(), device=device):
        count += len(block)  # consumed and dropped, as an encoder would
    assert count == n
    peak = {"rss_max_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.startswith("cuda"):
        peak["cuda_max_alloc_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return {"frames": n, "size": size, **peak}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--mem", type=int, nargs=2, default=(100, 1000))
    ap.add_argument("--mem-size", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--md", default=os.path.join(ROOT, "docs", "bench", "cpfp.md"),
                    help="markdown summary for the README ('' to skip)")
    ap.add_argument("--_child", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        print(json.dumps(stream_peak(a._child, a.mem_size, a.device)))
        return
    tps = []
    if not a.skip_throughput:
        # what 'auto' runs, and fp32 beside it where that is something else (bf16 on CPUs with AMX)
        for dtype in dict.fromkeys([a.dtype, "fp32"] if a.device == "cpu" else [a.dtype]):
            tp = throughput(a.frames, a.device, dtype)
            if all(t["dtype"] != tp["dtype"] for t in tps):
                tps.append(tp)
                print(json.dumps(tp), flush=True)
    res = []
    for n in a.mem:
        out = subprocess.run([sys.executable, __file__, "--_child", str(n), "--mem-size", str(a.mem_size),
                              "--device", a.device], capture_output=True, text=True, check=True)
        res.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(res[-1]), flush=True)
    key = "cuda_max_alloc_mib" if "cuda_max_alloc_mib" in res[0] else "rss_max_mib"
    ratio = round(res[1][key] / res[0][key], 3)
    print(json.dumps({"bench": "stream_memory", "metric": key, "ratio": ratio}))
    if a.md:
        lines = ["# Stage-one speed and streaming memory (`bench/cpfp.py`)", "",
                 "| what | measured |", "| --- | --- |"]
        for i, tp in enumerate(tps):
            what = f"{tp['dtype']}, the default" if i == 0 and a.dtype == "auto" else tp["dtype"]
            lines.append(f"| CPFP lite, 1280x720, {tp['frames']} frames, {tp['device']} ({tp['threads']} threads, "
                         f"{what}) | {tp['fps']:.2f} frames/s |")
        lines.append(f"| streaming memory, {res[0]['frames']} vs {res[1]['frames']} frames ({a.mem_size}², "
                     f"{key}) | {res[0][key]:.0f} vs {res[1][key]:.0f} MiB (x{ratio:.2f}) |")
        os.makedirs(os.path.dirname(os.path.abspath(a.md)), exist_ok=True)
        with open(a.md, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
