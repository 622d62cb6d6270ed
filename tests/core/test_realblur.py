"""Real-footage training blur (cpgd_core.data.realblur): interpolation + exposure averaging."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cpgd_core.data import realblur
from cpgd_core.errors import CPGDInputError
from cpgd_core.train.common import psnr

REAL = realblur.default_dir()
needs_real = pytest.mark.skipif(not os.path.isdir(REAL), reason=f"real training clips not present ({REAL})")


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour texture (H, W, 3) float in [0, 1], band-limited so sub-pixel shifts are well defined."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.random((h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (w + 16, h + 16), interpolation=cv2.INTER_CUBIC), 0, 1)


def _shifted(tex: np.ndarray, dx: float, h: int, w: int) -> np.ndarray:
    import cv2

    m = np.float32([[1, 0, dx], [0, 1, 0]])
    return cv2.warpAffine(tex, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)


def test_no_exposure_returns_the_real_frames():
    rng = np.random.default_rng(0)
    frames = (rng.random((5, 32, 48, 3)) * 255).astype(np.uint8)
    blurry, sharp = realblur.blur_from_frames(frames, [1, 2, 3], 0.0)
    assert torch.equal(blurry, sharp)
    assert torch.equal((sharp * 255).round().to(torch.uint8), torch.from_numpy(frames[1:4]).permute(0, 3, 1, 2))


def test_interpolated_exposure_matches_true_motion_blur():
    """A texture panning 6 px per frame: the exposure average of interpolated sub-frames equals the average of
    truly rendered sub-frames (linear light), and differs clearly from the sharp frame."""
    h, w, speed = 64, 96, 6.0
    tex = _texture(h, w)
    frames = np.stack([(_shifted(tex, speed * i, h, w) * 255).round().astype(np.uint8) for i in range(5)])
    exposure = 1.0
    blurry, sharp = realblur.blur_from_frames(frames, [2], exposure)
    taus = np.linspace(2 - exposure / 2, 2 + exposure / 2, 65)
    truth_lin = np.mean([((np.clip(_shifted(tex, speed * t, h, w), 0, 1) * 255).round() / 255) ** realblur.GAMMA
                         for t in taus], 0)
    expected = torch.from_numpy(truth_lin ** (1 / realblur.GAMMA)).permute(2, 0, 1)[None]
    inner = (..., slice(4, -4), slice(12, -12))  # away from borders the flow cannot see
    assert psnr(blurry[inner], expected[inner]) > 38.0
    assert psnr(sharp[inner], expected[inner]) < psnr(blurry[inner], expected[inner]) - 6.0


def test_sharp_subframes_are_the_pan_at_a_higher_frame_rate():
    """Sub-frames of a texture panning 8 px per frame, 4 per interval: the real frames where they fall on one, the
    texture 2 px further on in between (as rendered), each sharp."""
    h, w, speed = 64, 96, 8.0
    tex = _texture(h, w)
    frames = np.stack([(_shifted(tex, speed * i, h, w) * 255).round().astype(np.uint8) for i in range(3)])
    sub = realblur.sharp_subframes(frames, 0, 7, 4)
    assert sub.shape == (7, h, w, 3) and sub.dtype == np.uint8
    assert np.array_equal(sub[0], frames[0]) and np.array_equal(sub[4], frames[1])
    inner = (slice(4, -4), slice(12, -12))
    for k in (1, 2, 3, 5):
        expected = torch.from_numpy(_shifted(tex, speed * k / 4, h, w)[inner])
        got = torch.from_numpy(sub[k][inner].astype(np.float32) / 255)
        assert psnr(got, expected) > 38.0
    with pytest.raises(CPGDInputError, match="sub-frames"):
        realblur.sharp_subframes(frames, 0, 10, 4)


def test_exposure_outside_the_clip_is_refused():
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(CPGDInputError, match="leaves the clip"):
        realblur.blur_from_frames(frames, [0], 1.0)


@needs_real
def test_held_out_clips_are_never_trained_on():
    train, val = realblur.clip_names("train"), realblur.clip_names("val")
    assert set(val) == set(realblur.VAL_CLIPS) and not set(train) & set(val)
    assert len(train) >= 10


@needs_real
def test_training_example_is_encoded_like_inference_input():
    rng = np.random.default_rng(3)
    ex = realblur.make_training_example(rng, (64, 64), 4, split="val", sharp_share=0.0)
    assert ex["blurry_decoded"].shape == ex["sharp"].shape == (4, 3, 64, 64)
    assert ex["clip"] in realblur.VAL_CLIPS
    assert ex["priors"].flow_to_prev.shape == (4, 2, 16, 16)
    assert ex["priors"].source == "reencode:libx264"
    sharp = realblur.make_training_example(np.random.default_rng(3), (64, 64), 4, split="val", sharp_share=1.0)
    assert sharp["exposure"] == 0.0
    assert psnr(sharp["blurry_decoded"], sharp["sharp"]) > 30.0  # only the encode separates them


@needs_real
def test_mixed_source_passes_the_sharp_share_to_its_real_clips():
    from cpgd_core.train.cpfp import _mixed_example

    rng = np.random.default_rng(0)
    examples = [_mixed_example(rng, 32, 2, (18, 18), "train", sharp_share=1.0) for _ in range(6)]
    real = [e for e in examples if "clip" in e]
    assert real and all(e["exposure"] == 0.0 for e in real)


def test_true_trajectory_of_a_pan_is_speed_times_exposure():
    """A texture panning 4 px per frame: the swept displacement is 4 x exposure along x, also past one interval
    (exposure 1.5 composes two intervals' flows), and zero without exposure."""
    h, w, speed = 64, 96, 4.0
    tex = _texture(h, w)
    frames = np.stack([(_shifted(tex, speed * i, h, w) * 255).round().astype(np.uint8) for i in range(6)])
    inner = (..., slice(8, -8), slice(20, -20))
    for exposure in (0.5, 1.0, 1.5):
        blurry, sharp, traj = realblur.blur_from_frames(frames, [2, 3], exposure, with_trajectory=True)
        assert traj.shape == (2, 2, h, w) and traj.dtype == torch.float32
        assert blurry.shape == sharp.shape == (2, 3, h, w)
        tx, ty = traj[:, 0][inner], traj[:, 1][inner]
        assert abs(float(tx.abs().median()) - speed * exposure) < 0.15, exposure
        assert float(ty.abs().median()) < 0.1
    _, _, traj = realblur.blur_from_frames(frames, [2], 0.0, with_trajectory=True)
    assert torch.count_nonzero(traj) == 0


@needs_real
def test_real_clip_carries_its_true_trajectory():
    clip = realblur.make_real_clip(np.random.default_rng(5), (64, 48), 3, split="val", sharp_share=0.0)
    assert clip["trajectory"].shape == (3, 2, 48, 64) and clip["trajectory"].dtype == torch.float32
    assert clip["exposure_fraction"] == pytest.approx(clip["exposure"] / clip["step"])
    assert 0 < clip["exposure_fraction"] <= 1.0
    sharp = realblur.make_real_clip(np.random.default_rng(5), (64, 48), 3, split="val", sharp_share=1.0)
    assert sharp["exposure_fraction"] == 0 and torch.count_nonzero(sharp["trajectory"]) == 0


def test_line_blur_is_the_straight_path_model():
    """A uniform pan rendered by line_blur equals the truly rendered box blur (linear light); a zero trajectory
    leaves the frame as it is."""
    h, w, length = 64, 96, 10.0
    tex = _texture(h, w)
    sharp = torch.from_numpy(_shifted(tex, 0.0, h, w)).permute(2, 0, 1)[None].clamp(0, 1)
    traj = torch.zeros(1, 2, h, w)
    traj[:, 0] = length
    got = realblur.line_blur(sharp, traj)
    taus = np.linspace(-length / 2, length / 2, 81)
    truth = np.mean([np.clip(_shifted(tex, t, h, w), 0, 1) ** realblur.GAMMA for t in taus], 0) ** (1 / realblur.GAMMA)
    inner = (..., slice(4, -4), slice(12, -12))
    expected = torch.from_numpy(truth).permute(2, 0, 1)[None]
    assert psnr(got[inner], expected[inner]) > 45.0
    assert psnr(sharp[inner], expected[inner]) < 35.0
    assert torch.allclose(realblur.line_blur(sharp, torch.zeros(1, 2, h, w)), sharp, atol=1e-5)


@needs_real
def test_line_share_rerenders_the_blur_and_leaves_other_draws_alone():
    """line_share 1 re-renders the blur along the clip's true trajectories (the straight-path operator explains it
    far better than the generator's own blur); line_share 0 draws exactly the clip drawn without it."""
    from cpgd_core.blur.operator import TrajectoryBlur

    base = realblur.make_real_clip(np.random.default_rng(9), (96, 96), 3, split="val", sharp_share=0.0)
    same = realblur.make_real_clip(np.random.default_rng(9), (96, 96), 3, split="val", sharp_share=0.0, line_share=0.0)
    assert torch.equal(base["blurry"], same["blurry"]) and not base["line"]
    line = realblur.make_real_clip(np.random.default_rng(9), (96, 96), 3, split="val", sharp_share=0.0, line_share=1.0)
    assert line["line"] and torch.equal(line["sharp"], base["sharp"])
    g = realblur.GAMMA
    model = TrajectoryBlur(line["trajectory"], samples=32)(line["sharp"] ** g).clamp(0, 1) ** (1 / g)
    inner = (..., slice(16, -16), slice(16, -16))
    assert psnr(model[inner], line["blurry"][inner]) > psnr(model[inner], base["blurry"][inner]) + 3.0


@needs_real
def test_long_blur_draws_steps_the_default_never_does():
    """``--long-blur`` training draws from realblur.LONG_STEPS (up to 5 source frames per frame, each over an
    exposure of shutter x step source intervals); the default only from 1-3."""
    default = {realblur.make_real_clip(np.random.default_rng(s), (64, 48), 3, split="train", sharp_share=0.0)["step"]
               for s in range(12)}
    assert default <= {1, 2, 3}
    long_only = tuple((s, p) for s, p in realblur.LONG_STEPS if s > 3)
    total = sum(p for _, p in long_only)
    clip = realblur.make_real_clip(np.random.default_rng(0), (64, 48), 3, split="train", sharp_share=0.0,
                                   steps=tuple((s, p / total) for s, p in long_only))
    assert clip["step"] in (4, 5) and clip["exposure"] > 3 * realblur.SHUTTER_RANGE[0]
