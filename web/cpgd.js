// CPGD for ComfyUI: codec-prior overlay on the video preview of "Load Video with Codec Priors".
//
// The stock frontend already previews the chosen input video (the upload widget) and the saved
// output video (SaveVideo). This extension only adds what it cannot show: the motion-vector colour
// wheel or the residual heat map drawn over the playing video, taken from the images that a
// downstream "Visualise Codec Priors" node produced (through any Preview/Save Image node).
// State lives in node.properties.cpgd_overlay, never in a widget value, so prompts are unchanged.
// Only the local ComfyUI server is contacted (/view through api.apiURL).
//
// This file is web/cpgd.js, i.e. served at /extensions/<pack>/cpgd.js: two levels below the site root.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const LOADER = "CPGD_LoadVideoWithPriors";
const VISUALIZER = "CPGD_VisualizePriors";
const MODES = ["off", "motion", "residual"];
const VIS_SLOT = { motion: 0, residual: 1 }; // output order of CPGD_VisualizePriors

function viewUrl(info) {
  const q = new URLSearchParams({ filename: info.filename, subfolder: info.subfolder ?? "", type: info.type ?? "output" });
  return api.apiURL(`/view?${q}`);
}

function inputVideoUrl(value) {
  // Combo values may carry a folder annotation ("clip.mp4 [input]") and a subfolder ("a/b.mp4").
  const m = /^(.*?)(?:\s*\[(input|output|temp)\])?$/.exec(String(value ?? ""));
  const path = m[1];
  const cut = path.lastIndexOf("/");
  return viewUrl({ filename: path.slice(cut + 1), subfolder: cut >= 0 ? path.slice(0, cut) : "", type: m[2] ?? "input" });
}

function nodeImages(id) {
  return app.nodeOutputs?.[String(id)]?.images ?? [];
}

// Images shown for `mode`: outputs of the image nodes fed by a VisualizePriors node that is fed by `node`.
function overlayImages(node, mode) {
  const graph = node.graph ?? app.graph;
  const slot = node.outputs?.findIndex((o) => o.name === "priors" || o.type === "CPGD_CODEC_PRIORS") ?? -1;
  if (slot < 0 || !(mode in VIS_SLOT)) return [];
  for (const linkId of node.outputs[slot].links ?? []) {
    const vis = graph.getNodeById(graph.links[linkId]?.target_id);
    if (!vis || vis.type !== VISUALIZER) continue;
    for (const outLink of vis.outputs?.[VIS_SLOT[mode]]?.links ?? []) {
      const images = nodeImages(graph.links[outLink]?.target_id);
      if (images.length) return images;
    }
  }
  return [];
}

