"""Dataset tool: GoPro/DVD folders -> encoded clips with priors, ours and the official layout, round trips."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cpgd_core.__main__ import main as cli_main
from cpgd_core.data import dataset_tool as dt
from cpgd_core.data.synth import load_photo, make_blur_clip
from cpgd_core.errors import CPGDInputError

SIZE = (96, 72)
N = 6


def _make_layout(root, layout):
    for k, photo in enumerate(("astronaut", "rocket")):
        clip = make_blur_clip(load_photo(photo), N, SIZE, seed=k)
        if layout == "gopro":
            base = os.path.join(root, "train", f"clip{k}")
            dirs = (os.path.join(base, "blur"), os.path.join(base, "sharp"))
            ext = "png"
        else:
            base = os.path.join(root, f"clip{k}")
            dirs = (os.path.join(base, "input"), os.path.join(base, "GT"))
            ext = "jpg"
        dt.write_frames(dirs[0], clip["blurry"], [f"{i:06d}.{ext}" for i in range(N)])
        dt.write_frames(dirs[1], clip["sharp"], [f"{i:06d}.{ext}" for i in range(N)])


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    src = str(tmp_path_factory.mktemp("gopro"))
    out = str(tmp_path_factory.mktemp("out"))
    _make_layout(src, "gopro")
    assert dt.main(["encode", src, out, "--format", "both", "--crf", "20", "--preset", "fast"]) == 0
    return src, out


def test_gopro_layout_is_encoded_with_priors(encoded):
    src, out = encoded
    clips = dt.find_clips(src)
    assert [(c["split"], c["name"], len(c["blur"])) for c in clips] == [("train", "clip0", N), ("train", "clip1", N)]
    d = os.path.join(out, "train", "clip0")
    assert os.path.isfile(os.path.join(d, "blur.mp4"))
    pri = dt.read_priors_dir(d)
    assert len(pri) == N and pri.source == "bitstream:h264" and pri.frame_types[0] == "I"
    assert pri.flow_to_prev.shape == (N, 2, 18, 24) and pri.residual.shape == (N, 1, 72, 96)
    assert pri.valid_to_prev[1:].float().mean() > 0.5
    assert len(os.listdir(os.path.join(d, "residual"))) == N


def test_official_layout_round_trip(encoded):
    _, out = encoded
    root = os.path.join(out, "official", "train")
    ours = dt.read_priors_dir(os.path.join(out, "train", "clip1"))
    names = sorted(os.listdir(os.path.join(root, "MVs", "clip1")))
    assert names[0] == "clip1_00000_00001.npy" and len(names) == N - 1
    raw = np.load(os.path.join(root, "MVs", "clip1", names[0]))
    assert raw.shape == (2, 9, 12) and raw.dtype == np.int16
    resi = np.load(os.path.join(root, "resi", "clip1", names[0]))
    assert resi.shape == (72, 96) and resi.dtype == np.int16
    with open(os.path.join(root, "meta_info.txt")) as f:
        assert f.read().splitlines() == [f"clip0 {N} (72,96,3)", f"clip1 {N} (72,96,3)"]
    lq, gt, back = dt.read_official_clip(root, "clip1")
    assert lq.shape == gt.shape == (N, 3, 72, 96)
    # Motion: the format stores quarter-pel vectors; the smoothed fields (motion.smooth_field) are stored to the
    # nearest quarter pel, so valid cells come back within 1/8 px.
    assert torch.equal(back.valid_to_prev, ours.valid_to_prev)
    v = ours.valid_to_prev.expand_as(ours.flow_to_prev)
    d = (back.flow_to_prev[v].float() - ours.flow_to_prev[v].float()).abs()
    assert v.any() and float(d.max()) <= 0.125 + 1e-3
    # Residual: (raw + 1) / 255 is within half a grey level.
    err = (back.residual.float() - ours.residual.float()).abs()
    assert float(err.max()) <= 0.5 / 255 + 1e-3
    # Without the validity sidecar every stored pair counts as motion (the format has no mask).
    import shutil
    shutil.rmtree(os.path.join(root, "MVs_valid", "clip1"))
    _, _, nomask = dt.read_official_clip(root, "clip1")
    assert nomask.valid_to_prev[1:].all() and not nomask.valid_to_prev[0].any()


def test_lq_frames_are_the_decoded_video(encoded):
    from cpgd_core.codec.decode import load_video

    _, out = encoded
    decoded, _, _, _ = load_video(os.path.join(out, "train", "clip0", "blur.mp4"))
    lq, _, _ = dt.read_official_clip(os.path.join(out, "official", "train"), "clip0")
    assert torch.equal((decoded * 255).round(), (lq * 255).round())


def test_dvd_layout_and_errors(tmp_path):
    src = str(tmp_path / "dvd")
    _make_layout(src, "dvd")
    clips = dt.find_clips(src)
    assert [(c["split"], c["name"]) for c in clips] == [("", "clip0"), ("", "clip1")]
    out = str(tmp_path / "o")
    assert dt.encode_dataset(src, out, max_frames=3, log=lambda s: None) == 2
    assert len(dt.read_priors_dir(os.path.join(out, "clip1"))) == 3
    with pytest.raises(CPGDInputError, match="no clips found"):
        dt.find_clips(str(tmp_path))
    with pytest.raises(CPGDInputError, match="not found"):
        dt.find_clips(str(tmp_path / "nope"))
    os.remove(os.path.join(src, "clip0", "GT", "000000.jpg"))
    with pytest.raises(CPGDInputError, match="sharp frames"):
        dt.find_clips(src)
    assert cli_main(["dataset", "encode", str(tmp_path / "nope"), out]) == 2


def test_writes_are_atomic_and_a_cut_rewrite_is_not_read_as_complete(encoded, tmp_path, monkeypatch):
    """Every file goes through a hidden temporary name (none is left after a run); a rewrite that fails part
    way leaves no temporary file and no index entry, so the clip reads as missing instead of as a mix."""
    src, out = encoded
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(out) for f in files if f.endswith(".part")]
    assert not leftovers

    priors = dt.read_priors_dir(os.path.join(out, "train", "clip0"))
    lq = torch.rand(N, 3, SIZE[1], SIZE[0])
    ours, official = str(tmp_path / "ours"), str(tmp_path / "official")
    dt.write_priors_dir(ours, priors)
    dt.write_official_clip(official, "clip0", lq, None, priors)
    dt.write_official_clip(official, "other", lq, None, priors)

    class Killed(Exception):
        pass

    real_save = np.save
    calls = []

    def save_then_fail(f, arr, *a, **kw):
        calls.append(1)
        if len(calls) == 4:
            real_save(f, arr[..., :1], *a, **kw)  # a partial array reached the temporary file
            raise Killed
        real_save(f, arr, *a, **kw)

    monkeypatch.setattr(np, "save", save_then_fail)
    with pytest.raises(Killed):
        dt.write_priors_dir(ours, priors)
    calls.clear()
    with pytest.raises(Killed):
        dt.write_official_clip(official, "clip0", lq, None, priors)
    monkeypatch.setattr(np, "save", real_save)

    for root in (ours, official):
        assert not [f for d, _, files in os.walk(root) for f in files if f.endswith(".part")]
    with pytest.raises(CPGDInputError, match="meta.json missing"):
        dt.read_priors_dir(ours)
    with open(os.path.join(official, "meta_info.txt")) as f:
        assert [ln.split()[0] for ln in f.read().splitlines()] == ["other"]
    # every stored array is whole (the cut one never reached its final name)
    for d, _, files in os.walk(os.path.join(ours, "flow_to_prev")):
        for f in files:
            assert np.load(os.path.join(d, f)).shape == tuple(priors.flow_to_prev.shape[1:])
    # re-running completes the clip
    dt.write_priors_dir(ours, priors)
    assert len(dt.read_priors_dir(ours)) == N
