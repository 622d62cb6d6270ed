"""The video nodes inside a real ComfyUI: graphs with real PyAV files, outputs checked numerically."""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "cpgd_media_fixtures", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "media_fixtures.py"))
media = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(media)

VIDEO_NODES = {"CPGD_LoadVideoWithPriors", "CPGD_PriorsFromImages", "CPGD_VisualizePriors"}


@pytest.fixture(scope="module")
def clips(comfy, tmp_path_factory) -> dict[str, str]:
    """Input-folder names of the test media (written once per module into ComfyUI's input folder)."""
    d = comfy.input_dir
    pan = media.pan_frames()
    media.write_video(os.path.join(d, "pan_audio.mp4"), pan, audio=True)
    media.write_video(os.path.join(d, "pan_silent.mp4"), pan, audio=False)
    media.write_audio_only(os.path.join(d, "audio_only.mp4"))
    media.write_no_video_stream(os.path.join(d, "data_only.ts"))
    media.write_truncated(os.path.join(d, "pan_audio.mp4"), os.path.join(d, "truncated.mp4"))
    media.write_text(os.path.join(d, "notes_renamed.mp4"))
    return {"pan": "pan_audio.mp4", "silent": "pan_silent.mp4", "audio_only": "audio_only.mp4",
            "no_video": "data_only.ts", "truncated": "truncated.mp4", "text": "notes_renamed.mp4"}


def load_node(video: str, **kw) -> dict:
    inputs = {"video": video, "skip_first_frames": 0, "frame_load_cap": 0, "select_every_nth": 1,
              "custom_width": 0, "custom_height": 0, "export_qp": False}
    inputs.update(kw)
    return {"class_type": "CPGD_LoadVideoWithPriors", "inputs": inputs}


def vis_node(priors_ref: list, direction: str = "to_prev", max_motion: float = 0.0) -> dict:
    return {"class_type": "CPGD_VisualizePriors",
            "inputs": {"priors": priors_ref, "direction": direction, "max_motion": max_motion, "residual_scale": 4.0}}


def p_frame_motion(priors, margin: int = 3) -> tuple[float, float]:
    """Median (x, y) of the valid flow_to_prev on inter frames, away from the entering left border."""
    f = priors.flow_to_prev[1:, :, margin:-margin, margin + 4:-margin].float()
    v = priors.valid_to_prev[1:, :, margin:-margin, margin + 4:-margin]
    assert v.float().mean() > 0.5, "most of the panned picture should have motion vectors"
    return float(f[:, 0][v[:, 0]].median()), float(f[:, 1][v[:, 0]].median())


def test_every_video_node_is_registered_with_tooltips(comfy):
    assert VIDEO_NODES <= comfy.node_ids()
    for node_id in VIDEO_NODES:
        info = comfy.nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA().get_v1_info(comfy.nodes.NODE_CLASS_MAPPINGS[node_id])
        assert info.category.startswith("CPGD/") and info.description
        for section in ("required", "optional"):
            for name, (_, opts) in info.input.get(section, {}).items():
                assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert info.output_tooltips and all(info.output_tooltips), f"{node_id} has an output without a tooltip"


