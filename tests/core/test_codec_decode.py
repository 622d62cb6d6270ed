"""Decoding with codec priors: real PyAV encodes of real photos moved along known camera paths."""
from __future__ import annotations

import dataclasses
import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from cpgd_core.codec.decode import PREFETCH, iter_decoded, iter_video_chunks, load_video, probe, read_audio
from cpgd_core.codec.encode import write_video
from cpgd_core.codec.motion import grid_size
from cpgd_core.data.synth import load_photo, pan_zoom_path, render_path
from cpgd_core.errors import CPGDInputError

SIZE = (320, 240)
T = 12
DX, DY = 3.25, -1.5


def _epe(flow: torch.Tensor, valid: torch.Tensor, true_dense: torch.Tensor) -> float:
    """Median end-point error of a block-grid field (2,h,w) against a dense true field (2,H,W), on valid cells."""
    h, w = flow.shape[-2:]
    # True flow at the centre pixel of each 4x4 cell.
    ys = torch.arange(h) * 4 + 2
    xs = torch.arange(w) * 4 + 2
    ys = ys.clamp(max=true_dense.shape[-2] - 1)
    xs = xs.clamp(max=true_dense.shape[-1] - 1)
    t = true_dense[:, ys][:, :, xs]
    e = (flow.float() - t).norm(dim=0)[valid[0]]
    return float(e.median())


def _clip(tmp, name, matrices, codec="libx264", params="bframes=0:ref=1", crf=18, audio=None, size=SIZE):
    img = load_photo("astronaut")
    frames, flows = render_path(img, matrices, size)
    path = os.path.join(tmp, name)
    write_video(path, torch.from_numpy(frames), 24, audio=audio, codec=codec, crf=crf, preset="medium",
                x264_params=params)
    return path, torch.from_numpy(frames), torch.from_numpy(flows)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("codec"))
    img_shape = load_photo("astronaut").shape
    pan = pan_zoom_path(img_shape, SIZE, T, DX, DY)
    zoom = pan_zoom_path(img_shape, SIZE, T, 1.0, 0.5, zoom_per_frame=1.012, angle_per_frame=0.004)
    out = {
        "pan": _clip(tmp, "pan.mp4", pan),
        "zoom": _clip(tmp, "zoom.mp4", zoom),
        "bframes": _clip(tmp, "bframes.mp4", pan, params="bframes=2:b-pyramid=none:ref=1"),
        "intpan": _clip(tmp, "intpan.mp4", pan_zoom_path(img_shape, SIZE, 6, 4.0, 0.0),
                        params="bframes=0:ref=1:weightp=0:no-deblock=1"),
        "hevc": _clip(tmp, "hevc.mkv", pan, codec="libx265", params=None),
    }
    out["tmp"] = tmp
    return out


def test_pan_flow_matches_true_motion(clips):
    path, frames, true = clips["pan"]
    x, pri, audio, info = load_video(path)
    assert x.shape == (T, 3, SIZE[1], SIZE[0]) and x.dtype == torch.float32
    assert pri.flow_to_prev.shape == (T, 2, *grid_size(SIZE[1], SIZE[0]))
    assert pri.source == "bitstream:h264" and pri.frame_types[0] == "I" and set(pri.frame_types[1:]) == {"P"}
    assert not pri.valid_to_prev[0].any() and not pri.valid_to_next[-1].any()
    assert audio is None
    for t in range(1, T):
        assert pri.valid_to_prev[t].float().mean() > 0.9
        assert _epe(pri.flow_to_prev[t], pri.valid_to_prev[t], true[t]) <= 0.5
    # P-only stream: flow_to_next is the inverted next field; true flow to next of a pan is minus the pan.
    for t in range(T - 1):
        assert pri.valid_to_next[t].float().mean() > 0.85
        assert _epe(pri.flow_to_next[t], pri.valid_to_next[t], -true[t + 1]) <= 0.5
    # Decoded pixels are close to the source (crf 18).
    assert float((x - frames).abs().mean()) < 0.02
    assert "bitstream:h264" in info and "12 frames" in info


def test_zoom_rotation_flow(clips):
    path, _, true = clips["zoom"]
    _, pri, _, _ = load_video(path)
    errs = [_epe(pri.flow_to_prev[t], pri.valid_to_prev[t], true[t]) for t in range(1, T)]
    assert max(errs) <= 0.5, errs


