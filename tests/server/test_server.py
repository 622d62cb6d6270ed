"""The pack over HTTP: a real `main.py --cpu` server, prompts posted to /prompt, results fetched by /view."""
from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import os
import uuid

import av
import numpy as np
import pytest
from PIL import Image

_spec = importlib.util.spec_from_file_location(
    "cpgd_media_fixtures", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "media_fixtures.py"))
media = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(media)

VIDEO_NODES = {"CPGD_LoadVideoWithPriors", "CPGD_PriorsFromImages", "CPGD_VisualizePriors"}


def graph(video: str) -> dict:
    return {
        "1": {"class_type": "CPGD_LoadVideoWithPriors",
              "inputs": {"video": video, "skip_first_frames": 0, "frame_load_cap": 8, "select_every_nth": 1,
                         "custom_width": 0, "custom_height": 0, "export_qp": False}},
        "2": {"class_type": "CPGD_VisualizePriors",
              "inputs": {"priors": ["1", 1], "direction": "to_prev", "max_motion": 0.0, "residual_scale": 4.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "cpgd_srv/motion"}},
        "4": {"class_type": "CreateVideo", "inputs": {"images": ["2", 1], "fps": ["1", 2], "audio": ["1", 3]}},
        "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "filename_prefix": "cpgd_srv/residual",
                                                    "format": "mp4", "codec": "h264"}},
    }


@pytest.fixture(scope="module")
def pan_clip(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("media") / "pan.mp4")
    return media.write_video(path, media.pan_frames(), audio=True)


def test_object_info_lists_every_node_with_tooltips(comfy_server):
    info = comfy_server.get_json("/object_info")
    ours = {k: v for k, v in info.items() if k.startswith("CPGD")}
    assert VIDEO_NODES <= set(ours)
    missing = []
    for node_id, node in ours.items():
        assert node_id.startswith("CPGD_") and node["category"].split("/")[0] == "CPGD", node_id
        if not node["description"]:
            missing.append(f"{node_id} (description)")
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                if len(spec) < 2 or not spec[1].get("tooltip"):
                    missing.append(f"{node_id}.{name}")
        missing += [f"{node_id} -> {name}" for name, tip in zip(node["output_name"], node["output_tooltips"]) if not tip]
    assert not missing, "no tooltip/description: " + ", ".join(missing)
    assert ours["CPGD_LoadVideoWithPriors"]["input"]["required"]["video"][1].get("video_upload") is True


def test_upload_load_visualise_and_fetch(comfy_server, pan_clip):
    up = comfy_server.upload(pan_clip, "srv_pan.mp4")
    assert up["name"] == "srv_pan.mp4" and os.path.isfile(os.path.join(comfy_server.input_dir, "srv_pan.mp4"))
    entry = comfy_server.run(graph(up["name"]))
    assert entry["status"]["status_str"] == "success", entry["status"]

    pngs = entry["outputs"]["3"]["images"]
    assert len(pngs) == 8
    img = np.asarray(Image.open(io.BytesIO(comfy_server.view(pngs[1]))).convert("RGB"))
    assert img.shape == (media.PAN_H, media.PAN_W, 3)
    centre = img[8:-8, 16:-8].reshape(-1, 3).astype(np.float32)
    assert centre.std(0).max() < 25 and np.ptp(centre.mean(0)) > 25, "a uniform pan should be one saturated colour"

    vid = entry["outputs"]["5"]["images"][0]
    with av.open(io.BytesIO(comfy_server.view(vid))) as c:
        frames = list(c.decode(c.streams.video[0]))
        assert len(frames) == 8 and float(c.streams.video[0].average_rate) == pytest.approx(media.PAN_FPS)
        assert (frames[0].width, frames[0].height) == (media.PAN_W, media.PAN_H)
        assert len(c.streams.audio) == 1


def test_bad_input_reports_error_and_server_survives(comfy_server, pan_clip, tmp_path):
    bad = media.write_text(str(tmp_path / "renamed.mp4"))
    name = comfy_server.upload(bad, "srv_renamed.mp4")["name"]
    entry = comfy_server.run(graph(name))
    assert entry["status"]["status_str"] == "error"
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert errors and errors[0]["node_id"] == "1"
    msg = errors[0]["exception_message"]
    assert "srv_renamed.mp4" in msg and "not a readable media file" in msg and "Traceback" not in msg

    # a missing file is rejected at validation with the file named
    resp = comfy_server.queue(graph("nowhere.mp4"))
    assert resp.get("http_status") == 400 and "nowhere.mp4" in json.dumps(resp.get("node_errors"))

    # the server is still up and runs the next good prompt
    assert comfy_server.proc.poll() is None
    name = comfy_server.upload(pan_clip, "srv_pan2.mp4")["name"]
    assert comfy_server.run(graph(name))["status"]["status_str"] == "success"


def test_websocket_reports_loader_progress(comfy_server, pan_clip):
    import aiohttp  # a ComfyUI requirement: always there with the server
    name = comfy_server.upload(pan_clip, "srv_pan_ws.mp4")["name"]
    prompt = graph(name)
    prompt["1"]["inputs"]["frame_load_cap"] = 6  # differs from the other tests: no cache hit

    async def go() -> list:
        client_id = uuid.uuid4().hex
        events = []
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"{comfy_server.base_url}/ws?clientId={client_id}") as ws:
                async with s.post(f"{comfy_server.base_url}/prompt",
                                  json={"prompt": prompt, "client_id": client_id}) as r:
                    prompt_id = (await r.json())["prompt_id"]
                while True:
                    msg = await asyncio.wait_for(ws.receive(), timeout=120)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    data = json.loads(msg.data)
                    events.append(data)
                    if data["type"] in ("execution_success", "execution_error") and \
                            data["data"].get("prompt_id") == prompt_id:
                        return events

    events = asyncio.run(go())
    assert events[-1]["type"] == "execution_success"
    progress = [e["data"] for e in events if e["type"] == "progress" and e["data"]["node"] == "1"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 6
