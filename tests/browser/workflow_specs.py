"""The shipped workflows, described once: nodes, widget values by name, links by socket name.

``build_workflows.py`` turns these into UI-format JSON by creating the graph in the real frontend
(LiteGraph.createNode, connect, set widgets) and saving ``app.graph.serialize()``, so the files are
exactly what the frontend itself writes. Widget values not named here keep the node's defaults.
"""
from __future__ import annotations

SAMPLE = "cpgd_sample_blurry.mp4"
SD_CHECKPOINT = "v2-1_512-ema-pruned.safetensors"
CPCONTROLNET_FILE = "cpgd_cpcontrolnet.safetensors"  # models/controlnet or models/cpgd (nodes/cpc_nodes.py)
CPFP_FILE = "cpfp_lite (shipped)"                # the loader's entry for cpgd_core/weights/cpfp_lite.safetensors
OFFICIAL_CPFP_FILE = "net_g_cpgd_official.pth"    # the authors' stage-one checkpoint, renamed, in models/cpgd

# node: key -> {"type", "pos", "widgets" (name -> value), optional "title", "size", "mode"}
# link: (source key, output name, target key, input name)


def _note(pos: tuple[int, int], text: str, size: tuple[int, int] = (380, 220)) -> dict:
    return {"type": "MarkdownNote", "pos": pos, "size": size, "widgets": {"text": text}, "title": "Read me"}


INSPECT_PRIORS = {
    "nodes": {
        "load": {"type": "CPGD_LoadVideoWithPriors", "pos": (40, 120),
                 "widgets": {"video": SAMPLE, "frame_load_cap": 24}},
        "vis": {"type": "CPGD_VisualizePriors", "pos": (480, 120), "widgets": {"direction": "to_prev"}},
        "frames": {"type": "PreviewImage", "pos": (880, 40), "size": (340, 300), "title": "Frames"},
        "motion": {"type": "PreviewImage", "pos": (880, 380), "size": (340, 300),
                   "title": "Motion vectors (colour wheel)"},
        "residual": {"type": "PreviewImage", "pos": (1250, 380), "size": (340, 300), "title": "Residual (heat map)"},
        "info": {"type": "PreviewAny", "pos": (480, 420), "title": "Decode info"},
        "note": _note((-440, 120), (
            "## Inspect codec priors\n\n"
            "Decodes the clip and shows what the H.264 stream already knows about it:\n\n"
            "- **Motion vectors** on a colour wheel (hue = direction, saturation = speed, white = still,"
            " black = no vector: I-frame, intra block, first frame).\n"
            "- **Residual** heat map, signed (red/yellow brighter, blue/cyan darker than the codec's"
            " prediction): where motion compensation failed, i.e. edges, new content, blur.\n\n"
            "After a run, the loader's *motion* / *residual* buttons overlay these on the video preview.\n\n"
            f"Put `{SAMPLE}` (or any clip) in ComfyUI's `input/` folder.")),
    },
    "links": [
        ("load", "priors", "vis", "priors"),
        ("load", "images", "frames", "images"),
        ("vis", "motion", "motion", "images"),
        ("vis", "residual", "residual", "images"),
        ("load", "info", "info", "source"),
    ],
}


def _stage_one(y: int = 120, cpfp_pos: tuple[int, int] = (40, 1020)) -> tuple[dict, list]:
    """Loader -> CPFP restore, shared by every deblurring workflow (keys: load, cpfp, restore).

    The CPFP nodes are referred to by socket type (resolved against /object_info by build_workflows.py):
    the loader is the node providing CPGD_CPFP_MODEL, the restore node the one consuming it.
    """
    nodes = {
        "load": {"type": "CPGD_LoadVideoWithPriors", "pos": (40, y), "widgets": {"video": SAMPLE}},
        "cpfp": {"type": "provides:CPGD_CPFP_MODEL", "pos": cpfp_pos, "widgets": {"@file": CPFP_FILE}},
        "restore": {"type": "consumes:CPGD_CPFP_MODEL", "pos": (480, y)},
    }
    links = [
        ("load", "images", "restore", "@IMAGE"),
        ("load", "priors", "restore", "@CPGD_CODEC_PRIORS"),
        ("cpfp", "@CPGD_CPFP_MODEL", "restore", "@CPGD_CPFP_MODEL"),
    ]
    return nodes, links


def _save_video(key: str, pos: tuple[int, int], prefix: str, images: tuple[str, str]) -> tuple[dict, list]:
    """CreateVideo with the source fps and audio -> SaveVideo (keys: <key>_create, <key>_save)."""
    nodes = {
        f"{key}_create": {"type": "CreateVideo", "pos": pos},
        f"{key}_save": {"type": "SaveVideo", "pos": (pos[0] + 360, pos[1]), "size": (400, 420),
                        "widgets": {"filename_prefix": prefix}},
    }
    links = [
        (images[0], images[1], f"{key}_create", "images"),
        ("load", "fps", f"{key}_create", "fps"),
        ("load", "audio", f"{key}_create", "audio"),
        (f"{key}_create", "VIDEO", f"{key}_save", "video"),
    ]
    return nodes, links


