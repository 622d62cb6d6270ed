"""CPControlNet in the real ComfyUI: loader, apply node with stock samplers, video sampler, colour fix.

Tiny random SD-2-like MODEL/VAE and conditioning come from tests/fixtures/cpc_test_nodes (a test-only node pack
loaded into the same executor); the CPControlNet is a tiny random one saved to a temporary models/controlnet.
"""
from __future__ import annotations

import asyncio
import os

import pytest
import torch

from cpgd_core.models.cpcontrolnet import CPControlNet, CPControlNetConfig
from cpgd_core.weights.cpc import save_cpcontrolnet

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "cpc_test_nodes")
CN_NAME = "cpc_tiny_test.safetensors"


@pytest.fixture(scope="module")
def env(comfy):
    if "CPGDTest_TinySD2" not in comfy.nodes.NODE_CLASS_MAPPINGS:
        ok = asyncio.run(comfy.nodes.load_custom_node(FIXTURES, ignore=set(comfy.nodes.NODE_CLASS_MAPPINGS),
                                                      module_parent="custom_nodes"))
        assert ok
    folder = os.path.join(comfy.models_dir, "controlnet")
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(0)
    net = CPControlNet(CPControlNetConfig.tiny())
    with torch.no_grad():  # non-zero zero-convs and masks, else the control would be invisible
        for name, p in net.named_parameters():
            if name.startswith(("zero_convs", "middle_block_out")):
                p.normal_(0, 0.3)
            elif name.endswith("attn1.mask.weight"):
                p.normal_(0, 0.5)
    save_cpcontrolnet(net, os.path.join(folder, CN_NAME))
    comfy.folder_paths.add_model_folder_path("controlnet", folder)
    return comfy


def graph(sampler="euler", scheduler="normal", cfg=2.0, vary_frame=-1, joint=0, strength=1.0, frames=3,
          with_priors=True, size=64):
    g = {
        "1": {"class_type": "CPGDTest_TinySD2", "inputs": {"seed": 0}},
        "2": {"class_type": "CPGDTest_RandomConditioning", "inputs": {"seed": 1, "tokens": 7}},
        "3": {"class_type": "CPGDTest_RandomConditioning", "inputs": {"seed": 2, "tokens": 7}},
        "4": {"class_type": "CPGDTest_Frames", "inputs": {"frames": frames, "size": size, "seed": 3,
                                                         "vary_frame": vary_frame, "constant": False}},
        "5": {"class_type": "CPGD_CPControlNetLoader", "inputs": {"control_net_name": CN_NAME, "dtype": "fp32"}},
        "6": {"class_type": "CPGD_CPControlNetApply",
              "inputs": {"positive": ["2", 0], "negative": ["3", 0], "control_net": ["5", 0], "vae": ["1", 1],
                         "image": ["4", 0], "strength": strength, "start_percent": 0.0, "end_percent": 1.0,
                         "joint_frames": joint}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": frames}},
        "8": {"class_type": "KSampler",
              "inputs": {"model": ["1", 0], "seed": 5, "steps": 3, "cfg": cfg, "sampler_name": sampler,
                         "scheduler": scheduler, "positive": ["6", 0], "negative": ["6", 1],
                         "latent_image": ["7", 0], "denoise": 1.0}},
        "s8": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "cpc"}},
    }
    if with_priors:
        g["9"] = {"class_type": "CPGDTest_SyntheticPriors",
                  "inputs": {"frames": frames, "height": size, "width": size, "seed": 4}}
        g["6"]["inputs"]["priors"] = ["9", 0]
    return g


def with_sinks(g: dict, latents=(), images=()) -> dict:
    """The executor only runs graphs that end in output nodes."""
    for i, n in enumerate(latents):
        g[f"s{n}"] = {"class_type": "SaveLatent", "inputs": {"samples": [n, 0], "filename_prefix": f"cpc_{i}"}}
    for i, n in enumerate(images):
        g[f"p{n}"] = {"class_type": "PreviewImage", "inputs": {"images": [n, 0]}}
    return g


def latent(res, node="8"):
    return res.output(node)["samples"]


@pytest.mark.parametrize("scheduler", ["normal", "karras"])
@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m", "uni_pc", "ddim"])
def test_ksampler_with_every_sampler(env, sampler, scheduler):
    out = latent(env.run(graph(sampler, scheduler)))
    assert out.shape == (3, 4, 8, 8)
    assert torch.isfinite(out).all()


def test_control_changes_result_and_strength_zero_is_identity(env):
    a = latent(env.run(graph()))
    off = latent(env.run(graph(strength=0.0)))
    assert float((a - off).abs().mean()) > 1e-3
    g = graph(strength=0.0)
    g["8"]["inputs"]["positive"], g["8"]["inputs"]["negative"] = ["2", 0], ["3", 0]
    torch.testing.assert_close(latent(env.run(g)), off)


