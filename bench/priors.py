"""Codec-prior costs and accuracy: ``python bench/priors.py [--frames 48] [--no-profile]``.

1. Per-frame cost against decoding the same file (``x decode-only``), all in one run: each measurement is
   repeated ``--reps`` times round-robin and the median kept, so a load on the machine weighs on both sides
   of every ratio alike, and a ratio is the median of the ratios measured in the same round. Clips: synthetic
   pans of a real photo, H.264 crf 20 at 1280x720 (IPPP, IPPP with 3 references, IBBP) and 3840x2160 (IPPP),
   and HEVC at 1280x720, which takes the libx264 re-encode fallback. Rows: decode only (PyAV, frame threads),
   decode + RGB, the full prior pipeline (``iter_decoded``: MVs, block-grid flows both ways, MC residual, RGB;
   consumed frame by frame as the chunked restoration does, and as the decode rows drop their frames),
   ``load_video`` (the same, every frame kept and stacked to tensors: memory that a stream does not allocate;
   and as the Load Video node takes it, in ComfyUI's IMAGE layout), and OpenCV DIS (medium preset, both
   directions, grey frames, decoding excluded) with its median end-point error beside that of the priors on
   the same 720p clip.
2. Profile (``--no-profile`` skips it): CPU time per frame of each stage of the prior pipeline (single-threaded,
   to attribute it).
3. Median end-point error of the codec flow against the true flow on synthetic clips. x264 does not encode the
   B-frame clips bit-identically from run to run, which moves those rows by up to about 0.006 px.
4. A late start: loading 16 frames from the end of a long 720p clip (keyframe every 2 s) against loading the
   first 16 (decoding seeks to the keyframe before the start instead of decoding from frame 0).
Timings are wall-clock; on a shared machine read single figures as +-30 %, ratios as +-15 %.
"""
from __future__ import annotations

import argparse
import builtins
import collections
import contextlib
import os
import sys
import tempfile
import time
from typing import Callable

import av
import cv2
import numpy as np
import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cpgd_core.codec.stream as decode_mod  # noqa: E402  (the decoding pipeline: SMOOTH_FLOWS lives there)
import cpgd_core.codec.reencode as reencode_mod  # noqa: E402
from cpgd_core.codec.decode import frame_to_rgb, iter_decoded, load_video  # noqa: E402
from cpgd_core.codec.encode import write_video  # noqa: E402
from cpgd_core.codec.flow import magnitude  # noqa: E402
from cpgd_core.codec.reencode import encode_and_extract  # noqa: E402
from cpgd_core.data.synth import load_photo, make_blur_clip, pan_zoom_path, render_path  # noqa: E402

H264_PARAMS = (("IPPP", "bframes=0:ref=1"), ("IPPP ref=3", "bframes=0:ref=3"),
               ("IBBP", "bframes=2:b-pyramid=none:ref=1"))


def _decode_only(path: str, rgb: bool) -> None:
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for fr in c.decode(s):
            if rgb:
                frame_to_rgb(fr)


