"""The main job (`make run`): execute an API-format ComfyUI graph on the bundled sample clip.

The graph is read from a JSON file (default: workflows/api/main.json) so later stages can swap in the
deblurring graph without touching this script. Every ``CPGD_LoadVideoWithPriors`` node's ``video``
input is pointed at the clip, which is copied into ComfyUI's input folder first. ComfyUI runs
in-process, booted exactly as the test harness does (tests/conftest.py: ComfyInProcess), and the
SaveVideo/SaveImage results land in ./output/ (git-ignored).

When the clip has a sharp ground truth next to it (the generated sample's ``sample_sharp.mkv``), the PSNR of
the decoded input and of every video saved from a ``CPGD_CPFPRestore`` output (read back from the written
file, i.e. after SaveVideo's H.264 encode) against it is printed, averaged over frames. Each restore node's
``info`` output is printed too: it starts with the stage-one mode that ran ('quality: ...' or 'fast: ...').
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, ".build")
LOADER = "CPGD_LoadVideoWithPriors"
RESTORE = "CPGD_CPFPRestore"
SHARP_NAME = "sample_sharp.mkv"


def _ensure_sample(sample_dir: str) -> str:
    path = os.path.join(sample_dir, "sample_blurry.mp4")
    # Generated deterministically from packaged content (nothing is downloaded); the command returns at once
    # when the folder already holds the clip of the current generator code, and regenerates a stale one.
    subprocess.run([sys.executable, "-m", "cpgd_core", "sample", "--out", sample_dir], cwd=ROOT, check=True)
    if not os.path.isfile(path):
        raise SystemExit(f"`python -m cpgd_core sample` did not write {path}")
    return path


def _harness():
    # Reuse the one boot recipe instead of keeping a second copy of it here.
    spec = importlib.util.spec_from_file_location("cpgd_comfy_harness", os.path.join(ROOT, "tests", "conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _saved_files(ui: dict, output_dir: str) -> list[str]:
    paths = []
    for node_ui in ui.values():
        for items in node_ui.values():
            for item in items if isinstance(items, (list, tuple)) else []:
                if isinstance(item, dict) and "filename" in item:
                    paths.append(os.path.join(output_dir, item.get("subfolder", ""), item["filename"]))
    return paths


def _read_frames(path: str, indices: list[int]):
    """Frames ``indices`` of a video file as (T, 3, H, W) float32 in [0, 1] (plain decode, no priors)."""
    import av
    import numpy as np
    import torch

    from cpgd_core.codec.decode import frame_to_rgb

    wanted, out = set(indices), {}
    with av.open(path) as c:
        for i, fr in enumerate(c.decode(video=0)):
            if i in wanted:
                out[i] = frame_to_rgb(fr)
            if i >= max(indices):
                break
    missing = [i for i in indices if i not in out]
    if missing:
        raise SystemExit(f"{path} has no frames {missing[:5]}")
    arr = np.stack([out[i] for i in indices])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def _mean_psnr(pred, target) -> float:
    from cpgd_core.train.common import psnr

    return sum(psnr(p, t) for p, t in zip(pred, target)) / len(pred)


def _restored_videos(prompt: dict, ui: dict, output_dir: str) -> list[str]:
    """Files written by SaveVideo nodes whose CreateVideo takes its images from a CPFP restore node."""
    paths = []
    for node_id, node in prompt.items():
        if node.get("class_type") != "SaveVideo" or node_id not in ui:
            continue
        src = prompt[node["inputs"]["video"][0]]
        images = src.get("inputs", {}).get("images")
        if src.get("class_type") == "CreateVideo" and images and prompt[images[0]]["class_type"] == RESTORE:
            paths += _saved_files({node_id: ui[node_id]}, output_dir)
    return paths


def _mode(outputs) -> str:
    """The stage-one mode a restore node ran: the first word of its info output ('quality: ...', 'fast: ...';
    a single image in quality mode says it ran fast mode)."""
    info = outputs[2] if len(outputs) > 2 else ""
    if "ran fast mode" in info:
        return "fast"
    return info.split(":", 1)[0] if info.startswith(("quality:", "fast:")) else "unknown"


def report_psnr(prompt: dict, result, video: str, output_dir: str) -> None:
    """Print PSNR vs the sharp ground truth for the input frames and each restored video."""
    sharp_path = os.path.join(os.path.dirname(video), SHARP_NAME)
    if not os.path.isfile(sharp_path):
        return
    loader_id = next(k for k, n in prompt.items() if n.get("class_type") == LOADER)
    inputs = prompt[loader_id]["inputs"]
    blurry = result.raw[loader_id][0].movedim(-1, 1)
    # the loader's frame selection, mapped back to source frame numbers
    indices = [inputs.get("skip_first_frames", 0) + k * inputs.get("select_every_nth", 1) for k in range(len(blurry))]
    sharp = _read_frames(sharp_path, indices)
    if sharp.shape[-2:] != blurry.shape[-2:]:
        print(f"PSNR skipped: frames resized to {tuple(blurry.shape[-2:])}, ground truth is {tuple(sharp.shape[-2:])}")
        return
    print(f"PSNR vs {os.path.basename(sharp_path)} over {len(indices)} frames (mean of per-frame PSNR):")
    print(f"  blurry input (decoded)   {_mean_psnr(blurry, sharp):6.2f} dB")
    for node_id, node in prompt.items():
        if node.get("class_type") == RESTORE and node_id in result.raw:
            restored = result.raw[node_id][0].movedim(-1, 1)
            if restored.shape == blurry.shape:
                print(f"  restored (node {node_id} output, {_mode(result.raw[node_id])} mode, before SaveVideo's "
                      f"encode) {_mean_psnr(restored, sharp):6.2f} dB")
    for path in _restored_videos(prompt, result.ui, output_dir):
        restored = _read_frames(path, list(range(len(indices))))
        print(f"  restored ({os.path.basename(path)}) {_mean_psnr(restored, sharp):6.2f} dB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflow", default=os.path.join(ROOT, "workflows", "api", "main.json"),
                    help="API-format graph to run")
    ap.add_argument("--video", default=None, help="input clip (default: the generated sample)")
    ap.add_argument("--output", default=os.path.join(ROOT, "output"), help="folder for the results")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    video = os.path.abspath(args.video) if args.video else _ensure_sample(os.path.join(BUILD, "sample"))
    with open(args.workflow) as f:
        prompt = json.load(f)

    harness = _harness()
    comfy = harness.ComfyInProcess(os.path.join(BUILD, "main_job"))
    os.makedirs(args.output, exist_ok=True)
    comfy.folder_paths.set_output_directory(os.path.abspath(args.output))
    name = comfy.copy_to_input(video)
    for node in prompt.values():
        if node.get("class_type") == LOADER:
            node["inputs"]["video"] = name

    t0 = time.perf_counter()
    result = comfy.run(prompt, expect_success=False)
    if not result.success:
        print(f"graph failed: {result.error or result.messages[-1:]}", file=sys.stderr)
        return 1
    print(f"graph {os.path.relpath(args.workflow, ROOT)} on {video} ran in {time.perf_counter() - t0:.1f} s")
    for node_id, outs in result.raw.items():
        if prompt[node_id]["class_type"] == LOADER:
            print(f"  {outs[4]}")
        if prompt[node_id]["class_type"] == RESTORE:
            print(f"  stage one (node {node_id}), {_mode(outs)} mode: {outs[2]}")
    for path in _saved_files(result.ui, os.path.abspath(args.output)):
        print(f"wrote {path}")
    report_psnr(prompt, result, video, os.path.abspath(args.output))
    print(f"total wall time {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