def test_load_pan_clip_priors_and_visualisation(comfy, clips):
    res = comfy.run({"1": load_node(clips["pan"]), "2": vis_node(["1", 1]),
                     "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
                     "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}}})
    images, priors, fps, audio, info, count = res.raw["1"]
    n, h, w = media.PAN_FRAMES, media.PAN_H, media.PAN_W
    assert tuple(images.shape) == (n, h, w, 3) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    # decoded pixels match the encoded ones (crf 12): the IMAGE layout/conversion is right
    assert float((images[0] * 255 - torch.from_numpy(media.pan_frames()[0]).float()).abs().mean()) < 4.0
    assert count == n and len(priors) == n and fps == pytest.approx(media.PAN_FPS)
    assert audio is not None and audio["sample_rate"] == media.AUDIO_RATE
    assert audio["waveform"].shape[-1] == pytest.approx(n / media.PAN_FPS * media.AUDIO_RATE, abs=media.AUDIO_RATE / media.PAN_FPS)
    assert "12 frames" in info or str(n) in info
    # content moves right by PAN_DX px/frame -> flow_to_prev = (-PAN_DX, 0)
    mx, my = p_frame_motion(priors)
    assert mx == pytest.approx(-media.PAN_DX, abs=0.5) and my == pytest.approx(0.0, abs=0.5)
    assert not bool(priors.valid_to_prev[0].any()), "frame 0 has no previous frame"

    motion, residual, blur, blur_info = res.raw["2"]
    assert tuple(motion.shape) == (n, h, w, 3) and tuple(residual.shape) == (n, h, w, 3)
    assert tuple(blur.shape) == (n, h, w, 3) and float(blur.abs().max()) == 0 and "no frames" in blur_info
    for img in (motion, residual):
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0 and torch.isfinite(img).all()
    # a uniform pan is one colour on P-frames; frame 0 (no motion vectors) differs from it
    centre = motion[1:, 8:-8, 16:-8].reshape(-1, 3)
    assert float(centre.std(0).max()) < 0.1 and float(centre.mean(0).max() - centre.mean(0).min()) > 0.1
    assert float((motion[0, 8:-8, 16:-8] - motion[1, 8:-8, 16:-8]).abs().mean()) > 0.05
    # the UI gets the previews
    assert res.ui["3"]["images"] and res.ui["4"]["images"]
    # the loader reported progress up to its frame count and was attributed to node "1"
    mine = [(v, t) for nid, v, t in comfy.progress if nid == "1"]
    assert mine and mine[-1] == (n, n)


def test_select_every_nth_cap_and_resize(comfy, clips):
    res = comfy.run({"1": load_node(clips["pan"], skip_first_frames=1, select_every_nth=2, frame_load_cap=4,
                                    custom_width=64),
                     "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})
    images, priors, fps, _, _, count = res.raw["1"]
    # 64 px wide keeps 4:3 -> 48 px high; every 2nd frame halves the rate and doubles the motion;
    # the half-size picture halves it again
    assert count == 4 and tuple(images.shape) == (4, 48, 64, 3) and (priors.height, priors.width) == (48, 64)
    assert fps == pytest.approx(media.PAN_FPS / 2)
    mx, my = p_frame_motion(priors, margin=2)
    assert mx == pytest.approx(-media.PAN_DX, abs=0.5) and my == pytest.approx(0.0, abs=0.5)


def test_create_video_and_save_video_keep_fps_and_audio(comfy, clips):
    res = comfy.run({"1": load_node(clips["pan"]),
                     "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": ["1", 2], "audio": ["1", 3]}},
                     "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "cpgd_test/av",
                                                                 "format": "mp4", "codec": "h264"}}})
    saved = res.ui["3"]["images"][0]
    out = media.probe(os.path.join(comfy.output_dir, saved["subfolder"], saved["filename"]))
    assert out["frames"] == media.PAN_FRAMES and out["fps"] == pytest.approx(media.PAN_FPS)
    assert out["audio"], "SaveVideo dropped the audio track"
    assert out["audio_duration"] == pytest.approx(out["video_duration"], abs=1.0 / media.PAN_FPS)


def test_clip_without_audio_saves_without_audio(comfy, clips):
    res = comfy.run({"1": load_node(clips["silent"]),
                     "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": ["1", 2], "audio": ["1", 3]}},
                     "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "cpgd_test/silent",
                                                                 "format": "auto", "codec": "auto"}}})
    assert res.raw["1"][3] is None
    saved = res.ui["3"]["images"][0]
    out = media.probe(os.path.join(comfy.output_dir, saved["subfolder"], saved["filename"]))
    assert out["frames"] == media.PAN_FRAMES and not out["audio"]


