"""``python -m cpgd_core deblur IN OUT``: stage-one (CPFP) deblurring of a video file, streamed.

decode in overlapping chunks (with codec priors) -> CPFP -> encode; memory stays flat in the video length.
The output keeps the input's frame rate and audio.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from ..errors import CPGDInputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cpgd_core deblur", description="stage-one (CPFP) video deblurring")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--weights", default=None, help="CPFP .safetensors (default: the bundled lite weights)")
    p.add_argument("--chunk", type=int, default=16, help="frames per temporal chunk")
    p.add_argument("--overlap", type=int, default=4, help="frames shared by consecutive chunks (cross-faded)")
    p.add_argument("--tile", type=int, default=0, help="spatial tile size in px (0: whole frame)")
    p.add_argument("--tile-overlap", type=int, default=32)
    p.add_argument("--max-frames", type=int, default=0, help="process only the first N frames (0: all)")
    p.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto")
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    p.add_argument("--crf", type=int, default=16, help="libx264 quality of the output")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return p


def main(argv: list[str]) -> int:
    return _run(build_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    from ..codec.decode import iter_video_chunks, probe, read_audio
    from ..codec.encode import write_video
    from ..weights import default_cpfp_path, load_cpfp
    from .restore import restore_stream

    if os.path.exists(args.output) and not args.overwrite:
        raise CPGDInputError(f"output file already exists: {args.output} (pass --overwrite to replace it)")
    if os.path.abspath(args.output) == os.path.abspath(args.input):
        raise CPGDInputError(f"output {args.output} is the input file")
    weights = args.weights or default_cpfp_path()
    if not os.path.isfile(weights):
        raise CPGDInputError(f"CPFP weights not found: {weights} (train with python -m cpgd_core.train cpfp, "
                             f"or pass --weights)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_cpfp(weights, device)
    info = probe(args.input)
    total = min(info.frame_count, args.max_frames) if args.max_frames else info.frame_count
    t0 = time.time()
    state = {"done": 0}

    def progress(done: int) -> None:
        state["done"] = done
        print(json.dumps({"event": "progress", "frames": done, "total": total,
                          "fps": round(done / max(time.time() - t0, 1e-9), 3)}), flush=True)

    chunks = iter_video_chunks(args.input, args.chunk, args.overlap, cap=args.max_frames)
    restored = restore_stream(model, chunks, args.overlap, args.tile, args.tile_overlap, args.dtype, device,
                              progress=progress)
    audio = None
    if info.has_audio:
        end = total / float(info.fps) if args.max_frames else None
        audio = read_audio(args.input, 0.0, end)
    write_video(args.output, restored, info.fps, audio=audio, crf=args.crf, overwrite=args.overwrite)
    print(json.dumps({"event": "done", "output": args.output, "frames": state["done"],
                      "seconds": round(time.time() - t0, 2)}), flush=True)
    return 0
