"""Timings of cpgd_core.ops.deform_conv2d.

CPU (default): our PyTorch path at CPFP-lite shapes, forward and forward+backward.
    .build/venv/bin/python bench/dcn.py
CUDA: Triton vs torchvision vs our PyTorch path (CUDA events, warm-up), default CPFP shapes.
    python3 bench/dcn.py --cuda [--frames 8 --cin 384 --cout 192 --og 16 --h 180 --w 320] [--ops triton,torchvision]
Each op's output and gradients are also compared with the first op listed (max relative error printed).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cpgd_core.ops import deform_conv2d  # noqa: E402


def make_inputs(frames: int, cin: int, cout: int, h: int, w: int, og: int, device: str,
                dtype: torch.dtype = torch.float32, seed: int = 0, offset_scale: float = 3.0) -> dict:
    """CPFA-like inputs: 3x3, padding 1, modulated, bias; offsets of a few pixels."""
    g = torch.Generator().manual_seed(seed)
    k = 9
    t = dict(
        input=torch.randn(frames, cin, h, w, generator=g),
        offset=(torch.rand(frames, 2 * og * k, h, w, generator=g) * 2 - 1) * offset_scale,
        weight=torch.randn(cout, cin, 3, 3, generator=g) / (cin * 9) ** 0.5,
        bias=torch.randn(cout, generator=g),
        mask=torch.rand(frames, og * k, h, w, generator=g),
    )
    out = {k_: v.to(device=device, dtype=dtype) for k_, v in t.items()}
    out.update(stride=1, padding=1, dilation=1)
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str, warmup: int = 1, iters: int = 3) -> float:
    """Median seconds of fn(); CUDA events on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fwd_and_fwdbwd(op: Callable[..., torch.Tensor], args: dict, device: str, warmup: int = 1, iters: int = 3
                   ) -> tuple[float, float]:
    """(forward seconds, forward+backward seconds) of op(**args) with grads for every tensor argument."""
    def fwd():
        with torch.no_grad():
            op(**args)

    leaves = {k: v.detach().requires_grad_(True) for k, v in args.items() if isinstance(v, torch.Tensor)}

    def fwd_bwd():
        for v in leaves.values():
            v.grad = None
        op(**{**args, **leaves}).sum().backward()

    return time_call(fwd, device, warmup, iters), time_call(fwd_bwd, device, warmup, iters)


def outputs_and_grads(op: Callable[..., torch.Tensor], args: dict, seed: int = 1
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """op's output and the gradient of every tensor argument for a fixed random cotangent."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in args.items() if isinstance(v, torch.Tensor)}
    out = op(**{**args, **leaves})
    g = torch.Generator(device=out.device).manual_seed(seed)
    # float32 draw then cast: the same cotangent whatever the dtype of the op under test
    (out * torch.randn(out.shape, generator=g, device=out.device).to(out.dtype)).sum().backward()
    return out.detach(), {k: v.grad for k, v in leaves.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument("--frames", type=int)
    ap.add_argument("--cin", type=int)
    ap.add_argument("--cout", type=int)
    ap.add_argument("--og", type=int)
    ap.add_argument("--h", type=int, default=180)
    ap.add_argument("--w", type=int, default=320)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--ops", default=None, help="comma list of torchvision, triton, torch (default: all available)")
    a = ap.parse_args()
    device = "cuda" if a.cuda else "cpu"
    # CPU: CPFP-lite (one frame, 64->32, 4 groups); CUDA: the real CPFA alignment shape
    frames = a.frames or (8 if a.cuda else 1)
    cin, cout, og = a.cin or (384 if a.cuda else 64), a.cout or (192 if a.cuda else 32), a.og or (16 if a.cuda else 4)
    args = make_inputs(frames, cin, cout, a.h, a.w, og, device)
    print(f"device={device} threads={torch.get_num_threads()} N={frames} Cin={cin} Cout={cout} "
          f"{a.h}x{a.w} 3x3 og={og} float32")
    ops: dict[str, Callable[..., torch.Tensor]] = {}
    wanted = a.ops.split(",") if a.ops else ["torchvision", "triton", "torch"]
    for name in wanted:
        if name == "torch":
            ops["ours-torch"] = lambda **kw: deform_conv2d(**kw, backend="torch")
        elif name == "triton" and a.cuda:
            ops["ours-triton"] = lambda **kw: deform_conv2d(**kw, backend="triton")
        elif name == "torchvision" and a.cuda:
            try:
                import torchvision.ops

                ops["torchvision"] = torchvision.ops.deform_conv2d
            except Exception as e:  # noqa: BLE001
                print(f"torchvision unavailable: {e}")
    reference = None
    for name, op in ops.items():
        try:
            out, grads = outputs_and_grads(op, args)
            if reference is None:
                err, reference = "reference", (name, out, grads)
            else:
                worst = max([rel_err(out, reference[1])] + [rel_err(grads[k], reference[2][k]) for k in grads])
                err = f"max rel err vs {reference[0]} {worst:.1e}"
            del out, grads
            f, fb = fwd_and_fwdbwd(op, args, device, iters=a.iters)
            print(f"{name:12s} fwd {f * 1e3:9.2f} ms   fwd+bwd {fb * 1e3:9.2f} ms   {err}", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"{name:12s} failed: {type(e).__name__}: {e}", flush=True)


if __name__ == "__main__":
    main()
