"""``python -m cpgd_core deblur IN OUT``: stage-one (CPFP) deblurring of a video file, streamed.

decode in overlapping chunks (with codec priors) -> CPFP -> encode; memory stays flat in the video length.
The output keeps the input's frame rate and audio.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from ..errors import CPGDInputError
from ..precision import DTYPE_CHOICES, element_bytes, resolve_dtype

# The official test settings (spec §1.6, §2.4): 48-frame windows, 256 px patches overlapping by 64 px.
OFFICIAL_CHUNK, OFFICIAL_TILE, OFFICIAL_TILE_OVERLAP = 48, 256, 64


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cpgd_core deblur", description="stage-one (CPFP) video deblurring")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--weights", default=None,
                   help="CPFP .safetensors, or an official CPGD-Net stage-one checkpoint (.pth) "
                        "(default: the bundled lite weights)")
    p.add_argument("--raft", default="auto",
                   help="official checkpoints only: RAFT weights (raft-things.pth) refining the backward flows; "
                        "'auto' = raft-things.pth beside the checkpoint if present, 'none' = inverted MVs only")
    p.add_argument("--chunk", type=int, default=None,
                   help="frames per temporal chunk (at most; see --memory-budget); default 16, 48 for official "
                        "checkpoints (the official test windows)")
    p.add_argument("--overlap", type=int, default=4, help="frames shared by consecutive chunks (cross-faded)")
    p.add_argument("--tile", type=int, default=None,
                   help="spatial tile size in px (at most); 0: whole frames when they fit the memory budget; "
                        "default 0, 256 for official checkpoints (the official test patches)")
    p.add_argument("--tile-overlap", type=int, default=None, help="default 32; 64 for official checkpoints")
    p.add_argument("--memory-budget", type=float, default=None, metavar="GIB",
                   help="memory the run may use, in GiB (default: 3 GiB of RAM for the whole process, at most "
                        "half the available RAM; on CUDA 80%% of the free GPU memory); chunk and tile sizes are "
                        "lowered to fit. 0: no limit, use --chunk and --tile as given. Official checkpoints run "
                        "at --chunk and --tile as given (no estimate for that network)")
    p.add_argument("--max-frames", type=int, default=0, help="process only the first N frames (0: all)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto")
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    p.add_argument("--crf", type=int, default=16, help="libx264 quality of the output")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", action="store_true",
                   help="print JSON lines (plan, progress, done) instead of a progress bar and a summary")
    return p


def main(argv: list[str]) -> int:
    return _run(build_parser().parse_args(argv))


def _settings(args: argparse.Namespace, official: bool) -> None:
    """Fill the chunk / tile defaults: the pack's, or the official test settings for official checkpoints."""
    if args.chunk is None:
        args.chunk = OFFICIAL_CHUNK if official else 16
    if args.tile is None:
        args.tile = OFFICIAL_TILE if official else 0
    if args.tile_overlap is None:
        args.tile_overlap = OFFICIAL_TILE_OVERLAP if official else 32
    if args.overlap >= args.chunk:
        raise CPGDInputError(f"--overlap must be smaller than --chunk: got {args.chunk}, {args.overlap}")


def _plan(args: argparse.Namespace, model, height: int, width: int, device: torch.device) -> tuple[int, int, int]:
    from .official import OfficialStageOne
    from .restore import GiB, default_budget, plan_memory

    if args.memory_budget == 0 or isinstance(model, OfficialStageOne):
        return args.chunk, args.overlap, args.tile
    if args.memory_budget is None:
        host, dev = default_budget(device)
    else:
        host = dev = int(args.memory_budget * GiB)
    return plan_memory(model.config, height, width, args.chunk, args.overlap, args.tile, args.tile_overlap,
                       host, dev, on_host=device.type == "cpu",
                       elem_bytes=element_bytes(resolve_dtype(args.dtype, device)))


def _run(args: argparse.Namespace) -> int:
    from ..cli import ProgressBar
    from ..codec.decode import iter_video_chunks, probe, read_audio
    from ..codec.encode import write_video
    from ..weights import default_cpfp_path, load_cpfp
    from .official import OfficialStageOne
    from .restore import restore_stream

    if os.path.exists(args.output) and not args.overwrite:
        raise CPGDInputError(f"output file already exists: {args.output} (pass --overwrite to replace it)")
    if os.path.abspath(args.output) == os.path.abspath(args.input):
        raise CPGDInputError(f"output {args.output} is the input file")
    if args.chunk is not None and (args.chunk < 1 or args.overlap < 0 or args.overlap >= args.chunk):
        raise CPGDInputError(f"--chunk must be >= 1 and --overlap in [0, chunk): got {args.chunk}, {args.overlap}")
    weights = args.weights or default_cpfp_path()
    if not os.path.isfile(weights):
        raise CPGDInputError(f"CPFP weights not found: {weights} (train with python -m cpgd_core.train cpfp, "
                             f"or pass --weights)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_cpfp(weights, device, raft=args.raft)
    official = isinstance(model, OfficialStageOne)
    _settings(args, official)
    if official and args.json:
        print(json.dumps({"event": "model", "info": model.describe(), "chunk": args.chunk, "tile": args.tile}),
              flush=True)
    elif official:
        print(f"{model.describe()}; chunks of {args.chunk} frames, {args.tile} px tiles", file=sys.stderr)
    info = probe(args.input)
    total = min(info.frame_count, args.max_frames) if args.max_frames else info.frame_count
    chunk, overlap, tile = _plan(args, model, info.height, info.width, device)
    log = (lambda **event: print(json.dumps(event), flush=True)) if args.json else (lambda **event: None)
    log(event="plan", chunk=chunk, overlap=overlap, tile=tile, width=info.width, height=info.height)
    if not args.json and (chunk, overlap, tile) != (args.chunk, args.overlap, args.tile):
        print(f"memory budget: chunks of {chunk} frames (overlap {overlap}), "
              + (f"{tile} px tiles" if tile else "whole frames"), file=sys.stderr)
    t0 = time.time()
    state = {"done": 0}
    bar = ProgressBar(total) if not args.json else None

    def progress(done: int) -> None:
        state["done"] = done
        log(event="progress", frames=done, total=total, fps=round(done / max(time.time() - t0, 1e-9), 3))
        if bar is not None:
            bar.update(done)

    chunks = iter_video_chunks(args.input, chunk, overlap, cap=args.max_frames)
    restored = restore_stream(model, chunks, overlap, tile, args.tile_overlap, args.dtype, device,
                              progress=progress)
    audio = None
    if info.has_audio:
        end = total / float(info.fps) if args.max_frames else None
        audio = read_audio(args.input, 0.0, end)
    try:
        write_video(args.output, restored, info.fps, audio=audio, crf=args.crf, overwrite=args.overwrite)
    finally:
        if bar is not None:
            bar.close()
    seconds = round(time.time() - t0, 2)
    log(event="done", output=args.output, frames=state["done"], seconds=seconds)
    if not args.json:
        print(f"wrote {args.output}: {state['done']} frames in {seconds} s")
    return 0