@pytest.mark.parametrize("cfg", [1.0, 2.0])  # 1.0: no uncond pass; 2.0: cond+uncond batched together
def test_per_frame_hint_alignment(env, cfg):
    base = latent(env.run(graph(cfg=cfg)))
    changed = latent(env.run(graph(cfg=cfg, vary_frame=2)))
    torch.testing.assert_close(changed[:2], base[:2], rtol=0, atol=1e-6)
    assert float((changed[2] - base[2]).abs().max()) > 1e-4
    first = latent(env.run(graph(cfg=cfg, vary_frame=0)))
    torch.testing.assert_close(first[1:], base[1:], rtol=0, atol=1e-6)
    assert float((first[0] - base[0]).abs().max()) > 1e-4
    # joint attention over the 3 frames: a change in frame 2 reaches frame 0
    jb = latent(env.run(graph(cfg=cfg, joint=3)))
    jc = latent(env.run(graph(cfg=cfg, joint=3, vary_frame=2)))
    assert float((jc[0] - jb[0]).abs().max()) > 1e-6


def test_priors_modulate_the_control(env):
    with_p = latent(env.run(graph()))
    without = latent(env.run(graph(with_priors=False)))
    assert float((with_p - without).abs().max()) > 1e-5


def test_frame_count_mismatch_is_reported(env):
    g = graph()
    g["7"]["inputs"]["batch_size"] = 2
    res = env.run(g, expect_success=False)
    assert not res.success and "2 frames" in res.error and "3" in res.error


def test_chains_with_a_previous_controlnet(env):
    g = graph()
    g["10"] = {"class_type": "CPGD_CPControlNetApply",
               "inputs": {"positive": ["6", 0], "negative": ["6", 1], "control_net": ["5", 0], "vae": ["1", 1],
                          "image": ["4", 0], "strength": 0.5, "start_percent": 0.0, "end_percent": 0.5,
                          "joint_frames": 0}}
    g["8"]["inputs"]["positive"], g["8"]["inputs"]["negative"] = ["10", 0], ["10", 1]
    chained = latent(env.run(g))
    single = latent(env.run(graph()))
    assert torch.isfinite(chained).all() and float((chained - single).abs().max()) > 1e-5


def test_sampler_custom_with_custom_sigmas(env):
    g = graph()
    del g["8"], g["s8"]
    with_sinks(g, latents=["13"])
    g["11"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}}
    g["12"] = {"class_type": "KarrasScheduler", "inputs": {"steps": 4, "sigma_max": 10.0, "sigma_min": 0.1,
                                                          "rho": 7.0}}
    g["13"] = {"class_type": "SamplerCustom",
               "inputs": {"model": ["1", 0], "add_noise": True, "noise_seed": 3, "cfg": 1.5, "positive": ["6", 0],
                          "negative": ["6", 1], "sampler": ["11", 0], "sigmas": ["12", 0],
                          "latent_image": ["7", 0]}}
    out = latent(env.run(g), "13")
    assert out.shape == (3, 4, 8, 8) and torch.isfinite(out).all()


def video_graph(chunk, overlap, tile, tile_overlap, noise_mode="independent", frames=4, size=80, constant=False,
                sigma_max=10.0, sigma_min=0.5):
    g = graph(frames=frames, size=size, joint=2)
    del g["8"], g["7"], g["s8"]
    with_sinks(g, latents=["13", "14"])
    g["4"]["inputs"]["constant"] = constant
    g["11"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    g["12"] = {"class_type": "KarrasScheduler", "inputs": {"steps": 2, "sigma_max": sigma_max,
                                                          "sigma_min": sigma_min, "rho": 7.0}}
    g["14"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 1]}}
    g["13"] = {"class_type": "CPGD_VideoSampler",
               "inputs": {"model": ["1", 0], "positive": ["6", 0], "negative": ["6", 1], "latent": ["14", 0],
                          "sampler": ["11", 0], "sigmas": ["12", 0], "seed": 1, "cfg": 1.0, "chunk_size": chunk,
                          "chunk_overlap": overlap, "tile_size": tile, "tile_overlap": tile_overlap,
                          "noise_mode": noise_mode, "denoise": 1.0, "priors": ["9", 0]}}
    return g


def test_video_sampler_chunks_and_tiles(env):
    res = env.run(video_graph(chunk=3, overlap=2, tile=8, tile_overlap=6))
    out = latent(res, "13")
    assert out.shape == (4, 4, 10, 10) and torch.isfinite(out).all()
    windows = [p for p in env.progress if p[0] == "13"]
    assert windows and windows[-1][1] == windows[-1][2] == 2 * 4  # 2 chunks x 4 tiles
    one = latent(env.run(video_graph(chunk=4, overlap=0, tile=0, tile_overlap=0)), "13")
    mv = latent(env.run(video_graph(chunk=4, overlap=0, tile=0, tile_overlap=0, noise_mode="mv-warped")), "13")
    assert mv.shape == out.shape and not torch.equal(mv, one)


