"""Stage-two sampling cost on a GPU: full-size SD 2.1 UNet + CPControlNet (random weights cost the same
as real ones), bf16, seconds per 512x512 frame.

Compares the official configuration (50 spaced steps, 6-frame chunks with joint attention, one 64x64
latent tile per 512^2 frame, no CFG) with ours at 20 steps and larger frame batches. The loop is the
real per-step work of any ComfyUI sampler: one ControlNet + one UNet evaluation per step (plus the
trivial scheduler update). Prints one JSON line ``CPC_BENCH_JSON {...}``.

    python3 bench/gpu_cpc_bench.py [--quick]
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cpgd_core.models.cpcontrolnet import CPControlNet, CPControlNetConfig  # noqa: E402
from cpgd_core.models.sd_unet import SDUNet  # noqa: E402


def per_frame_seconds(unet, cnet, frames: int, steps: int, joint: int, dtype, latent: int = 64,
                      repeats: int = 1) -> float:
    dev = "cuda"
    x = torch.randn(frames, 4, latent, latent, device=dev, dtype=dtype)
    hint = torch.randn_like(x)
    ctx = torch.randn(frames, 77, 1024, device=dev, dtype=dtype)
    cp = torch.randn(frames, 3, latent, latent, device=dev, dtype=dtype)
    ts = torch.linspace(999, 0, steps, device=dev)

    def run() -> None:
        h = x
        for t in ts:
            tt = t.expand(frames)
            ctrl = cnet(h, hint, tt, ctx, cp, frames_per_clip=joint)
            eps = unet(h, tt, ctx, control=ctrl)
            h = h - 0.01 * eps  # stands in for the sampler update (negligible cost)

    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        run()  # warm-up (kernels, allocator)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            run()
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / (repeats * frames)


def main() -> None:
    quick = "--quick" in sys.argv
    dtype = torch.bfloat16
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = CPControlNetConfig()
    # fp32 master weights under bf16 autocast: matmuls/convs run in bf16, normalisations in fp32.
    unet = SDUNet(cfg).to("cuda").eval()
    cnet = CPControlNet(cfg).to("cuda").eval()
    res = {"device": torch.cuda.get_device_name(0), "dtype": "bf16 autocast",
           "unet_params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
           "controlnet_params_M": round(sum(p.numel() for p in cnet.parameters()) / 1e6, 1)}
    cases = [("official_50steps_chunk6_joint", 6, 50, 6), ("ours_20steps_chunk6_joint", 6, 20, 6),
             ("ours_20steps_batch16_joint4", 16, 20, 4), ("ours_50steps_batch16_joint4", 16, 50, 4)]
    if quick:
        cases = cases[:2]
    for name, frames, steps, joint in cases:
        try:
            s = per_frame_seconds(unet, cnet, frames, steps, joint, dtype)
            res[name] = {"s_per_frame": round(s, 4), "frames_per_s": round(1 / s, 3), "frames": frames,
                         "steps": steps, "joint_frames": joint}
        except Exception as exc:  # report and go on: one OOM must not lose the other numbers
            res[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        torch.cuda.empty_cache()
    res["peak_mem_GB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print("CPC_BENCH_JSON " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
