"""Video nodes: load a video with its codec priors, derive priors from any IMAGE batch, visualise priors.

Saving is left to the core nodes: CreateVideo(images, fps, audio) -> SaveVideo keeps fps and audio
(tests/comfy/test_video_nodes.py checks that), so the pack ships no save node of its own.
"""
from __future__ import annotations

import os
from fractions import Fraction
from typing import Optional

import torch
from comfy_api.latest import io

import folder_paths

from ..cpgd_core.codec.flow import magnitude
from ..cpgd_core.codec.priors import CodecPriors
from ..cpgd_core.errors import CPGDInputError
from .types import CodecPriorsSocket, frames_to_image, image_from_core, image_to_frames, progress_callbacks

CATEGORY = "CPGD/video"
X264_PRESETS = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"]


def _input_videos() -> list[str]:
    input_dir = folder_paths.get_input_directory()
    files = [f for f in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, f))]
    return sorted(folder_paths.filter_files_content_types(files, ["video"]))


def _video_path(video: str) -> str:
    if not video or not folder_paths.exists_annotated_filepath(video):
        raise CPGDInputError(f"video file not found in ComfyUI's input folder: {video!r}")
    return folder_paths.get_annotated_filepath(video)


# Share of the currently free RAM one load may take: ComfyUI, models and the next nodes need the rest.
MEMORY_SHARE = 0.8


def _check_memory(path: str, frames: int, width: int, height: int) -> None:
    """Refuse, before decoding, a load that would not fit in free RAM (instead of the OS killing ComfyUI)."""
    import psutil  # a ComfyUI requirement

    from ..cpgd_core.codec.decode import loaded_bytes

    need, free = loaded_bytes(frames, width, height), psutil.virtual_memory().available
    if need <= MEMORY_SHARE * free:
        return
    fit = max(1, int(frames * MEMORY_SHARE * free / need))
    raise CPGDInputError(
        f"{os.path.basename(path)}: loading {frames} frames at {width}x{height} needs about {need / 2**30:.1f} GiB, "
        f"but only {free / 2**30:.1f} GiB of memory is free. Set frame_load_cap to at most {fit}, raise "
        f"select_every_nth or lower custom_width/custom_height (or run 'python -m cpgd_core deblur', which "
        f"streams a video of any length in flat memory).")


def _keep_aspect(width: int, height: int, src_width: int, src_height: int) -> tuple[int, int]:
    """(width, height) with a 0 side derived from the source aspect ratio, rounded to a multiple of 8."""
    if width and height:
        return width, height
    if width:
        return width, max(8, int(round(width * src_height / src_width / 8)) * 8)
    return max(8, int(round(height * src_width / src_height / 8)) * 8), height