function buildPanel(node) {
  const root = document.createElement("div");
  root.className = "cpgd-overlay-panel";
  root.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;";

  const bar = document.createElement("div");
  bar.style.cssText = "display:flex;gap:4px;align-items:center;font:11px sans-serif;color:#ccc;";
  const buttons = MODES.map((mode) => {
    const b = document.createElement("button");
    b.textContent = mode;
    b.dataset.mode = mode;
    b.style.cssText = "flex:1;padding:1px 4px;border-radius:4px;border:1px solid #555;cursor:pointer;";
    b.onclick = () => setMode(node, mode);
    bar.appendChild(b);
    return b;
  });
  const alpha = document.createElement("input");
  alpha.type = "range"; alpha.min = "0"; alpha.max = "1"; alpha.step = "0.05";
  alpha.value = String(node.properties.cpgd_overlay_opacity ?? 0.6);
  alpha.title = "overlay opacity";
  alpha.style.width = "60px";
  alpha.oninput = () => { node.properties.cpgd_overlay_opacity = Number(alpha.value); draw(); };
  bar.appendChild(alpha);

  const stage = document.createElement("div");
  stage.style.cssText = "position:relative;flex:1;min-height:0;";
  const video = document.createElement("video");
  video.muted = true; video.loop = true; video.controls = true; video.playsInline = true;
  video.style.cssText = "width:100%;height:100%;object-fit:contain;";
  const canvas = document.createElement("canvas");
  canvas.style.cssText = "position:absolute;inset:0;width:100%;height:100%;pointer-events:none;";
  const note = document.createElement("div");
  note.style.cssText = "position:absolute;left:4px;top:4px;font:11px sans-serif;color:#fff;text-shadow:0 0 2px #000;";
  stage.append(video, canvas, note);
  root.append(bar, stage);

  const cache = new Map(); // url -> HTMLImageElement
  // The overlay images are the loaded frames: source frames skip, skip+nth, ... (at most the cap).
  // The source frame on screen needs the frame rate, which <video> does not expose; it is measured
  // from requestVideoFrameCallback (smallest media-time step). Until then, map proportionally.
  let frameStep = 0;
  let lastMediaTime = -1;
  const onFrame = (_now, meta) => {
    if (lastMediaTime >= 0) {
      const d = meta.mediaTime - lastMediaTime;
      if (d > 1e-4 && (!frameStep || d < frameStep)) frameStep = d;
    }
    lastMediaTime = meta.mediaTime;
    draw();
    video.requestVideoFrameCallback?.(onFrame);
  };
  video.requestVideoFrameCallback?.(onFrame);

  function frameIndex(count) {
    const widget = (name, fallback) => Number(node.widgets?.find((w) => w.name === name)?.value ?? fallback);
    const skip = widget("skip_first_frames", 0), nth = Math.max(1, widget("select_every_nth", 1));
    if (!frameStep || !video.duration) {
      const t = video.duration > 0 ? video.currentTime / video.duration : 0;
      return Math.min(count - 1, Math.floor(t * count));
    }
    const source = Math.round(video.currentTime / frameStep);
    const i = Math.floor((source - skip) / nth);
    return i >= 0 && i < count ? i : -1; // -1: this part of the clip was not loaded, so nothing to overlay
  }

  function frameImage(images) {
    if (!images.length) return null;
    const index = frameIndex(images.length);
    if (index < 0) return null;
    const url = viewUrl(images[index]);
    if (!cache.has(url)) {
      const img = new Image();
      img.onload = () => draw();
      img.src = url;
      cache.set(url, img);
    }
    return cache.get(url);
  }

  function draw() {
    const mode = node.properties.cpgd_overlay ?? "off";
    for (const b of buttons) b.style.background = b.dataset.mode === mode ? "#3a6" : "#333";
    root.dataset.mode = mode;
    stage.style.display = mode === "off" ? "none" : "";
    const ctx = canvas.getContext("2d");
    if (mode === "off") return;
    const images = overlayImages(node, mode);
    root.dataset.frames = String(images.length);
    note.textContent = images.length ? "" : `run a ${VISUALIZER} -> Preview Image branch to see the ${mode} overlay`;
    const vw = video.videoWidth || 16, vh = video.videoHeight || 9;
    const box = stage.getBoundingClientRect();
    canvas.width = Math.max(1, Math.round(box.width)); canvas.height = Math.max(1, Math.round(box.height));
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const img = frameImage(images);
    if (!img || !img.complete || !img.naturalWidth) return;
    // Same letterboxing as object-fit:contain on the video, so the overlay lands on the picture.
    const s = Math.min(canvas.width / vw, canvas.height / vh);
    const w = vw * s, h = vh * s;
    ctx.globalAlpha = Number(node.properties.cpgd_overlay_opacity ?? 0.6);
    ctx.drawImage(img, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
  }

  let raf = 0;
  const loop = () => { draw(); raf = video.paused ? 0 : requestAnimationFrame(loop); };
  video.addEventListener("play", () => { if (!raf) raf = requestAnimationFrame(loop); });
  video.addEventListener("seeked", draw);
  video.addEventListener("loadeddata", draw);

  function setSource() {
    const value = node.widgets?.find((w) => w.name === "video")?.value;
    const url = value ? inputVideoUrl(value) : "";
    if (video.dataset.src !== url) {
      video.dataset.src = url;
      if (url) video.src = url; else video.removeAttribute("src");
    }
  }
  return { root, draw, setSource };
}

function setMode(node, mode) {
  node.properties.cpgd_overlay = MODES.includes(mode) ? mode : "off";
  node.cpgdPanel?.setSource();
  node.cpgdPanel?.draw();
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "CPGD.CodecPriorOverlay",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== LOADER) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.properties ??= {};
      this.properties.cpgd_overlay ??= "off";
      const panel = buildPanel(this);
      this.cpgdPanel = panel;
      // serialize:false keeps the panel out of widgets_values and out of the prompt.
      this.addDOMWidget("cpgd_overlay", "cpgd_overlay", panel.root, {
        serialize: false,
        hideOnZoom: false,
        getMinHeight: () => (this.properties.cpgd_overlay === "off" ? 28 : 200),
      });
      const videoWidget = this.widgets?.find((w) => w.name === "video");
      if (videoWidget) {
        const cb = videoWidget.callback;
        videoWidget.callback = function () {
          const out = cb?.apply(this, arguments);
          panel.setSource();
          return out;
        };
      }
      requestAnimationFrame(() => { panel.setSource(); panel.draw(); });
      return r;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const r = onConfigure?.apply(this, arguments);
      requestAnimationFrame(() => { this.cpgdPanel?.setSource(); this.cpgdPanel?.draw(); });
      return r;
    };

    const getExtraMenuOptions = nodeType.prototype.getExtraMenuOptions;
    nodeType.prototype.getExtraMenuOptions = function (canvas, options) {
      const r = getExtraMenuOptions?.apply(this, arguments);
      for (const mode of MODES) {
        options.push({
          content: `CPGD overlay: ${mode}${this.properties?.cpgd_overlay === mode ? " ✓" : ""}`,
          callback: () => setMode(this, mode),
        });
      }
      return r;
    };
  },

  // Redraw overlays when any image node reports new outputs (the overlay reads them).
  async setup() {
    api.addEventListener("executed", () => {
      for (const node of app.graph?.nodes ?? []) if (node.cpgdPanel) node.cpgdPanel.draw();
    });
  },
});

// For tests and users' scripts: switch a loader node's overlay by id, list the frames it would draw.
window.CPGD = {
  setOverlay(nodeId, mode) {
    const node = app.graph.getNodeById(nodeId);
    if (!node || node.type !== LOADER) throw new Error(`node ${nodeId} is not a ${LOADER}`);
    setMode(node, mode);
    return node.properties.cpgd_overlay;
  },
  overlayImages(nodeId, mode) {
    return overlayImages(app.graph.getNodeById(nodeId), mode);
  },
};