def test_multi_reference_vectors_are_resolved():
    """x264 --ref 3 blocks may predict from 2-3 frames back; their vectors are found and rescaled, so the
    flow is about as good as a one-reference encode (it was 1.8x worse without the check)."""
    from cpgd_core.data.synth import make_blur_clip
    from cpgd_core.codec.reencode import encode_and_extract

    def mean_epe(params: str) -> float:
        errs = []
        for seed in (0, 1):
            clip = make_blur_clip(load_photo("coffee"), 8, (256, 160), subframes=9, seed=seed, motion=2.0)
            true = clip["flow_to_prev_true"][:, :, 2::4, 2::4]
            _, pri = encode_and_extract(clip["blurry"], fps=24, crf=23, preset="medium", x264_params=params)
            errs += [float((pri.flow_to_prev[t].float() - true[t]).norm(dim=0)[pri.valid_to_prev[t, 0]].mean())
                     for t in range(1, 8)]
        return float(np.mean(errs))

    one, three = mean_epe("bframes=0:ref=1"), mean_epe("bframes=0:ref=3")
    assert three < 1.3 * one, (one, three)


def test_one_reference_stream_stops_the_reference_check(tmp_path, monkeypatch):
    """In a one-reference stream the check mistakes a few blocks per frame (repeating texture); after the
    probe frames find no real share of far references, later frames keep the plain vectors."""
    from cpgd_core.codec import container, stream

    path, _, _ = _clip(str(tmp_path), "r1.mp4", pan_zoom_path(load_photo("astronaut").shape, SIZE, 30, 2.5, 1.0),
                       params="bframes=0:ref=1:keyint=250:scenecut=0", crf=23)
    monkeypatch.setattr(container, "h264_ref_frames", lambda extradata: 0)  # as if the SPS gave no count
    checked = list(iter_decoded(path))
    monkeypatch.setattr(stream, "MAX_REFS", 1)  # the plain nearest-reference reading
    plain = list(iter_decoded(path))
    changed = [not np.array_equal(a.flow_to_prev, b.flow_to_prev) for a, b in zip(checked, plain)]
    assert not any(changed[stream.MULTI_REF_PROBE + 2:]), changed


def test_residual_is_motion_compensated(clips):
    path, _, _ = clips["pan"]
    x, pri, _, _ = load_video(path)
    res = pri.residual[1:].float().abs().mean()
    diff = (x[1:] - x[:-1]).abs().mean()
    assert pri.residual.shape == (T, 1, SIZE[1], SIZE[0])
    assert res < 0.2 * diff, (float(res), float(diff))
    assert float(pri.residual[0].abs().max()) == 0.0  # first frame: nothing to predict from
    assert float(pri.residual.float().min()) < 0 < float(pri.residual.float().max())  # signed


