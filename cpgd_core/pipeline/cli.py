"""``python -m cpgd_core deblur IN OUT``: stage-one deblurring of a video file, streamed.

Two modes (``--mode``, ``quality.py``): 'quality' (default) decodes frame by frame -> blur field -> unrolled
non-blind solver (``nonblind.deblur_stream``) -> encode; 'fast' decodes in overlapping chunks (with codec priors)
-> CPFP -> encode. Memory stays flat in the video length either way. The output keeps the input's frame rate and
audio. ``deblur_file`` is the one place this happens; the
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
from .quality import (DEFAULT_MODE, MAX_ITERATIONS, MODES, DeviceSolver, check_iterations, exposure_setting,
                      resolve_mode)

# The official test settings (spec §1.6, §2.4): 48-frame windows, 256 px patches overlapping by 64 px.
OFFICIAL_CHUNK, OFFICIAL_TILE, OFFICIAL_TILE_OVERLAP = 48, 256, 64

# (chunk, overlap, tile) one video is restored with: the requested sizes, lowered by the memory budget.
Plan = tuple[int, int, int]


def add_restore_options(p: argparse.ArgumentParser) -> None:
    """The restoration options shared by ``deblur`` and ``batch``."""
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                   help="quality (default): measure each pixel's blur trajectory and invert it with the non-blind "
                        "solver (needs >= 2 frames: a one-frame video runs fast mode); fast: the CPFP network with "
                        "the codec priors (the options below marked 'fast mode')")
    p.add_argument("--iterations", type=int, default=0,
                   help=f"quality mode: solver iterations, 0..{MAX_ITERATIONS} (0: the shipped solver's own count); "
                        f"more = slower, fewer = faster and softer")
    p.add_argument("--exposure", default="auto",
                   help="quality mode (and the blur it measures): 'auto' = read the exposure from the blur, or the "
                        "fraction of the frame interval the shutter was open, in [0, 1] (0.5 = a 180 degree shutter)")
    p.add_argument("--weights", default=None,
                   help="fast mode: CPFP .safetensors, or an official CPGD-Net stage-one checkpoint (.pth) "
                        "(default: the bundled lite weights)")
    p.add_argument("--raft", default="auto",
                   help="fast mode, official checkpoints only: RAFT weights (raft-things.pth) refining the backward "
                        "flows; 'auto' = raft-things.pth beside the checkpoint if present, 'none' = inverted MVs only")
    p.add_argument("--chunk", type=int, default=None,
                   help="fast mode: frames per temporal chunk (at most; see --memory-budget); default 16, 48 for "
                        "official checkpoints (the official test windows)")
    p.add_argument("--overlap", type=int, default=4,
                   help="fast mode: frames shared by consecutive chunks (cross-faded)")
    p.add_argument("--tile", type=int, default=None,
                   help="fast mode: spatial tile size in px (at most); 0: whole frames when they fit the memory "
                        "budget; default 0, 256 for official checkpoints (the official test patches)")
    p.add_argument("--tile-overlap", type=int, default=None, help="fast mode: default 32; 64 for official checkpoints")
    p.add_argument("--memory-budget", type=float, default=None, metavar="GIB",
                   help="fast mode: memory the run may use, in GiB (default: 3 GiB of RAM for the whole process, at "
                        "most half the available RAM; on CUDA 80%% of the free GPU memory); chunk and tile sizes are "
                        "lowered to fit. 0: no limit, use --chunk and --tile as given. Official checkpoints run "
                        "at --chunk and --tile as given (no estimate for that network)")
    p.add_argument("--max-frames", type=int, default=0, help="process only the first N frames (0: all)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="fast mode: compute precision (quality mode computes in fp32)")
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    p.add_argument("--crf", type=int, default=16, help="libx264 quality of the output")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cpgd_core deblur",
                                description="stage-one video deblurring (quality: blur field + non-blind solver; "
                                            "fast: CPFP)")
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


def check_mode_options(args: argparse.Namespace) -> None:
    """Reject a bad --iterations / --exposure before anything is loaded; --exposure is kept as 'auto' or a float."""
    check_iterations(args.iterations)
    args.exposure = exposure_setting(args.exposure)


def load_quality(args: argparse.Namespace, device: torch.device) -> DeviceSolver:
    """Quality mode's solver (``--iterations``) on ``device``."""
    from .quality import load_solver

    return load_solver(args.iterations, device)


