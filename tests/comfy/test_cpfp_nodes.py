"""CPFP loader + restore nodes inside a real ComfyUI, on small synthetic clips written with PyAV.

The restore node's fast mode (CPFP) is what most tests run (``restore`` asks for it); quality mode (blur field +
non-blind solver, the node's default) has its own tests at the end."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cpgd_core.codec.encode import write_video
from cpgd_core.data.synth import load_photo, make_blur_clip
from cpgd_core.errors import CPGDInputError
from cpgd_core.models.cpcontrolnet import CPControlNet, CPControlNetConfig
from cpgd_core.models.cpfp_official import OfficialCPFP, OfficialCPFPConfig
from cpgd_core.train.common import psnr
from cpgd_core.weights.cpc import save_cpcontrolnet

N, W, H, FPS = 12, 96, 64, 25
CHUNK, OVERLAP = 8, 2  # 12 frames -> 2 chunks
SHIPPED = "cpfp_lite (shipped)"


@pytest.fixture(scope="module")
def media(comfy, tmp_path_factory) -> dict:
    """Input-folder clips: a synthetic blurry clip (with its sharp frames), a shorter one, a constant one;
    and a models/cpgd folder holding two files the CPFP loader must refuse."""
    # motion 5: about 6 px of blur at this size, above the blur field's floor (exposure.SHARP_LENGTH)
    clip = make_blur_clip(load_photo("chelsea"), N, (W, H), subframes=9, seed=1, motion=5.0)
    d = comfy.input_dir
    write_video(os.path.join(d, "cpfp_blurry.mp4"), clip["blurry"], FPS, crf=20, preset="superfast",
                x264_params="bframes=0", overwrite=True)
    write_video(os.path.join(d, "cpfp_short.mp4"), clip["blurry"][:8], FPS, crf=20, preset="superfast",
                x264_params="bframes=0", overwrite=True)
    const = torch.tensor([0.3, 0.55, 0.7]).view(1, 3, 1, 1).expand(N, 3, H, W).contiguous()
    write_video(os.path.join(d, "cpfp_const.mp4"), const, FPS, crf=20, preset="superfast",
                x264_params="bframes=0", overwrite=True)

    models = str(tmp_path_factory.mktemp("cpgd_models"))
    save_file({"weight": torch.randn(4, 4)}, os.path.join(models, "random_tensors.safetensors"))
    save_cpcontrolnet(CPControlNet(CPControlNetConfig.tiny()), os.path.join(models, "a_cpcontrolnet.safetensors"))
    torch.manual_seed(0)
    official = OfficialCPFP(OfficialCPFPConfig(channels=16, mid_channels=48)).state_dict()
    torch.save({"params": official}, os.path.join(models, "official_small.pth"))  # as BasicSR saves net_g
    comfy.folder_paths.add_model_folder_path("cpgd", models)
    return {"sharp": clip["sharp"], "blurry": "cpfp_blurry.mp4", "short": "cpfp_short.mp4", "const": "cpfp_const.mp4"}


def cpfp_module(comfy):
    return sys.modules[comfy.pack_module.__name__ + ".nodes.cpfp_nodes"]


def load(video: str) -> dict:
    return {"class_type": "CPGD_LoadVideoWithPriors",
            "inputs": {"video": video, "skip_first_frames": 0, "frame_load_cap": 0, "select_every_nth": 1,
                       "custom_width": 0, "custom_height": 0, "export_qp": False}}


def restore(images=("1", 0), priors=("1", 1), model=("2", 0), **kw) -> dict:
    inputs = {"model": list(model), "images": list(images), "priors": list(priors), "frames_per_chunk": CHUNK,
              "chunk_overlap": OVERLAP, "tile_size": 0, "tile_overlap": 32, "dtype": "auto", "use_priors": True,
              "mode": "fast"}
    inputs.update(kw)
    return {"class_type": "CPGD_CPFPRestore", "inputs": inputs}


def graph(video: str, model_name: str = SHIPPED, **kw) -> dict:
    return {"1": load(video),
            "2": {"class_type": "CPGD_CPFPLoader", "inputs": {"model_name": model_name}},
            "3": restore(**kw),
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
            "5": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}}}


@pytest.fixture(scope="module")
def deblurred(comfy, media):
    return comfy.run(graph(media["blurry"]))


def test_nodes_registered_with_tooltips(comfy):
    for node_id in ("CPGD_CPFPLoader", "CPGD_CPFPRestore"):
        cls = comfy.nodes.NODE_CLASS_MAPPINGS[node_id]
        info = cls.GET_SCHEMA().get_v1_info(cls)
        assert info.category.startswith("CPGD/") and info.description
        for section in ("required", "optional"):
            for name, (_, opts) in info.input.get(section, {}).items():
                assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert info.output_tooltips and all(info.output_tooltips), f"{node_id} has an output without a tooltip"


def test_restore_graph_outputs_and_progress(comfy, media, deblurred):
    images = deblurred.raw["1"][0]
    restored, side, info, _ = deblurred.raw["3"]
    assert info.startswith("fast: " + SHIPPED) and "pack CPFP" in info and "chunks of 8 frames" in info
    assert tuple(restored.shape) == tuple(images.shape) == (N, H, W, 3)
    assert torch.isfinite(restored).all() and 0.0 <= float(restored.min()) and float(restored.max()) <= 1.0
    assert float((restored - images).abs().mean()) > 1e-3, "the network must change the frames"
    assert tuple(side.shape) == (N, H, 2 * W, 3)
    torch.testing.assert_close(side[:, :, :W], images)
    torch.testing.assert_close(side[:, :, W:], restored)
    assert deblurred.ui["4"]["images"] and deblurred.ui["5"]["images"]
    # the loader node output is the managed model handle
    handle = deblurred.raw["2"][0]
    assert type(handle).__name__ == "CPFPModel" and handle.patcher.model is handle.net


def test_progress_per_chunk_attributed_to_restore_node(comfy, media):
    comfy.run(graph(media["blurry"]))
    mine = [(v, t) for nid, v, t in comfy.progress if nid == "3"]
    assert mine[-1] == (2, 2) and (1, 2) in mine


def test_shipped_model_improves_psnr_on_synthetic_blur(media, deblurred):
    images, restored = deblurred.raw["1"][0], deblurred.raw["3"][0]
    sharp = media["sharp"]
    before = psnr(images.movedim(-1, 1), sharp)
    after = psnr(restored.movedim(-1, 1), sharp)
    print(f"PSNR vs sharp: blurry {before:.2f} dB, restored {after:.2f} dB")
    # the shipped weights give +1.0 dB on this clip (31.31 -> 32.31); the margin absorbs CPU/BLAS differences
    assert after > before + 0.6


def test_use_priors_switch(comfy, media, deblurred):
    res = comfy.run(graph(media["blurry"], use_priors=False))
    without = res.raw["3"][0]
    assert tuple(without.shape) == (N, H, W, 3) and torch.isfinite(without).all()
    assert float((without - deblurred.raw["3"][0]).abs().max()) > 1e-3, "zeroed priors must change the output"


def test_constant_video_stays_constant_with_chunks_and_tiles(comfy, media):
    res = comfy.run(graph(media["const"], frames_per_chunk=5, chunk_overlap=2, tile_size=32, tile_overlap=8))
    images, out = res.raw["1"][0], res.raw["3"][0]
    assert tuple(out.shape) == (N, H, W, 3)
    assert float((images.amax(dim=(0, 1, 2)) - images.amin(dim=(0, 1, 2))).max()) == 0.0
    # the network's zero-padded convolutions tint the outer 4 px of any frame (~0.02, with or without
    # tiles); inside, chunk cross-fades and tile seams must not show
    inner = out[:, 4:-4, 4:-4]
    spread = float((inner.amax(dim=(0, 1, 2)) - inner.amin(dim=(0, 1, 2))).max())
    assert spread < 4 / 255, f"constant input gave a non-constant output (spread {spread:.4f})"
    plain = comfy.run(graph(media["const"], frames_per_chunk=16, chunk_overlap=4, tile_size=0)).raw["3"][0]
    assert float((out - plain).abs().max()) < 4 / 255, "chunking/tiling changed a constant video"
    assert float((out.mean(dim=(0, 1, 2)) - images.mean(dim=(0, 1, 2))).abs().max()) < 0.06


def test_official_checkpoint_runs_and_says_it_has_no_raft(comfy, media):
    assert "official_small.pth" in comfy.nodes.NODE_CLASS_MAPPINGS["CPGD_CPFPLoader"].INPUT_TYPES()[
        "required"]["model_name"][1]["options"]
    res = comfy.run(graph(media["blurry"], model_name="official_small.pth"))
    images, (restored, _, info, _) = res.raw["1"][0], res.raw["3"]
    assert type(res.raw["2"][0].net).__name__ == "OfficialStageOne"
    assert tuple(restored.shape) == tuple(images.shape) and torch.isfinite(restored).all()
    assert float((restored - images).abs().mean()) > 1e-3
    # no raft-things weights are in the folder: the info output must say the flows are not refined
    assert "official CPFP" in info and "no RAFT weights" in info and "256 px tiles" in info, info


def test_mismatched_frame_count_is_a_clear_error(comfy, media):
    g = graph(media["blurry"])
    g["6"] = load(media["short"])
    g["3"] = restore(priors=("6", 1))
    res = comfy.run(g, expect_success=False)
    assert not res.success
    assert "frame count mismatch" in res.error and "12 frames" in res.error and "8 frames" in res.error, res.error


@pytest.mark.parametrize("name,expected", [("random_tensors.safetensors", "not CPFP weights"),
                                           ("a_cpcontrolnet.safetensors", "CPControlNet")])
def test_incompatible_weights_are_refused_by_name(comfy, media, name, expected):
    assert name in comfy.nodes.NODE_CLASS_MAPPINGS["CPGD_CPFPLoader"].INPUT_TYPES()["required"]["model_name"][1]["options"]
    res = comfy.run(graph(media["blurry"], model_name=name), expect_success=False)
    assert not res.success
    assert name in res.error and expected in res.error and "CPFP .safetensors" in res.error, res.error


def test_loader_caches_models_per_file(comfy):
    mod = cpfp_module(comfy)
    a, b = mod.load_cpfp_model(SHIPPED), mod.load_cpfp_model(SHIPPED)
    assert a is b
    assert a.patcher.load_device == comfy.mm.get_torch_device()


def test_oom_backoff_halves_tiles_then_gives_up(comfy):
    mod = cpfp_module(comfy)
    tried = []

    def fits_at_256(tile: int) -> torch.Tensor:
        tried.append(tile)
        if tile == 0 or tile > 256:
            raise torch.OutOfMemoryError("simulated")
        return torch.zeros(1)

    _, used = mod.run_with_tile_backoff(fits_at_256, 0)
    assert used == 256 and tried == [0, 512, 256]

    tried.clear()

    def never_fits(tile: int) -> torch.Tensor:
        tried.append(tile)
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(RuntimeError, match="out of memory even with 150 px tiles"):
        mod.run_with_tile_backoff(never_fits, 300)
    assert tried == [300, 150]  # 75 would be below the 128 px floor

    def bad_input(tile: int) -> torch.Tensor:
        raise CPGDInputError("frame count mismatch")

    with pytest.raises(CPGDInputError):
        mod.run_with_tile_backoff(bad_input, 0)


def test_main_job_workflow_validates(comfy, media):
    """workflows/api/main.json (what `make run` executes) is a valid graph for this ComfyUI and pack."""
    import json
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "workflows", "api", "main.json")) as f:
        prompt = json.load(f)
    classes = {n["class_type"] for n in prompt.values()}
    assert {"CPGD_CPFPLoader", "CPGD_CPFPRestore", "SaveVideo", "SaveImage"} <= classes
    restore_node = next(n for n in prompt.values() if n["class_type"] == "CPGD_CPFPRestore")
    assert restore_node["inputs"]["mode"] == "quality"  # make run runs the default stage one
    for node in prompt.values():
        if node["class_type"] == "CPGD_LoadVideoWithPriors":
            node["inputs"]["video"] = media["blurry"]
    ok, err, outputs, node_errors = comfy.validate(prompt)
    assert ok, (err, node_errors)


def test_odd_sizes_are_kept(comfy, tmp_path):
    """A 4:4:4 clip of an odd size, loaded at its own size and at an odd custom size: the restored frames have
    exactly the selected size."""
    g = torch.Generator().manual_seed(2)
    frames = torch.rand(3, 3, 41, 57, generator=g)
    write_video(os.path.join(comfy.input_dir, "cpfp_odd.mkv"), frames, FPS, crf=20, preset="superfast",
                overwrite=True)
    for (w, h) in ((0, 0), (35, 27)):
        gr = graph("cpfp_odd.mkv", tile_size=32, tile_overlap=8)
        gr["1"]["inputs"].update(custom_width=w, custom_height=h)
        res = comfy.run(gr)
        size = (h or 41, w or 57)
        assert tuple(res.raw["1"][0].shape) == (3, *size, 3)
        assert tuple(res.raw["3"][0].shape) == (3, *size, 3)


# -- quality mode (blur field + non-blind solver), the node's default --------------------------------------------
def quality_graph(video: str, **kw) -> dict:
    g = graph(video, **{"mode": "quality", **kw})
    g["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 3]}}
    return g


@pytest.fixture(scope="module")
def quality_run(comfy, media):
    res = comfy.run(quality_graph(media["blurry"]))
    return res, [(v, t) for nid, v, t in comfy.progress if nid == "3"]


def test_quality_is_the_default_mode(comfy):
    cls = comfy.nodes.NODE_CLASS_MAPPINGS["CPGD_CPFPRestore"]
    optional = cls.INPUT_TYPES()["optional"]
    assert optional["mode"][1]["default"] == "quality" and optional["mode"][1]["options"] == ["quality", "fast"]
    assert optional["iterations"][1]["default"] == 0 and optional["exposure"][1]["default"] == "auto"
    assert (optional["exposure_value"][1]["min"], optional["exposure_value"][1]["max"]) == (0.0, 1.0)
    # an API prompt written before the mode existed (no mode input) runs the default
    assert cls.execute.__defaults__[0] == "quality"


def test_quality_mode_graph_outputs_progress_and_trajectory(media, quality_run):
    res, progress = quality_run
    images = res.raw["1"][0]
    restored, side, info, trajectory = res.raw["3"]
    assert info.startswith("quality: blur field + non-blind solver") and "(shipped count)" in info, info
    assert "exposure" in info and "estimated" in info and "blur length median" in info, info
    assert tuple(restored.shape) == tuple(images.shape) == (N, H, W, 3)
    assert torch.isfinite(restored).all() and 0.0 <= float(restored.min()) and float(restored.max()) <= 1.0
    assert float((restored - images).abs().mean()) > 1e-3, "the solver must change the blurry frames"
    torch.testing.assert_close(side[:, :, W:], restored)
    # the trajectory picture: one RGB frame per input frame, coloured where the clip moves (white = sharp)
    assert tuple(trajectory.shape) == (N, H, W, 3)
    assert 0.0 <= float(trajectory.min()) and float(trajectory.max()) <= 1.0
    assert float((1.0 - trajectory).mean()) > 0.02, "the shaking clip's blur must show in the picture"
    assert res.ui["6"]["images"]
    # one step per frame for the blur field, then one per solved frame
    assert progress[-1] == (2 * N, 2 * N) and (N, 2 * N) in progress and (N + 1, 2 * N) in progress, progress
    before, after = psnr(images.movedim(-1, 1), media["sharp"]), psnr(restored.movedim(-1, 1), media["sharp"])
    print(f"quality mode PSNR vs sharp: blurry {before:.2f} dB, restored {after:.2f} dB")
    assert after > before  # (+0.97 dB with the interim shipped solver weights of 610d0b9)


def test_fast_mode_trajectory_output_matches_quality_mode(comfy, media, quality_run):
    """Fast mode's trajectory output is measured as quality mode measures it (at this small size: exactly)."""
    g = graph(media["blurry"])
    g["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 3]}}
    fast = comfy.run(g).raw["3"]
    assert fast[2].startswith("fast: ")
    torch.testing.assert_close(fast[3], quality_run[0].raw["3"][3])


def test_quality_mode_fixed_exposure_and_iterations(comfy, media, quality_run):
    res = comfy.run(quality_graph(media["blurry"], exposure="fixed", exposure_value=0.0, iterations=1))
    images, (restored, _, info, trajectory) = res.raw["1"][0], res.raw["3"]
    assert "1 iterations" in info and "exposure 0.00 (given)" in info, info
    # exposure 0: no blur to invert, the frames come back as they went in and the picture is white
    torch.testing.assert_close(restored, images)
    assert float(trajectory.min()) == 1.0
    strong = comfy.run(quality_graph(media["blurry"], exposure="fixed", exposure_value=1.0)).raw["3"]
    half = comfy.run(quality_graph(media["blurry"], exposure="fixed", exposure_value=0.5)).raw["3"]
    assert "exposure 1.00 (given)" in strong[2] and "exposure 0.50 (given)" in half[2]
    assert float((strong[3] - half[3]).abs().max()) > 1e-3, "the exposure must scale the blur"


def test_quality_mode_on_a_single_image_runs_fast_mode(comfy, media):
    g = quality_graph(media["blurry"])
    g["1"]["inputs"]["frame_load_cap"] = 1
    res = comfy.run(g)
    restored, _, info, trajectory = res.raw["3"]
    assert info.startswith("quality mode needs at least 2 frames") and "ran fast mode" in info and "fast: " in info
    assert tuple(restored.shape) == (1, H, W, 3) and tuple(trajectory.shape) == (1, H, W, 3)
    assert float(trajectory.abs().max()) == 0.0, "no motion to measure on one image: black"


def test_bad_exposure_is_a_clear_error(comfy, media):
    g = quality_graph(media["blurry"], exposure="fixed", exposure_value=1.5)
    ok, err, _, node_errors = comfy.validate(g)
    assert not ok and "exposure_value" in str(node_errors) and "1.5" in str(node_errors), node_errors
    # (this ComfyUI does not check an optional combo's value against its list: the node does)
    res = comfy.run(quality_graph(media["blurry"], exposure="sometimes"), expect_success=False)
    assert not res.success and "exposure must be one of auto, fixed, got 'sometimes'" in res.error, res.error
    # the node checks the value itself too (a caller bypassing the prompt validation)
    cls = comfy.nodes.NODE_CLASS_MAPPINGS["CPGD_CPFPRestore"]
    pack_error = sys.modules[comfy.pack_module.__name__ + ".cpgd_core.errors"].CPGDInputError  # the pack's copy
    frames = torch.rand(2, H, W, 3)
    with pytest.raises(pack_error, match=r"exposure must be a fraction of the frame interval in \[0, 1\], got 1.5"):
        cls.execute(None, frames, None, CHUNK, OVERLAP, 0, 32, "auto", True, "quality", 0, "fixed", 1.5)
    with pytest.raises(pack_error, match="iterations must be in"):
        cls.execute(None, frames, None, CHUNK, OVERLAP, 0, 32, "auto", True, "quality", -1, "auto", 0.5)


def test_cancel_lands_inside_a_quality_mode_iteration(comfy, media, monkeypatch):
    """Cancel pressed during the first solver iteration of the first frame stops the solve at the next
    iteration's check: no second prior step, no frame finished."""
    solver_mod = sys.modules[comfy.pack_module.__name__ + ".cpgd_core.blur.solver"]
    calls = []
    original = solver_mod.UnrolledDeblur.prior_step

    def prior_step_then_cancel(self, x, sigma, guide=None):
        calls.append(float(sigma))
        comfy.mm.interrupt_current_processing(True)  # what POST /interrupt does
        return original(self, x, sigma, guide)

    monkeypatch.setattr(solver_mod.UnrolledDeblur, "prior_step", prior_step_then_cancel)
    try:
        res = comfy.run(quality_graph(media["short"]), expect_success=False)
    finally:
        comfy.mm.interrupt_current_processing(False)
    assert not res.success and res.error == "interrupted"
    assert len(calls) == 1, f"{len(calls)} prior steps after Cancel"
    n = 8  # the short clip
    mine = [(v, t) for nid, v, t in comfy.progress if nid == "3"]
    assert mine and max(v for v, _ in mine) <= n, f"a frame was finished after Cancel: {mine}"
