"""Stage two in ComfyUI: CPControlNet loader/apply (a ControlBase for the stock samplers), video sampler, colour fix.

``CPCControl`` is what flows through CONTROL_NET/CONDITIONING: ComfyUI's samplers call its ``get_control`` once
per model evaluation with the (cond ⊕ uncond) batch; frame i of the latent batch gets frame i's hint latent and
prior map, never frame 0's. The video sampler re-uses the same object restricted to a frame window and a latent
crop (``windowed``), so chunked/tiled sampling needs no second code path.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from comfy_api.latest import io

import comfy.controlnet
import comfy.model_management
import comfy.model_patcher
import comfy.sample
import comfy.utils
import folder_paths

from ..cpgd_core.codec.priors import CodecPriors
from ..cpgd_core.errors import CPGDInputError
from ..cpgd_core.models.cpcontrolnet import QUALITY_PROMPT, CPControlNet, prior_map
from ..cpgd_core.pipeline.colorfix import color_fix
from ..cpgd_core.precision import DTYPE_CHOICES, TORCH_DTYPES, resolve_dtype
from ..cpgd_core.pipeline.schedule import chunk_windows
from ..cpgd_core.pipeline.video_sampler import NOISE_MODES, fit_windows, make_noise, sample_windows, tile_grid
from ..cpgd_core.weights.cpc import load_cpcontrolnet
from .types import MODEL_FOLDER, CodecPriorsSocket, frames_to_image, image_to_frames, progress_callbacks

CATEGORY = "CPGD/diffusion"
CONTROLNET_FOLDERS = ("controlnet", MODEL_FOLDER)


class _InputCache:
    """Hint latents and raw prior maps of one applied control, keyed by the identity of their inputs and the
    latent size. Every ``set_cond_hint`` (one per Apply result) starts a new one; the copies ComfyUI and the
    video sampler make of that result share it. Entries hold their inputs, so an id is never reused while cached.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[tuple, torch.Tensor]] = {}

    def get(self, kind: str, inputs: tuple, size: tuple[int, int], make) -> torch.Tensor:
        key = (kind, tuple(id(x) for x in inputs), size)
        got = self._entries.get(key)
        if got is None:
            got = self._entries[key] = (inputs, make())
        return got[1]