class LoadVideoWithPriors(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CPGD_LoadVideoWithPriors",
            display_name="Load Video with Codec Priors (CPGD)",
            category=CATEGORY,
            description=(
                "Decodes a video from ComfyUI's input folder and extracts its coding priors: motion vectors "
                "(as dense flow with a validity mask), coding residuals, frame types and optionally the QP map. "
                "Codecs without exportable motion vectors (HEVC, VP9, AV1, ...) are re-encoded in memory with "
                "libx264 to obtain them; the info output says which path was used. Phone portrait videos are "
                "turned upright and HDR (HLG/PQ) is converted to SDR BT.709. A selection that would not fit "
                "in free memory is refused before decoding, with the frame_load_cap that fits."),
            inputs=[
                io.Combo.Input("video", options=_input_videos(), upload=io.UploadType.video,
                               tooltip="Video file in ComfyUI's input folder (upload with the button)."),
                io.Int.Input("skip_first_frames", default=0, min=0, max=10_000_000,
                             tooltip="Number of frames to skip at the start of the video. Decoding starts at the "
                                     "keyframe before this frame, so a late start in a long video is quick."),
                io.Int.Input("frame_load_cap", default=0, min=0, max=10_000_000,
                             tooltip="Maximum number of frames to return after skipping and selection; 0 = all."),
                io.Int.Input("select_every_nth", default=1, min=1, max=1000,
                             tooltip="Keep every n-th frame (1 = every frame). Motion priors are chained "
                                     "across the dropped frames."),
                io.Int.Input("custom_width", default=0, min=0, max=8192, step=8,
                             tooltip="Resize frames (and scale the motion vectors) to this width; 0 = keep. "
                                     "With only one of width/height set, the aspect ratio is kept."),
                io.Int.Input("custom_height", default=0, min=0, max=8192, step=8,
                             tooltip="Resize frames (and scale the motion vectors) to this height; 0 = keep."),
                io.Boolean.Input("export_qp", default=False,
                                 tooltip="Also export the per-macroblock quantiser (QP) map (H.264 only)."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="Decoded frames, (frames, H, W, 3) in 0..1."),
                CodecPriorsSocket.Output(display_name="priors",
                                         tooltip="Codec priors aligned 1:1 with the frames: motion, validity, "
                                                 "residuals, frame types, QP."),
                io.Float.Output(display_name="fps", tooltip="Frame rate of the returned frames (source rate / n)."),
                io.Audio.Output(display_name="audio",
                                tooltip="Audio track trimmed to the returned frames; None when the file has none."),
                io.String.Output(display_name="info", tooltip="What was decoded and how the priors were obtained."),
                io.Int.Output(display_name="frame_count", tooltip="Number of frames returned."),
            ],
        )

    @classmethod
    def validate_inputs(cls, video: str) -> bool | str:
        # Only `video` in the signature: a **kwargs here would make ComfyUI skip its min/max checks.
        if not video or not folder_paths.exists_annotated_filepath(video):
            return f"Invalid video file: {video!r} is not in ComfyUI's input folder"
        return True

    @classmethod
    def fingerprint_inputs(cls, video: str, **kwargs) -> str:
        # mtime + size instead of a content hash: hashing a long video on every queue would be slow.
        path = folder_paths.get_annotated_filepath(video)
        try:
            st = os.stat(path)
        except OSError:
            return "missing"
        return f"{st.st_mtime_ns}:{st.st_size}"

    @classmethod
    def execute(cls, video: str, skip_first_frames: int, frame_load_cap: int, select_every_nth: int,
                custom_width: int, custom_height: int, export_qp: bool) -> io.NodeOutput:
        from ..cpgd_core.codec.decode import kept_frame_count, load_video, probe

        path = _video_path(video)
        progress, check_interrupt = progress_callbacks(frame_load_cap or 1)
        info = probe(path)
        size = None
        if custom_width or custom_height:
            size = _keep_aspect(custom_width, custom_height, info.width, info.height)
        _check_memory(path, kept_frame_count(info, skip_first_frames, frame_load_cap, select_every_nth),
                      *(size or (info.width, info.height)))
        frames, priors, audio, info = load_video(
            path, start=skip_first_frames, cap=frame_load_cap, every_nth=select_every_nth, size=size,
            progress=progress, check_interrupt=check_interrupt, export_qp=export_qp, info=info, channels_last=True)
        if frames.shape[0] == 0:
            raise CPGDInputError(f"{os.path.basename(path)}: no frames in the selected range "
                                 f"(skip_first_frames={skip_first_frames})")
        return io.NodeOutput(image_from_core(frames), priors, float(priors.fps), audio, info, int(frames.shape[0]))


class PriorsFromImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CPGD_PriorsFromImages",
            display_name="Codec Priors from Images (CPGD)",
            category=CATEGORY,
            description=(
                "Derives codec priors for any IMAGE batch by re-encoding it in memory with libx264 "
                "(one reference frame, no B-frames) and reading back its motion vectors and residuals. "
                "Use it for frames that do not come from a video file."),
            inputs=[
                io.Image.Input("images", tooltip="Frames of one clip, in order."),
                io.Float.Input("fps", default=25.0, min=0.01, max=1000.0, step=0.01,
                               tooltip="Frame rate of the clip (stored in the priors; affects rate control only)."),
                io.Int.Input("crf", default=18, min=0, max=51,
                             tooltip="x264 constant rate factor of the re-encode: lower keeps more detail and "
                                     "gives smaller residuals."),
                io.Combo.Input("preset", options=X264_PRESETS, default="veryfast",
                               tooltip="x264 preset: slower presets search motion more thoroughly."),
            ],
            outputs=[
                CodecPriorsSocket.Output(display_name="priors", tooltip="Codec priors aligned 1:1 with the images."),
                io.String.Output(display_name="info", tooltip="Summary of the priors and of the re-encode."),
            ],
        )

    @classmethod
    def execute(cls, images: torch.Tensor, fps: float, crf: int, preset: str) -> io.NodeOutput:
        from ..cpgd_core.codec.reencode import priors_from_frames

        frames = image_to_frames(images)
        if frames.shape[0] < 1:
            raise CPGDInputError("images: the batch is empty")
        progress, check_interrupt = progress_callbacks(frames.shape[0])
        priors = priors_from_frames(frames, fps=Fraction(fps).limit_denominator(1001), crf=crf, preset=preset,
                                    progress=progress, check_interrupt=check_interrupt)
        info = f"re-encoded with libx264 (crf {crf}, preset {preset}); {priors.summary()}"
        return io.NodeOutput(priors, info)


