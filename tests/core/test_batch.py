"""``python -m cpgd_core batch``: real Ray (a local 2-CPU cluster), real decoding and encoding.

Folder + corrupt file, re-run skipping, a worker killed mid-run, Ctrl-C, and a segmented long clip against
the single-process ``deblur`` result; plus the Ray-free planning, input and output-check helpers.
"""
from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from cpgd_core.__main__ import main
from cpgd_core.codec.decode import iter_video_chunks, probe, read_audio
from cpgd_core.codec.encode import write_video
from cpgd_core.errors import CPGDInputError
from cpgd_core.models.cpfp import CPFP, CPFPConfig
from cpgd_core.pipeline.batch import (WORK_DIR, build_parser, collect_inputs, output_state, output_tag,
                                      run_batch, start_ray)
from cpgd_core.pipeline.schedule import stream_windows
from cpgd_core.pipeline.cli import fill_settings, restored_blocks
from cpgd_core.pipeline.segments import joined_frames, plan_segments, write_segment
from cpgd_core.weights import default_cpfp_path, load_cpfp, save_cpfp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Segmented and single-process results: largest per-frame mean / per-pixel absolute difference of the decoded
# outputs, in 8-bit levels (README, "Many videos"). Measured: identical frames (the restored frames are equal
# bit for bit: test_segments_join_exactly). Leaving out the cross-fade at the joins gives 0.58 / 5.
TOL_MEAN, TOL_MAX = 0.1, 4


def _clip(path, n, fps, w=64, h=48, audio=False, keyint=None, seed=0, blurred=False) -> str:
    """A panning texture; ``blurred``: faster, each frame averaged over 14 px of the pan (fast mode returns frames
    it finds sharp without running its network, so only blurred clips take the network's time)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, h // 2, w // 2, generator=g), size=(h, w),
                                           mode="bilinear")[0]
    speed, blur = (16, 14) if blurred else (2, 1)
    frames = torch.stack([torch.stack([torch.roll(base, speed * i + j, dims=2) for j in range(blur)]).mean(0)
                          for i in range(n)])
    sound = None
    if audio:
        t = torch.arange(int(48000 * n / fps)) / 48000
        sound = {"waveform": (0.3 * torch.sin(2 * torch.pi * 440 * t)).view(1, 1, -1), "sample_rate": 48000}
    params = f"keyint={keyint}:min-keyint={keyint}:scenecut=0" if keyint else None
    write_video(str(path), frames, Fraction(fps), audio=sound, crf=20, preset="ultrafast", x264_params=params)
    return str(path)


def _decoded(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.int16)


def _leftovers(out) -> list[str]:
    """Anything in the output folder that is not a finished video or the report."""
    bad = []
    for root, dirs, files in os.walk(out):
        bad += [os.path.join(root, d) for d in dirs if d == WORK_DIR]
        bad += [os.path.join(root, f) for f in files if f.endswith(".part")]
    return bad


@pytest.fixture()
def one_thread():
    """Torch on one thread, as in the Ray workers (one CPU each): same arithmetic, and no thread contention on
    a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("w") / "tiny.safetensors")
    save_cpfp(CPFP(CPFPConfig.lite(enc_channels=8, mid_channels=16)), path)
    return path