def _stage_one_workflow() -> dict:
    nodes, links = _stage_one()
    for extra in (_save_video("out", (900, 40), "cpgd/deblurred", ("restore", "@IMAGE")),
                  _save_video("ba", (900, 560), "cpgd/before_after", ("restore", "side_by_side"))):
        nodes.update(extra[0])
        links += extra[1]
    nodes["ba_save"]["title"] = "Before | after"
    nodes["ba_preview"] = {"type": "PreviewImage", "pos": (480, 640), "size": (380, 300),
                           "title": "Before | after (frames)"}
    nodes["traj_preview"] = {"type": "PreviewImage", "pos": (480, 980), "size": (380, 300),
                             "title": "Blur trajectory (what quality mode inverts)"}
    nodes["note"] = _note((-440, 120), (
        "## Stage one: deblurring\n\n"
        "Runs on a CPU with the shipped weights.\n\n"
        "- **Load Video with Codec Priors** decodes the clip and reads its H.264 priors.\n"
        "- **CPFP Restore**, mode *quality* (default): measures each pixel's blur trajectory from the motion "
        "between frames and inverts it with the non-blind solver, frame by frame (slow on a CPU: seconds per "
        "frame). Mode *fast*: the CPFP network guided by the codec priors, in overlapping temporal chunks.\n"
        "- **Create Video → Save Video** keep the source fps and audio.\n"
        "- The second video shows the input and the result side by side; the trajectory preview shows the "
        "measured blur (hue = axis, saturation = length, white = sharp).\n\n"
        f"Put `{SAMPLE}` (or any clip) in ComfyUI's `input/` folder."), size=(380, 300))
    links += [("restore", "side_by_side", "ba_preview", "images"),
              ("restore", "trajectory", "traj_preview", "images")]
    return {"nodes": nodes, "links": links}


def _stage_two(sampler: str) -> dict:
    """Stage one -> CPControlNet -> sampler -> VAE decode -> colour fix -> video with fps and audio."""
    nodes, links = _stage_one(cpfp_pos=(480, 560))
    nodes["load"]["widgets"]["frame_load_cap"] = 16
    nodes.update({
        "ckpt": {"type": "CheckpointLoaderSimple", "pos": (40, 900), "widgets": {"ckpt_name": SD_CHECKPOINT}},
        "prompt": {"type": "CPGD_DefaultPrompt", "pos": (480, 720), "size": (380, 160)},
        "pos": {"type": "CLIPTextEncode", "pos": (900, 560), "title": "Positive prompt", "size": (380, 160)},
        "neg": {"type": "CLIPTextEncode", "pos": (900, 760), "title": "Negative prompt", "size": (380, 160),
                "widgets": {"text": "blurry, motion blur, low quality, noisy, oversmoothed"}},
        "cn": {"type": "CPGD_CPControlNetLoader", "pos": (480, 940), "widgets": {"control_net_name": CPCONTROLNET_FILE}},
        "apply": {"type": "CPGD_CPControlNetApply", "pos": (1320, 120)},
        "encode": {"type": "VAEEncode", "pos": (900, 400), "title": "Encode stage-one frames"},
        "decode": {"type": "VAEDecode", "pos": (2120, 120)},
        "colorfix": {"type": "CPGD_ColorFix", "pos": (2120, 260)},
    })
    links += [
        ("prompt", "text", "pos", "text"),
        ("ckpt", "CLIP", "pos", "clip"),
        ("ckpt", "CLIP", "neg", "clip"),
        ("pos", "CONDITIONING", "apply", "positive"),
        ("neg", "CONDITIONING", "apply", "negative"),
        ("cn", "CONTROL_NET", "apply", "control_net"),
        ("ckpt", "VAE", "apply", "vae"),
        ("restore", "@IMAGE", "apply", "image"),
        ("load", "priors", "apply", "priors"),
        ("restore", "@IMAGE", "encode", "pixels"),
        ("ckpt", "VAE", "encode", "vae"),
        ("ckpt", "VAE", "decode", "vae"),
        ("decode", "IMAGE", "colorfix", "image"),
        ("restore", "@IMAGE", "colorfix", "reference"),
    ]
    if sampler == "ksampler":
        nodes["sampler"] = {"type": "KSampler", "pos": (1720, 120),
                            "widgets": {"steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
                                        "denoise": 1.0, "control_after_generate": "fixed"}}
        links += [("ckpt", "MODEL", "sampler", "model"), ("apply", "positive", "sampler", "positive"),
                  ("apply", "negative", "sampler", "negative"), ("encode", "LATENT", "sampler", "latent_image"),
                  ("sampler", "LATENT", "decode", "samples")]
    else:
        nodes["load"]["widgets"]["frame_load_cap"] = 0
        nodes.update({
            "select": {"type": "KSamplerSelect", "pos": (1320, 560), "widgets": {"sampler_name": "euler"}},
            "sigmas": {"type": "BasicScheduler", "pos": (1320, 700),
                       "widgets": {"scheduler": "normal", "steps": 20, "denoise": 1.0}},
            "sampler": {"type": "CPGD_VideoSampler", "pos": (1720, 120), "size": (360, 420),
                        "widgets": {"chunk_size": 6, "chunk_overlap": 2, "tile_size": 64, "tile_overlap": 32,
                                    "noise_mode": "mv-warped", "cfg": 1.0, "control_after_generate": "fixed"}},
        })
        links += [("ckpt", "MODEL", "sigmas", "model"),
                  ("ckpt", "MODEL", "sampler", "model"), ("apply", "positive", "sampler", "positive"),
                  ("apply", "negative", "sampler", "negative"), ("encode", "LATENT", "sampler", "latent"),
                  ("select", "SAMPLER", "sampler", "sampler"), ("sigmas", "SIGMAS", "sampler", "sigmas"),
                  ("load", "priors", "sampler", "priors"), ("sampler", "LATENT", "decode", "samples")]
    video_nodes, video_links = _save_video("out", (2120, 440), "cpgd/cpgd", ("colorfix", "IMAGE"))
    nodes.update(video_nodes)
    links += video_links
    long_video = sampler != "ksampler"
    nodes["note"] = _note((-480, 120), (
        ("## Long video: chunked CPGD sampler\n\n"
         "Same pipeline as *Full CPGD*, but **CPGD Video Sampler** samples the clip in chunks of "
         "`chunk_size` frames sharing `chunk_overlap` frames (cross-faded) and in latent tiles of "
         "`tile_size` with `tile_overlap` (Gaussian-blended), so memory stays bounded for any length "
         "and resolution. `noise_mode` mv-warped carries the initial noise along the codec motion vectors. "
         "Sampler and scheduler come from the stock *KSamplerSelect* / *BasicScheduler* nodes.\n\n")
        if long_video else
        ("## Full CPGD (stage one + CPControlNet + diffusion)\n\n"
         "Stage one deblurs with CPFP; its frames and the codec priors then steer SD 2.1-base through "
         "the **CPControlNet**. The sampler is the stock **KSampler** (swap sampler, scheduler or the "
         "node itself freely). **Colour Fix** restores the stage-one colours; the video keeps the "
         "source fps and audio.\n\n")) + (
        "Model files (not downloaded by this pack):\n\n"
        f"- `models/checkpoints/{SD_CHECKPOINT}` (Stable Diffusion 2.1-base)\n"
        f"- `models/controlnet/{CPCONTROLNET_FILE}` (CPControlNet, see the README)\n\n"
        "Needs a GPU for useful speed."), size=(420, 300))
    return {"nodes": nodes, "links": links}


