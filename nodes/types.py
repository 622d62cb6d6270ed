"""Shared ComfyUI glue: custom sockets, the model folder, progress/interrupt binding, IMAGE <-> frames.

Everything that touches a ComfyUI convention the core must not know about lives here, once.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable

import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.utils
import folder_paths

# Custom sockets. The payloads are plain Python objects:
#   CPGD_CODEC_PRIORS -> cpgd_core.codec.priors.CodecPriors
#   CPGD_CPFP_MODEL   -> the handle returned by the CPFP loader node (nodes/cpfp_nodes.py)
CodecPriorsSocket = io.Custom("CPGD_CODEC_PRIORS")
CPFPModelSocket = io.Custom("CPGD_CPFP_MODEL")

MODEL_FOLDER = "cpgd"
MODEL_EXTENSIONS = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")


def register_model_folder(name: str, extensions: Iterable[str]) -> list[str]:
    """Make ``models/<name>`` a ComfyUI model folder without clobbering the user's configuration.

    ``extra_model_paths.yaml`` is applied before custom nodes load, so the key may already exist: then
    only the default path is appended, and the extension set is filled only when it is empty (in 0.3.75
    ``add_model_folder_path`` creates new keys with an empty set, which would list every file).
    Returns the folder's search paths.
    """
    default = os.path.join(folder_paths.models_dir, name)
    exts = {e if e.startswith(".") else "." + e for e in extensions}
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([default], set(exts))
    else:
        folder_paths.add_model_folder_path(name, default)
        paths, current = folder_paths.folder_names_and_paths[name]
        if not current:
            current.update(exts)
    return folder_paths.get_folder_paths(name)


register_model_folder(MODEL_FOLDER, MODEL_EXTENSIONS)


def progress_callbacks(total: int) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """Bind the core's ``progress(done, total)`` / ``check_interrupt()`` hooks to ComfyUI.

    The ProgressBar is created here, inside the executing node, so the UI attributes it to that node;
    the core may revise ``total`` once it knows the real frame count.
    """
    bar = comfy.utils.ProgressBar(max(int(total), 1))

    def progress(done: int, total: int) -> None:
        bar.update_absolute(int(done), max(int(total), 1))

    return progress, comfy.model_management.throw_exception_if_processing_interrupted


def image_to_frames(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) -> core frames (T, 3, H, W) float32 in [0, 1] (alpha dropped, grey expanded)."""
    if image.ndim != 4:
        raise ValueError(f"IMAGE must be (B, H, W, C), got shape {tuple(image.shape)}")
    c = image.shape[-1]
    if c == 1:
        image = image.expand(-1, -1, -1, 3)
    elif c >= 3:
        image = image[..., :3]
    else:
        raise ValueError(f"IMAGE must have 1, 3 or 4 channels, got {c}")
    return image.movedim(-1, 1).float().contiguous()


def image_from_core(image: torch.Tensor) -> torch.Tensor:
    """A (T, H, W, 3) float32 tensor in [0, 1] that the core made in the IMAGE layout already
    (``load_video(channels_last=True)``), on ComfyUI's intermediate device: no copy on the CPU."""
    return image.to(comfy.model_management.intermediate_device())


def frames_to_image(frames: torch.Tensor) -> torch.Tensor:
    """Core frames (T, C, H, W) -> ComfyUI IMAGE (T, H, W, 3) float32 on the intermediate device.

    A single-channel input (a heat map, a mask) is repeated to RGB so stock image nodes accept it.
    """
    if frames.ndim != 4:
        raise ValueError(f"frames must be (T, C, H, W), got shape {tuple(frames.shape)}")
    if frames.shape[1] == 1:
        frames = frames.expand(-1, 3, -1, -1)
    image = frames[:, :3].movedim(1, -1).float()
    # one pass: clamped straight into a contiguous tensor (clamp, then contiguous, copied the frames twice)
    out = torch.empty(image.shape, dtype=torch.float32, device=image.device)
    torch.clamp(image, 0.0, 1.0, out=out)
    return out.to(comfy.model_management.intermediate_device())