@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster of 2 CPUs with a 200 MB object store (no dashboard). Its workers run at the tests' own
    priority: Ray lowers theirs by 15 nice levels, and on a busy machine they would then barely run."""
    import ray

    old = os.environ.get("RAY_worker_niceness")
    os.environ["RAY_worker_niceness"] = "0"
    try:
        started = start_ray(num_cpus=2, object_store_mb=200)
    finally:
        if old is None:
            del os.environ["RAY_worker_niceness"]
        else:
            os.environ["RAY_worker_niceness"] = old
    yield
    if started:
        ray.shutdown()


def _args(inputs, out, weights, *extra) -> list[str]:
    """Fast mode (CPFP with tiny weights): the batch machinery at little cost; quality mode has its own tests."""
    return ["batch", *inputs, "--out", str(out), "--mode", "fast", "--weights", weights, "--chunk", "4",
            "--overlap", "1", "--no-progress", *extra]


def _report(out) -> dict:
    with open(os.path.join(out, "batch_report.json")) as f:
        return json.load(f)


def test_folder_with_a_corrupt_file_then_a_rerun_does_no_work(tmp_path, weights, ray_cluster):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    clips = {"a": _clip(src / "a.mp4", 9, 12, audio=True), "b": _clip(src / "sub" / "b.mp4", 14, 25),
             "c": _clip(src / "c.mov", 11, 30, w=56, h=40)}
    with open(clips["a"], "rb") as f:
        (src / "broken.mp4").write_bytes(f.read()[:3000])   # header cut off: not readable
    out = tmp_path / "out"
    assert main(_args([str(src)], out, weights)) == 1
    rep = _report(out)
    by_name = {os.path.basename(r["input"]): r for r in rep["files"]}
    assert rep["summary"]["done"] == 3 and rep["summary"]["failed"] == 1
    assert "broken.mp4" in by_name["broken.mp4"]["error"]
    outputs = {"a": out / "a.mp4", "b": out / "sub" / "b.mp4", "c": out / "c.mp4"}
    for k, dst in outputs.items():
        got, ref = probe(str(dst)), probe(clips[k])
        assert (got.frame_count, got.fps, got.width, got.height) == (ref.frame_count, ref.fps, ref.width, ref.height)
        assert got.has_audio == (k == "a")
        assert by_name[os.path.basename(clips[k])]["frames"] == ref.frame_count
    wav = read_audio(str(outputs["a"]))["waveform"]
    assert abs(wav.shape[-1] / 48000 - 9 / 12) < 0.05
    assert not os.path.exists(out / "broken.mp4") and not _leftovers(out)

    # second run: everything is checked and skipped, nothing is rewritten, no Ray task runs
    stamps = {k: os.stat(p).st_mtime_ns for k, p in outputs.items()}
    assert main(_args([str(src)], out, weights)) == 1
    rep = _report(out)
    assert rep["summary"]["skipped"] == 3 and rep["summary"]["done"] == 0 and rep["summary"]["failed"] == 1
    assert all(r["attempts"] == 0 for r in rep["files"])
    assert {k: os.stat(p).st_mtime_ns for k, p in outputs.items()} == stamps

    # a changed input (new modification time) is redone, the rest skipped (changed options: test_output_state)
    os.utime(clips["b"], ns=(stamps["b"] + 10**9, stamps["b"] + 10**9))
    assert main(_args([clips["a"], clips["b"]], out, weights, "--report", str(tmp_path / "r.json"))) == 0
    with open(tmp_path / "r.json") as f:
        statuses = {os.path.basename(r["input"]): r["status"] for r in json.load(f)["files"]}
    assert statuses == {"a.mp4": "skipped", "b.mp4": "done"}


def test_worker_killed_mid_run_is_retried(tmp_path, weights, ray_cluster):
    # k0 is long enough (40 chunks) that the kill after its first finished chunks lands while it runs
    src = [_clip(tmp_path / "k0.mp4", 120, 24, w=160, h=128, blurred=True),
           _clip(tmp_path / "k1.mp4", 12, 24, seed=1)]
    out = tmp_path / "out"
    pids: dict = {}
    killed: list = []

    def on_event(ev: dict) -> None:
        if ev["event"] == "started":
            pids[(ev["file"], ev["task"])] = ev["pid"]
        elif ev["event"] == "progress" and not killed and ev["input"].endswith("k0.mp4") and ev["frames"] > 0:
            pid = pids[(ev["file"], ev["task"])]
            os.kill(pid, signal.SIGKILL)
            killed.append((ev["input"], pid))

    args = build_parser().parse_args(_args(src, out, weights)[1:])
    rep = run_batch(args, on_event=on_event)
    assert killed, "no progress event arrived"
    assert rep["summary"]["done"] == 2, rep
    by_input = {r["input"]: r for r in rep["files"]}
    assert by_input[killed[0][0]]["attempts"] >= 2
    for path in src:
        assert probe(str(out / os.path.basename(path))).frame_count == probe(path).frame_count
    assert not _leftovers(out)


def test_ctrl_c_cancels_and_leaves_no_partial_output(tmp_path, weights, ray_cluster):
    src = [_clip(tmp_path / "long.mp4", 120, 24, w=160, h=128, keyint=12),
           _clip(tmp_path / "short.mp4", 12, 24, seed=1)]
    out = tmp_path / "out"

    def on_event(ev: dict) -> None:
        if ev["event"] == "progress":
            raise KeyboardInterrupt  # what Python raises in the main thread on Ctrl-C

    args = build_parser().parse_args(_args(src, out, weights, "--segment-frames", "24")[1:])
    rep = run_batch(args, on_event=on_event)
    by_name = {os.path.basename(r["input"]): r for r in rep["files"]}
    assert by_name["long.mp4"]["status"] == "cancelled" and by_name["long.mp4"]["segments"] >= 3
    assert not os.path.exists(out / "long.mp4") and not _leftovers(out)
    # a video that finished before Ctrl-C stays, complete
    assert by_name["short.mp4"]["status"] in ("cancelled", "done")
    assert os.path.exists(out / "short.mp4") == (by_name["short.mp4"]["status"] == "done")
    if by_name["short.mp4"]["status"] == "done":
        assert probe(str(out / "short.mp4")).frame_count == 12


def test_segmented_long_clip_equals_single_process_run(tmp_path, ray_cluster, one_thread):
    """With the shipped weights: a trained network's overlapping windows disagree more than a random one's."""
    src = _clip(tmp_path / "long.mp4", 60, 24, keyint=12)
    out = tmp_path / "out"
    weights = default_cpfp_path()
    assert main(_args([src], out, weights, "--segment-frames", "16")) == 0
    rep = _report(out)
    assert rep["files"][0]["segments"] >= 3
    ref = tmp_path / "single.mp4"
    assert main(["deblur", src, str(ref), "--mode", "fast", "--weights", weights, "--chunk", "4",
                 "--overlap", "1"]) == 0
    a, b = _decoded(ref), _decoded(out / "long.mp4")
    assert a.shape == b.shape == (60, 48, 64, 3)
    diff = np.abs(a - b)
    assert diff.reshape(60, -1).mean(1).max() <= TOL_MEAN and diff.max() <= TOL_MAX


# -- without Ray -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,chunk,overlap", [(5, 8, 2), (8, 8, 2), (20, 16, 4), (28, 16, 4), (23, 4, 1)])
def test_stream_windows_are_the_streamed_chunks(tmp_path, n, chunk, overlap):
    path = _clip(tmp_path / "c.mp4", n, 25, w=32, h=24)
    got = [(i, i + len(f)) for f, _, i in iter_video_chunks(path, chunk, overlap)]
    assert got == stream_windows(n, chunk, overlap)


def test_segment_plan():
    windows = stream_windows(200, 8, 2)
    segs = plan_segments(200, 8, 2, 40, keyframes=[0, 30, 60, 90, 120, 150, 180])
    assert len(segs) >= 3 and segs[0].start == 0 and segs[-1].stop == 200
    for prev, seg in zip(segs, segs[1:]):
        assert seg.start == prev.stop - 2 and seg.head == prev.tail == 2
        assert (seg.start, seg.start + 8) in windows
        assert any(k < seg.start <= k + 6 for k in (30, 60, 90, 120, 150, 180)), seg  # just after a keyframe
    assert sum(s.frames for s in segs) == 200
    assert segs[-1].stop - segs[-1].start >= 20  # no tiny tail
    # no keyframes: cut at twice the length; not splittable / too short / too much overlap: one segment
    assert len(plan_segments(200, 8, 2, 40)) >= 2
    for kw in ({"splittable": False}, {"segment_frames": 0}):
        assert len(plan_segments(200, 8, 2, **{"segment_frames": 40, **kw})) == 1
    assert len(plan_segments(50, 8, 2, 40)) == 1 and len(plan_segments(200, 8, 4, 40)) == 1


def test_segments_join_exactly(tmp_path, one_thread):
    """Segments restored separately (decoding starts at each segment) and joined give the single-pass frames
    bit for bit: same windows, same priors, same cross-fade."""
    src = _clip(tmp_path / "long.mp4", 40, 24, keyint=8)
    opts = build_parser().parse_args(["x", "--out", "o", "--chunk", "6", "--overlap", "2"])
    fill_settings(opts, official=False)
    plan = (opts.chunk, opts.overlap, opts.tile)
    model = load_cpfp(default_cpfp_path())
    single = torch.cat(list(restored_blocks(model, src, opts, plan)))
    segs = plan_segments(40, 6, 2, 12, [k for k, _ in probe(src).keyframes])
    assert len(segs) >= 2 and any(s.start % 8 != 0 for s in segs)
    for seg in segs:
        write_segment(restored_blocks(model, src, opts, plan, start=seg.start, cap=seg.stop - seg.start), seg,
                      str(tmp_path / "parts"), 24)
    joined = [torch.as_tensor(b) for b in joined_frames(segs, str(tmp_path / "parts"))]
    to_u8 = lambda t: t if t.dtype == torch.uint8 else (t.clamp(0, 1) * 255).round().to(torch.uint8)  # noqa: E731
    assert torch.equal(torch.cat([to_u8(b) for b in joined]), to_u8(single))


@pytest.mark.parametrize("exposure", ["auto", 0.7])
def test_quality_mode_segments_equal_the_single_pass(tmp_path, one_thread, exposure):
    """Quality mode on segments (each decoding the frames its blur field needs around it: the exposure window
    when the exposure is estimated, the neighbours when given) gives the single-pass frames bit for bit."""
    from cpgd_core.pipeline.quality import load_solver, quality_blocks

    src = _clip(tmp_path / "long.mp4", 30, 24, w=48, h=32, keyint=8)
    solver = load_solver(1)
    single = torch.cat(list(quality_blocks(solver, src, exposure)))
    assert single.shape == (30, 3, 32, 48)
    parts = [torch.cat(list(quality_blocks(solver, src, exposure, start=a, cap=b - a)))
             for a, b in ((0, 9), (9, 17), (17, 30))]
    assert [len(p) for p in parts] == [9, 8, 13]
    assert torch.equal(torch.cat(parts), single)


def test_quality_mode_batch(tmp_path, ray_cluster):
    """batch in quality mode (the default): frames, fps and audio kept; the tag names the mode, so the same
    outputs are skipped on a re-run and redone in fast mode; a one-frame video runs fast mode."""
    src = [_clip(tmp_path / "q.mp4", 8, 12, audio=True), _clip(tmp_path / "one.mp4", 1, 12, seed=1)]
    out = tmp_path / "out"
    args = ["batch", *src, "--out", str(out), "--no-progress", "--iterations", "1"]
    assert main(args) == 0
    rep = _report(out)
    assert rep["summary"]["done"] == 2 and rep["options"]["mode"] == "quality" and rep["options"]["iterations"] == 1
    got, ref = probe(str(out / "q.mp4")), probe(src[0])
    assert (got.frame_count, got.fps, got.width, got.height, got.has_audio) == (8, ref.fps, 64, 48, True)
    assert probe(str(out / "one.mp4")).frame_count == 1
    tags = {}
    for name in ("q.mp4", "one.mp4"):
        with av.open(str(out / name)) as c:
            tags[name] = json.loads(c.metadata["comment"][len("cpgd-batch "):])["options"]
    assert tags["q.mp4"]["mode"] == "quality" and "mode" not in tags["one.mp4"]  # (fast mode's keys as before)
    assert main(args) == 0 and _report(out)["summary"]["skipped"] == 2
    assert main(args[:-2] + ["--mode", "fast"]) == 0
    statuses = {os.path.basename(r["input"]): r["status"] for r in _report(out)["files"]}
    assert statuses == {"q.mp4": "done", "one.mp4": "skipped"}


def test_collect_inputs(tmp_path):
    (tmp_path / "in" / "deep").mkdir(parents=True)
    (tmp_path / "in" / ".hidden").mkdir()
    for p in ("in/a.mp4", "in/deep/b.MKV", "in/.hidden/c.mp4", "in/notes.txt", "x.mov", "y.mov"):
        (tmp_path / p).write_bytes(b"x")
    out = tmp_path / "in" / "out"
    out.mkdir()
    (out / "old.mp4").write_bytes(b"x")
    pairs = collect_inputs([str(tmp_path / "in"), str(tmp_path / "*.mov")], str(out))
    rel = [(os.path.relpath(s, tmp_path), os.path.relpath(d, out)) for s, d in pairs]
    assert rel == [("in/a.mp4", "a.mp4"), ("in/deep/b.MKV", "deep/b.mp4"), ("x.mov", "x.mp4"), ("y.mov", "y.mp4")]
    (tmp_path / "x.mp4").write_bytes(b"x")
    with pytest.raises(CPGDInputError, match="both be written"):
        collect_inputs([str(tmp_path / "x.mov"), str(tmp_path / "x.mp4")], str(out))
    with pytest.raises(CPGDInputError, match="would replace it"):
        collect_inputs([str(tmp_path / "x.mp4")], str(tmp_path))
    with pytest.raises(CPGDInputError, match="not found"):
        collect_inputs([str(tmp_path / "missing.mp4")], str(out))
    with pytest.raises(CPGDInputError, match="no files match"):
        collect_inputs([str(tmp_path / "*.avi")], str(out))


def test_output_state(tmp_path):
    src = _clip(tmp_path / "s.mp4", 6, 25, w=32, h=24)
    opts = {"crf": 16}
    tag = output_tag(src, 6, opts)
    frames = torch.rand(6, 3, 24, 32)
    dst = str(tmp_path / "o.mp4")
    assert output_state(dst, tag, 6) == "missing"
    write_video(dst, frames, 25)
    assert output_state(dst, tag, 6) == "foreign"
    write_video(dst, frames, 25, overwrite=True, metadata={"comment": tag})
    assert output_state(dst, tag, 6) == "finished"
    assert output_state(dst, output_tag(src, 6, {"crf": 20}), 6) == "stale"
    write_video(dst, frames[:5], 25, overwrite=True, metadata={"comment": tag})
    assert output_state(dst, tag, 6) == "stale"   # tagged but short


def test_ray_is_optional():
    """Only pipeline/batch.py mentions Ray, inside functions; importing the library and the CLI never loads it."""
    for top in ("cpgd_core", "nodes"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                with open(path) as f:
                    tree = ast.parse(f.read())
                for node in tree.body:  # module level
                    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                        [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                    assert not any(m.split(".")[0] == "ray" for m in mods), path
    code = ("import sys, cpgd_core, cpgd_core.__main__, cpgd_core.pipeline.batch, cpgd_core.pipeline.segments;"
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
