"""How long Cancel takes to stop a CPFP restore on this machine (issue 17).

A synthetic panning clip is encoded and decoded with its codec priors, then ``restore_video`` runs the
shipped lite weights over it as ONE temporal chunk without tiles (the worst case for interruption: before
the network polled Cancel, the only checks were between chunks and tiles). After ``--cancel-after`` seconds
the cancel flag is set; the latency is the time until ``check_interrupt`` raises.

    python bench/cancel_latency.py [--size 1280x720] [--frames 8] [--cancel-after 3] [--repo PATH]

``--repo`` imports ``cpgd_core`` from another checkout (e.g. the code before this change). Prints one JSON
line. Output of the runs quoted in the README: docs/bench/cancel_latency.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--cancel-after", type=float, default=3.0)
    ap.add_argument("--repo", default=ROOT, help="checkout whose cpgd_core is measured")
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.repo))
    import numpy as np
    import torch

    from cpgd_core.codec.decode import load_video
    from cpgd_core.codec.encode import write_video
    from cpgd_core.pipeline.restore import restore_video
    from cpgd_core.weights import default_cpfp_path, load_cpfp

    w, h = (int(v) for v in a.size.lower().split("x"))
    rng = np.random.default_rng(0)
    texture = torch.from_numpy(rng.random((3, h // 8, (w + 4 * a.frames) // 8), dtype=np.float32))
    texture = torch.nn.functional.interpolate(texture[None], scale_factor=8, mode="bilinear")[0]
    frames = torch.stack([texture[:, :h, 4 * t:4 * t + w] for t in range(a.frames)])
    clip = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"cpgd_cancel_bench_{os.getpid()}.mp4")
    try:
        write_video(clip, frames, 25, crf=18, preset="veryfast", x264_params="bframes=0", overwrite=True)
        frames, priors, _, _ = load_video(clip)
    finally:
        if os.path.exists(clip):
            os.remove(clip)
    model = load_cpfp(default_cpfp_path())

    class Cancelled(Exception):
        pass

    state: dict = {}
    flag = threading.Event()

    def check_interrupt() -> None:
        if flag.is_set():
            state["stopped"] = time.perf_counter()
            raise Cancelled

    def cancel() -> None:
        state["cancel"] = time.perf_counter()
        flag.set()

    timer = threading.Timer(a.cancel_after, cancel)
    t0 = time.perf_counter()
    timer.start()
    try:
        restore_video(model, frames, priors, chunk_size=a.frames, chunk_overlap=0, tile_size=0,
                      check_interrupt=check_interrupt)
        state["finished"] = time.perf_counter()
    except Cancelled:
        pass
    finally:
        timer.cancel()
    try:
        commit = subprocess.run(["git", "-C", a.repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    result = {"repo": os.path.abspath(a.repo), "repo_commit": commit, "size": f"{w}x{h}", "frames_in_chunk": a.frames,
              "cancel_after_s": a.cancel_after, "threads": torch.get_num_threads(),
              "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", ""), "cpu": platform.processor() or platform.machine(),
              "load_avg_1min": round(os.getloadavg()[0], 1)}
    if "stopped" in state:
        result["cancel_latency_s"] = round(state["stopped"] - state["cancel"], 2)
    elif "cancel" in state:  # never polled after the flag: the chunk ran to its end, the earliest a Cancel lands
        result["cancel_latency_s"] = round(state["finished"] - state["cancel"], 2)
        result["ran_to_end_of_chunk"] = True
    else:
        result["finished_before_cancel_s"] = round(state["finished"] - t0, 2)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
