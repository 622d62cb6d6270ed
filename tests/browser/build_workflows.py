"""Build workflows/*.json in the real frontend from workflow_specs.py.

    .build/venv/bin/python tests/browser/build_workflows.py [name ...]

Starts ComfyUI (tests/conftest.py's ComfyServer) with the pack, opens the page in headless Chromium,
creates each graph with the frontend's own LiteGraph calls and writes ``app.graph.serialize()``
(UI format, exactly what "Save" writes) plus the API-format prompt from ``app.graphToPrompt()`` to
workflows/api/. Thumbnails come from the browser tests (CPGD_UPDATE_SCREENSHOTS=1).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


BUILD_JS = """
const [spec] = args;
app.graph.clear();
const made = {};
for (const [key, n] of Object.entries(spec.nodes)) {
    const node = LiteGraph.createNode(n.type);
    if (!node) throw new Error(`node type not registered: ${n.type}`);
    if (n.title) node.title = n.title;
    app.graph.add(node);
    node.pos = [...n.pos];
    for (const [name, value] of Object.entries(n.widgets || {})) {
        const w = node.widgets?.find(w => w.name === name);
        if (!w) throw new Error(`${n.type} has no widget ${name}: ${node.widgets?.map(w => w.name)}`);
        w.value = value;
        w.callback?.(value);
    }
    const auto = node.computeSize();
    node.setSize(n.size ? [Math.max(n.size[0], auto[0]), Math.max(n.size[1], auto[1])] : auto);
    made[key] = node;
}
for (const [src, out, dst, inp] of spec.links) {
    const a = made[src], b = made[dst];
    const o = a.outputs.findIndex(s => s.name === out);
    const i = b.inputs.findIndex(s => s.name === inp);
    if (o < 0) throw new Error(`${a.type} has no output ${out}: ${a.outputs.map(s => s.name)}`);
    if (i < 0) throw new Error(`${b.type} has no input ${inp}: ${b.inputs.map(s => s.name)}`);
    if (!a.connect(o, b, i)) throw new Error(`could not connect ${src}.${out} -> ${dst}.${inp}`);
}
// Round trip through loadGraphData, so the file is what the frontend writes for a loaded workflow.
await app.loadGraphData(app.graph.serialize(), true, true, spec.name);
const workflow = app.graph.serialize();
const prompt = await app.graphToPrompt();
// JSON.stringify as the frontend's own Save does: undefined fields vanish instead of becoming null.
return {workflow: JSON.stringify(workflow), api: prompt.output};
"""


def _types_in(node: dict) -> list[tuple[str, str]]:
    """(input name, type) of a node's declared inputs, required first."""
    out = []
    for group in ("required", "optional"):
        for name, spec in node["input"].get(group, {}).items():
            out.append((name, spec[0] if isinstance(spec[0], str) else "COMBO"))
    return out


def resolve(spec: dict, object_info: dict) -> dict:
    """Resolve type-based references against the live schema, so a spec survives socket renames.

    node type "provides:T"  -> the CPGD_ node with an output of type T
    node type "consumes:T"  -> the CPGD_ node with an input of type T and an IMAGE output
    socket "@T"             -> that node's first output / input of type T
    widget "@file"          -> the node's first COMBO input
    """
    ours = {k: v for k, v in object_info.items() if k.startswith("CPGD_")}

    def node_type(t: str) -> str:
        kind, _, socket = t.partition(":")
        if kind == "provides":
            hits = [k for k, v in ours.items() if socket in v["output"]]
        elif kind == "consumes":
            hits = [k for k, v in ours.items() if socket in dict(_types_in(v)).values() and "IMAGE" in v["output"]]
        else:
            return t
        if len(hits) != 1:
            raise SystemExit(f"cannot resolve node type {t!r}: candidates {hits}")
        return hits[0]

    nodes = {}
    for key, n in spec["nodes"].items():
        n = {**n, "type": node_type(n["type"])}
        if any(w.startswith("@") for w in n.get("widgets", {})):
            combos = [name for name, t in _types_in(object_info[n["type"]]) if t == "COMBO"]
            n["widgets"] = {(combos[0] if w == "@file" else w): v for w, v in n["widgets"].items()}
        nodes[key] = n
    links = []
    for src, out, dst, inp in spec["links"]:
        if out.startswith("@"):
            info = object_info[nodes[src]["type"]]
            out = info["output_name"][info["output"].index(out[1:])]
        if inp.startswith("@"):
            inp = next(name for name, t in _types_in(object_info[nodes[dst]["type"]]) if t == inp[1:])
        links.append((src, out, dst, inp))
    return {**spec, "nodes": nodes, "links": links}


def build(names: list[str] | None = None) -> list[str]:
    root_conftest = _load("cpgd_tests_conftest", os.path.join(ROOT, "tests", "conftest.py"))
    browser = _load("cpgd_browser_conftest", os.path.join(HERE, "conftest.py"))
    specs = _load("cpgd_workflow_specs", os.path.join(HERE, "workflow_specs.py"))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tmp = tempfile.mkdtemp(prefix="cpgd_build_wf_")
    server = root_conftest.ComfyServer(tmp)
    written = []
    try:
        out = os.path.join(tmp, "sample")
        # With the clip present the frontend adds its video preview, as it will for users (CPGD_SAMPLE_VIDEO
        # overrides the generated sample).
        if os.environ.get("CPGD_SAMPLE_VIDEO"):
            shutil.copy(os.environ["CPGD_SAMPLE_VIDEO"], os.path.join(server.input_dir, specs.SAMPLE))
        elif subprocess.run([sys.executable, "-m", "cpgd_core", "sample", "--out", out], cwd=ROOT).returncode == 0:
            shutil.copy(os.path.join(out, "sample_blurry.mp4"), os.path.join(server.input_dir, specs.SAMPLE))
        opts = webdriver.ChromeOptions()
        opts.binary_location = browser.CHROMIUM
        for flag in browser.CHROME_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={os.path.join(tmp, 'profile')}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        drv = webdriver.Chrome(service=Service(browser.CHROMEDRIVER), options=opts)
        drv.set_script_timeout(120)
        try:
            if not os.path.isfile(os.path.join(server.input_dir, specs.SAMPLE)):
                raise SystemExit("no sample clip: `python -m cpgd_core sample` failed and CPGD_SAMPLE_VIDEO is unset")
            page = browser.ComfyPage(drv, server)
            page.open()
            object_info = server.get_json("/object_info")
            os.makedirs(os.path.join(ROOT, "workflows", "api"), exist_ok=True)
            for name, spec in specs.WORKFLOWS.items():
                if names and name not in names:
                    continue
                result = page.run_async(BUILD_JS, {**resolve(spec, object_info), "name": name})
                path = os.path.join(ROOT, "workflows", f"{name}.json")
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(json.loads(result["workflow"]), f, indent=2)
                    f.write("\n")
                with open(os.path.join(ROOT, "workflows", "api", f"{name}.json"), "w", encoding="utf-8") as f:
                    json.dump(result["api"], f, indent=2)
                    f.write("\n")
                written.append(path)
                print("wrote", os.path.relpath(path, ROOT))
        finally:
            drv.quit()
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return written


if __name__ == "__main__":
    build(sys.argv[1:] or None)
