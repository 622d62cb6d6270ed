"""Stage-one (CPFP) inference driver: temporal chunks with linear cross-fades, optional feathered spatial
tiles (both cut by ``pipeline.schedule``), a memory budget, padding to multiples of 4, precision selection,
progress and interruption.

Memory is bounded by the chunk (and tile) size: :func:`restore_stream` holds at most one chunk of
predictions besides the chunk being processed, whatever the video length. :func:`restore_video` is the
in-memory front end (its output is of course O(T)).
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F

from ..codec.priors import PRIOR_FIELDS, CodecPriors
from ..errors import CPGDInputError
from ..models.cpfp import CPFP, CPFPConfig, priors_to_model_inputs
from ..precision import autocast, resolve_dtype, validated_in_bf16
from .schedule import ChunkBlender, chunk_windows, feather_weights, fit_chunk_and_tile, windows_1d

Progress = Optional[Callable[[int, int], None]]
Interrupt = Optional[Callable[[], None]]


# -- memory budget -----------------------------------------------------------------------------------
GiB = 1 << 30
DEFAULT_BUDGET = 3 * GiB  # whole-process ceiling of a default run: fits 8 GB machines next to a browser
# Driver buffers per frame of a chunk and per full-resolution pixel, on the host: decoded uint8 frames and
# their float copy, residual, padded model input, tile accumulator, cross-fade, uint8 for the encoder.
HOST_BYTES_PER_PIXEL = 100
TILE_CANDIDATES = (1024, 768, 512, 384, 256, 192, 128)


def activation_bytes_per_pixel(config: CPFPConfig, elem_bytes: int = 4) -> float:
    """Peak activations of one CPFP forward, per frame and per input pixel, in bytes (an upper estimate).

    Full resolution: the encoder skip, the residual-block transients and input/output frames (~6e + 10
    channels); half resolution ~6e; quarter resolution: every branch's features for all frames plus the
    fusion/reconstruction transients (~(3 (1 + branches) + 4) c). bench/memory.py checks it against the
    measured peak (lite, fp32: ~430-500 B measured, 600 B estimated).
    """
    e, c, b = config.enc_channels, config.mid_channels, config.num_branches
    channels = (6 * e + 10) + 6 * e / 4 + (3 * (1 + b) + 4) * c / 16
    return channels * elem_bytes


def available_memory(device: torch.device) -> int:
    """Free memory on ``device`` in bytes: CUDA free + reusable cache, or the host's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil comes with ComfyUI; the bare library falls back to the kernel's estimate
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024