def test_priors_from_images_reencodes(comfy, clips):
    res = comfy.run({"1": load_node(clips["silent"]),
                     "2": {"class_type": "CPGD_PriorsFromImages",
                           "inputs": {"images": ["1", 0], "fps": 25.0, "crf": 18, "preset": "veryfast"}},
                     "3": vis_node(["2", 0]),
                     "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}})
    priors, info = res.raw["2"]
    assert len(priors) == media.PAN_FRAMES and (priors.height, priors.width) == (media.PAN_H, media.PAN_W)
    assert "re-encod" in info and "reencode" in priors.source
    mx, my = p_frame_motion(priors)
    assert mx == pytest.approx(-media.PAN_DX, abs=0.5) and my == pytest.approx(0.0, abs=0.5)
    assert tuple(res.raw["3"][0].shape) == (media.PAN_FRAMES, media.PAN_H, media.PAN_W, 3)
    assert [v for nid, v, _ in comfy.progress if nid == "2"], "re-encode reported no progress"


def test_interrupt_stops_the_loader(comfy, clips):
    import comfy.utils as cu
    previous = cu.PROGRESS_BAR_HOOK
    seen = []

    def interrupting_hook(value, total, preview, prompt_id=None, node_id=None):
        seen.append(value)
        if value >= 2:
            comfy.mm.interrupt_current_processing(True)  # what POST /interrupt does
        comfy.mm.throw_exception_if_processing_interrupted()

    cu.set_progress_bar_global_hook(interrupting_hook)
    try:
        res = comfy.run({"1": load_node(clips["pan"]), "2": vis_node(["1", 1]),
                         "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}, expect_success=False)
    finally:
        cu.set_progress_bar_global_hook(previous)
        comfy.mm.interrupt_current_processing(False)
    assert not res.success and res.error == "interrupted"
    assert max(seen) < media.PAN_FRAMES, "the loader kept decoding after the interrupt"
    assert "1" not in res.raw


@pytest.mark.parametrize("case, expected", [
    ("truncated", ["truncated.mp4", "truncated"]),
    ("text", ["notes_renamed.mp4", "not a readable media file"]),
    ("audio_only", ["audio_only.mp4", "no video stream"]),
    ("no_video", ["data_only.ts", "no video stream"]),
])
def test_bad_files_give_clear_errors(comfy, clips, case, expected):
    res = comfy.run({"1": load_node(clips[case]), "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}},
                    expect_success=False)
    assert not res.success
    err = dict(res.messages)["execution_error"]
    assert err["exception_type"].endswith("CPGDInputError"), err["exception_type"]
    msg = err["exception_message"]
    for part in expected:
        assert part in msg, f"{part!r} not in {msg!r}"
    assert "Traceback" not in msg and len(msg) < 500


def test_zero_frame_range_is_an_error(comfy, clips):
    res = comfy.run({"1": load_node(clips["pan"], skip_first_frames=1000),
                     "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}, expect_success=False)
    err = dict(res.messages)["execution_error"]
    assert "past the end" in err["exception_message"] and "pan_audio.mp4" in err["exception_message"]


def test_missing_file_fails_validation(comfy, clips):
    res = comfy.run({"1": load_node("does_not_exist.mp4"),
                     "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}, expect_success=False)
    assert not res.success and res.messages[0][0] == "validation_error"
    details = str(res.messages[0][1]["node_errors"])
    assert "does_not_exist.mp4" in details and "input folder" in details


def test_fingerprint_follows_file_changes(comfy, clips, tmp_path):
    node = comfy.nodes.NODE_CLASS_MAPPINGS["CPGD_LoadVideoWithPriors"]
    name = "fingerprint.mp4"
    path = os.path.join(comfy.input_dir, name)
    media.write_video(path, media.pan_frames(n=4))
    kw = {"skip_first_frames": 0, "frame_load_cap": 0, "select_every_nth": 1, "custom_width": 0,
          "custom_height": 0, "export_qp": False}
    first = node.fingerprint_inputs(video=name, **kw)
    assert node.fingerprint_inputs(video=name, **kw) == first
    media.write_video(path, media.pan_frames(n=6))
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000_000))
    assert node.fingerprint_inputs(video=name, **kw) != first


def test_model_folder_and_image_conversion(comfy):
    types = sys.modules[comfy.pack_module.__name__ + ".nodes.types"]
    fp = comfy.folder_paths
    assert os.path.join(fp.models_dir, "cpgd") in fp.get_folder_paths("cpgd")
    assert ".safetensors" in fp.folder_names_and_paths["cpgd"][1]
    # a key the user created in extra_model_paths.yaml (empty extension set) keeps its paths and gets ours
    fp.add_model_folder_path("cpgd_test_user", "/somewhere/user")
    paths = types.register_model_folder("cpgd_test_user", [".safetensors"])
    assert paths[0] == "/somewhere/user" and os.path.join(fp.models_dir, "cpgd_test_user") in paths
    assert fp.folder_names_and_paths["cpgd_test_user"][1] == {".safetensors"}
    # a user's explicit extension set is not touched
    fp.folder_names_and_paths["cpgd_test_user2"] = (["/x"], {".pt"})
    types.register_model_folder("cpgd_test_user2", [".safetensors"])
    assert fp.folder_names_and_paths["cpgd_test_user2"][1] == {".pt"}

    image = torch.rand(2, 5, 7, 4)
    frames = types.image_to_frames(image)
    assert tuple(frames.shape) == (2, 3, 5, 7) and torch.equal(frames[1, 2], image[1, :, :, 2])
    assert torch.equal(types.frames_to_image(frames), image[..., :3])
    grey = types.frames_to_image(torch.full((1, 1, 4, 4), 0.5))
    assert tuple(grey.shape) == (1, 4, 4, 3) and float(grey.min()) == 0.5


def test_real_phone_clip_loads_with_priors(comfy, real_clips):
    name = comfy.copy_to_input(real_clips[0])
    res = comfy.run({"1": load_node(name, frame_load_cap=6), "2": vis_node(["1", 1]),
                     "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}})
    images, priors, fps, audio, info, count = res.raw["1"]
    assert count == 6 and len(priors) == 6 and tuple(images.shape[1:]) == (768, 1280, 3)
    assert audio is None and fps == pytest.approx(15.0, rel=0.02)
    assert "mpeg4" in priors.source and "bitstream" in priors.source
    assert bool(priors.valid_to_prev[1:].any()), "MPEG-4 P-frames export motion vectors"
    assert tuple(res.raw["2"][0].shape) == (6, 768, 1280, 3)


def test_load_that_does_not_fit_in_memory_is_refused_before_decoding(comfy, clips, monkeypatch):
    import psutil

    from cpgd_core.codec.decode import loaded_bytes

    need = loaded_bytes(media.PAN_FRAMES, media.PAN_W, media.PAN_H)
    real = psutil.virtual_memory()
    # a machine with room for about half of this clip
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=int(need * 0.6)))
    res = comfy.run({"1": load_node(clips["pan"]), "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}},
                    expect_success=False)
    msg = dict(res.messages)["execution_error"]["exception_message"]
    assert "pan_audio.mp4" in msg and "GiB" in msg and "frame_load_cap" in msg
    fit = int(msg.split("frame_load_cap to at most ")[1].split(",")[0])
    assert 0 < fit < media.PAN_FRAMES
    # the suggested cap does load
    res = comfy.run({"1": load_node(clips["pan"], frame_load_cap=fit),
                     "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})
    assert res.success


def test_visualisation_draws_the_blur_trajectory(comfy, clips):
    """With the frames connected and the exposure given, the pan (PAN_DX px/frame, horizontal) sweeps
    exposure * PAN_DX px: one colour (the horizontal axis, red) at the saturation that length gives."""
    vis = vis_node(["1", 1], max_motion=float(media.PAN_DX))
    vis["inputs"].update(images=["1", 0], exposure=0.5)
    res = comfy.run({"1": load_node(clips["pan"]), "2": vis,
                     "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 2]}}})
    _, _, blur, info = res.raw["2"]
    n, h, w = media.PAN_FRAMES, media.PAN_H, media.PAN_W
    assert tuple(blur.shape) == (n, h, w, 3)
    centre = blur[:, 8:-8, 16:-16].reshape(-1, 3).median(0).values
    # saturation 0.5 on the red axis: (1, 0.5, 0.5)
    assert centre.tolist() == pytest.approx([1.0, 0.5, 0.5], abs=0.12)
    assert "exposure 0.50" in info and "given" in info
