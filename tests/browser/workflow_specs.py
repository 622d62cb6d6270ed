"""The shipped workflows, described once: nodes, widget values by name, links by socket name.

``build_workflows.py`` turns these into UI-format JSON by creating the graph in the real frontend
(LiteGraph.createNode, connect, set widgets) and saving ``app.graph.serialize()``, so the files are
exactly what the frontend itself writes. Widget values not named here keep the node's defaults.
"""
from __future__ import annotations

SAMPLE = "cpgd_sample_blurry.mp4"
SD_CHECKPOINT = "v2-1_512-ema-pruned.safetensors"
CPCONTROLNET_FILE = "cpcontrolnet.safetensors"   # docs/CPC.md; replaced by the documented name when it lands
CPFP_FILE = "cpfp_lite.safetensors"              # shipped: cpgd_core/weights/cpfp_lite.safetensors

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
        "note": _note((40, 760), (
            "## Inspect codec priors\n\n"
            "Decodes the clip and shows what the H.264 stream already knows about it:\n\n"
            "- **Motion vectors** on a colour wheel (hue = direction, saturation = speed, black = no vector:"
            " I-frame, intra block, first frame).\n"
            "- **Residual** heat map: where motion compensation failed, i.e. edges, new content, blur.\n\n"
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


WORKFLOWS: dict[str, dict] = {
    "cpgd_inspect_priors": INSPECT_PRIORS,
}

# Workflows the browser tests queue and wait for (the others are loaded, converted and validated only:
# they need SD 2.1 weights and a GPU-sized run).
RUNNABLE = {"cpgd_stage_one_deblur", "cpgd_inspect_priors"}
