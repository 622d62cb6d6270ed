"""Write web/docs/<NodeId>.md help pages for every CPGD_ node from the nodes' own V3 schemas.

The frontend (1.32.9, ComfyUI 0.3.75) shows them in the node help panel: it fetches
/extensions/<pack>/docs/<NodeId>.md. The generated part (title, description, input and output tables,
all taken from /object_info, so the page never disagrees with the tooltips) is rewritten on every run;
anything below the NOTES marker is hand-written and kept.

    python scripts/make_help_pages.py            # boots ComfyUI in-process (no server needed)
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "web", "docs")
NOTES = "<!-- notes: hand-written below this line, kept by scripts/make_help_pages.py -->"


def object_info_in_process() -> dict:
    comfy_dir = os.environ.get("COMFYUI_PATH") or os.path.join(ROOT, ".build", "ComfyUI")
    sys.path.insert(0, comfy_dir)
    import comfy.options  # noqa: F401
    from comfy.cli_args import args
    args.cpu = True
    import nodes

    pack = os.path.join(comfy_dir, "custom_nodes", "cpgd_comfyui")

    async def boot() -> dict:
        await nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)
        if not await nodes.load_custom_node(pack if os.path.isdir(pack) else ROOT,
                                            ignore=set(nodes.NODE_CLASS_MAPPINGS), module_parent="custom_nodes"):
            raise SystemExit("the pack failed to load")
        return {k: _node_info(nodes, k) for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("CPGD_")}

    return asyncio.run(boot())


def _node_info(nodes_mod, node_id: str) -> dict:
    cls = nodes_mod.NODE_CLASS_MAPPINGS[node_id]
    # V3 nodes produce exactly the /object_info entry through this classmethod.
    return cls.GET_NODE_INFO_V1() if hasattr(cls, "GET_NODE_INFO_V1") else {}


def _type_and_opts(spec: list) -> tuple[str, dict]:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list):
        return "COMBO", {**opts, "options": kind}
    return str(kind), opts


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(node_id: str, info: dict) -> str:
    lines = [f"# {info.get('display_name') or node_id}", "", f"`{node_id}` · category `{info.get('category', '')}`", "",
             info.get("description", "").strip(), "", "## Inputs", "",
             "| input | type | default | description |", "|---|---|---|---|"]
    for group in ("required", "optional"):
        for name, spec in info.get("input", {}).get(group, {}).items():
            kind, opts = _type_and_opts(spec)
            default = opts.get("default", "")
            if kind == "COMBO" and opts.get("options"):
                shown = opts["options"] if len(opts["options"]) <= 8 else opts["options"][:8] + ["…"]
                kind = "COMBO: " + ", ".join(f"`{o}`" for o in shown) if name != "video" else "COMBO (file)"
            rng = ""
            if "min" in opts or "max" in opts:
                rng = f" (range {opts.get('min', '')}…{opts.get('max', '')})"
            tip = opts.get("tooltip", "") + ("" if group == "required" else " *Optional.*")
            lines.append(f"| `{name}` | {_cell(kind)} | {_cell(default)} | {_cell(tip + rng)} |")
    lines += ["", "## Outputs", "", "| output | type | description |", "|---|---|---|"]
    tips = info.get("output_tooltips") or []
    for i, (name, kind) in enumerate(zip(info.get("output_name", []), info.get("output", []))):
        kind = "COMBO" if isinstance(kind, list) else kind
        lines.append(f"| `{name}` | {_cell(kind)} | {_cell(tips[i] if i < len(tips) and tips[i] else '')} |")
    return "\n".join(lines).rstrip() + "\n"


def write_pages(infos: dict, out_dir: str = DOCS) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for node_id, info in sorted(infos.items()):
        path = os.path.join(out_dir, f"{node_id}.md")
        notes = ""
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                old = f.read()
            if NOTES in old:
                notes = old.split(NOTES, 1)[1]
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(node_id, info) + "\n" + NOTES + (notes if notes.strip() else "\n"))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DOCS)
    a = ap.parse_args(argv)
    infos = object_info_in_process()
    for path in write_pages(infos, a.out):
        print(os.path.relpath(path, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
