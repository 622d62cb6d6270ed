"""Stage one 'quality' mode driver (cpgd_core.pipeline.nonblind): whole frames, tiles, streaming, weights."""
from __future__ import annotations

import os

import pytest
import torch

from cpgd_core.blur.operator import TrajectoryBlur
from cpgd_core.blur.solver import UnrolledDeblur, UnrolledDeblurConfig
from cpgd_core.errors import CPGDInputError
from cpgd_core.pipeline import nonblind


def _scene(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 6 + 2, w // 6 + 2, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h + 40, w + 40), mode="bicubic",
                                           align_corners=False).clamp(0, 1)[0]


def _panning_clip(frames: int, h: int, w: int, speed: int) -> torch.Tensor:
    big = _scene(h, w)
    return torch.stack([big[:, 8:8 + h, 4 + speed * t:4 + speed * t + w] for t in range(frames)])


def _model(iterations: int = 2) -> UnrolledDeblur:
    torch.manual_seed(0)
    return UnrolledDeblur(UnrolledDeblurConfig(iterations=iterations, cg_steps=2,
                                               denoiser=None)).eval()


def test_still_clip_comes_back_unchanged():
    clip = _panning_clip(4, 48, 64, speed=0)
    out, field = nonblind.deblur_frames(_model(), clip, exposure="auto")
    assert float(field.trajectory.norm(dim=1).max()) < 0.75
    assert torch.equal(out, clip)


def test_tiles_match_the_whole_frame():
    frame = _scene(96, 128)[:, :96, :128]
    traj = torch.zeros(2, 96, 128)
    traj[0] = 6.0
    y = TrajectoryBlur(traj[None])(frame[None])[0]
    model = _model()
    whole = nonblind.deblur_frame(model, y, traj)
    tiled = nonblind.deblur_frame(model, y, traj, tile_pixels=48 * 48)
    assert (whole - tiled).abs().mean() < 2e-3
    assert (whole - frame).abs().mean() < (y - frame).abs().mean()


def test_stream_equals_in_memory_and_holds_few_frames():
    clip = _panning_clip(12, 40, 56, speed=2)
    model = _model()
    whole, field = nonblind.deblur_frames(model, clip, exposure=0.5)
    consumed = []

    def source():
        for t in range(len(clip)):
            consumed.append(t)
            yield clip[t]

    outs, lag = [], 0
    for k, (frame, traj, exposure) in enumerate(nonblind.deblur_stream(model, source(), 40, 56, exposure=0.5)):
        lag = max(lag, len(consumed) - k)
        outs.append(frame)
        assert exposure == 0.5
        assert torch.allclose(traj, field.trajectory[k])
    assert torch.allclose(torch.stack(outs), whole, atol=1e-6)
    assert lag <= 3   # a fixed exposure needs the next frame's motion, and the next frame's own velocity (it is
    # a neighbour in the choice of each frame's time centre)


def test_mismatched_field_and_frames_are_refused():
    clip = _panning_clip(3, 32, 32, speed=1)
    _, field = nonblind.deblur_frames(_model(), clip, exposure=0.5)
    with pytest.raises(CPGDInputError, match="does not match"):
        nonblind.deblur_frames(_model(), clip[:2], field)


def test_fewer_iterations_keep_the_schedule_ends():
    model = UnrolledDeblur(UnrolledDeblurConfig(iterations=4, cg_steps=1, prior="tv"))
    short = nonblind.with_iterations(model, 2)
    assert short.config.iterations == 2
    assert torch.equal(short.log_sigma, model.log_sigma[[0, 3]])
    assert nonblind.with_iterations(model, 0) is model


def test_shipped_weights_load():
    path = nonblind.default_deblur_path()
    assert os.path.isfile(path), "cpgd_core/weights/deblur.safetensors is shipped"
    model = nonblind.load_deblur()
    assert isinstance(model, UnrolledDeblur) and model.denoiser is not None
    assert not model.training


def test_wrong_weights_file_is_refused(tmp_path):
    from cpgd_core.weights import default_cpfp_path

    with pytest.raises(CPGDInputError, match="not unrolled_deblur"):
        nonblind.load_deblur(default_cpfp_path())
    with pytest.raises(CPGDInputError, match="not found"):
        nonblind.load_deblur(str(tmp_path / "missing.safetensors"))


def test_a_guessed_exposure_is_not_inverted():
    clip = _panning_clip(4, 40, 56, speed=3)
    _, field = nonblind.deblur_frames(_model(), clip, exposure=0.5)
    assert float(field.trajectory.norm(dim=1).median()) > 1.0
    field.exposure_confidence = torch.zeros(len(clip))   # the exposure reader's fallback: a guess
    out, _ = nonblind.deblur_frames(_model(), clip, field)
    assert torch.equal(out, clip)
    assert torch.equal(nonblind.measured(field.trajectory[0], 0.0), torch.zeros_like(field.trajectory[0]))
    assert torch.equal(nonblind.measured(field.trajectory[0], 0.7), field.trajectory[0])


def test_frames_whose_exposure_was_not_read_are_named_and_shown_unblurred():
    """The field as inverted (measured_field) has zero trajectories exactly on the unread frames, and the node's
    info says how many frames come back unchanged and how to deblur them."""
    from cpgd_core.pipeline.quality import describe_field

    clip = _panning_clip(4, 40, 56, speed=3)
    _, field = nonblind.deblur_frames(_model(), clip, exposure=0.5)
    field.exposure_confidence = torch.tensor([1.0, 0.0, 1.0, 0.0])
    shown = nonblind.measured_field(field)
    assert torch.equal(shown.trajectory[[0, 2]], field.trajectory[[0, 2]])
    assert not shown.trajectory[[1, 3]].any()
    assert "could not be read on 2 of 4 frames" in describe_field(shown, given=False)
    field.exposure_confidence = torch.ones(4)
    assert "could not be read" not in describe_field(nonblind.measured_field(field), given=False)
