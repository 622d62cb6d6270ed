"""The main job (`make run`): execute an API-format ComfyUI graph on the bundled sample clip.

The graph is read from a JSON file (default: workflows/api/main.json) so later stages can swap in the
deblurring graph without touching this script. Every ``CPGD_LoadVideoWithPriors`` node's ``video``
input is pointed at the clip, which is copied into ComfyUI's input folder first. ComfyUI runs
in-process, booted exactly as the test harness does (tests/conftest.py: ComfyInProcess), and the
SaveVideo/SaveImage results land in ./output/ (git-ignored).
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


def _ensure_sample(sample_dir: str) -> str:
    path = os.path.join(sample_dir, "sample_blurry.mp4")
    if not os.path.isfile(path):
        # Generated deterministically from packaged content; nothing is downloaded.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflow", default=os.path.join(ROOT, "workflows", "api", "main.json"),
                    help="API-format graph to run")
    ap.add_argument("--video", default=None, help="input clip (default: the generated sample)")
    ap.add_argument("--output", default=os.path.join(ROOT, "output"), help="folder for the results")
    args = ap.parse_args(argv)

    video = os.path.abspath(args.video) if args.video else _ensure_sample(os.path.join(BUILD, "sample"))
    with open(args.workflow) as f:
        prompt = json.load(f)

    harness = _harness()
    # ComfyUI's nodes.py puts ComfyUI/comfy/ first on sys.path, where comfy/utils.py would then shadow
    # the top-level `utils` package that server.py (imported by comfy_extras) needs; main.py avoids
    # this by importing that package early, and so does this script.
    if harness.COMFY_DIR not in sys.path:
        sys.path.insert(0, harness.COMFY_DIR)
    importlib.import_module("utils.install_util")
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
    for path in _saved_files(result.ui, os.path.abspath(args.output)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
