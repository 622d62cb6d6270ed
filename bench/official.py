"""The official-checkpoint path against the official code's golden tensors, and its CPU speed.

1. ``golden``: max abs error of the pack's implementations against ``../shared/reference/golden`` (tensors
   written by the official CPGD-Net code with random weights): CPC ControlNet (3 cases), official CPFP (fp32
   output and intermediates, and float64 against ``output_fp64``), RAFT (all iterations), and the whole
   stage-one path from codec MVs and residuals (``wrapper``, RAFT included).
2. ``speed``: the official network (default constructor, random weights) on one 256x256 tile of T frames,
   and RAFT (4 iterations) on the T-1 half-resolution pairs, seconds per frame on this device.

    .build/venv/bin/python bench/official.py [--skip-golden] [--frames 4] [--threads N] [--out FILE]

Output: one JSON line per result, also written to ``docs/bench/official.jsonl`` (``--out``) and as tables
to ``docs/bench/official.md``. Without ``../shared/reference/golden`` only the speed part runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(ROOT)

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from cpgd_core.models.cpcontrolnet import CPControlNet, CPControlNetConfig  # noqa: E402
from cpgd_core.models.cpfp_official import OfficialCPFP, config_from_state_dict  # noqa: E402
from cpgd_core.models.raft import RAFT  # noqa: E402
from cpgd_core.models.official_stage_one import backward_flows, official_stage_one, quarter_grid_mvs  # noqa: E402

GOLDEN = os.path.normpath(os.path.join(ROOT, os.pardir, "shared", "reference", "golden"))


def maxerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def golden_cpc() -> dict:
    d = os.path.join(GOLDEN, "cpc")
    net = CPControlNet(CPControlNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                          attention_resolutions=(1, 2), num_head_channels=16, context_dim=32,
                                          norm_groups=32)).eval()
    net.load_state_dict(load_file(os.path.join(d, "weights.safetensors")), strict=True)
    errs = {}
    for case in ("b6_t6", "b6_t3", "b1_t1"):
        i = load_file(os.path.join(d, f"inputs_{case}.safetensors"))
        o = load_file(os.path.join(d, f"outputs_{case}.safetensors"))
        with torch.no_grad():
            outs = net(i["x"], i["hint"], i["timesteps"], i["context"], i["cp"], frames_per_clip=i["cp"].shape[1])
        errs[case] = max(maxerr(a, o[f"control_{k:02d}"]) for k, a in enumerate(outs))
    return {"set": "cpc", "max_abs_err": max(errs.values()), "per_case": errs}


def official_net() -> OfficialCPFP:
    sd = load_file(os.path.join(GOLDEN, "cpfp", "weights.safetensors"))
    net = OfficialCPFP(config_from_state_dict(sd)).eval()
    net.load_official_state_dict(sd)
    return net


def golden_raft_net() -> RAFT:
    net = RAFT().eval()
    net.load_official_state_dict(load_file(os.path.join(GOLDEN, "raft", "weights.safetensors")))
    return net


def golden_cpfp(net: OfficialCPFP) -> list[dict]:
    d = os.path.join(GOLDEN, "cpfp")
    i = load_file(os.path.join(d, "inputs.safetensors"))
    o = load_file(os.path.join(d, "outputs.safetensors"))
    inter = load_file(os.path.join(d, "intermediates.safetensors"))
    args = [i[k] for k in ("lqs", "flows_forwards_gt", "flows_backwards_gt", "resis")]
    rec: dict = {}
    with torch.no_grad():
        out = net(*args, record=rec)
    res = [{"set": "cpfp", "max_abs_err": maxerr(out, o["output"]),
            "intermediates_max_abs_err": max(maxerr(rec[k], v) for k, v in inter.items())}]
    with torch.no_grad():
        out64 = net.double()(*[a.double() for a in args])
    net.float()
    res.append({"set": "cpfp_fp64", "max_abs_err": maxerr(out64, o["output_fp64"])})
    return res


def golden_raft(raft: RAFT) -> dict:
    d = os.path.join(GOLDEN, "raft")
    i = load_file(os.path.join(d, "inputs.safetensors"))
    o = load_file(os.path.join(d, "outputs.safetensors"))
    with torch.no_grad():
        flows = raft(i["image1"], i["image2"], int(i["iters"]), i["flow_init"], all_iterations=True)
    return {"set": "raft", "max_abs_err": maxerr(flows, o["flow_predictions"]),
            "final_flow_max_abs_err": maxerr(flows[-1], o["flow"])}


def golden_wrapper(net: OfficialCPFP, raft: RAFT) -> dict:
    d = os.path.join(GOLDEN, "wrapper")
    i = load_file(os.path.join(d, "inputs.safetensors"))
    o = load_file(os.path.join(d, "outputs.safetensors"))
    with torch.no_grad():
        out = official_stage_one(net, raft, i["lq"], quarter_grid_mvs(i["mv_f"]), i["resi"])
    return {"set": "wrapper", "max_abs_err": maxerr(out, o["output"])}


def speed(frames: int) -> list[dict]:
    torch.manual_seed(0)
    net, raft = OfficialCPFP().eval(), RAFT().eval()
    lq = torch.rand(1, frames, 3, 256, 256)
    mv = torch.randn(1, frames - 1, 2, 64, 64)
    resi = 0.02 * torch.randn(1, frames - 1, 1, 256, 256)
    back = -mv
    r = torch.cat([resi[:, :1], resi], 1)
    def timed(fn) -> tuple[float, float]:
        # wall time depends on what else the machine runs; process CPU time (all threads) much less so
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - w0, time.process_time() - c0

    with torch.no_grad():
        net(lq[:, :2], mv[:, :1], back[:, :1], r[:, :2])  # warm-up
        w_net, c_net = timed(lambda: net(lq, mv, back, r))
        w_raft, c_raft = timed(lambda: backward_flows(lq, mv, raft))
    base = {"device": "cpu", "threads": torch.get_num_threads(), "load_avg_1min": round(os.getloadavg()[0], 1),
            "tile": "256x256", "frames": frames}

    def row(name: str, wall: float, cpu: float, **extra) -> dict:
        return dict(base, bench=name, wall_s_per_frame=round(wall / frames, 2),
                    cpu_s_per_frame=round(cpu / frames, 2), **extra)

    return [row("official_cpfp_network", w_net, c_net, params=sum(p.numel() for p in net.parameters())),
            row("raft_refinement", w_raft, c_raft, iters=4),
            row("official_stage_one_total", w_net + w_raft, c_net + c_raft)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-golden", action="store_true")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "official.jsonl"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    if not args.skip_golden and not os.path.isdir(GOLDEN):
        print(f"golden tensors not found at {GOLDEN}: conformance part skipped", flush=True)
    elif not args.skip_golden:
        net, raft = official_net(), golden_raft_net()
        results.append(golden_cpc())
        results.extend(golden_cpfp(net))
        results.append(golden_raft(raft))
        results.append(golden_wrapper(net, raft))
        for r in results:
            print(json.dumps(r), flush=True)
    for r in speed(args.frames):
        results.append(r)
        print(json.dumps(r), flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(markdown(results))


def markdown(results: list[dict]) -> str:
    lines = ["# Official checkpoints: conformance and CPU speed (bench/official.py)", ""]
    golden = [r for r in results if "set" in r]
    if golden:
        lines += ["Max abs error against the official code's outputs (golden tensors, random weights):", "",
                  "| golden set | max abs error |", "| --- | --- |"]
        lines += [f"| {r['set']} | {r['max_abs_err']:.2g} |" for r in golden]
        lines.append("")
    speed_rows = [r for r in results if "bench" in r]
    if speed_rows:
        r0 = speed_rows[0]
        lines += [f"One {r0['tile']} tile, {r0['frames']} frames, {r0['threads']} torch thread(s), "
                  f"load average {r0['load_avg_1min']} while measuring:", "",
                  "| stage | CPU s / frame | wall s / frame |", "| --- | --- | --- |"]
        lines += [f"| {r['bench']} | {r['cpu_s_per_frame']} | {r['wall_s_per_frame']} |" for r in speed_rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