class VisualizePriors(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CPGD_VisualizePriors",
            display_name="Visualise Codec Priors (CPGD)",
            category=CATEGORY,
            description=(
                "Renders codec priors as images: the motion field on a colour wheel (hue = direction, "
                "saturation = speed, white = still, black = no motion vector) and the signed coding residual "
                "as a heat map (red/yellow positive, blue/cyan negative), "
                "both at full frame size, for stock Preview/Save nodes. With the frames connected it also "
                "draws each pixel's blur trajectory (the motion swept during the exposure: hue = axis, "
                "saturation = length, white = sharp) and reports the exposure."),
            inputs=[
                CodecPriorsSocket.Input("priors", tooltip="Codec priors from a CPGD loader or priors node."),
                io.Combo.Input("direction", options=["to_prev", "to_next"], default="to_prev",
                               tooltip="Which motion field to draw: pointing into the previous or the next frame."),
                io.Float.Input("max_motion", default=0.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="Motion (pixels) drawn at full saturation; 0 = the clip's largest motion. "
                                       "Also the trajectory length at full saturation."),
                io.Float.Input("residual_scale", default=4.0, min=0.1, max=100.0, step=0.1,
                               tooltip="Gain on |residual| before colouring; higher shows weaker residuals."),
                io.Image.Input("images", optional=True,
                               tooltip="The frames the priors belong to (same count and size). Connect them to "
                                       "draw the blur trajectories; left empty, the blur output is black."),
                io.Float.Input("exposure", default=-1.0, min=-1.0, max=1.0, step=0.05, optional=True,
                               tooltip="Exposure as a fraction of the frame interval (0 = sharp, 1 = shutter "
                                       "open the whole interval); -1 = estimate it from the blur in the frames."),
            ],
            outputs=[
                io.Image.Output(display_name="motion", tooltip="Motion field as colour-wheel images, one per frame."),
                io.Image.Output(display_name="residual", tooltip="Signed residual heat maps, one per frame."),
                io.Image.Output(display_name="blur", tooltip="Blur trajectory per pixel: hue = axis of the blur, "
                                                             "saturation = its length; white = sharp."),
                io.String.Output(display_name="blur_info", tooltip="Exposure and trajectory lengths, in words."),
            ],
        )

    @classmethod
    def execute(cls, priors: CodecPriors, direction: str, max_motion: float, residual_scale: float,
                images: Optional[torch.Tensor] = None, exposure: float = -1.0) -> io.NodeOutput:
        from ..cpgd_core.codec.visualize import flow_to_color, residual_heatmap

        flow, valid = ((priors.flow_to_prev, priors.valid_to_prev) if direction == "to_prev"
                       else (priors.flow_to_next, priors.valid_to_next))
        size = (priors.height, priors.width)
        motion = flow_to_color(flow.float(), valid, max_motion if max_motion > 0 else None, size=size)
        # gain g: |residual| = 1/g reaches full intensity
        heat = residual_heatmap(priors.residual, 1.0 / residual_scale, size=size)
        blur, info = cls._blur(priors, images, exposure, max_motion)
        return io.NodeOutput(frames_to_image(motion), frames_to_image(heat), frames_to_image(blur), info)

    @staticmethod
    def _blur(priors: CodecPriors, images: Optional[torch.Tensor], exposure: float,
              max_motion: float) -> tuple[torch.Tensor, str]:
        from ..cpgd_core.blur.field import estimate_blur_field
        from ..cpgd_core.codec.visualize import trajectory_to_color

        if images is None:
            return torch.zeros(len(priors), 3, priors.height, priors.width), "no frames connected: no blur field"
        frames = image_to_frames(images)
        if tuple(frames.shape[-2:]) != (priors.height, priors.width) or len(frames) != len(priors):
            raise CPGDInputError(f"images ({len(frames)} frames, {frames.shape[-1]}x{frames.shape[-2]}) do not "
                                 f"match the priors ({len(priors)} frames, {priors.width}x{priors.height})")
        progress, interrupt = progress_callbacks(len(frames))
        field = estimate_blur_field(frames, priors, "auto" if exposure < 0 else exposure, progress, interrupt)
        pic = trajectory_to_color(field.trajectory, max_motion if max_motion > 0 else None)
        e = field.exposure
        how = "given" if exposure >= 0 else (
            f"estimated, confidence {float(field.exposure_confidence.median()):.2f}")
        length = magnitude(field.trajectory)
        info = (f"exposure {float(e.median()):.2f} of the frame interval ({how}; per frame "
                f"{float(e.min()):.2f}-{float(e.max()):.2f}); blur length median {float(length.median()):.1f} px, "
                f"99th percentile {float(torch.quantile(length.flatten()[::max(1, length.numel() // 1_000_000)], 0.99)):.1f} px")
        return pic, info


NODES: list[type[io.ComfyNode]] = [LoadVideoWithPriors, PriorsFromImages, VisualizePriors]