def describe_quality(solver: DeviceSolver, args: argparse.Namespace) -> str:
    return (f"quality mode: blur field + non-blind solver, {solver.iterations} iterations, exposure {args.exposure}, "
            f"on {solver.device}")


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
    from ..models.official_stage_one import OfficialStageOne
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
    chunk by chunk with ``plan`` (``plan_sizes``) and the other options in ``args`` (``add_restore_options``).
    ``model`` decides the mode: a quality-mode ``DeviceSolver`` (``load_quality``) streams frame by frame, ``plan``
    unused; a CPFP network runs fast mode."""
    from ..codec.decode import iter_video_chunks
    from .restore import restore_stream

    if isinstance(model, DeviceSolver):
        from .quality import quality_blocks

        return quality_blocks(model, path, args.exposure, start=start, cap=cap, progress=progress)
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

    if os.path.exists(args.output) and not args.overwrite:
        raise CPGDInputError(f"output file already exists: {args.output} (pass --overwrite to replace it)")
    if os.path.abspath(args.output) == os.path.abspath(args.input):
        raise CPGDInputError(f"output {args.output} is the input file")
    check_chunk(args)
    check_mode_options(args)
    info = probe(args.input)
    total = frames_to_process(info.frame_count, args.max_frames)
    mode, note = resolve_mode(args.mode, total)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    log = (lambda **event: print(json.dumps(event), flush=True)) if args.json else (lambda **event: None)
    if note:
        log(event="note", message=note)
        if not args.json:
            print(note, file=sys.stderr)
    if mode == "quality":
        model, plan = load_quality(args, device), (0, 0, 0)
        log(event="plan", mode=mode, iterations=model.iterations, exposure=args.exposure, width=info.width,
            height=info.height)
        if not args.json:
            print(describe_quality(model, args), file=sys.stderr)
    else:
        model, plan = _load_fast(args, info, device, log)
    t0 = time.time()
    bar = ProgressBar(total) if not args.json else None

    def progress(done: int) -> None:
        log(event="progress", frames=done, total=total, fps=round(done / max(time.time() - t0, 1e-9), 3))
        if bar is not None:
            bar.update(done)

    try:
        frames = deblur_file(model, info, args.output, args, plan, progress, overwrite=args.overwrite, device=device)
    finally:
        if bar is not None:
            bar.close()
    seconds = round(time.time() - t0, 2)
    log(event="done", output=args.output, frames=frames, seconds=seconds, mode=mode)
    if not args.json:
        print(f"wrote {args.output}: {frames} frames in {seconds} s ({mode} mode)")
    return 0


def _load_fast(args: argparse.Namespace, info, device: torch.device, log: Callable[..., None]
               ) -> tuple[torch.nn.Module, Plan]:
    """Fast mode: the CPFP network of --weights and the (chunk, overlap, tile) it restores ``info`` with."""
    from ..weights import load_cpfp
    from ..models.official_stage_one import OfficialStageOne

    weights = resolve_weights(args.weights)
    model = load_cpfp(weights, device, raft=args.raft)
    official = isinstance(model, OfficialStageOne)
    fill_settings(args, official)
    if official and args.json:
        print(json.dumps({"event": "model", "info": model.describe(), "chunk": args.chunk, "tile": args.tile}),
              flush=True)
    elif official:
        print(f"{model.describe()}; chunks of {args.chunk} frames, {args.tile} px tiles", file=sys.stderr)
    chunk, overlap, tile = plan_sizes(args, model, info.height, info.width, device)
    log(event="plan", mode="fast", chunk=chunk, overlap=overlap, tile=tile, width=info.width, height=info.height)
    if not args.json and (chunk, overlap, tile) != (args.chunk, args.overlap, args.tile):
        print(f"memory budget: chunks of {chunk} frames (overlap {overlap}), "
              + (f"{tile} px tiles" if tile else "whole frames"), file=sys.stderr)
    return model, (chunk, overlap, tile)