def test_residual_exactly_zero_blocks_without_deblocking(clips):
    # Integer-pel pan, ref=1, no deblocking: skipped macroblocks are exact copies, so a large share of
    # 16x16 blocks has an exactly zero residual, which an approximate predictor could not produce.
    path, _, _ = clips["intpan"]
    _, pri, _, _ = load_video(path)
    r = pri.residual[1:, 0].float()
    h, w = (r.shape[1] // 16) * 16, (r.shape[2] // 16) * 16
    blocks = r[:, :h, :w].reshape(r.shape[0], h // 16, 16, w // 16, 16).abs().amax(dim=(2, 4))
    assert float((blocks == 0).float().mean()) > 0.3


def test_range_nth_cap_bookkeeping(clips):
    path, _, true = clips["pan"]
    full, pfull, _, _ = load_video(path)
    x, pri, _, info = load_video(path, start=1, cap=4, every_nth=3)
    assert pri.source_indices == [1, 4, 7, 10]
    assert torch.equal(x, full[[1, 4, 7, 10]])
    assert pri.fps == Fraction(8)
    assert torch.equal(pri.residual, pfull.residual[[1, 4, 7, 10]])
    assert not pri.valid_to_prev[0].any() and not pri.valid_to_next[-1].any()
    # Chained fields connect kept frames: three frames of pan.
    for t in range(1, 4):
        assert pri.valid_to_prev[t].float().mean() > 0.8
        assert _epe(pri.flow_to_prev[t], pri.valid_to_prev[t], 3 * true[1]) <= 0.5
        assert _epe(pri.flow_to_next[t - 1], pri.valid_to_next[t - 1], -3 * true[1]) <= 0.5
    x2, p2, _, _ = load_video(path, start=10)
    assert p2.source_indices == [10, 11] and x2.shape[0] == 2
    with pytest.raises(CPGDInputError, match="past the end"):
        load_video(path, start=T)
    with pytest.raises(CPGDInputError, match="every_nth"):
        load_video(path, every_nth=0)
    with pytest.raises(CPGDInputError, match="limit"):
        load_video(path, max_frames_in_memory=5)


def test_resize_scales_frames_and_priors(clips):
    path, _, _ = clips["pan"]
    x, pri, _, _ = load_video(path, size=(160, 120), cap=4)
    assert x.shape == (4, 3, 120, 160)
    assert pri.flow_to_prev.shape == (4, 2, 30, 40) and pri.residual.shape == (4, 1, 120, 160)
    v = pri.valid_to_prev[2, 0]
    med = pri.flow_to_prev[2].float()[:, v].median(dim=1).values
    assert torch.allclose(med, torch.tensor([DX / 2, DY / 2]), atol=0.25)


def test_bframe_stream_gives_future_motion(clips):
    path, _, true = clips["bframes"]
    _, pri, _, _ = load_video(path)
    assert "B" in pri.frame_types
    b = [t for t, k in enumerate(pri.frame_types) if k == "B" and t < T - 1]
    assert len(b) >= 4
    errs = []
    for t in b:
        assert pri.valid_to_next[t].float().mean() > 0.4
        errs.append(_epe(pri.flow_to_next[t], pri.valid_to_next[t], -true[t + 1]))
    assert max(errs) <= 0.5, errs
    # P-frames after B-frames point 3 frames back; rescaled to the adjacent frame.
    for t, k in enumerate(pri.frame_types):
        if t and pri.valid_to_prev[t].any():
            assert _epe(pri.flow_to_prev[t], pri.valid_to_prev[t], true[t]) <= 0.5


def test_hevc_falls_back_to_reencode(clips):
    path, _, true = clips["hevc"]
    info = probe(path)
    assert info.codec == "hevc" and not info.exports_mvs
    x, pri, _, text = load_video(path, cap=6)
    assert pri.source == "reencode:libx264" and "re-encode" in text
    assert x.shape[0] == 6
    for t in range(1, 6):
        assert _epe(pri.flow_to_prev[t], pri.valid_to_prev[t], true[t]) <= 0.5


def test_qp_map(clips):
    path, _, _ = clips["pan"]
    _, pri, _, _ = load_video(path, export_qp=True, cap=3)
    assert pri.qp is not None and pri.qp.shape == (3, 1, 15, 20)
    assert 0 <= float(pri.qp.min()) and float(pri.qp.max()) <= 51 and float(pri.qp.std()) > 0


def test_streaming_iterator_matches_loader(clips):
    path, _, _ = clips["pan"]
    x, pri, _, _ = load_video(path, cap=5)
    items = list(iter_decoded(path, cap=5))
    assert [f.index for f in items] == list(range(5))
    assert np.array_equal(items[3].rgb, (x[3].permute(1, 2, 0) * 255).round().byte().numpy())
    assert np.allclose(items[3].flow_to_prev, pri.flow_to_prev[3].float().numpy(), atol=1e-2)
    assert items[2].time == pytest.approx(2 / 24)


def test_channels_last_load_is_the_same_frames_in_image_layout(clips):
    path, _, _ = clips["pan"]
    x, _, _, _ = load_video(path, cap=4, size=(90, 50))
    y, _, _, _ = load_video(path, cap=4, size=(90, 50), channels_last=True)
    assert tuple(y.shape) == (4, 50, 90, 3) and y.is_contiguous() and y.dtype == torch.float32
    assert torch.equal(x.permute(0, 2, 3, 1), y)


def test_chunks_cover_clip_with_overlap(clips):
    path, _, _ = clips["pan"]
    full, pfull, _, _ = load_video(path)
    chunks = list(iter_video_chunks(path, chunk=5, overlap=2))
    assert [c[2] for c in chunks] == [0, 3, 6, 9]
    for frames, pri, first in chunks:
        n = frames.shape[0]
        assert torch.equal(frames, full[first:first + n])
        assert pri.source_indices == list(range(first, first + n))
        assert not pri.valid_to_prev[0].any()
        assert torch.equal(pri.flow_to_prev[1:], pfull.flow_to_prev[first + 1:first + n])
    assert chunks[-1][0].shape[0] == 3


def test_mpeg4_clip(tmp_path):
    img = load_photo("coffee")
    frames, true = render_path(img, pan_zoom_path(img.shape, SIZE, 9, 2.0, 1.0), SIZE)
    path = str(tmp_path / "m4v.mp4")
    c = av.open(path, "w")
    s = c.add_stream("mpeg4", rate=24)
    s.width, s.height, s.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
    s.codec_context.options = {"qscale": "3"}
    s.codec_context.max_b_frames = 2
    for f in frames:
        for p in s.encode(av.VideoFrame.from_ndarray((f.transpose(1, 2, 0) * 255).round().astype(np.uint8), "rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    _, pri, _, _ = load_video(path)
    assert pri.source == "bitstream:mpeg4"
    assert "B" in pri.frame_types
    true = torch.from_numpy(true)
    checked = 0
    for t, k in enumerate(pri.frame_types):
        if k == "B":  # MPEG-4 direct-mode B vectors are exported as zeros: never reported as motion
            assert not pri.valid_to_prev[t].any()
        elif k == "P" and pri.valid_to_prev[t].any():  # the encoder's last P-frame here is all intra
            checked += 1
            assert _epe(pri.flow_to_prev[t], pri.valid_to_prev[t], true[t]) <= 0.5
    assert checked >= 2


def test_variable_frame_rate(tmp_path):
    img = load_photo("chelsea")
    frames, _ = render_path(img, pan_zoom_path(img.shape, (160, 128), 10, 2.0, 0.0), (160, 128))
    path = str(tmp_path / "vfr.mp4")
    c = av.open(path, "w")
    s = c.add_stream("libx264", rate=30)
    s.width, s.height, s.pix_fmt = 160, 128, "yuv420p"
    s.time_base = s.codec_context.time_base = Fraction(1, 1000)
    s.codec_context.options = {"x264-params": "bframes=0:ref=1"}
    pts = np.cumsum([0, 33, 33, 50, 33, 66, 33, 40, 33, 33])
    for f, p in zip(frames, pts):
        vf = av.VideoFrame.from_ndarray((f.transpose(1, 2, 0) * 255).astype(np.uint8), "rgb24")
        vf.pts, vf.time_base = int(p), Fraction(1, 1000)
        for pk in s.encode(vf):
            c.mux(pk)
    for pk in s.encode():
        c.mux(pk)
    c.close()
    info = probe(path)
    assert info.variable_fps and info.frame_count == 10
    assert float(info.fps) == pytest.approx(9 / 0.354, rel=0.02)
    items = list(iter_decoded(path))
    assert [round(f.time, 3) for f in items] == [round(p / 1000, 3) for p in pts]
    _, pri, _, _ = load_video(path)
    assert len(pri) == 10 and pri.valid_to_prev[1:].any()


def test_audio_is_trimmed_to_kept_frames(tmp_path):
    img = load_photo("astronaut")
    frames, _ = render_path(img, pan_zoom_path(img.shape, (128, 96), 24, 1.0, 0.0), (128, 96))
    sr = 16000
    t = np.arange(sr) / sr
    wav = torch.from_numpy((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)).view(1, 1, -1).repeat(1, 2, 1)
    path = str(tmp_path / "a.mp4")
    write_video(path, torch.from_numpy(frames), 24, audio={"waveform": wav, "sample_rate": sr})
    assert probe(path).has_audio
    _, _, audio, _ = load_video(path)
    assert audio["sample_rate"] == sr and audio["waveform"].shape[:2] == (1, 2)
    assert audio["waveform"].shape[2] == pytest.approx(sr, abs=sr * 0.05)
    _, _, part, _ = load_video(path, start=6, cap=6)  # 0.25 s .. 0.5 s
    assert part["waveform"].shape[2] == pytest.approx(sr // 4, abs=sr * 0.01)
    assert read_audio(path, 0.0, 0.5)["waveform"].shape[2] == pytest.approx(sr // 2, abs=sr * 0.01)


def test_bad_inputs(tmp_path, clips):
    with pytest.raises(CPGDInputError, match="not found"):
        load_video(str(tmp_path / "missing.mp4"))
    txt = tmp_path / "notes.mp4"
    txt.write_text("this is not a video\n" * 50)
    with pytest.raises(CPGDInputError, match="not a readable media file"):
        load_video(str(txt))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(CPGDInputError, match="empty"):
        probe(str(empty))
    data = open(clips["pan"][0], "rb").read()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CPGDInputError, match="corrupt|truncated|not a readable"):
        load_video(str(cut))
    # Audio-only file.
    apath = str(tmp_path / "tone.m4a")
    c = av.open(apath, "w", format="mp4")
    a = c.add_stream("aac", rate=16000)
    a.layout = "mono"
    fr = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
    fr.sample_rate, fr.pts = 16000, 0
    rs = av.AudioResampler(format="fltp", layout="mono", rate=16000, frame_size=1024)
    for rf in list(rs.resample(fr)) + list(rs.resample(None)):
        for p in a.encode(rf):
            c.mux(p)
    for p in a.encode():
        c.mux(p)
    c.close()
    with pytest.raises(CPGDInputError, match="no video stream"):
        load_video(apath)


def test_single_image_file(tmp_path):
    import cv2

    p = str(tmp_path / "still.png")
    cv2.imwrite(p, load_photo("chelsea")[:, :, ::-1])
    x, pri, _, _ = load_video(p)
    assert x.shape == (1, 3, 300, 451)
    assert pri.source == "reencode:libx264" and not pri.valid_to_prev.any()


def test_real_phone_clips(real_clips):
    for path in real_clips[:2]:
        info = probe(path)
        assert info.codec == "mpeg4" and (info.width, info.height) == (1280, 768)
        x, pri, audio, _ = load_video(path, cap=8, size=(640, 384))
        assert x.shape == (8, 3, 384, 640) and audio is None
        assert pri.source == "bitstream:mpeg4"
        p = [t for t, k in enumerate(pri.frame_types) if k == "P" and t > 0]
        cover = [float(pri.valid_to_prev[t].float().mean()) for t in p]
        # Shaky phone footage: some P-frames are mostly intra-coded, most are not.
        assert p and np.mean(cover) > 0.5 and max(cover) > 0.8
        assert float(pri.residual[p].float().abs().mean()) < float((x[1:] - x[:-1]).abs().mean())
    assert any(probe(p).variable_fps for p in real_clips)


def _with_display_rotation(src: str, dst: str, ccw_degrees: float) -> str:
    """The same H.264 packets remuxed with a display matrix (what phones write for portrait video)."""
    with av.open(src) as i, av.open(dst, "w") as o:
        s = o.add_stream_from_template(i.streams.video[0])
        s.set_display_rotation(ccw_degrees)
        for pkt in i.demux(i.streams.video[0]):
            if pkt.dts is not None:
                pkt.stream = s
                o.mux(pkt)
    return dst


def _upright_truth(true: torch.Tensor, clockwise: int) -> torch.Tensor:
    """Dense (T, 2, H, W) flow seen through a clockwise display rotation: the field turns with the picture and
    each vector turns with it (as complex numbers in y-down coordinates, a clockwise turn is * exp(+i angle))."""
    a = np.rot90(true.numpy(), k=-clockwise // 90, axes=(2, 3))
    z = (a[:, 0] + 1j * a[:, 1]) * np.exp(1j * np.deg2rad(clockwise))
    return torch.from_numpy(np.ascontiguousarray(np.stack([z.real, z.imag], 1), dtype=np.float32))


@pytest.mark.parametrize("clockwise", [90, 180, 270])
def test_display_rotation_is_applied_to_frames_and_priors(clips, clockwise):
    path, _, true = clips["pan"]
    rot = _with_display_rotation(path, os.path.join(clips["tmp"], f"pan_rot{clockwise}.mp4"), -clockwise)
    info = probe(rot)
    assert info.rotation == clockwise
    assert (info.width, info.height) == ((SIZE[1], SIZE[0]) if clockwise != 180 else SIZE)
    x0, p0, _, _ = load_video(path, export_qp=True)
    x, p, _, text = load_video(rot, export_qp=True)
    k = -clockwise // 90
    # the same coded pictures: the upright output is exactly the stored one turned
    assert torch.equal(x, torch.from_numpy(np.rot90(x0.numpy(), k, axes=(2, 3)).copy()))
    assert torch.equal(p.residual, torch.from_numpy(np.rot90(p0.residual.numpy(), k, axes=(2, 3)).copy()))
    assert torch.equal(p.qp, torch.from_numpy(np.rot90(p0.qp.numpy(), k, axes=(2, 3)).copy()))
    assert (p.width, p.height) == (x.shape[-1], x.shape[-2])
    assert f"rotated {clockwise}" in text
    upright = _upright_truth(true, clockwise)
    for t in range(1, T):
        assert p.valid_to_prev[t].float().mean() > 0.9
        assert _epe(p.flow_to_prev[t], p.valid_to_prev[t], upright[t]) <= 0.5
        assert _epe(p.flow_to_next[t - 1], p.valid_to_next[t - 1], -upright[t]) <= 0.5


def test_streaming_from_the_start_without_probe_gives_the_probed_output(clips):
    """iter_decoded from frame 0 without ``info`` reads its own container's headers and the rotation of the first
    decoded picture instead of probing: the same frames and priors as with probe's info, rotated and resized,
    with B-frames, and on the re-encode fallback."""
    rot = _with_display_rotation(clips["pan"][0], os.path.join(clips["tmp"], "pan_rot90_stream.mp4"), -90)
    for path, kw in ((rot, {"size": (64, 96)}), (clips["bframes"][0], {"every_nth": 2}), (clips["hevc"][0], {})):
        streamed = list(iter_decoded(path, **kw))
        probed = list(iter_decoded(path, info=probe(path), **kw))
        assert len(streamed) == len(probed) > 2
        for a, b in zip(streamed, probed):
            assert (a.index, a.time, a.pict_type) == (b.index, b.time, b.pict_type)
            for k in ("rgb", "flow_to_prev", "valid_to_prev", "flow_to_next", "valid_to_next", "residual"):
                assert np.array_equal(getattr(a, k), getattr(b, k)), (path, k)
        if path == rot:
            assert streamed[0].rgb.shape[:2] == (96, 64)  # the requested size is the upright one
    with pytest.raises(CPGDInputError, match="not a readable media file"):
        next(iter_decoded(__file__))


def test_display_rotation_with_sizes_off_the_block_grid(tmp_path):
    size = (318, 234)  # neither side a multiple of 4 or 16: partial blocks move edges when turned
    img_shape = load_photo("astronaut").shape
    path, _, true = _clip(str(tmp_path), "odd.mp4", pan_zoom_path(img_shape, size, 6, DX, DY), size=size)
    rot = _with_display_rotation(path, str(tmp_path / "odd_rot90.mp4"), -90)
    x, p, _, _ = load_video(rot, export_qp=True)
    assert x.shape[-2:] == (size[0], size[1])
    assert p.flow_to_prev.shape[-2:] == grid_size(size[0], size[1]) and p.qp.shape[-2:] == (20, 15)
    upright = _upright_truth(true, 90)
    for t in range(1, 6):
        assert _epe(p.flow_to_prev[t], p.valid_to_prev[t], upright[t]) <= 0.5
    # a requested size is the upright one
    xs, ps, _, _ = load_video(rot, size=(120, 160), cap=2)
    assert xs.shape == (2, 3, 160, 120) and ps.flow_to_prev.shape[-2:] == grid_size(160, 120)


@pytest.mark.parametrize("params,ext", [("bframes=2:b-pyramid=none:ref=3:keyint=12:scenecut=0", "mkv"),
                                        ("bframes=3:keyint=15:open-gop=1:scenecut=0", "mp4")])
def test_start_offset_seeks_to_a_keyframe_with_identical_output(tmp_path, params, ext):
    img_shape = load_photo("astronaut").shape
    n = 48
    path, _, _ = _clip(str(tmp_path), f"gop.{ext}", pan_zoom_path(img_shape, (160, 128), n, 2.0, 1.0),
                       params=params, size=(160, 128))
    info = probe(path)
    key = [i for i, _ in info.keyframes]
    assert len(key) >= 3 and key[0] == 0
    full = list(iter_decoded(path, every_nth=1, info=info))
    assert len(full) == n
    start, cap = key[2] + 2, 5
    decoded = []
    part = list(iter_decoded(path, start=start, cap=cap, check_interrupt=lambda: decoded.append(1), info=info))
    # decoding began at the keyframe before the start, not at frame 0 (the decoding thread reads a few frames
    # ahead of the consumer: PREFETCH queued, one in hand)
    assert len(decoded) <= start - key[2] + cap + 6 + PREFETCH + 1 < start
    assert [f.index for f in part] == list(range(start, start + cap))
    for i, (p, r) in enumerate(zip(part, full[start:start + cap])):
        assert np.array_equal(p.rgb, r.rgb) and np.array_equal(p.residual, r.residual)
        if i:  # the first kept frame has no previous frame by definition
            assert np.array_equal(p.flow_to_prev, r.flow_to_prev) and np.array_equal(p.valid_to_prev, r.valid_to_prev)
        if i < cap - 1:
            assert np.array_equal(p.flow_to_next, r.flow_to_next) and np.array_equal(p.valid_to_next, r.valid_to_next)
    # start right on a keyframe: the picture before it is decoded too (an I-frame's residual needs it)
    on_key = list(iter_decoded(path, start=key[1], cap=2, info=info))
    assert np.array_equal(on_key[0].residual, full[key[1]].residual)
    # a seek that does not land on the keyframe's timestamp falls back to decoding from the start
    off = dataclasses.replace(info, keyframes=((key[2], info.keyframes[2][1] + 1),))
    decoded.clear()
    again = list(iter_decoded(path, start=start, cap=cap, check_interrupt=lambda: decoded.append(1), info=off))
    assert len(decoded) >= start + cap
    assert all(np.array_equal(a.rgb, b.rgb) and np.array_equal(a.residual, b.residual) for a, b in zip(again, part))
    assert [f.index for f in again] == [f.index for f in part]


def test_decoding_thread_passes_errors_on_and_stops_with_the_consumer(clips):
    import threading

    class Interrupted(Exception):
        pass

    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) > 3:
            raise Interrupted()

    with pytest.raises(Interrupted):
        list(iter_decoded(clips["pan"][0], check_interrupt=interrupt))
    it = iter_decoded(clips["bframes"][0])
    next(it)
    next(it)
    it.close()
    assert not any(t.name == "cpgd-decode" and t.is_alive() for t in threading.enumerate())
    # the fallback chains two decoding threads (source and re-encode); both end with the consumer
    it = iter_decoded(clips["hevc"][0])
    next(it)
    it.close()
    assert not any(t.name == "cpgd-decode" and t.is_alive() for t in threading.enumerate())


def test_one_reference_sps_skips_the_reference_check(clips, tmp_path, monkeypatch):
    """The SPS says how many reference frames P-frames may use; with one the check is skipped altogether."""
    path3, _, _ = _clip(str(tmp_path), "r3.mp4", pan_zoom_path(load_photo("astronaut").shape, SIZE, 4, 2.5, 1.0),
                        params="bframes=0:ref=3")
    assert probe(path3).ref_frames == 3 and probe(clips["bframes"][0]).ref_frames == 2
    assert probe(clips["pan"][0]).ref_frames == 1 and probe(clips["hevc"][0]).ref_frames == 0

    def fail(*a, **k):
        raise AssertionError("multi-reference check on a one-reference stream")

    monkeypatch.setattr("cpgd_core.codec.stream.pick_references_half", fail)
    assert len(list(iter_decoded(clips["pan"][0]))) == T


def test_fallback_reencode_skips_the_reference_check(clips, monkeypatch):
    """The fallback encodes with one reference, so the multi-reference check could only mistake blocks."""
    def fail(*a, **k):
        raise AssertionError("multi-reference check on a one-reference re-encode")

    monkeypatch.setattr("cpgd_core.codec.stream.pick_references_half", fail)
    frames = list(iter_decoded(clips["hevc"][0]))
    assert len(frames) == T and all(f.valid_to_prev.any() for f in frames[1:])