def _epe(pri, true: torch.Tensor, which: str = "prev", mean: bool = False) -> float:
    f = (pri.flow_to_prev if which == "prev" else pri.flow_to_next).float()
    v = (pri.valid_to_prev if which == "prev" else pri.valid_to_next)[:, 0]
    s = pri.flow_stride
    t = true[:, :, s // 2::s, s // 2::s][..., :f.shape[-2], :f.shape[-1]]
    e = magnitude(f - t)[v]
    if not e.numel():
        return float("nan")
    return float(e.mean() if mean else e.median())


def _write_streamed(path: str, img: np.ndarray, size: tuple[int, int], frames: int, params: str,
                    codec: str = "libx264", chunk: int = 8) -> np.ndarray:
    """Render and encode a pan clip a few frames at a time (a 4K clip would not fit in memory); returns the
    true flows of the first ``chunk`` frames only when the clip is small enough to keep them."""
    mats = pan_zoom_path(img.shape, size, frames, 4.0 * size[0] / 1280, 1.5 * size[0] / 1280, zoom_per_frame=1.002)

    def parts():
        for i in range(0, frames, chunk):
            yield torch.from_numpy(render_path(img, mats[i:i + chunk], size)[0])

    write_video(path, parts(), 30, codec=codec, crf=20, preset="veryfast", x264_params=params, overwrite=True)
    return mats


@contextlib.contextmanager
def _smoothing(on: bool):
    """stream.SMOOTH_FLOWS set to ``on`` for the block (to print the raw block vectors' errors beside)."""
    old, decode_mod.SMOOTH_FLOWS = decode_mod.SMOOTH_FLOWS, on
    try:
        yield
    finally:
        decode_mod.SMOOTH_FLOWS = old


class _Timer:
    """Round-robin repeated measurements: ``add`` registers a job, ``run`` repeats them all ``reps`` times."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, Callable[[], None], int]] = []
        self.times: dict[str, list[float]] = collections.defaultdict(list)

    def add(self, key: str, fn: Callable[[], None], frames: int) -> None:
        self.jobs.append((key, fn, frames))

    def run(self, reps: int) -> None:
        for key, fn, _ in self.jobs:  # warm caches (files, code paths) once
            fn()
        for _ in range(reps):
            for key, fn, frames in self.jobs:
                t0 = time.perf_counter()
                fn()
                self.times[key].append((time.perf_counter() - t0) / frames * 1000)

    def ms(self, key: str) -> float:
        return float(np.median(self.times[key]))

    def ratio(self, key: str, base: str) -> float:
        """Median over the repetitions of key / base measured in the same round: the pairs share the machine's
        state of the moment, so a slow or fast spell does not land on one side of the ratio only."""
        return float(np.median(np.asarray(self.times[key]) / np.asarray(self.times[base])))


def _dis_both_ways(greys: list[np.ndarray]) -> list[np.ndarray]:
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    out = []
    for a, b in zip(greys[1:], greys[:-1]):
        out.append(dis.calc(a, b, None))  # field on frame t into t-1 (same convention as flow_to_prev)
        dis.calc(b, a, None)
    return out


def timing(frames: int, frames_4k: int, reps: int, tmp: str,
           dis_frames: int = 16) -> list[tuple[str, str, float, float]]:
    """Rows (clip, path, ms / frame, x decode-only of that clip)."""
    img = load_photo("astronaut")
    size = (1280, 720)
    mats = pan_zoom_path(img.shape, size, frames, 4.0, 1.5, zoom_per_frame=1.002)
    clip, true = render_path(img, mats, size)
    clip, true = torch.from_numpy(clip), torch.from_numpy(true)
    timer = _Timer()
    clips: list[tuple[str, str, int]] = []
    for name, params in H264_PARAMS:
        path = os.path.join(tmp, f"{name.replace(' ', '_').replace('=', '')}.mp4")
        write_video(path, clip, 30, crf=20, preset="veryfast", x264_params=params, overwrite=True)
        clips.append((f"H.264 {name} 1280x720", path, frames))
    hevc = os.path.join(tmp, "hevc.mkv")
    write_video(hevc, clip, 30, codec="libx265", crf=20, preset="veryfast", overwrite=True)
    clips.append(("HEVC 1280x720 (re-encode fallback)", hevc, frames))
    if frames_4k:
        path4k = os.path.join(tmp, "uhd.mp4")
        _write_streamed(path4k, img, (3840, 2160), frames_4k, "bframes=0:ref=1")
        clips.append(("H.264 IPPP 3840x2160", path4k, frames_4k))
    for label, path, n in clips:
        timer.add(f"{label}|decode only", lambda p=path: _decode_only(p, False), n)
        timer.add(f"{label}|decode + RGB", lambda p=path: _decode_only(p, True), n)
        timer.add(f"{label}|full priors (iter_decoded)", lambda p=path: collections.deque(iter_decoded(p), 0), n)
        if n == frames and "HEVC" not in label:
            timer.add(f"{label}|load_video (+ stacking to tensors)", lambda p=path: load_video(p), n)
            timer.add(f"{label}|load_video in the IMAGE layout (the Load Video node)",
                      lambda p=path: load_video(p, channels_last=True), n)
    greys = []
    with av.open(clips[0][1]) as c:
        for fr in c.decode(video=0):
            greys.append(fr.to_ndarray(format="gray"))
    greys = greys[:max(2, dis_frames)]  # DIS costs about a second a frame here: its first frames are enough
    dis_flows: list[np.ndarray] = []
    timer.add("dis", lambda: dis_flows.__setitem__(slice(None), _dis_both_ways(greys)), len(greys) - 1)
    timer.run(reps)
    rows = []
    for label, _, _ in clips:
        base = f"{label}|decode only"
        for key in [k for k, _, _ in timer.jobs if k.startswith(label + "|")]:
            rows.append((label, key.split("|", 1)[1], timer.ms(key), timer.ratio(key, base)))
    rows.append((clips[0][0], "OpenCV DIS medium, both directions, grey, decoding excluded", timer.ms("dis"),
                 timer.ratio("dis", f"{clips[0][0]}|decode only")))
    # Accuracy on the same clip: the priors' past field against DIS's, both sampled at the grid cell centres.
    # Both on the frames DIS was timed on (1 .. len(greys) - 1); the priors also without flow smoothing.
    n = len(greys)
    pri = load_video(clips[0][1], cap=n)[1]
    with _smoothing(False):
        raw = load_video(clips[0][1], cap=n)[1]
    s = pri.flow_stride
    dis = torch.from_numpy(np.stack(dis_flows)).permute(0, 3, 1, 2)[:, :, s // 2::s, s // 2::s]
    t = true[1:n, :, s // 2::s, s // 2::s][..., :dis.shape[-2], :dis.shape[-1]]
    dis_epe = float(magnitude(dis - t).median())
    pri_epe, raw_epe = _epe(pri, true[:n]), _epe(raw, true[:n])
    speed = timer.ms("dis") / timer.ms(f"{clips[0][0]}|full priors (iter_decoded)")
    rows.append((clips[0][0], f"median EPE of the past field, frames 1-{n - 1}: priors {pri_epe:.3f} px "
                 f"(raw block vectors {raw_epe:.3f}, {float(pri.valid_to_prev[1:].float().mean()) * 100:.1f} % of "
                 f"cells), DIS {dis_epe:.3f} px (all cells); priors (with decoding) {speed:.1f}x faster than DIS",
                 float("nan"), float("nan")))
    return rows


# ------------------------------------------------------------------------------------------ profile

def profile(frames: int, tmp: str) -> list[tuple[str, str, float]]:
    """CPU ms / frame per stage, single-threaded (OpenCV one thread, no decoding thread) so that each stage's
    time is its own; the total is the process CPU time (it includes x264's own threads in the fallback)."""
    img = load_photo("astronaut")
    size = (1280, 720)
    clip = torch.from_numpy(render_path(img, pan_zoom_path(img.shape, size, frames, 4.0, 1.5, 1.002), size)[0])
    stages = collections.defaultdict(float)
    patched = []

    def wrap(mod, name: str, label: str) -> None:
        fn = getattr(mod, name)

        def timed(*a, **k):
            t0 = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                stages[label] += time.thread_time() - t0
        patched.append((mod, name, fn))
        setattr(mod, name, timed)

    D, R = decode_mod, reencode_mod
    wrap(D, "raw_frame", "MV side-data parsing")
    wrap(R, "raw_frame", "MV side-data parsing")
    wrap(D, "mvs_to_flows", "block rasterisation (both directions)")
    wrap(D, "invert_np", "inversion / composition")
    wrap(D, "compose_np", "inversion / composition")
    wrap(D, "residual_of", "residual motion compensation")
    wrap(D, "pick_references_half", "multi-reference probing")
    wrap(D, "half_size", "multi-reference probing")
    wrap(D, "frame_to_rgb", "colour conversion (YUV -> RGB)")
    wrap(D, "smooth_field", "flow smoothing (both directions)")
    wrap(R, "yuv_frame", "RGB -> YUV for the x264 re-encode")
    wrap(D, "frames_to_tensor", "tensor stacking")
    wrap(D, "priors_from_decoded", "tensor stacking")
    threads, prefetch = cv2.getNumThreads(), D.PREFETCH
    cv2.setNumThreads(1)
    D.PREFETCH = 0
    rows = []
    try:
        for name, params, codec in (("H.264 IPPP", "bframes=0:ref=1", "libx264"),
                                    ("H.264 IPPP ref=3", "bframes=0:ref=3", "libx264"),
                                    ("H.264 IBBP", "bframes=2:b-pyramid=none:ref=1", "libx264"),
                                    ("HEVC (re-encode fallback)", None, "libx265")):
            path = os.path.join(tmp, "prof.mkv" if codec == "libx265" else "prof.mp4")
            write_video(path, clip, 30, codec=codec, crf=20, preset="veryfast", x264_params=params, overwrite=True)
            load_video(path)  # warm
            stages.clear()
            t0 = time.process_time()
            load_video(path)
            total = (time.process_time() - t0) / frames * 1000
            named = 0.0
            for k, v in sorted(stages.items(), key=lambda kv: -kv[1]):
                rows.append((name, k, v / frames * 1000))
                named += v / frames * 1000
            rest = "decoding (+ x264 encoding and decoding)" if codec == "libx265" else "decoding"
            rows.append((name, f"{rest} and the rest", total - named))
            rows.append((name, "total (process CPU)", total))
    finally:
        for mod, name, fn in patched:
            setattr(mod, name, fn)
        cv2.setNumThreads(threads)
        D.PREFETCH = prefetch
    return rows


# ------------------------------------------------------------------------------------------ accuracy

def accuracy(tmp: str) -> list[tuple[str, float, float]]:
    """Rows (what, EPE of the priors, EPE with stream.SMOOTH_FLOWS off: the raw block vectors)."""
    img = load_photo("astronaut")
    size = (320, 240)
    rows = []

    def both(load: Callable[[], object]) -> tuple[object, object]:
        with _smoothing(True):
            smooth = load()
        with _smoothing(False):
            return smooth, load()

    def add(label: str, pris: tuple[object, object], true: torch.Tensor, which: str = "prev", mean: bool = False):
        rows.append((label, _epe(pris[0], true, which, mean), _epe(pris[1], true, which, mean)))

    for name, mats in (("pan 3.25,-1.5 px", pan_zoom_path(img.shape, size, 12, 3.25, -1.5)),
                       ("zoom 1.2 %/frame + rotation", pan_zoom_path(img.shape, size, 12, 1.0, 0.5, 1.012, 0.004))):
        frames, true = render_path(img, mats, size)
        frames, true = torch.from_numpy(frames), torch.from_numpy(true)
        for label, codec, params in (("x264 IPPP", "libx264", "bframes=0:ref=1"),
                                     ("x264 IBBP", "libx264", "bframes=2:b-pyramid=none:ref=1"),
                                     ("x264 default (refs=3, b-pyramid)", "libx264", None),
                                     ("mpeg4 (P only)", "mpeg4", None),
                                     ("hevc -> re-encode", "libx265", None)):
            path = os.path.join(tmp, "acc.mkv" if codec == "libx265" else "acc.mp4")
            write_video(path, frames, 24, codec=codec, crf=18, preset="medium", x264_params=params, overwrite=True)
            pris = both(lambda: load_video(path)[1])
            add(f"{name}, {label}: flow_to_prev", pris, true)
            nxt = torch.zeros_like(true)
            nxt[:-1] = -true[1:]
            add(f"{name}, {label}: flow_to_next", pris, nxt, "next")
    # The fallback at 720p, where the re-encode settings matter most for speed.
    size = (1280, 720)
    frames, true = render_path(img, pan_zoom_path(img.shape, size, 12, 4.0, 1.5, 1.002), size)
    frames, true = torch.from_numpy(frames), torch.from_numpy(true)
    path = os.path.join(tmp, "acc720.mkv")
    write_video(path, frames, 30, codec="libx265", crf=20, preset="veryfast", overwrite=True)
    add("pan 4,1.5 px + zoom 0.2 %/frame 1280x720, hevc -> re-encode: flow_to_prev",
        both(lambda: load_video(path)[1]), true)
    # A motion edge: a textured disc moving across a shaking camera pan (smoothing must not blur it).
    clip = make_blur_clip(load_photo("chelsea"), 16, (640, 368), subframes=1, seed=3, moving_object=True, motion=1.5)
    path = os.path.join(tmp, "disc.mp4")
    write_video(path, clip["sharp"], 30, crf=20, preset="veryfast", x264_params="bframes=0:ref=1", overwrite=True)
    pris = both(lambda: load_video(path)[1])
    add("moving disc over a shaking pan 640x368, x264 IPPP veryfast: flow_to_prev", pris, clip["flow_to_prev_true"])
    add("moving disc over a shaking pan 640x368, x264 IPPP veryfast: flow_to_prev (MEAN EPE)", pris,
        clip["flow_to_prev_true"], mean=True)
    clip = make_blur_clip(load_photo("chelsea"), 12, (256, 256), seed=1)
    add("synthetic shake blur 256x256, x264 crf 23: flow_to_prev",
        both(lambda: encode_and_extract(clip["blurry"], 24, crf=23)[1]), clip["flow_to_prev_true"])
    # Multi-reference P-frames: FFmpeg exports no reference index, residual.pick_references recovers it.
    clip = make_blur_clip(load_photo("coffee"), 12, (320, 240), subframes=9, seed=0, motion=2.0)
    for params in ("bframes=0:ref=1", "bframes=0:ref=3"):
        add(f"shake blur 320x240 (motion 2), x264 medium {params}: flow_to_prev (MEAN EPE)",
            both(lambda: encode_and_extract(clip["blurry"], 24, crf=23, preset="medium", x264_params=params)[1]),
            clip["flow_to_prev_true"], mean=True)
    return rows


def seeking(frames: int, tmp: str) -> list[tuple[str, float]]:
    img = load_photo("astronaut")
    size = (1280, 720)
    mats = pan_zoom_path(img.shape, size, frames, 0.5, 0.25)
    path = os.path.join(tmp, "long.mp4")
    with av.open(path, "w") as c:  # rendered and encoded 30 frames at a time: the whole clip would not fit in RAM
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.options = {"crf": "20", "preset": "veryfast", "x264-params": "bframes=2:keyint=60:scenecut=0"}
        for i in range(0, frames, 30):
            part, _ = render_path(img, mats[i:i + 30], size)
            for f in np.clip(np.asarray(part).transpose(0, 2, 3, 1) * 255 + 0.5, 0, 255).astype(np.uint8):
                c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    rows = []
    for label, start in (("first 16 frames", 0), (f"16 frames from frame {frames - 16}", frames - 16)):
        t0 = time.perf_counter()
        load_video(path, start=start, cap=16)
        rows.append((f"{frames}-frame 720p IBBP clip, keyint 60: {label}", time.perf_counter() - t0))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=48, help="frames of the 720p clips")
    ap.add_argument("--frames-4k", type=int, default=16, help="frames of the 3840x2160 clip (0: skip)")
    ap.add_argument("--reps", type=int, default=5, help="round-robin repetitions of every timing")
    ap.add_argument("--dis-frames", type=int, default=16, help="frames of the 720p clip that DIS is timed on")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="skip the CPU time of each pipeline stage")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--seek-frames", type=int, default=600, help="length of the late-start clip (0: skip)")
    ap.add_argument("--md", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                 "docs", "bench", "priors.md"),
                    help="also write the tables here ('' to skip)")
    a = ap.parse_args(argv)
    lines = [f"# Codec priors: cost and accuracy (`python bench/priors.py {' '.join(argv or sys.argv[1:])}`)", ""]

    def print(text: str = "") -> None:  # noqa: A001 - the tables go to stdout and to the markdown file
        builtins.print(text, flush=True)
        lines.extend(text.split("\n"))

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    print(f"CPUs: {os.cpu_count()}, load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"\n| clip | path | ms / frame | x decode-only |\n|---|---|---|---|")
        summary = ["| codec priors, per frame (`bench/priors.py`, one run; "
                   f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.0f}) | x decoding the same file |",
                   "| --- | --- |"]
        for clip, k, v, r in timing(a.frames, a.frames_4k, a.reps, tmp, a.dis_frames):
            if np.isnan(v):
                print(f"| {clip} | {k} | | |")
                summary.append(f"| {clip}: {k.split(';')[0]} | {k.split(';', 1)[1].strip()} |")
            else:
                print(f"| {clip} | {k} | {v:.1f} | {r:.2f} |")
                if k.startswith(("full priors", "OpenCV DIS")):
                    summary.append(f"| {clip}: {k} | {r:.2f}x ({v:.1f} ms) |")
        if a.profile:
            print(f"\n| stream (1280x720, {a.frames} frames, load_video) | stage | CPU ms / frame |\n|---|---|---|")
            for clip, k, v in profile(a.frames, tmp):
                print(f"| {clip} | {k} | {v:.2f} |")
        if not a.skip_accuracy:
            print("\n| flow accuracy | median EPE (px) | raw block vectors (no smoothing) |\n|---|---|---|")
            for k, v, raw in accuracy(tmp):
                print(f"| {k} | {v:.3f} | {raw:.3f} |")
        if a.seek_frames:
            print("\n| late start | load_video seconds |\n|---|---|")
            for k, v in seeking(a.seek_frames, tmp):
                print(f"| {k} | {v:.2f} |")
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if a.md:  # the full tables, and their summary for the README block <!-- bench:priors_summary -->
        os.makedirs(os.path.dirname(os.path.abspath(a.md)), exist_ok=True)
        short = os.path.join(os.path.dirname(os.path.abspath(a.md)), "priors_summary.md")
        for path, text in ((a.md, lines), (short, ["# Codec priors (summary)", ""] + summary)):
            with open(path + ".part", "w") as f:
                f.write("\n".join(text).rstrip("\n") + "\n")
            os.replace(path + ".part", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
