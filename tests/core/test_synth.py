"""Synthetic GoPro-style blur, training examples and the bundled sample clip."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cpgd_core.codec.decode import load_video, probe
from cpgd_core.codec.flow import warp
from cpgd_core.data import sample
from cpgd_core.data.synth import (ENCODINGS, load_photo, make_blur_clip, make_training_example, photo_names,
                                  training_images)
from cpgd_core.errors import CPGDInputError


def _grad_energy(x: torch.Tensor) -> float:
    return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


def test_blur_clip_shapes_determinism_and_blur():
    img = load_photo("astronaut")
    a = make_blur_clip(img, 5, (96, 64), seed=7)
    b = make_blur_clip(img, 5, (96, 64), seed=7)
    c = make_blur_clip(img, 5, (96, 64), seed=8)
    assert a["blurry"].shape == a["sharp"].shape == (5, 3, 64, 96)
    assert a["flow_to_prev_true"].shape == (5, 2, 64, 96)
    assert a["subframes"] in (7, 9, 11, 13)
    assert torch.equal(a["blurry"], b["blurry"]) and not torch.equal(a["blurry"], c["blurry"])
    assert 0 <= float(a["blurry"].min()) and float(a["blurry"].max()) <= 1
    fast = make_blur_clip(img, 5, (96, 64), seed=7, motion=2.5)
    assert _grad_energy(fast["blurry"]) < 0.85 * _grad_energy(fast["sharp"])
    one = make_blur_clip(img, 3, (96, 64), subframes=1, seed=7)
    assert torch.allclose(one["blurry"], one["sharp"], atol=1e-6)  # one sub-frame: no blur


def test_true_flow_explains_sharp_frames():
    for moving in (False, True):
        clip = make_blur_clip(load_photo("rocket"), 6, (128, 96), seed=3, moving_object=moving)
        s, f = clip["sharp"], clip["flow_to_prev_true"]
        assert float(f[0].abs().max()) == 0
        assert float(f[1:].norm(dim=1).mean()) > 0.5
        pred = warp(s[:-1], f[1:])[..., 8:-8, 8:-8]
        err = float((pred - s[1:, :, 8:-8, 8:-8]).abs().mean())
        still = float((s[:-1] - s[1:]).abs()[..., 8:-8, 8:-8].mean())
        assert err < 0.35 * still, (moving, err, still)


def test_moving_object_has_its_own_motion():
    clip = make_blur_clip(load_photo("rocket"), 4, (128, 96), seed=5, moving_object=True)
    f = clip["flow_to_prev_true"][2].reshape(2, -1)
    # Camera motion is smooth; the object adds a second, distinct cluster of vectors.
    spread = float((f - f.median(dim=1, keepdim=True).values).norm(dim=0).quantile(0.99))
    assert spread > 1.0


def test_photo_split_is_fixed_and_disjoint():
    train, val = photo_names("train"), photo_names("val")
    assert not set(train) & set(val) and len(train) >= 8 and len(val) >= 2
    tr, va = training_images("train"), training_images("val")
    assert len(tr) == len(train) and len(va) == len(val)
    for v in va:
        assert v.dtype == np.uint8 and v.ndim == 3 and v.shape[2] == 3
        assert not any(t.shape == v.shape and np.array_equal(t, v) for t in tr)
    with pytest.raises(CPGDInputError):
        training_images("test")


def test_real_video_frames_join_the_training_split_only():
    train, val = photo_names("train"), photo_names("val")
    bikes = [n for n in train if n.startswith("bikes@")]
    assert len(bikes) == 10 and not any(n.startswith("bikes@") for n in val)
    frames = [load_photo(n) for n in bikes[:2]]
    assert frames[0].shape == (272, 640, 3) and not np.array_equal(frames[0], frames[1])
    with pytest.raises(CPGDInputError, match="bikes.mp4 frame 3"):
        load_photo("bikes@3")


def test_training_blur_size_does_not_depend_on_the_crop_size():
    """Camera speed in pixels follows --motion, not the rendered size (small crops used to get 1-3 px)."""
    def median_speed(size: int, motion: tuple[float, float]) -> float:
        rng = np.random.default_rng(0)
        speeds = []
        for _ in range(4):
            ex = make_training_example(rng, size=(size, size), num_frames=3, motion_range=motion, moving_object_p=0)
            speeds.append(float(ex["flow_to_prev_true"][1:].norm(dim=1).median()))
        return float(np.median(speeds))

    small, large = median_speed(64, (2.0, 2.0)), median_speed(256, (2.0, 2.0))
    assert 0.6 < small / large < 1.6, (small, large)
    assert median_speed(128, (0.5, 0.5)) < 0.5 * median_speed(128, (2.5, 2.5))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_example_goes_through_the_codec(seed):
    rng = np.random.default_rng(seed)
    ex = make_training_example(rng, size=(128, 128), num_frames=7, crf_range=(20, 24))
    assert ex["blurry_decoded"].shape == ex["sharp"].shape == (7, 3, 128, 128)
    assert ex["encoding"] in {f"{p}:{x}" for p, x in ENCODINGS}
    pri = ex["priors"]
    assert pri.source == "reencode:libx264" and len(pri) == 7 and 20 <= ex["crf"] <= 24
    # Codec motion of the blurry video still follows the true motion of the sharp frames (with three
    # references a few blocks point further back, which the median ignores).
    true = ex["flow_to_prev_true"][:, :, 2::4, 2::4]
    errs = [(pri.flow_to_prev[t].float() - true[t]).norm(dim=0)[pri.valid_to_prev[t, 0]].median()
            for t in range(1, 7)]
    assert float(torch.stack(errs).median()) < 1.0


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("sample"))
    sample.main(["--out", d, "--seed", "0"])
    return d


def test_sample_clip(sample_dir):
    blurry, sharp = os.path.join(sample_dir, sample.BLURRY), os.path.join(sample_dir, sample.SHARP)
    info = probe(blurry)
    assert (info.width, info.height, float(info.fps), info.frame_count) == (640, 360, 24.0, 72)
    assert info.codec == "h264" and info.has_audio and not info.variable_fps
    gt = probe(sharp)
    assert gt.codec == "ffv1" and gt.frame_count == 72
    x, pri, audio, _ = load_video(blurry)
    s, _, _, _ = load_video(sharp, export_mvs=False)
    assert pri.source == "bitstream:h264"
    psnr = float(-10 * torch.log10(((x - s) ** 2).mean()))
    assert 20 < psnr < 32  # visibly blurred, same content
    assert _grad_energy(s) > 1.2 * _grad_energy(x)
    # Beeps start on whole seconds.
    w = audio["waveform"][0, 0].numpy()
    sr = audio["sample_rate"]
    for sec in (1, 2):
        seg = np.abs(w[int((sec - 0.2) * sr):int((sec + 0.2) * sr)])
        onset = int(np.argmax(seg > 0.1)) / sr + sec - 0.2
        assert abs(onset - sec) < 0.015, onset


def test_sample_is_idempotent(sample_dir):
    blurry = os.path.join(sample_dir, sample.BLURRY)
    before = os.stat(blurry).st_mtime_ns
    sample.make_sample(sample_dir, seed=0)
    assert os.stat(blurry).st_mtime_ns == before
    with open(os.path.join(sample_dir, sample.META)) as f:
        assert json.load(f)["seed"] == 0


def test_sample_from_older_generator_code_is_regenerated(sample_dir):
    meta_path = os.path.join(sample_dir, sample.META)
    blurry = os.path.join(sample_dir, sample.BLURRY)
    with open(meta_path) as f:
        meta = json.load(f)
    assert meta["generator"] == sample._generator_digest()
    meta["generator"] = "0" * 16  # as written by code that rendered the clip differently
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    before = os.stat(blurry).st_mtime_ns
    sample.make_sample(sample_dir, seed=0)
    assert os.stat(blurry).st_mtime_ns != before
    with open(meta_path) as f:
        assert json.load(f)["generator"] == sample._generator_digest()
