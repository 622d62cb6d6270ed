"""``python -m cpgd_core deblur IN OUT``: stage-one (CPFP) deblurring of a video file, streamed.

decode in overlapping chunks (with codec priors) -> CPFP -> encode; memory stays flat in the video length.
The output keeps the input's frame rate and audio. ``deblur_file`` is the one place this happens; the
``batch`` command (``pipeline.batch``) calls it for every video that it does not split into segments, and
``restored_blocks`` for the segments, with the options of ``add_restore_options`` and the per-video
(chunk, overlap, tile) of ``plan_sizes``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Iterator, Optional

import torch

from ..errors import CPGDInputError
from ..precision import DTYPE_CHOICES, element_bytes, resolve_dtype, validated_in_bf16

# The official test settings (spec §1.6, §2.4): 48-frame windows, 256 px patches overlapping by 64 px.
OFFICIAL_CHUNK, OFFICIAL_TILE, OFFICIAL_TILE_OVERLAP = 48, 256, 64

# (chunk, overlap, tile) one video is restored with: the requested sizes, lowered by the memory budget.
Plan = tuple[int, int, int]


def add_restore_options(p: argparse.ArgumentParser) -> None:
    """The restoration options shared by ``deblur`` and ``batch``."""
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
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cpgd_core deblur", description="stage-one (CPFP) video deblurring")
    p.add_argument("input")
    p.add_argument("output")
    add_restore_options(p)
    p.add_argument("--json", action="store_true",
                   help="print JSON lines (plan, progress, done) instead of a progress bar and a summary")
    return p


def main(argv: list[str]) -> int:
    return _run(build_parser().parse_args(argv))


def check_chunk(args: argparse.Namespace) -> None:
    """Reject an impossible --chunk / --overlap before anything is loaded."""
    if args.chunk is not None and (args.chunk < 1 or args.overlap < 0 or args.overlap >= args.chunk):
        raise CPGDInputError(f"--chunk must be >= 1 and --overlap in [0, chunk): got {args.chunk}, {args.overlap}")


def resolve_weights(path: Optional[str]) -> str:
    from ..weights import default_cpfp_path

    weights = path or default_cpfp_path()
    if not os.path.isfile(weights):
        raise CPGDInputError(f"CPFP weights not found: {weights} (train with python -m cpgd_core.train cpfp, "
                             f"or pass --weights)")
    return weights


def fill_settings(args: argparse.Namespace, official: bool) -> None:
    """Fill the chunk / tile defaults: the pack's, or the official test settings for official checkpoints."""
    if args.chunk is None:
        args.chunk = OFFICIAL_CHUNK if official else 16
    if args.tile is None:
        args.tile = OFFICIAL_TILE if official else 0
    if args.tile_overlap is None:
        args.tile_overlap = OFFICIAL_TILE_OVERLAP if official else 32
    if args.overlap >= args.chunk:
        raise CPGDInputError(f"--overlap must be smaller than --chunk: got {args.chunk}, {args.overlap}")


def plan_sizes(args: argparse.Namespace, model, height: int, width: int, device: torch.device) -> Plan:
    """The (chunk, overlap, tile) a video of ``height`` x ``width`` is restored with under ``--memory-budget``
    (after ``fill_settings``)."""
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
                       elem_bytes=element_bytes(resolve_dtype(args.dtype, device, cpu_bf16=validated_in_bf16(model))))


def frames_to_process(frame_count: int, max_frames: int) -> int:
    return min(frame_count, max_frames) if max_frames else frame_count


def output_audio(info, max_frames: int) -> Optional[dict]:
    """The input's audio for an output of its first ``max_frames`` frames (0: all), or None."""
    from ..codec.decode import read_audio

    if not info.has_audio:
        return None
    return read_audio(info.path, 0.0, frames_to_process(info.frame_count, max_frames) / float(info.fps)
                      if max_frames else None)