def test_video_sampler_is_seam_free_near_the_input(env):
    # at a tiny noise level the result stays next to the input latent; wrong blending weights would show up as
    # seams (scaled or shifted values) along chunk and tile borders
    kw = dict(constant=True, sigma_max=5e-4, sigma_min=1e-4)
    ref = env.run(video_graph(chunk=4, overlap=0, tile=0, tile_overlap=0, **kw))
    tiled = env.run(video_graph(chunk=3, overlap=2, tile=8, tile_overlap=6, **kw))
    a, b = latent(ref, "13"), latent(tiled, "13")
    src = ref.output("14")["samples"]
    scale = float(src.abs().mean())
    assert float((a - src).abs().mean()) < 0.2 * scale
    assert float((a - b).abs().max()) < 0.1 * scale


def test_colour_fix_node(env):
    g = {
        "1": {"class_type": "CPGDTest_Frames", "inputs": {"frames": 2, "size": 64, "seed": 3, "vary_frame": -1,
                                                         "constant": False}},
        "2": {"class_type": "CPGDTest_Frames", "inputs": {"frames": 2, "size": 64, "seed": 3, "vary_frame": -1,
                                                         "constant": True}},
        "3": {"class_type": "CPGD_ColorFix", "inputs": {"image": ["2", 0], "reference": ["1", 0],
                                                        "method": "wavelet"}},
        "4": {"class_type": "CPGD_ColorFix", "inputs": {"image": ["1", 0], "reference": ["2", 0],
                                                        "method": "adain"}},
    }
    with_sinks(g, images=["1", "2", "3", "4"])
    res = env.run(g)
    ref, const = res.output("1"), res.output("2")
    wav = res.output("3")
    assert wav.shape == ref.shape
    # constant image in -> (the low frequencies of) the reference out: mean colour of the reference
    torch.testing.assert_close(wav.mean((1, 2)), ref.mean((1, 2)), rtol=0, atol=0.02)
    ada = res.output("4")
    torch.testing.assert_close(ada.mean((1, 2)), const.mean((1, 2)), rtol=0, atol=1e-3)


def test_default_prompt_is_the_official_one(env):
    info = env.nodes.NODE_CLASS_MAPPINGS["CPGD_DefaultPrompt"].INPUT_TYPES()
    default = info["required"]["text"][1]["default"]
    assert default.startswith("high-quality, clear, fine details, sharp edges")


def test_video_sampler_cancel_lands_within_a_window(env):
    """Cancel pressed during the first sampling step of a one-window run stops the sampler there, not after
    the window's remaining steps (ComfyUI's model layers poll Cancel at every op; the video sampler adds its
    own check between windows)."""
    import sys
    fixtures = next(m for name, m in sys.modules.items() if name.endswith("cpc_test_nodes") and hasattr(m, "CANCEL_CALLS"))
    g = video_graph(chunk=4, overlap=0, tile=0, tile_overlap=0)
    g["12"]["inputs"]["steps"] = 6
    g["15"] = {"class_type": "CPGDTest_CancelAfterCalls", "inputs": {"model": ["1", 0], "calls": 1}}
    g["13"]["inputs"]["model"] = ["15", 0]
    res = env.run(g, expect_success=False)
    assert not res.success and res.error == "interrupted"
    assert 1 <= len(fixtures.CANCEL_CALLS) <= 2, f"{len(fixtures.CANCEL_CALLS)} model calls after Cancel (6 steps)"


def test_a_server_that_stays_up_conditions_each_prompt_on_its_own_clip(env):
    """ComfyUI reuses the loader's output across prompts; every Apply result must still use its own frames.

    The same graph with another clip of the same size, in one executor with ComfyUI's output caching: the
    second result must equal what a fresh server gives for that clip (not be conditioned on the first clip)."""
    fresh = {seed: latent(env.run(_with_clip(graph(), seed))) for seed in (3, 7)}
    assert float((fresh[3] - fresh[7]).abs().max()) > 1e-4  # the clips do make a difference
    server = env.executor()
    for seed in (3, 7, 3):
        got = env.run(_with_clip(graph(), seed), executor=server)
        torch.testing.assert_close(latent(got), fresh[seed], rtol=0, atol=1e-6)
    # the loader really was reused (else the test would not exercise ComfyUI's caching)
    cached = [d["nodes"] for e, d in got.messages if e == "execution_cached"][0]
    assert "5" in cached


def test_two_apply_nodes_on_one_loader_keep_their_own_hints(env):
    g = _with_clip(graph(), 3)
    g["24"] = dict(g["4"], inputs=dict(g["4"]["inputs"], seed=7))
    g["26"] = {"class_type": "CPGD_CPControlNetApply",
               "inputs": dict(g["6"]["inputs"], image=["24", 0])}
    g["28"] = {"class_type": "KSampler",
               "inputs": dict(g["8"]["inputs"], positive=["26", 0], negative=["26", 1])}
    with_sinks(g, latents=["28"])
    both = env.run(g)
    torch.testing.assert_close(latent(both, "8"), latent(env.run(_with_clip(graph(), 3))), rtol=0, atol=1e-6)
    torch.testing.assert_close(latent(both, "28"), latent(env.run(_with_clip(graph(), 7))), rtol=0, atol=1e-6)


def _with_clip(g: dict, seed: int) -> dict:
    g["4"]["inputs"]["seed"] = seed
    return g
