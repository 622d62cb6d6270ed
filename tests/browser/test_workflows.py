"""Every shipped workflow, the way a user meets it: fetched from the template route, loaded into the
real frontend, converted by the frontend's graphToPrompt and queued from the page. The runnable ones
(stage one, inspect priors) must finish and their outputs must decode."""
from __future__ import annotations

import importlib.util
import io
import json
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WORKFLOWS_DIR = os.path.join(ROOT, "workflows")
SCREENSHOTS_DIR = os.path.join(ROOT, "docs", "screenshots")
TEST_FRAMES = 12
NAMES = sorted(os.path.splitext(f)[0] for f in os.listdir(WORKFLOWS_DIR) if f.endswith(".json"))


def _load_sibling(name: str):
    spec = importlib.util.spec_from_file_location(f"cpgd_browser_{name}", os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


specs = _load_sibling("workflow_specs")
_spec = importlib.util.spec_from_file_location("cpgd_make_thumbnails", os.path.join(ROOT, "scripts", "make_thumbnails.py"))
thumbs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(thumbs)

LOAD_JS = """
const [pack, name, given] = args;
let wf = given;
if (!wf) {
    // The template browser fetches exactly this route for a custom node pack's workflow.
    const r = await fetch(`/api/workflow_templates/${pack}/${name}.json`);
    if (!r.ok) throw new Error(`template fetch failed: HTTP ${r.status}`);
    wf = await r.json();
}
await app.loadGraphData(wf, true, true, name);
await new Promise(res => setTimeout(res, 300));
const registered = LiteGraph.registered_node_types;
const missing = app.graph.nodes.filter(n => !(n.type in registered)).map(n => n.type);
const dialogs = [...document.querySelectorAll('.p-dialog, .p-toast-message')].map(d => d.innerText.slice(0, 2000));
const saved = app.graph.serialize();
const badCombos = [];
for (const n of app.graph.nodes) for (const w of n.widgets ?? []) {
    const values = w.options?.values;
    if (w.type === 'combo' && Array.isArray(values) && !values.includes(w.value))
        badCombos.push({node: n.id, type: n.type, widget: w.name, value: w.value});
}
const p = await app.graphToPrompt();
app.canvas.ds.scale = 1; app.canvas.ds.offset = [0, 0];
app.extensionManager?.command?.execute?.('Comfy.Canvas.FitView');
app.graph.setDirtyCanvas(true, true);
await new Promise(res => setTimeout(res, 500));
return {original: wf, missing, dialogs, saved, badCombos, prompt: p.output, workflow: p.workflow};
"""

QUEUE_JS = """
const [edits] = args;
// Widget edits as a user makes them (value + callback), then the frontend's own conversion.
for (const [type, name, value] of edits) for (const n of app.graph.nodes) if (n.type === type) {
    const w = n.widgets.find(w => w.name === name);
    w.value = value; w.callback?.(value);
}
const p = await app.graphToPrompt();
try {
    return await app.api.queuePrompt(0, p);
} catch (e) {
    return {rejected: e.response ?? String(e)};
}
"""


@pytest.fixture(scope="module")
def object_info(comfy_server) -> dict:
    return comfy_server.get_json("/object_info")


@pytest.fixture(scope="module")
def pack_name(object_info) -> str:
    return next(v["python_module"] for k, v in object_info.items() if k.startswith("CPGD_")).split(".", 1)[1]


def _widgets_by_id(graph: dict) -> dict:
    return {n["id"]: (n["type"], n.get("widgets_values")) for n in graph["nodes"]}


def _decode_frames(data: bytes) -> int:
    import av
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_missing_node_detection_works(page, pack_name):
    """The checks below must be able to fail: a workflow with an unknown node type is caught."""
    with open(os.path.join(WORKFLOWS_DIR, "cpgd_inspect_priors.json"), encoding="utf-8") as f:
        wf = json.load(f)
    wf["nodes"][0]["type"] = "CPGD_NoSuchNode"
    res = page.run_async(LOAD_JS, pack_name, "broken", wf)
    assert res["missing"] == ["CPGD_NoSuchNode"]
    assert any("CPGD_NoSuchNode" in d for d in res["dialogs"]), res["dialogs"]
    page.driver.execute_script("document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click())")
    page.console_errors()


def test_every_workflow_is_specified_and_built():
    assert set(NAMES) == set(specs.WORKFLOWS), "workflows/ and workflow_specs.WORKFLOWS disagree"
    for name in NAMES:
        with open(os.path.join(WORKFLOWS_DIR, "api", f"{name}.json"), encoding="utf-8") as f:
            json.load(f)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_loads_converts_and_queues(name, page, comfy_server, object_info, pack_name, screenshot_dir,
                                           sample_video):
    page.console_errors()
    res = page.run_async(LOAD_JS, pack_name, name)
    assert not res["missing"], f"node types not registered: {res['missing']}"
    assert not [d for d in res["dialogs"] if any(w in d.lower() for w in ("missing", "error", "invalid"))], res["dialogs"]
    # Round trip: the frontend kept every node, link and widget value as saved.
    assert _widgets_by_id(res["saved"]) == _widgets_by_id(res["original"])
    assert sorted(map(tuple, res["saved"]["links"])) == sorted(map(tuple, res["original"]["links"]))
    model_files = {specs.SD_CHECKPOINT, specs.CPCONTROLNET_FILE, specs.OFFICIAL_CPFP_FILE}
    assert all(c["value"] in model_files for c in res["badCombos"]), res["badCombos"]
    # The shipped API copy is what the frontend produces from the UI file.
    with open(os.path.join(WORKFLOWS_DIR, "api", f"{name}.json"), encoding="utf-8") as f:
        api_copy = json.load(f)
    def strip(prompt: dict) -> dict:
        # Only the node's declared inputs: the frontend adds UI-only keys (e.g. "video-preview") a
        # moment after a video widget loads, which the server ignores.
        out = {}
        for k, v in prompt.items():
            spec = object_info[v["class_type"]]["input"]
            declared = {**spec.get("required", {}), **spec.get("optional", {})}
            out[k] = (v["class_type"], {n: x for n, x in v["inputs"].items() if n in declared})
        return out

    got, want = strip(res["prompt"]), strip(api_copy)
    assert got == want, json.dumps({k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)})
    # The frontend itself asks the Comfy registry which pack provides each custom node; the server's
    # CSP (connect-src 'self') blocks that, which is fine offline. Anything else is a real error.
    errors = [e for e in page.console_errors()
              if not ("api.comfy.org" in e and "Content Security Policy" in e)]
    assert not errors, errors

    shot = os.path.join(screenshot_dir, f"{name}.png")
    page.screenshot(shot)
    if os.environ.get("CPGD_UPDATE_SCREENSHOTS") == "1":
        thumbs.publish(shot, name)

    # Test runs stay short on a shared CPU: only the first frames of the 3 s sample (the shipped
    # workflow itself processes the whole clip).
    edits = [["CPGD_LoadVideoWithPriors", "frame_load_cap", TEST_FRAMES]] if name in specs.RUNNABLE else []
    queued = page.run_async(QUEUE_JS, edits)
    if name not in specs.RUNNABLE:
        # Without SD 2.1 / CPControlNet weights the server may only object to the missing model files.
        if "rejected" in queued:
            node_errors = queued["rejected"].get("node_errors", {})
            assert node_errors, queued
            for node_id, err in node_errors.items():
                for e in err["errors"]:
                    assert e["type"] == "value_not_in_list" and any(m in e["details"] for m in model_files), e
        return
    assert "prompt_id" in queued, f"the server rejected the graph: {json.dumps(queued)[:3000]}"
    hist = comfy_server.wait(queued["prompt_id"], timeout=600)
    status = hist["status"]
    assert status["status_str"] == "success", json.dumps(status)[:3000]
    files = [f for out in hist["outputs"].values() for key in ("images", "gifs", "videos")
             for f in out.get(key, []) if isinstance(f, dict) and "filename" in f]
    assert files, hist["outputs"]
    for f in files:
        if f.get("type") == "output":
            assert os.path.isfile(os.path.join(comfy_server.output_dir, f.get("subfolder", ""), f["filename"]))
        assert _decode_frames(comfy_server.view(f)) >= 1, f
    page.wait_for("return document.querySelectorAll('video, img').length > 0", 10, "no previews on the page")
    shot = os.path.join(screenshot_dir, f"{name}_result.png")
    page.screenshot(shot)
    if os.environ.get("CPGD_UPDATE_SCREENSHOTS") == "1":
        thumbs.publish(shot, f"{name}_result", thumbnail=False)
    _after_run_checks(name, page, hist, res, screenshot_dir, comfy_server, sample_video)