def restored_blocks(model, path: str, args: argparse.Namespace, plan: Plan, start: int = 0, cap: int = 0,
                    progress: Optional[Callable[[int], None]] = None,
                    device: Optional[torch.device] = None) -> Iterator[torch.Tensor]:
    """Restored (n, 3, H, W) float32 blocks of the kept frames [start, start + cap) (cap 0: to the end), streamed
    chunk by chunk with ``plan`` (``plan_sizes``) and the other options in ``args`` (``add_restore_options``)."""
    from ..codec.decode import iter_video_chunks
    from .restore import restore_stream

    chunk, overlap, tile = plan
    if device is None:
        device = torch.device(args.device) if args.device else next(model.parameters()).device
    chunks = iter_video_chunks(path, chunk, overlap, start=start, cap=cap)
    return restore_stream(model, chunks, overlap, tile, args.tile_overlap, args.dtype, device, progress=progress)


def deblur_file(model, info, output: str, args: argparse.Namespace, plan: Plan,
                progress: Optional[Callable[[int], None]] = None, metadata: Optional[dict[str, str]] = None,
                overwrite: bool = False, exact: bool = False, device: Optional[torch.device] = None) -> int:
    """Restore the video ``info.path`` (probed) into ``output`` with its fps and audio; returns the frame count.
    The file appears only when complete (``VideoWriter``). ``exact``: refuse (write nothing) unless the output
    gets exactly the frames ``probe`` counted (up to ``--max-frames``), so a broken input never leaves a
    short output."""
    from ..codec.encode import VideoWriter

    total = frames_to_process(info.frame_count, args.max_frames)
    done = 0
    with VideoWriter(output, info.fps, audio=output_audio(info, args.max_frames), crf=args.crf,
                     overwrite=overwrite, metadata=metadata) as w:
        for block in restored_blocks(model, info.path, args, plan, cap=args.max_frames, progress=progress,
                                     device=device):
            w.write(block)
            done += len(block)
        if exact and done != total:
            raise CPGDInputError(f"{info.path}: decoded {done} frames but the file has {total}: corrupt or "
                                 f"truncated video")
    return done


def _run(args: argparse.Namespace) -> int:
    from ..cli import ProgressBar
    from ..codec.decode import probe
    from ..weights import load_cpfp
    from .official import OfficialStageOne

    if os.path.exists(args.output) and not args.overwrite:
        raise CPGDInputError(f"output file already exists: {args.output} (pass --overwrite to replace it)")
    if os.path.abspath(args.output) == os.path.abspath(args.input):
        raise CPGDInputError(f"output {args.output} is the input file")
    check_chunk(args)
    weights = resolve_weights(args.weights)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_cpfp(weights, device, raft=args.raft)
    official = isinstance(model, OfficialStageOne)
    fill_settings(args, official)
    if official and args.json:
        print(json.dumps({"event": "model", "info": model.describe(), "chunk": args.chunk, "tile": args.tile}),
              flush=True)
    elif official:
        print(f"{model.describe()}; chunks of {args.chunk} frames, {args.tile} px tiles", file=sys.stderr)
    info = probe(args.input)
    total = frames_to_process(info.frame_count, args.max_frames)
    chunk, overlap, tile = plan_sizes(args, model, info.height, info.width, device)
    log = (lambda **event: print(json.dumps(event), flush=True)) if args.json else (lambda **event: None)
    log(event="plan", chunk=chunk, overlap=overlap, tile=tile, width=info.width, height=info.height)
    if not args.json and (chunk, overlap, tile) != (args.chunk, args.overlap, args.tile):
        print(f"memory budget: chunks of {chunk} frames (overlap {overlap}), "
              + (f"{tile} px tiles" if tile else "whole frames"), file=sys.stderr)
    t0 = time.time()
    bar = ProgressBar(total) if not args.json else None

    def progress(done: int) -> None:
        log(event="progress", frames=done, total=total, fps=round(done / max(time.time() - t0, 1e-9), 3))
        if bar is not None:
            bar.update(done)

    try:
        frames = deblur_file(model, info, args.output, args, (chunk, overlap, tile), progress,
                             overwrite=args.overwrite, device=device)
    finally:
        if bar is not None:
            bar.close()
    seconds = round(time.time() - t0, 2)
    log(event="done", output=args.output, frames=frames, seconds=seconds)
    if not args.json:
        print(f"wrote {args.output}: {frames} frames in {seconds} s")
    return 0