class CPCControl(comfy.controlnet.ControlBase):
    """A CPControlNet attached to conditioning; see the module docstring.

    Per-run state beyond ControlBase: ``priors`` (CodecPriors or None = no query modulation), ``joint_frames``
    (0/1 = per-frame attention, n = clips of n consecutive frames attend jointly), ``window`` = (start, stop,
    (y0, x0, th, tw), (H, W)) set by the video sampler.
    """

    def __init__(self, net: CPControlNet, patcher: Optional[comfy.model_patcher.ModelPatcher] = None):
        super().__init__()
        self.net = net
        self.net_wrapped = patcher or comfy.model_patcher.ModelPatcher(
            net, load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device())
        self.priors: Optional[CodecPriors] = None
        self.joint_frames = 0
        self.window: Optional[tuple[int, int, tuple[int, int, int, int], tuple[int, int]]] = None
        self.model_sampling_current = None
        self.cache = _InputCache()
        self.upscale_algorithm = "bilinear"

    # -- ControlBase contract -------------------------------------------------------------------------------
    def copy(self) -> "CPCControl":
        c = CPCControl(self.net, self.net_wrapped)
        self.copy_to(c)
        c.priors, c.joint_frames, c.window, c.cache = self.priors, self.joint_frames, self.window, self.cache
        return c

    def get_models(self) -> list:
        return super().get_models() + [self.net_wrapped]

    def pre_run(self, model, percent_to_timestep_function) -> None:
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling
        self.latent_format = model.latent_format

    def cleanup(self) -> None:
        self.model_sampling_current = None
        super().cleanup()

    def inference_memory_requirements(self, dtype) -> int:
        return super().inference_memory_requirements(dtype)

    def set_cond_hint(self, *args, **kwargs) -> "CPCControl":
        """ControlBase's, and a new cache: a new hint never finds the latents of an earlier one."""
        super().set_cond_hint(*args, **kwargs)
        self.cache = _InputCache()
        return self

    # -- our additions --------------------------------------------------------------------------------------
    def set_priors(self, priors: Optional[CodecPriors], joint_frames: int) -> "CPCControl":
        self.priors, self.joint_frames = priors, int(joint_frames)
        return self

    def windowed(self, start: int, stop: int, crop: tuple[int, int, int, int], full: tuple[int, int]
                 ) -> "CPCControl":
        """A copy that serves frames [start, stop) and the latent crop of a full (H, W) latent."""
        c = self.copy()
        c.window = (start, stop, crop, full)
        if self.previous_controlnet is not None:
            prev = self.previous_controlnet
            c.previous_controlnet = prev.windowed(start, stop, crop, full) if isinstance(prev, CPCControl) else prev
        return c

    def n_frames(self) -> int:
        return int(self.cond_hint_original.shape[0])

    def _hint_latents(self, size: tuple[int, int]) -> torch.Tensor:
        """(T, 4, h, w) model-space latents of the hint frames for an h x w latent (VAE mode x scale)."""
        if self.vae is None:
            raise CPGDInputError("the CPControlNet apply node needs a VAE to encode the stage-one frames")
        return self.cache.get("hint", (self.cond_hint_original, self.vae), size, lambda: self._encode_hint(size))

    def _encode_hint(self, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        ratio = self.vae.spacial_compression_encode()
        img = comfy.utils.common_upscale(self.cond_hint_original, w * ratio, h * ratio, self.upscale_algorithm,
                                         "center")
        loaded = comfy.model_management.loaded_models(only_currently_used=True)
        lat = self.vae.encode(img.movedim(1, -1).clamp(0, 1))  # ComfyUI's VAE maps [0,1] -> 2x-1 and takes the mode
        comfy.model_management.load_models_gpu(loaded)
        lat = self.latent_format.process_in(lat).float().cpu()
        if lat.shape[-2:] != (h, w):
            raise CPGDInputError(f"VAE latent of the hint is {tuple(lat.shape[-2:])}, the sampled latent is {size}")
        return lat

    def _prior_raw(self, size: tuple[int, int]) -> torch.Tensor:
        return self.cache.get("prior", (self.priors,), size,
                              lambda: prior_map(self.priors, size=size, max_motion=1.0))

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number,
                                                                transformer_options)
        if self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
            return control_prev

        per = x_noisy.shape[0] // batched_number
        if self.window is not None:
            start, stop, (y0, x0, th, tw), full = self.window
        else:
            start, stop, full = 0, per, tuple(x_noisy.shape[-2:])
            y0, x0, th, tw = 0, 0, full[0], full[1]
        n = self.n_frames()
        if n != 1 and (n != per if self.window is None else (stop - start != per or stop > n)):
            raise CPGDInputError(
                f"CPControlNet: the latent batch has {per} frames but the stage-one IMAGE has {n}; use one latent "
                f"per frame (e.g. VAE Encode of the same frames) or the CPGD video sampler")
        frames = slice(0, 1) if n == 1 else slice(start, stop)
        hint = self._hint_latents(full)[frames, :, y0:y0 + th, x0:x0 + tw]
        if hint.shape[0] == 1 and per > 1:
            hint = hint.expand(per, -1, -1, -1)
        cp = None
        if self.priors is not None:
            raw = self._prior_raw(full)[frames]
            m = float(raw[:, :2].abs().max())  # m over the frames sampled together (the official "chunk")
            cp = raw[:, :, y0:y0 + th, x0:x0 + tw].clone()
            cp[:, :2] /= m if m > 0 else 1.0
            if cp.shape[0] == 1 and per > 1:
                cp = cp.expand(per, -1, -1, -1)
        dev, dtype = x_noisy.device, self.net.dtype
        hint = torch.cat([hint] * batched_number).to(dev, dtype)
        if cp is not None:
            cp = torch.cat([cp] * batched_number).to(dev, dtype)
        groups: "int | list[int]" = 1
        if self.joint_frames > 1:  # joint clips never straddle the cond/uncond halves of the batch
            clip = min(self.joint_frames, per)
            groups = ([clip] * (per // clip) + ([per % clip] if per % clip else [])) * batched_number
        context = cond.get("crossattn_controlnet", cond["c_crossattn"])
        timestep = self.model_sampling_current.timestep(t)
        x_in = self.model_sampling_current.calculate_input(t, x_noisy)
        outs = self.net(x_in.to(dtype), hint, timestep.to(dtype),
                        comfy.model_management.cast_to_device(context, dev, dtype), cp, groups)
        control = {"input": [], "middle": [outs[-1]], "output": list(outs[:-1])}
        return self.control_merge(control, control_prev, output_dtype=x_noisy.dtype)


def _controlnet_files() -> list[str]:
    names: list[str] = []
    for folder in CONTROLNET_FOLDERS:
        try:
            names += folder_paths.get_filename_list(folder)
        except KeyError:
            pass
    return sorted(set(names))


def _resolve(name: str) -> str:
    for folder in CONTROLNET_FOLDERS:
        try:
            path = folder_paths.get_full_path(folder, name)
        except KeyError:
            path = None
        if path:
            return path
    searched = [p for f in CONTROLNET_FOLDERS for p in folder_paths.get_folder_paths(f)]
    raise CPGDInputError(f"CPControlNet weights {name!r} not found; searched {searched}")


class CPControlNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CPGD_CPControlNetLoader",
            display_name="Load CPControlNet (CPGD)",
            category=CATEGORY,
            description=("Loads the coding-prior ControlNet of CPGD-Net (our .safetensors or the official CPC .pt) "
                         "from models/controlnet or models/cpgd. Use it with 'Apply CPControlNet'."),
            inputs=[
                io.Combo.Input("control_net_name", options=_controlnet_files(),
                               tooltip="File in models/controlnet or models/cpgd."),
                io.Combo.Input("dtype", options=list(DTYPE_CHOICES), default="auto",
                               tooltip="auto = bf16 (or fp16) on GPU, fp32 on CPU."),
            ],
            outputs=[io.ControlNet.Output(tooltip="The CPControlNet, for 'Apply CPControlNet (CPGD)'.")],
        )

    @classmethod
    def execute(cls, control_net_name: str, dtype: str) -> io.NodeOutput:
        path = _resolve(control_net_name)
        mm = comfy.model_management
        dev = mm.get_torch_device()
        dt = TORCH_DTYPES[resolve_dtype(dtype, dev, mm.should_use_bf16(dev), mm.should_use_fp16(dev))]
        return io.NodeOutput(CPCControl(load_cpcontrolnet(path, dtype=dt)))


class CPControlNetApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CPGD_CPControlNetApply",
            display_name="Apply CPControlNet (CPGD)",
            category=CATEGORY,
            description=("Attaches the CPControlNet to both conditionings. The stage-one frames (one per latent in "
                         "the batch) are VAE-encoded as the hint; the codec priors steer the ControlNet's "
                         "self-attention. Works with KSampler, KSamplerAdvanced, SamplerCustom(Advanced), every "
                         "sampler and scheduler, and chains with other ControlNets."),
            inputs=[
                io.Conditioning.Input("positive", tooltip="Positive conditioning (e.g. the CPGD prompt encoded by "
                                                          "the SD 2.x text encoder)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (empty text is fine; CPGD uses "
                                                          "cfg 1, which ignores it)."),
                io.ControlNet.Input("control_net", tooltip="From 'Load CPControlNet (CPGD)'."),
                io.Vae.Input("vae", tooltip="The SD 2.x VAE; encodes the stage-one frames into the hint latents."),
                io.Image.Input("image", tooltip="Stage-one (restored) frames, one per latent in the batch."),
                CodecPriorsSocket.Input("priors", optional=True,
                                        tooltip="Codec priors of the same frames; without them the ControlNet "
                                                "runs without prior modulation."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Scale of the control residuals (0 = off)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling schedule where the control starts."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling schedule where the control ends."),
                io.Int.Input("joint_frames", default=6, min=0, max=64,
                             tooltip="Frames whose tokens attend together in the ControlNet (official: 6). "
                                     "0 or 1 = each frame alone."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive", tooltip="Positive conditioning with the control."),
                     io.Conditioning.Output(display_name="negative", tooltip="Negative conditioning with the control.")],
        )

    @classmethod
    def execute(cls, positive, negative, control_net, vae, image, strength: float, start_percent: float,
                end_percent: float, joint_frames: int, priors: Optional[CodecPriors] = None) -> io.NodeOutput:
        if not isinstance(control_net, CPCControl):
            raise CPGDInputError("Apply CPControlNet needs a CPControlNet (from 'Load CPControlNet'); for other "
                                 "ControlNets use ComfyUI's Apply ControlNet node")
        frames = image_to_frames(image)
        if priors is not None and len(priors) != frames.shape[0]:
            raise CPGDInputError(f"the priors cover {len(priors)} frames but the image has {frames.shape[0]}")
        if strength == 0:
            return io.NodeOutput(positive, negative)
        cache: dict = {}
        out = []
        for conditioning in (positive, negative):
            c = []
            for t in conditioning:
                d = t[1].copy()
                prev = d.get("control", None)
                if prev in cache:
                    cn = cache[prev]
                else:
                    cn = control_net.copy().set_cond_hint(frames, strength, (start_percent, end_percent), vae=vae)
                    cn.set_priors(priors, joint_frames)
                    cn.vae = vae
                    cn.set_previous_controlnet(prev)
                    cache[prev] = cn
                d["control"] = cn
                d["control_apply_to_uncond"] = False
                c.append([t[0], d])
            out.append(c)
        return io.NodeOutput(out[0], out[1])


def _window_conditioning(conds: list, start: int, stop: int, crop, full) -> list:
    out = []
    for t in conds:
        d = t[1].copy()
        ctrl = d.get("control")
        if isinstance(ctrl, CPCControl):
            d["control"] = ctrl.windowed(start, stop, crop, full)
        out.append([t[0], d])
    return out


def _controls(conds: list) -> list[CPCControl]:
    found = []
    for t in conds:
        c = t[1].get("control")
        while c is not None:
            if isinstance(c, CPCControl):
                found.append(c)
            c = c.previous_controlnet
    return found


class VideoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CPGD_VideoSampler",
            display_name="CPGD Video Sampler",
            category=CATEGORY,
            description=("Samples a long/large video in temporal chunks and latent tiles with blended overlaps, "
                         "using any SAMPLER and SIGMAS. Each chunk/tile gets its own frames' CPControlNet hints and "
                         "priors. Memory is bounded by chunk size x tile size."),
            inputs=[
                io.Model.Input("model", tooltip="The SD 2.x diffusion model."),
                io.Conditioning.Input("positive", tooltip="From 'Apply CPControlNet (CPGD)'."),
                io.Conditioning.Input("negative", tooltip="From 'Apply CPControlNet (CPGD)'."),
                io.Latent.Input("latent", tooltip="One latent per frame: empty for full denoising, or the VAE "
                                                  "encoding of the stage-one frames with denoise < 1."),
                io.Sampler.Input("sampler", tooltip="Any sampler (e.g. KSamplerSelect)."),
                io.Sigmas.Input("sigmas", tooltip="Any schedule (e.g. BasicScheduler)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Noise seed (the same for every chunk and tile, so overlaps agree)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Official CPGD: 1.0 (no classifier-free guidance)."),
                io.Int.Input("chunk_size", default=6, min=1, max=256,
                             tooltip="Frames sampled together (at most: lowered on a GPU when a window would not "
                                     "fit in its memory)."),
                io.Int.Input("chunk_overlap", default=0, min=0, max=255, tooltip="Frames shared by consecutive "
                                                                                 "chunks, cross-faded."),
                io.Int.Input("tile_size", default=64, min=0, max=1024, step=8,
                             tooltip="Latent tile size (64 = 512 px; at most, lowered on a GPU to fit its "
                                     "memory); 0 = no tiling when it fits."),
                io.Int.Input("tile_overlap", default=32, min=0, max=1016, step=8,
                             tooltip="Latent tile overlap, Gaussian-blended (official: 32)."),
                io.Combo.Input("noise_mode", options=list(NOISE_MODES), default="independent",
                               tooltip="Initial noise per frame: independent, shared by all frames, or warped "
                                       "along the codec motion vectors from frame to frame."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="< 1 keeps only the last part of the sigmas: starts from the noised input "
                                       "latent (e.g. the encoded stage-one output) and saves steps."),
                CodecPriorsSocket.Input("priors", optional=True,
                                        tooltip="Needed for noise_mode mv-warped."),
            ],
            outputs=[io.Latent.Output(tooltip="Sampled latents, one per frame; decode with VAE Decode.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, sampler, sigmas, seed: int, cfg: float, chunk_size: int,
                chunk_overlap: int, tile_size: int, tile_overlap: int, noise_mode: str, denoise: float,
                priors: Optional[CodecPriors] = None) -> io.NodeOutput:
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        if samples.ndim != 4:
            raise CPGDInputError(f"the video sampler needs image latents (frames, C, h, w), got {tuple(samples.shape)}")
        n, c, h, w = samples.shape
        steps = len(sigmas) - 1
        if denoise <= 0 or steps < 1:
            return io.NodeOutput(dict(latent, samples=samples))
        if denoise < 1:
            keep = max(1, int(round(steps * denoise)))
            sigmas = sigmas[-(keep + 1):]
        if noise_mode == "mv-warped":
            if priors is None:
                raise CPGDInputError("noise mode mv-warped needs the priors input")
            if len(priors) != n:
                raise CPGDInputError(f"the priors cover {len(priors)} frames but the latent has {n}")
            noise = make_noise((n, c, h, w), seed, noise_mode, priors.flow_to_prev, priors.valid_to_prev)
        else:
            noise = make_noise((n, c, h, w), seed, noise_mode)
        for ctrl in _controls(positive) + _controls(negative):
            if ctrl.n_frames() not in (1, n):
                raise CPGDInputError(f"CPControlNet hint has {ctrl.n_frames()} frames but the latent has {n}")
        chunk_size, chunk_overlap, tile_size = _fit_gpu_memory(model, cfg, h, w, chunk_size, chunk_overlap,
                                                               tile_size, tile_overlap)
        progress, check_interrupt = progress_callbacks(len(chunk_windows(n, chunk_size, chunk_overlap))
                                                       * len(tile_grid(h, w, tile_size, tile_overlap)))

        def sample_fn(win, lat, nz):
            pos = _window_conditioning(positive, win.start, win.stop, win.crop, (h, w))
            neg = _window_conditioning(negative, win.start, win.stop, win.crop, (h, w))
            return comfy.sample.sample_custom(model, nz, cfg, sampler, sigmas, pos, neg, lat,
                                              disable_pbar=True, seed=seed)

        out = sample_windows(samples.float(), noise, sample_fn, chunk_size, chunk_overlap, tile_size, tile_overlap,
                             progress=progress, check_interrupt=check_interrupt)
        result = latent.copy()
        result.pop("noise_mask", None)
        result["samples"] = out.to(samples.dtype)
        return io.NodeOutput(result)


def _fit_gpu_memory(model, cfg: float, h: int, w: int, chunk: int, overlap: int, tile: int, tile_overlap: int
                    ) -> tuple[int, int, int]:
    """Chunk and tile sizes whose windows fit 80 % of the GPU memory left beside the model's weights (ComfyUI's
    own per-call estimate); on the CPU the requested sizes are kept (RAM is not the limit there)."""
    device = model.load_device
    if comfy.model_management.is_device_cpu(device):
        return chunk, overlap, tile
    loaded = any(m is model for m in comfy.model_management.loaded_models())
    weights = 0 if loaded else model.model_size()
    budget = 0.8 * max(comfy.model_management.get_free_memory(device) - weights, 0)
    cond_batch = 1 if cfg == 1.0 else 2
    c = model.model.latent_format.latent_channels

    def unet_bytes(frames: int, th: int, tw: int) -> float:
        return float(model.model.memory_required([cond_batch * frames, c, th, tw]))

    return fit_windows(h, w, chunk, overlap, tile, tile_overlap, unet_bytes, budget)


class ColorFix(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CPGD_ColorFix",
            display_name="Colour Fix (CPGD)",
            category=CATEGORY,
            description=("Restores the colours of the diffusion output from the stage-one frames. wavelet: low "
                         "frequencies (5-level à-trous) from the reference, detail from the image (official CPGD); "
                         "adain: per-channel mean/std of the reference."),
            inputs=[
                io.Image.Input("image", tooltip="Diffusion output (decoded)."),
                io.Image.Input("reference", tooltip="Stage-one frames (one per image frame, or one for all)."),
                io.Combo.Input("method", options=["wavelet", "adain"], default="wavelet",
                               tooltip="wavelet: low frequencies from the reference (official); adain: "
                                       "per-channel mean/std of the reference."),
            ],
            outputs=[io.Image.Output(tooltip="Colour-corrected frames.")],
        )

    @classmethod
    def execute(cls, image, reference, method: str) -> io.NodeOutput:
        out = color_fix(image_to_frames(image), image_to_frames(reference).to(image.device), method)
        return io.NodeOutput(frames_to_image(out.clamp(0, 1)))


class DefaultPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CPGD_DefaultPrompt",
            display_name="CPGD Prompt",
            category=CATEGORY,
            description="The quality prompt the official CPGD-Net uses for every frame (editable).",
            inputs=[io.String.Input("text", default=QUALITY_PROMPT, multiline=True,
                                    tooltip="The prompt text; connect to a CLIP Text Encode node's text input.")],
            outputs=[io.String.Output(display_name="text", tooltip="The prompt text.")],
        )

    @classmethod
    def execute(cls, text: str) -> io.NodeOutput:
        return io.NodeOutput(text)


NODES = [CPControlNetLoader, CPControlNetApply, VideoSampler, ColorFix, DefaultPrompt]