def _probe(data: bytes) -> dict:
    import av
    with av.open(io.BytesIO(data)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(video=0))
        return {"frames": frames, "fps": float(v.average_rate), "width": v.width, "has_audio": bool(c.streams.audio)}


def _after_run_checks(name, page, hist, res, screenshot_dir, comfy_server, sample_video) -> None:
    if name == "cpgd_stage_one_deblur":
        src = _probe(open(sample_video, "rb").read())
        videos = {f["filename"]: _probe(comfy_server.view(f)) for out in hist["outputs"].values()
                  for f in out.get("images", []) if f.get("type") == "output" and f["filename"].endswith(".mp4")}
        assert len(videos) == 2, videos
        for fname, v in videos.items():
            # Source fps and audio survive, every loaded frame is written.
            assert v["frames"] == TEST_FRAMES and abs(v["fps"] - src["fps"]) < 1e-3 and v["has_audio"], (fname, v)
        widths = sorted(v["width"] for v in videos.values())
        assert widths[1] >= 2 * widths[0] == 2 * src["width"], widths  # before | after is side by side
    if name == "cpgd_inspect_priors":
        loader = next(n["id"] for n in res["saved"]["nodes"] if n["type"] == "CPGD_LoadVideoWithPriors")
        frames = max(len(out.get("images", [])) for out in hist["outputs"].values())
        page.wait_for(f"return window.CPGD.overlayImages({loader}, 'motion').length > 0", 30,
                      "the page never received the motion previews")
        for mode in ("motion", "residual"):
            assert page.driver.execute_script(f"return window.CPGD.setOverlay({loader}, '{mode}')") == mode
            count = page.driver.execute_script(f"return window.CPGD.overlayImages({loader}, '{mode}').length")
            assert count == frames, (mode, count)
            # The overlay canvas really shows the visualisation (not just a state flag).
            page.wait_for(f"""
                const root = app.graph.getNodeById({loader}).cpgdPanel.root;
                root.querySelector('video').currentTime = 0.2;
                const c = root.querySelector('canvas');
                if (!c.width || !c.height) return false;
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                for (let i = 3; i < d.length; i += 4) if (d[i] > 0) return root.dataset.mode === '{mode}';
                return false;""", 30, f"the {mode} overlay was never drawn")
        shot = os.path.join(screenshot_dir, f"{name}_overlay.png")
        page.screenshot(shot)
        if os.environ.get("CPGD_UPDATE_SCREENSHOTS") == "1":
            thumbs.publish(shot, f"{name}_overlay", thumbnail=False)
        page.driver.execute_script(f"window.CPGD.setOverlay({loader}, 'off')")
