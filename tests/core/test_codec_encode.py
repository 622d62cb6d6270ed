"""Writing video, in-memory re-encoding for priors, and the prior visualisations."""
from __future__ import annotations

import io

import av
import numpy as np
import pytest
import torch

from cpgd_core.codec.decode import load_video, probe
from cpgd_core.codec.encode import encode_h264_bytes, write_video
from cpgd_core.codec.reencode import encode_and_extract, priors_from_frames
from cpgd_core.codec.visualize import flow_to_color, residual_heatmap
from cpgd_core.data.synth import load_photo, pan_zoom_path, render_path
from cpgd_core.errors import CPGDInputError


def _pan(size=(160, 128), n=6, dx=2.5, dy=1.0, photo="astronaut"):
    img = load_photo(photo)
    f, fl = render_path(img, pan_zoom_path(img.shape, size, n, dx, dy), size)
    return torch.from_numpy(f), torch.from_numpy(fl)


def test_colour_round_trip_and_tags(tmp_path):
    # Flat patches of saturated and grey colours survive RGB -> BT.709 YUV -> RGB within a few levels.
    colours = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5], [0.9, 0.7, 0.2], [0.1, 0.3, 0.8]])
    frame = colours.view(6, 3, 1, 1).expand(6, 3, 64, 64).permute(1, 0, 2, 3).reshape(3, 6 * 64, 64)
    frames = frame[None].repeat(3, 1, 1, 1)
    path = str(tmp_path / "c.mp4")
    write_video(path, frames, 25, crf=0, preset="ultrafast")
    with av.open(path) as c:
        cc = c.streams.video[0].codec_context
        assert (int(cc.colorspace), int(cc.color_range), int(cc.color_primaries), int(cc.color_trc)) == (1, 1, 1, 1)
    x, _, _, _ = load_video(path)
    centres = x[0, :, 32::64, 32]  # (3, 6)
    assert torch.allclose(centres.T, colours, atol=3 / 255)


def test_write_refuses_overwrite_and_accepts_chunks(tmp_path):
    frames, _ = _pan()
    path = str(tmp_path / "v.mp4")
    write_video(path, iter([frames[:3], (frames[3:] * 255).round().byte()]), 24)
    assert probe(path).frame_count == 6
    with pytest.raises(CPGDInputError, match="already exists"):
        write_video(path, frames, 24)
    write_video(path, frames[:2], 24, overwrite=True)
    assert probe(path).frame_count == 2
    with pytest.raises(CPGDInputError, match=r"\(T, 3, H, W\)"):
        write_video(str(tmp_path / "bad.mp4"), torch.zeros(2, 4, 8, 8), 24)
    assert not (tmp_path / "bad.mp4").exists() and not list(tmp_path.glob("*.part*"))


def test_audio_is_muxed_in_sync(tmp_path):
    # A click at exactly 1.0 s must come back at 1.0 s relative to frame 0 (AAC priming is compensated).
    fps, sr = 25, 48000
    frames, _ = _pan(n=50)
    wav = np.zeros((1, 2 * sr), np.float32)
    wav[0, sr:sr + 240] = 0.8
    path = str(tmp_path / "sync.mp4")
    write_video(path, frames, fps, audio={"waveform": torch.from_numpy(wav)[None], "sample_rate": sr})
    _, _, audio, _ = load_video(path)
    got = audio["waveform"][0, 0].numpy()
    onset = int(np.argmax(np.abs(got) > 0.3))
    assert abs(onset - sr) < sr * 0.005, onset  # within 5 ms
    assert audio["waveform"].shape[1] == 1


def test_encode_h264_bytes_decodes(tmp_path):
    frames, _ = _pan(size=(97, 63))  # odd size: kept (stored 4:4:4)
    data = encode_h264_bytes(frames, 24, crf=20)
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and (s.width, s.height) == (97, 63)
        assert sum(1 for _ in c.decode(s)) == 6


def test_encode_and_extract_odd_size():
    frames, true = _pan(size=(131, 77), n=7, dx=3.0, dy=-1.25)
    dec, pri = encode_and_extract(frames, fps=24, crf=18)
    assert dec.shape == frames.shape and dec.dtype == torch.float32
    assert pri.source == "reencode:libx264" and pri.frame_types == ["I"] + ["P"] * 6
    assert (pri.height, pri.width) == (77, 131) and pri.flow_to_prev.shape == (7, 2, 20, 33)
    assert pri.residual.shape == (7, 1, 77, 131)
    assert float((dec - frames).abs().mean()) < 0.03
    for t in range(1, 7):
        v = pri.valid_to_prev[t, 0]
        assert v.float().mean() > 0.8
        err = (pri.flow_to_prev[t].float() - torch.tensor([3.0, -1.25]).view(2, 1, 1)).norm(dim=0)[v]
        assert float(err.median()) <= 0.5


def test_priors_from_frames_reports_progress():
    frames, _ = _pan(n=5)
    seen = []
    pri = priors_from_frames(frames, 24, progress=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(1, 6)] and len(pri) == 5
    calls = []

    def stop():
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        priors_from_frames(frames, 24, check_interrupt=stop)


def test_flow_colours():
    flow = torch.zeros(1, 2, 4, 4)
    flow[0, 0, 0, 0] = 5.0   # right -> red
    flow[0, 0, 0, 1] = -5.0  # left -> cyan
    valid = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    valid[0, 0, 3, 3] = False
    img = flow_to_color(flow, valid, max_magnitude=5.0, size=(8, 8))
    assert img.shape == (1, 3, 8, 8)
    assert torch.allclose(img[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(img[0, :, 0, 2], torch.tensor([0.0, 1.0, 1.0]), atol=1e-5)
    assert torch.allclose(img[0, :, 2, 2], torch.ones(3))  # zero motion: white
    assert img[0, :, 7, 7].max() == 0  # invalid: black


def test_residual_heatmap_signs():
    r = torch.zeros(1, 1, 2, 3)
    r[0, 0, 0, 0], r[0, 0, 0, 1] = 0.1, -0.1
    img = residual_heatmap(r, scale=0.1, size=(4, 6))
    assert img.shape == (1, 3, 4, 6)
    small = residual_heatmap(r, scale=0.1)
    assert small[0, 0, 0, 0] == 1 and small[0, 2, 0, 0] == 0  # positive: red/yellow
    assert small[0, 2, 0, 1] == 1 and small[0, 0, 0, 1] < 1  # negative: blue/cyan
    assert small[0, :, 1, 1].max() == 0  # zero: black