def _official_weights() -> dict:
    """Full CPGD with the authors' weights: official stage one at the official test settings -> CPC -> KSampler."""
    wf = _stage_two("ksampler")
    nodes = wf["nodes"]
    nodes["cpfp"]["widgets"] = {"@file": OFFICIAL_CPFP_FILE}
    # the official network is fast mode's (quality mode would not use it)
    nodes["restore"]["widgets"] = {"frames_per_chunk": 48, "chunk_overlap": 4, "tile_size": 256, "tile_overlap": 64,
                                   "mode": "fast"}
    nodes["note"] = _note((-480, 120), (
        "## Full CPGD with the authors' weights\n\n"
        "Stage one runs the **official CPFP network** at the official test settings (48-frame windows, "
        "256 px tiles), its backward flows refined by RAFT; the CPControlNet (the authors' `.pt` loads too) "
        "steers SD 2.1-base through the stock **KSampler**; **Colour Fix** restores the stage-one colours.\n\n"
        "Model files (not downloaded by this pack):\n\n"
        f"- `models/cpgd/{OFFICIAL_CPFP_FILE}` (the official stage-one checkpoint, any name)\n"
        "- `models/cpgd/raft-things.pth` (RAFT; without it stage one runs on the inverted motion vectors, "
        "see the restore node's `info`)\n"
        f"- `models/checkpoints/{SD_CHECKPOINT}` (Stable Diffusion 2.1-base)\n"
        f"- `models/controlnet/{CPCONTROLNET_FILE}` (CPC ControlNet)\n\n"
        "Needs a GPU."), size=(420, 340))
    return wf


WORKFLOWS: dict[str, dict] = {
    "cpgd_stage_one_deblur": _stage_one_workflow(),
    "cpgd_full": _stage_two("ksampler"),
    "cpgd_official_weights": _official_weights(),
    "cpgd_inspect_priors": INSPECT_PRIORS,
    "cpgd_long_video": _stage_two("video_sampler"),
}

# Workflows the browser tests queue and wait for (the others are loaded, converted and validated only:
# they need SD 2.1 weights and a GPU-sized run).
RUNNABLE = {"cpgd_stage_one_deblur", "cpgd_inspect_priors"}