def current_rss() -> int:
    """Resident memory of this process in bytes (0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def default_budget(device: torch.device) -> tuple[int, int]:
    """(host bytes, device bytes) a default run may add to the process: host RAM up to ``DEFAULT_BUDGET`` in
    total and at most half of what is available; on CUDA 80 % of the free device memory."""
    host = max(min(DEFAULT_BUDGET - current_rss(), available_memory(torch.device("cpu")) // 2), 256 << 20)
    dev = int(available_memory(device) * 0.8) if device.type == "cuda" else host
    return host, dev


def plan_memory(config: CPFPConfig, height: int, width: int, chunk_size: int, chunk_overlap: int,
                tile_size: int, tile_overlap: int, host_budget: int, device_budget: int,
                on_host: bool = True, elem_bytes: int = 4) -> tuple[int, int, int]:
    """The largest (chunk_size, chunk_overlap, tile_size) not above the requested ones whose estimated peak fits.

    ``tile_size`` 0 means whole frames if they fit. Tiles shrink first (down to 256 px), then the chunk
    halves (the overlap shrinks with it to a quarter of the chunk), then tiles go down to 128 px; if
    nothing fits, the smallest plan is returned. ``on_host``: the model runs on the CPU, so activations
    and driver buffers share ``host_budget``; otherwise activations count against ``device_budget``.
    """
    per_px = activation_bytes_per_pixel(config, elem_bytes)
    hp, wp = -(-height // 4) * 4, -(-width // 4) * 4
    ov = -(-max(tile_overlap, 0) // 4) * 4

    def fits(chunk: int, tile: int) -> bool:
        th, tw = (hp, wp) if tile <= 0 else (min(tile, hp), min(tile, wp))
        act = chunk * th * tw * per_px
        host = chunk * hp * wp * HOST_BYTES_PER_PIXEL
        return host + act <= host_budget if on_host else (host <= host_budget and act <= device_budget)

    smaller = [t for t in TILE_CANDIDATES if t < max(hp, wp) and t > ov]
    return fit_chunk_and_tile(chunk_size, chunk_overlap, tile_size, smaller, fits, comfortable_tile=256)


def _check_match(frames: torch.Tensor, priors: CodecPriors, what: str = "") -> None:
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise CPGDInputError(f"frames{what} must be (T, 3, H, W), got {tuple(frames.shape)}")
    if len(priors) != frames.shape[0]:
        raise CPGDInputError(f"frame count mismatch{what}: {frames.shape[0]} frames but codec priors for "
                             f"{len(priors)} frames")
    if (priors.height, priors.width) != tuple(frames.shape[-2:]):
        raise CPGDInputError(f"frame size mismatch{what}: frames are {frames.shape[-1]}x{frames.shape[-2]} but "
                             f"codec priors are {priors.width}x{priors.height}")


# -- core: one chunk ---------------------------------------------------------------------------------
# Fast mode leaves alone what did not move during the exposure: CPFP, trained on blur, also smooths sharp frames
# (0.8 dB under the input on sharp clips encoded at crf 12-16, docs/bench/eval_quality.md). Whether a pixel is
# blurred is read from the blur field, as quality mode reads it up to GATE_SHORT_SIDE px on the short side (at a
# coarser size a sharp 256 px GoPro clip read exposure 0.34 where quality mode reads 0: -0.33 dB on it) and at that
# size above it, where the field at quality mode's size would cost fast mode about a tenth of its speed at 720p.
# The weight is quality mode's (blur.solver.gate).
GATE_SHORT_SIDE = 256


def blur_gate(frames: torch.Tensor) -> Optional[torch.Tensor]:
    """(T, 1, H, W) weight in [0, 1] of the restored frames (0 where the frames are sharp), or None for a single
    frame (no motion to measure: the network's output is kept)."""
    from ..blur.field import estimate_blur_field
    from ..blur.solver import gate
    from ..blur.velocity import working_scale
    from .nonblind import measured_field

    t, _, h, w = frames.shape
    if t < 2:
        return None
    scale = min(working_scale(h, w), GATE_SHORT_SIDE / max(min(h, w), 1))
    return gate(measured_field(estimate_blur_field(frames.float().cpu(), exposure="auto", scale=scale)).trajectory)


@torch.no_grad()
def restore_chunk(model: torch.nn.Module, frames: torch.Tensor, priors: CodecPriors, tile_size: int = 0,
                  tile_overlap: int = 32, dtype: str = "auto", device: Optional[torch.device | str] = None,
                  check_interrupt: Interrupt = None) -> torch.Tensor:
    """Run the model on one temporal chunk: (T, 3, H, W) in [0, 1] -> (T, 3, H, W) float32 on CPU, clamped.

    Frames are padded (reflect) to multiples of 4 and cropped back. With ``tile_size`` > 0 the frame is
    cut into tiles of about that size (multiples of 4) overlapping by ``tile_overlap`` px and blended with
    feathered weights that sum to 1. ``check_interrupt()`` is called before each tile and, inside the
    network, between frames. A model with ``size_multiple`` / ``min_size`` attributes (the official
    network: 16, and 256 px with RAFT) gets frames and tiles padded / enlarged to those instead. For the pack's
    CPFP, pixels that the blur field finds sharp keep their input value (:func:`blur_gate`), and a chunk it finds
    sharp throughout is returned as it came in without running the network.
    """
    _check_match(frames, priors)
    blurred = blur_gate(frames) if isinstance(model, CPFP) else None
    if blurred is not None and not bool(blurred.any()):
        return frames.float().cpu().clamp(0, 1)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    t, _, h, w = frames.shape
    m = int(getattr(model, "size_multiple", 4))
    least = int(getattr(model, "min_size", 0))
    hp, wp = max(-(-h // m) * m, least), max(-(-w // m) * m, least)
    inputs = priors_to_model_inputs(priors, device="cpu", size=(hp, wp))
    x = frames.float().cpu()
    if (hp, wp) != (h, w):
        mode = "reflect" if hp - h < h and wp - w < w else "replicate"
        x = F.pad(x, (0, wp - w, 0, hp - h), mode=mode)
    x = x.unsqueeze(0)
    ts = max(-(-tile_size // m) * m, least) if tile_size > 0 else 0
    ov = -(-max(tile_overlap, 0) // m) * m
    if ts and ov >= ts:
        raise CPGDInputError(f"tile_overlap ({tile_overlap}) must be smaller than tile_size ({tile_size})")
    # all multiples of m: every tile start is one too, so the 1/4 prior grid is cut exactly
    ys, xs = windows_1d(hp, ts, ov), windows_1d(wp, ts, ov)
    wy, wx = feather_weights(ys, hp), feather_weights(xs, wp)
    if dev.type == "cpu" and isinstance(model, CPFP):
        model.use_channels_last()
    out = torch.zeros(t, 3, hp, wp) if len(ys) * len(xs) > 1 else None
    with autocast(dev, resolve_dtype(dtype, dev, cpu_bf16=validated_in_bf16(model))):
        for (y0, y1), wgt_y in zip(ys, wy):
            for (x0, x1), wgt_x in zip(xs, wx):
                if check_interrupt is not None:
                    check_interrupt()
                q = (slice(y0 // 4, y1 // 4), slice(x0 // 4, x1 // 4))
                args = [x[..., y0:y1, x0:x1]]  # + the priors in CPFP.forward's order, on the 1/4 grid but residual
                for key in PRIOR_FIELDS:
                    args.append(inputs[key][..., y0:y1, x0:x1] if key == "residual" else inputs[key][..., q[0], q[1]])
                pred = model(*[a.to(dev) for a in args], check_interrupt=check_interrupt)[0].float().cpu()
                if out is None:
                    out = pred
                else:
                    weight = (wgt_y.view(-1, 1) * wgt_x.view(1, -1))
                    out[..., y0:y1, x0:x1] += pred * weight.float()
    out = out[..., :h, :w].float().clamp_(0, 1)
    if blurred is not None:
        inp = frames.float().cpu()
        out = inp + blurred * (out - inp)
    return out


# -- drivers -----------------------------------------------------------------------------------------
def restore_video(model: torch.nn.Module, frames: torch.Tensor, priors: CodecPriors, chunk_size: int = 16,
                  chunk_overlap: int = 4, tile_size: int = 0, tile_overlap: int = 32, dtype: str = "auto",
                  device: Optional[torch.device | str] = None, progress: Progress = None,
                  check_interrupt: Interrupt = None) -> torch.Tensor:
    """Deblur a whole clip: frames (T, 3, H, W) float in [0, 1] with their priors -> (T, 3, H, W) float32.

    Temporal chunks of ``chunk_size`` frames overlapping by >= ``chunk_overlap`` are cross-faded linearly.
    ``progress(done, total)`` is called after each chunk, ``check_interrupt()`` before each chunk and tile
    and between frames inside the network (it cancels by raising).
    """
    _check_match(frames, priors)
    if frames.shape[0] == 0:
        raise CPGDInputError("no frames to restore")
    windows = chunk_windows(frames.shape[0], chunk_size, chunk_overlap)
    blender = ChunkBlender()
    parts = []
    for k, (s, e) in enumerate(windows):
        if check_interrupt is not None:
            check_interrupt()
        pred = restore_chunk(model, frames[s:e], priors.slice(s, e), tile_size, tile_overlap, dtype, device,
                             check_interrupt)
        done = blender.add(s, pred)
        if done is not None:
            parts.append(done)
        if progress is not None:
            progress(k + 1, len(windows))
    parts.append(blender.flush())
    return torch.cat(parts)


def restore_stream(model: torch.nn.Module, chunks: Iterable[tuple], overlap: int = 4,
                   tile_size: int = 0, tile_overlap: int = 32, dtype: str = "auto",
                   device: Optional[torch.device | str] = None, progress: Optional[Callable[[int], None]] = None,
                   check_interrupt: Interrupt = None) -> Iterator[torch.Tensor]:
    """Streaming variant for long videos: memory is flat in the video length.

    ``chunks`` yields ``(frames (t_k, 3, H, W), priors)`` where every chunk after the first begins with
    the last ``overlap`` frames of the previous one, or ``(frames, priors, first_index)`` (what
    ``codec.decode.iter_video_chunks`` yields; ``overlap`` is then unused).
    Yields restored (n, 3, H, W) float32 blocks in order, each frame exactly once; the overlaps are
    cross-faded. ``progress(frames_done)`` is called after each emitted block.
    """
    blender = ChunkBlender()
    start = 0
    done = 0
    end = 0
    for k, item in enumerate(chunks):
        frames, priors = item[0], item[1]
        _check_match(frames, priors, f" in chunk {k}")
        if len(item) > 2:
            start = int(item[2])
        elif k > 0:
            start += prev_len - overlap
        prev_len = frames.shape[0]
        if k > 0 and start + prev_len <= end:
            continue  # nothing new in this chunk
        if check_interrupt is not None:
            check_interrupt()
        pred = restore_chunk(model, frames, priors, tile_size, tile_overlap, dtype, device, check_interrupt)
        end = start + prev_len
        out = blender.add(start, pred)
        if out is not None:
            done += len(out)
            if progress is not None:
                progress(done)
            yield out
    out = blender.flush()
    if out is not None:
        done += len(out)
        if progress is not None:
            progress(done)
        yield out
