"""Stage one in ComfyUI: the CPFP weights loader and the restore node with its two modes.

'quality' (default): blur field + non-blind solver (``cpgd_core.pipeline.nonblind``, on ComfyUI's torch device
through ``quality.DeviceSolver``). 'fast': the CPFP network, wrapped in a ``ModelPatcher`` so ComfyUI's model
management places it (and evicts other models for it) like any other model; the restore node only asks for it to
be loaded and then runs the core driver (``cpgd_core.pipeline.restore.restore_video``) on ``patcher.load_device``.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths

from ..cpgd_core.codec.priors import CodecPriors
from ..cpgd_core.errors import CPGDInputError
from ..cpgd_core.models.cpfp import CPFPConfig
from ..cpgd_core.models.cpfp_official import OfficialCPFPConfig
from ..cpgd_core.precision import DTYPE_CHOICES, element_bytes, resolve_dtype, validated_in_bf16
from ..cpgd_core.pipeline.cli import OFFICIAL_TILE
from ..cpgd_core.models.official_stage_one import OfficialStageOne
from ..cpgd_core.pipeline.quality import (DEFAULT_MODE, MAX_ITERATIONS, MODES, TRAJECTORY_FULL_PX, check_iterations,
                                          describe_field, exposure_setting, load_solver, preview_trajectory,
                                          resolve_mode, trajectory_picture)
from ..cpgd_core.pipeline.restore import available_memory, plan_memory, restore_video
from ..cpgd_core.pipeline.schedule import chunk_windows
from ..cpgd_core.weights import default_cpfp_path, find_raft_weights, inspect_weights, load_cpfp
from .types import MODEL_FOLDER, CodecPriorsSocket, CPFPModelSocket, frames_to_image, image_to_frames, progress_callbacks

CATEGORY = "CPGD/restore"
SHIPPED = "cpfp_lite (shipped)"
# OOM back-off, as the core upscale node does: halve the tile, give up below the smallest tile.
OOM_FIRST_TILE = 512
OOM_MIN_TILE = 128
_CACHE_SIZE = 2
# GPU memory freed (other models evicted) before quality mode runs there: nonblind's tiles of about 1 MP hold
# about 1 GiB of solver state, plus the prior network's activations.
QUALITY_WORKSPACE = 2 << 30
EXPOSURE_MODES = ("auto", "fixed")


@dataclass
class CPFPModel:
    """What flows through CPGD_CPFP_MODEL: the managed network plus where it came from."""

    patcher: comfy.model_patcher.ModelPatcher
    config: "CPFPConfig | OfficialCPFPConfig"
    name: str
    path: str

    @property
    def info(self) -> str:
        """One line on what runs: the official network says whether RAFT refines its flows."""
        net = self.patcher.model
        if isinstance(net, OfficialStageOne):
            return f"{self.name}: {net.describe()}"
        return f"{self.name}: pack CPFP ({self.config.mid_channels} channels, {self.config.num_branches} branches)"

    @property
    def net(self) -> torch.nn.Module:
        return self.patcher.model


# (path, mtime_ns, raft) -> CPFPModel; re-running a graph (or a second loader node on the same file) reuses
# the already built patcher instead of reading and re-initialising the network.
_MODELS: "OrderedDict[tuple[str, int, str], CPFPModel]" = OrderedDict()


def _weight_files() -> list[str]:
    # .pth: the official checkpoints are BasicSR pickles (read with weights_only=True)
    return [SHIPPED] + [f for f in folder_paths.get_filename_list(MODEL_FOLDER)
                        if f.endswith((".safetensors", ".pth", ".pt"))]


def _resolve(name: str) -> str:
    if name == SHIPPED:
        path = default_cpfp_path()
        if not os.path.isfile(path):
            raise CPGDInputError(f"the shipped CPFP weights are missing from the pack: {path}")
        return path
    path = folder_paths.get_full_path(MODEL_FOLDER, name)
    if path is None:
        searched = ", ".join(folder_paths.get_folder_paths(MODEL_FOLDER))
        raise CPGDInputError(f"CPFP weights {name!r} not found in models/{MODEL_FOLDER} (searched: {searched})")
    return path


def _raft_stamp() -> str:
    """Which raft-things file an official checkpoint would get: part of the cache key, so adding or
    removing the file takes effect on the next run."""
    path = find_raft_weights("", folder_paths.get_folder_paths(MODEL_FOLDER))
    return f"{path}:{os.stat(path).st_mtime_ns}" if path else "none"


def load_cpfp_model(name: str) -> CPFPModel:
    """Load (or reuse from the module cache) the CPFP weights named in the loader's combo. Official checkpoints
    get ``raft-things.pth`` from their own folder or any models/cpgd folder when it is there."""
    path = _resolve(name)
    key = (os.path.realpath(path), os.stat(path).st_mtime_ns, _raft_stamp())
    cached = _MODELS.get(key)
    if cached is not None:
        _MODELS.move_to_end(key)
        return cached
    kind = inspect_weights(path)
    if kind == "cpcontrolnet":
        # the folder is shared with stage two, so this mistake is easy to make: say which node to use
        raise CPGDInputError(f"{name} ({path}) is a CPControlNet (stage-two) file, not CPFP stage-one weights: "
                             f"load it with 'Load CPControlNet (CPGD)'. This loader expects a CPFP .safetensors "
                             f"written by cpgd_core (python -m cpgd_core.train cpfp).")
    if kind == "raft":
        raise CPGDInputError(f"{name} ({path}) is RAFT optical-flow weights, not a stage-one network: select the "
                             f"official CPFP checkpoint instead; raft-things.pth in models/{MODEL_FOLDER} is used "
                             f"with it automatically.")
    net = load_cpfp(path, device="cpu", raft_dirs=folder_paths.get_folder_paths(MODEL_FOLDER))
    patcher = comfy.model_patcher.ModelPatcher(net, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    handle = CPFPModel(patcher=patcher, config=net.config, name=name, path=path)
    _MODELS[key] = handle
    while len(_MODELS) > _CACHE_SIZE:
        _MODELS.popitem(last=False)
    return handle


def zero_priors(priors: CodecPriors) -> CodecPriors:
    """The same priors with no motion (all invalid) and no residual: the 'without priors' A/B arm."""
    return replace(priors,
                   flow_to_prev=torch.zeros_like(priors.flow_to_prev),
                   valid_to_prev=torch.zeros_like(priors.valid_to_prev),
                   flow_to_next=torch.zeros_like(priors.flow_to_next),
                   valid_to_next=torch.zeros_like(priors.valid_to_next),
                   residual=torch.zeros_like(priors.residual))


def run_with_tile_backoff(run: Callable[[int], torch.Tensor], tile_size: int,
                          on_oom: Callable[[], None] = lambda: None) -> tuple[torch.Tensor, int]:
    """Call ``run(tile)``; on an out-of-memory error retry with half the tile (512 first when tiling was
    off) down to 128 px. Returns (result, tile actually used)."""
    tile = tile_size
    while True:
        try:
            return run(tile), tile
        except (CPGDInputError, mm.InterruptProcessingException):
            raise  # OOM_EXCEPTION may be a broad class on some builds: never swallow these
        except mm.OOM_EXCEPTION as e:
            on_oom()
            nxt = OOM_FIRST_TILE if tile <= 0 else tile // 2
            if nxt < OOM_MIN_TILE:
                raise RuntimeError(
                    f"CPFP restore ran out of memory even with {tile} px tiles; lower frames_per_chunk, use "
                    f"dtype fp16/bf16, or reduce the resolution ({type(e).__name__}: {str(e)[:200]})") from e
            tile = nxt


class CPFPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CPGD_CPFPLoader",
            display_name="Load CPFP Model (CPGD)",
            category=CATEGORY,
            description=("Loads the stage-one CPFP deblurring network of CPGD-Net: the lite weights shipped with "
                         "the pack, a compatible .safetensors placed in models/cpgd, or the authors' official "
                         "stage-one checkpoint (.pth) with its RAFT flow refiner. ComfyUI's model management "
                         "moves it to the GPU when it runs."),
            inputs=[
                io.Combo.Input("model_name", options=_weight_files(), default=SHIPPED,
                               tooltip="'cpfp_lite (shipped)', a CPFP .safetensors file in models/cpgd, or an "
                                       "official CPGD-Net stage-one checkpoint (net_g_*.pth) there; it uses "
                                       "raft-things.pth from the same folder when present (the restore node's "
                                       "info output says whether it did)."),
            ],
            outputs=[
                CPFPModelSocket.Output(display_name="cpfp_model",
                                       tooltip="The loaded CPFP network, for 'CPFP Restore (CPGD)'."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, model_name: str) -> str:
        # a replaced file under the same name (or an added / removed raft-things.pth) must be reloaded
        try:
            path = _resolve(model_name)
            return f"{path}:{os.stat(path).st_mtime_ns}:{_raft_stamp()}"
        except (CPGDInputError, OSError):
            return "missing"

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_cpfp_model(model_name))


class CPFPRestore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        fast = "Fast mode only. "
        return io.Schema(
            node_id="CPGD_CPFPRestore",
            display_name="CPFP Restore (CPGD)",
            category=CATEGORY,
            description=("Stage-one deblurring of a clip. Mode 'quality' (default) measures each pixel's blur "
                         "trajectory from the motion between frames and inverts it with an unrolled non-blind solver "
                         "with a learned prior, frame by frame. Mode 'fast' runs the CPFP network guided by the codec "
                         "priors (motion vectors and coding residuals) in overlapping temporal chunks and optional "
                         "feathered spatial tiles (on out-of-memory the tile size is halved automatically). The "
                         "trajectory output shows the blur that is measured."),
            inputs=[
                CPFPModelSocket.Input("model", tooltip="CPFP network from 'Load CPFP Model (CPGD)'. Used by fast "
                                                       "mode (and by quality mode for a single image)."),
                io.Image.Input("images", tooltip="Blurry frames of one clip, in order."),
                CodecPriorsSocket.Input("priors",
                                        tooltip="Codec priors of exactly these frames (same count and size). Used by "
                                                "fast mode; quality mode measures the motion from the frames."),
                io.Int.Input("frames_per_chunk", default=16, min=1, max=512,
                             tooltip=fast + "Frames processed together (at most: lowered when they would not fit in "
                                            "memory); more frames = more temporal context and memory."),
                io.Int.Input("chunk_overlap", default=4, min=0, max=256,
                             tooltip=fast + "Frames shared by consecutive chunks and cross-faded (must be < "
                                            "frames_per_chunk)."),
                io.Int.Input("tile_size", default=0, min=0, max=8192, step=4,
                             tooltip=fast + "Spatial tile size in pixels (at most); 0 = whole frames when they fit "
                                            "in memory (half the free RAM, or 80% of the free GPU memory), else tiles "
                                            "(official checkpoints: 256 px tiles, as the official test). Quality mode "
                                            "tiles large frames by itself."),
                io.Int.Input("tile_overlap", default=32, min=0, max=1024, step=4,
                             tooltip=fast + "Pixels shared by neighbouring tiles, blended with feathered weights."),
                io.Combo.Input("dtype", options=list(DTYPE_CHOICES), default="auto",
                               tooltip=fast + "Compute precision. auto = bf16 (or fp16) on GPU; on CPU fp32, or bf16 "
                                              "where the CPU has AMX (pack weights only: same quality, about 1.6x "
                                              "faster). Quality mode computes in fp32."),
                io.Boolean.Input("use_priors", default=True,
                                 tooltip=fast + "Off = run with the codec priors zeroed (no motion, no residual), "
                                                "to compare their effect."),
                # The inputs below came later: optional, at the end, so workflows saved before them load with
                # their widget values in place, and API prompts without them run with these defaults.
                io.Combo.Input("mode", options=list(MODES), default=DEFAULT_MODE, optional=True,
                               tooltip="quality = measure each pixel's blur trajectory from the motion between "
                                       "frames and invert it with the non-blind solver (slower; needs 2 or more "
                                       "frames: a single image runs fast mode, and info says so). fast = the CPFP "
                                       "network with the codec priors (the settings marked 'Fast mode only')."),
                io.Int.Input("iterations", default=0, min=0, max=MAX_ITERATIONS, optional=True,
                             tooltip="Quality mode: solver iterations; 0 = the shipped solver's own count. Fewer = "
                                     "faster and softer, more = slower (the last iteration is repeated)."),
                io.Combo.Input("exposure", options=list(EXPOSURE_MODES), default="auto", optional=True,
                               tooltip="How long the shutter was open, which turns motion into blur length. auto = "
                                       "read it from the blur in the frames (frames that read as sharp, or where "
                                       "too little moves to read it, are returned as they came; info says so); "
                                       "fixed = use exposure_value."),
                io.Float.Input("exposure_value", default=0.5, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="Used when exposure is 'fixed': the fraction of the frame interval the "
                                       "shutter was open, 0..1 (0 = sharp, nothing to invert; 0.5 = a 180 degree "
                                       "shutter; 1 = open the whole interval)."),
            ],
            outputs=[
                io.Image.Output(display_name="restored", tooltip="Deblurred frames, same count and size as the input."),
                io.Image.Output(display_name="side_by_side",
                                tooltip="Each frame as input | restored, twice as wide, for previews."),
                io.String.Output(display_name="info",
                                 tooltip="What ran: the mode; quality: iterations, exposure, blur lengths; fast: the "
                                         "network, whether RAFT refined the flows, chunk and tile."),
                io.Image.Output(display_name="trajectory",
                                tooltip=f"The blur trajectory measured per pixel (what quality mode inverts; in fast "
                                        f"mode measured the same way, for reference): hue = axis of the blur "
                                        f"(horizontal red, vertical cyan, diagonals green and violet), saturation = "
                                        f"its length, full colour at {TRAJECTORY_FULL_PX:g} px or longer; white = "
                                        f"sharp. Black for a single image (no motion to measure)."),
            ],
        )

    @classmethod
    def execute(cls, model: CPFPModel, images: torch.Tensor, priors: CodecPriors, frames_per_chunk: int,
                chunk_overlap: int, tile_size: int, tile_overlap: int, dtype: str, use_priors: bool,
                mode: str = DEFAULT_MODE, iterations: int = 0, exposure: str = "auto",
                exposure_value: float = 0.5) -> io.NodeOutput:
        frames = image_to_frames(images)
        if exposure not in EXPOSURE_MODES:
            raise CPGDInputError(f"exposure must be one of {', '.join(EXPOSURE_MODES)}, got {exposure!r}")
        expo = exposure_setting("auto" if exposure == "auto" else exposure_value)
        check_iterations(iterations)
        ran, note = resolve_mode(mode, frames.shape[0])
        if ran == "quality":
            restored, trajectory, info = cls._quality(frames, iterations, expo)
        else:
            # (the picture first: its short progress bar then precedes the network's, which ends the run)
            trajectory = cls._fast_trajectory(frames, expo)
            restored, info = cls._fast(model, frames, priors, frames_per_chunk, chunk_overlap, tile_size,
                                       tile_overlap, dtype, use_priors)
        if note:
            info = f"{note}; {info}"
        picture = (trajectory_picture(trajectory) if trajectory is not None
                   else torch.zeros(frames.shape[0], 3, *frames.shape[-2:]))
        side = torch.cat([frames, restored.to(frames.device)], dim=-1)
        return io.NodeOutput(frames_to_image(restored), frames_to_image(side), info, frames_to_image(picture))

    @staticmethod
    def _quality(frames: torch.Tensor, iterations: int, exposure) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Blur field, then the solver frame by frame; progress over both (one step per frame each)."""
        from ..cpgd_core.blur.field import estimate_blur_field
        from ..cpgd_core.pipeline.nonblind import deblur_frames, measured_field

        n = frames.shape[0]
        frames = frames.cpu()  # the blur field measures motion with OpenCV; the solver moves what it needs
        device = mm.get_torch_device()
        if not mm.is_device_cpu(device):
            mm.free_memory(QUALITY_WORKSPACE, device)  # evict other models when the GPU is full, as loaders do
        solver = load_solver(iterations, device)
        progress, check_interrupt = progress_callbacks(2 * n)
        field = measured_field(estimate_blur_field(frames, exposure=exposure,
                                                   progress=lambda done, _: progress(done, 2 * n),
                                                   check_interrupt=check_interrupt))
        restored, _ = deblur_frames(solver, frames, field=field, progress=lambda done, _: progress(n + done, 2 * n),
                                    check_interrupt=check_interrupt)
        info = (f"quality: blur field + non-blind solver, {solver.iterations} iterations"
                f"{' (shipped count)' if iterations == 0 else ''}, on {device}; "
                f"{describe_field(field, exposure != 'auto')}")
        return restored, field.trajectory, info

    @staticmethod
    def _fast_trajectory(frames: torch.Tensor, exposure) -> "torch.Tensor | None":
        """The trajectory picture's field in fast mode (measured at a small working size: cheap next to CPFP);
        None for a single image."""
        if frames.shape[0] < 2:
            return None
        progress, check_interrupt = progress_callbacks(frames.shape[0])
        return preview_trajectory(frames.cpu(), exposure, progress, check_interrupt)

    @staticmethod
    def _fast(model: CPFPModel, frames: torch.Tensor, priors: CodecPriors, frames_per_chunk: int, chunk_overlap: int,
              tile_size: int, tile_overlap: int, dtype: str, use_priors: bool) -> tuple[torch.Tensor, str]:
        """CPFP in chunks and tiles, planned to fit in memory, with the OOM tile back-off."""
        if not isinstance(model, CPFPModel):
            raise CPGDInputError(f"model must come from 'Load CPFP Model (CPGD)', got {type(model).__name__}")
        if not use_priors:
            priors = zero_priors(priors)
        chunk_windows(frames.shape[0], frames_per_chunk, chunk_overlap)  # validates the request early
        official = isinstance(model.net, OfficialStageOne)
        if official and tile_size == 0:
            tile_size = OFFICIAL_TILE
        mm.load_models_gpu([model.patcher])
        device = model.patcher.load_device
        precision = resolve_dtype(dtype, device, mm.should_use_bf16(device), mm.should_use_fp16(device),
                                  cpu_bf16=validated_in_bf16(model.net))
        on_host = mm.is_device_cpu(device)
        host = available_memory(torch.device("cpu")) // 2
        if not official:  # the memory estimate is the pack's CPFP's; the official one runs as asked (OOM back-off)
            frames_per_chunk, chunk_overlap, tile_size = plan_memory(
                model.config, frames.shape[-2], frames.shape[-1], frames_per_chunk, chunk_overlap, tile_size,
                tile_overlap, host, host if on_host else int(mm.get_free_memory(device) * 0.8), on_host=on_host,
                elem_bytes=element_bytes(precision))
        chunks = len(chunk_windows(frames.shape[0], frames_per_chunk, chunk_overlap))

        def run(tile: int) -> torch.Tensor:
            # fresh bar per attempt: an OOM retry starts again from the first chunk
            progress, check_interrupt = progress_callbacks(chunks)
            return restore_video(model.net, frames, priors, chunk_size=frames_per_chunk, chunk_overlap=chunk_overlap,
                                 tile_size=tile, tile_overlap=tile_overlap, dtype=precision, device=device,
                                 progress=progress, check_interrupt=check_interrupt)

        restored, tile = run_with_tile_backoff(run, tile_size, on_oom=mm.soft_empty_cache)
        info = (f"fast: {model.info}; chunks of {frames_per_chunk} frames (overlap {chunk_overlap}), "
                f"{f'{tile} px tiles' if tile else 'whole frames'}, {precision}"
                f"{'' if use_priors else ', priors zeroed'}")
        return restored, info


NODES: list[type[io.ComfyNode]] = [CPFPLoader, CPFPRestore]
