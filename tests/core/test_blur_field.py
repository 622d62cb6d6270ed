"""The blur field (cpgd_core.blur): per-pixel trajectory swept during the exposure, exposure read from the blur."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from cpgd_core.blur import exposure as expo
from cpgd_core.blur.field import BlurField, BlurFieldStream, estimate_blur_field
from cpgd_core.blur.velocity import grey_u8, select_time_centre
from cpgd_core.errors import CPGDInputError


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Broadband colour texture (octaves of smooth noise, amplitude growing with scale, like a natural image's
    1/f spectrum), (H + 160, W + 160, 3) in [0, 1]."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((h + 160, w + 160, 3), np.float32)
    for cell in (2, 4, 8, 16, 32):
        small = rng.random(((h + 160) // cell + 2, (w + 160) // cell + 2, 3)).astype(np.float32) - 0.5
        acc += cell * cv2.resize(small, (w + 160, h + 160), interpolation=cv2.INTER_CUBIC)
    return np.clip(0.5 + acc / (4 * acc.std()), 0, 1)


def _at(tex: np.ndarray, x: float, y: float, h: int, w: int) -> np.ndarray:
    m = np.float32([[1, 0, 80 + x], [0, 1, 80 + y]])
    return cv2.warpAffine(tex, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)


def _pan(t: int, h: int, w: int, dx: float, dy: float, exposure: float = 0.0, seed: int = 0) -> torch.Tensor:
    """T frames of a texture translating by (dx, dy) px per frame, each averaged over ``exposure`` of the frame
    interval (in linear light, as a shutter does), (T, 3, H, W)."""
    tex = _texture(h, w, seed)
    out = []
    for i in range(t):
        taus = np.linspace(-exposure / 2, exposure / 2, 33) if exposure > 0 else [0.0]
        lin = np.mean([_at(tex, dx * (i + s), dy * (i + s), h, w) ** 2.2 for s in taus], 0)
        out.append(lin ** (1 / 2.2))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def test_pan_gives_velocity_times_exposure():
    frames = _pan(4, 96, 128, 3.0, -1.5)
    field = estimate_blur_field(frames, exposure=0.5)
    assert isinstance(field, BlurField)
    assert field.trajectory.shape == (4, 2, 96, 128) and field.trajectory.dtype == torch.float32
    assert field.exposure.shape == (4,) and torch.allclose(field.exposure, torch.full((4,), 0.5))
    assert field.confidence.shape == (4, 1, 96, 128)
    inner = field.trajectory[..., 16:-16, 16:-16]
    # (the sign does not matter to the blur model: length and direction do)
    med = inner.abs().flatten(2).median(-1).values
    assert torch.allclose(med[:, 0], torch.full((4,), 1.5), atol=0.2)
    assert torch.allclose(med[:, 1], torch.full((4,), 0.75), atol=0.2)
    assert float(field.confidence[..., 16:-16, 16:-16].mean()) > 0.8


def test_exposure_is_read_from_the_blur_and_sharp_video_reads_sharp():
    """A 12 px/frame pan of a broadband texture: a longer exposure reads longer, each within 0.25 of the truth (the
    reading assumes a natural image's statistics; this texture's are only close); unblurred reads ~0, so its
    trajectories stay under a pixel (a full exposure assumed would claim 12 px)."""
    reads = [float(estimate_blur_field(_pan(5, 160, 224, 12.0, 0.0, exposure=e, seed=1)).exposure.median())
             for e in (0.4, 0.8)]
    assert reads[0] < reads[1]
    assert abs(reads[0] - 0.4) < 0.25 and abs(reads[1] - 0.8) < 0.25
    sharp = estimate_blur_field(_pan(5, 160, 224, 12.0, 0.0, exposure=0.0, seed=1))
    assert float(sharp.exposure.max()) < 0.1 and float(sharp.exposure_confidence.min()) > 0
    assert float(sharp.trajectory[..., 16:-16, 16:-16].norm(dim=1).median()) < 1.0


def test_still_video_falls_back_with_no_confidence():
    frames = _pan(3, 64, 64, 0.0, 0.0)
    field = estimate_blur_field(frames)
    assert torch.all(field.exposure == expo.FALLBACK) and torch.all(field.exposure_confidence == 0)
    assert float(field.trajectory.abs().max()) < 0.5


def test_stream_matches_the_batch_form_and_holds_few_frames():
    frames = _pan(32, 64, 96, 4.0, 1.0, exposure=0.5, seed=2)
    batch = estimate_blur_field(frames)
    stream = BlurFieldStream(64, 96)
    out, held = [], 0
    for f in frames:
        out += stream.push(grey_u8(f))
        held = max(held, len(stream.frames))
    out += stream.finish()
    assert [f.index for f in out] == list(range(32))
    assert held <= stream.half + 2  # flat memory: the exposure window ahead, not the clip
    assert torch.equal(torch.stack([f.trajectory for f in out]), batch.trajectory)
    assert torch.equal(torch.tensor([f.exposure for f in out]), batch.exposure)


def test_each_frame_takes_the_motion_of_its_own_exposure():
    """A camera that speeds up at once: 3 px per frame interval, then 13, each frame blurred by the motion during its
    own exposure. Around the change the central difference says 5.5 px for the last slow frame and 10.5 for the first
    fast one; the time centre chosen from the blur gives each its own motion (3 and 13)."""
    speed = np.array([3.0, 3.0, 3.0, 13.0, 13.0, 13.0])
    centre = np.concatenate([[0.0], np.cumsum((speed[:-1] + speed[1:]) / 2)])   # the speed holds +-1/2 interval
    tex = _texture(120, 160, seed=4)
    frames = []
    for c, u in zip(centre, speed):
        lin = np.mean([_at(tex, c + u * s, 0.0, 120, 160) ** 2.2 for s in np.linspace(-0.4, 0.4, 33)], 0)
        frames.append(lin ** (1 / 2.2))
    frames = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()

    def lengths(field):   # frames 2 and 3, either side of the change
        return field.trajectory[2:4, 0, 16:-16, 16:-16].abs().flatten(1).median(1).values

    central = lengths(estimate_blur_field(frames, exposure=0.8, time_centre=False))
    chosen = lengths(estimate_blur_field(frames, exposure=0.8))
    true = torch.tensor([3.0, 13.0]) * 0.8
    assert torch.allclose(central, torch.tensor([5.5, 10.5]) * 0.8, atol=0.5)
    assert torch.allclose(chosen, true, atol=0.5)


def test_time_centre_stays_central_where_no_match_holds():
    """Where no pixel's match holds both ways (occluded, unmatched) nothing can choose: the central difference."""
    rng = np.random.default_rng(0)
    grey = rng.random((40, 48)).astype(np.float32)
    v = np.full((40, 48, 2), 3.0, np.float32)
    side = (grey, v, v, np.zeros((40, 48), np.float32))
    assert select_time_centre(grey, v, v, [side, side]) == 0.0


def test_bad_input_is_refused():
    with pytest.raises(CPGDInputError, match="at least 2"):
        estimate_blur_field(torch.zeros(1, 3, 32, 32))
    with pytest.raises(CPGDInputError, match="exposure"):
        estimate_blur_field(torch.zeros(2, 3, 32, 32), exposure=1.5)
    with pytest.raises(CPGDInputError, match="exposure"):
        estimate_blur_field(torch.zeros(2, 3, 32, 32), exposure="long")
    with pytest.raises(CPGDInputError, match="frames must be"):
        estimate_blur_field(torch.zeros(2, 1, 32, 32))


def _curves(exposure: float, scene_width: float = 0.4, speed: float = 20.0) -> expo.Curves:
    """Correlation curves whose along-motion width exceeds the across one by an exposure of ``exposure``, voted by
    pixels moving ``speed`` px per frame."""
    lags = expo.LAG_STEP * np.arange(1, int(expo.MAX_LAG / expo.LAG_STEP) + 1)
    line = lambda width: 1 - (1 - expo.LEVEL) * lags / (width / 2)  # noqa: E731  falls to LEVEL at width / 2
    along = line(np.sqrt(scene_width ** 2 + exposure ** 2))
    return expo.Curves(along * 100, line(scene_width) * 100, 100.0, 100.0, votes=100, pixels=100, speed=100 * speed)


def test_readings_below_the_sharp_threshold_read_sharp():
    """What sharp footage with directional texture reads (under SHARP_BELOW) is taken as no blur, with the
    reading's confidence; a reading above it is kept, and clipped to [0, 1]."""
    e, conf, _ = expo.exposure_from_curves(_curves(0.8 * expo.SHARP_BELOW))
    assert e == 0.0 and conf == 1.0
    raw = 1.2 * expo.SHARP_BELOW
    e, conf, _ = expo.exposure_from_curves(_curves(raw))
    assert abs(e - raw) < 0.02 and conf == 1.0
    assert expo.exposure_from_reading(1.3) == 1.0


def test_blur_too_short_to_tell_from_texture_reads_sharp():
    """The same reading is a blur where the pixels move fast, and sharp where at their speed it would be shorter
    than SHARP_LENGTH px (sharp high-frame-rate frames read such blur from their texture and lost 1-2 dB inverted);
    the blur length is reported either way, and the window's mean speed decides."""
    raw = 0.6
    slow = 0.8 * expo.SHARP_LENGTH / raw
    e, conf, length = expo.exposure_from_curves(_curves(raw, speed=slow))
    assert e == 0.0 and conf == 1.0 and abs(length - raw * slow) < 0.02
    e, conf, length = expo.exposure_from_curves(_curves(raw, speed=1.5 * expo.SHARP_LENGTH / raw))
    assert abs(e - raw) < 0.02 and conf == 1.0 and length > expo.SHARP_LENGTH
    summed = _curves(raw, speed=slow) + _curves(raw, speed=3 * slow)
    assert abs(summed.speed / summed.votes - 2 * slow) < 1e-6 and expo.exposure_from_curves(summed)[0] > 0


def test_field_reads_short_blur_as_sharp_and_reports_its_length():
    """An 8 px/frame pan blurred over 0.35 of the frame interval (about 3 px) reads sharp, with the blur length it
    was read as; a 12 px/frame pan over 0.8 (about 10 px) reads its blur. A given exposure has no reading."""
    short = estimate_blur_field(_pan(5, 160, 224, 8.0, 0.0, exposure=0.35, seed=1))
    long = estimate_blur_field(_pan(5, 160, 224, 12.0, 0.0, exposure=0.8, seed=1))
    assert short.blur_length is not None and 0 < float(short.blur_length.median()) < expo.SHARP_LENGTH
    assert float(short.exposure.max()) == 0 and torch.count_nonzero(short.trajectory) == 0
    assert float(long.blur_length.median()) > expo.SHARP_LENGTH and float(long.exposure.median()) > 0.5
    given = estimate_blur_field(_pan(3, 160, 224, 12.0, 0.0, exposure=0.35, seed=1), exposure=0.35)
    assert given.blur_length is None and torch.count_nonzero(given.trajectory) > 0


def test_curves_record_the_voters_speed_at_full_size():
    """frame_curves reads a downscaled frame but records its voters' speed in full-size pixels per frame."""
    frames = _pan(3, 160, 224, 12.0, 0.0, exposure=0.6, seed=1)
    grey = (frames[1].mean(0) * 255).round().to(torch.uint8).numpy()
    velocity = np.zeros(grey.shape + (2,), np.float32)
    velocity[..., 0] = 12.0
    curves = expo.frame_curves(grey, velocity)
    assert curves.votes > 0 and abs(curves.speed / curves.votes - 12.0) < 0.3


def test_fast_mode_leaves_sharp_video_alone_and_restores_blurred_video():
    """Fast mode (CPFP) gates its output by the blur field read as quality mode reads it: a sharp 12 px/frame pan
    comes back bit for bit without the network running, the same pan blurred over 0.8 of the frame interval is
    changed."""
    from fractions import Fraction

    from cpgd_core.codec.priors import CodecPriors
    from cpgd_core.models.cpfp import CPFP, CPFPConfig
    from cpgd_core.pipeline.restore import restore_video

    torch.manual_seed(0)
    model = CPFP(CPFPConfig.lite()).eval()   # random weights: any pixel it is let through changes
    t, h, w = 5, 160, 224
    zeros = lambda c, s: torch.zeros(t, c, h // s, w // s)  # noqa: E731
    priors = CodecPriors(flow_to_prev=zeros(2, 4).half(), valid_to_prev=zeros(1, 4).bool(),
                         flow_to_next=zeros(2, 4).half(), valid_to_next=zeros(1, 4).bool(),
                         residual=zeros(1, 1).half(), frame_types=["I"] + ["P"] * (t - 1), height=h, width=w,
                         fps=Fraction(25))
    runs = []
    model.register_forward_hook(lambda *_: runs.append(1))
    sharp = _pan(t, h, w, 12.0, 0.0, exposure=0.0, seed=1)
    assert torch.equal(restore_video(model, sharp, priors), sharp.clamp(0, 1))
    assert not runs
    blurred = _pan(t, h, w, 12.0, 0.0, exposure=0.8, seed=1)
    changed = (restore_video(model, blurred, priors) - blurred).abs()[..., 16:-16, 16:-16]
    assert runs and float((changed > 1e-3).float().mean()) > 0.5


def test_long_real_blur_reads_its_exposure():
    """Real footage (GoPro snowboarding, 34 px median trajectory) blurred over 0.9 of the frame interval: the
    derivative correlation of blur this long is read at a smaller size, where the blur is a few pixels, or it
    reads about half its length."""
    from cpgd_core.data import realblur

    if not os.path.isdir(realblur.default_dir()):
        pytest.skip(f"real training clips not present ({realblur.default_dir()})")
    src = realblur.load_clip("set8_gopro_snowboard")[30:43, 100:356, 300:620]
    blurry, _ = realblur.blur_from_frames(src, [3, 6, 9], 2.7)
    assert abs(float(estimate_blur_field(blurry).exposure.median()) - 0.9) < 0.2


def test_exported_field_keeps_the_blur_length_it_was_read_as(tmp_path):
    """write_blur_field stores each frame's blur length where the exposure was read, and load_blur_field returns
    it; a given exposure stores none."""
    from cpgd_core.blur.export import load_blur_field, write_blur_field
    from cpgd_core.codec.encode import write_video
    from cpgd_core.pipeline.nonblind import measured_field

    clip = str(tmp_path / "pan.mp4")
    frames = (_pan(6, 160, 224, 12.0, 0.0, exposure=0.8, seed=1) * 255).round().to(torch.uint8)
    write_video(clip, frames, 30, crf=12, preset="medium")
    read = write_blur_field(clip, str(tmp_path / "auto.npz"))
    given = write_blur_field(clip, str(tmp_path / "given.npz"), exposure=0.5)
    with np.load(read["path"]) as z:
        assert z["blur_length"].dtype == np.float32 and z["blur_length"].shape == (6,)
    with np.load(given["path"]) as z:
        assert "blur_length" not in z.files
    loaded = load_blur_field(read["path"])
    assert loaded.blur_length is not None and float(loaded.blur_length.min()) > expo.SHARP_LENGTH
    assert float(loaded.exposure.min()) > 0 and torch.equal(measured_field(loaded).trajectory, loaded.trajectory)
    assert load_blur_field(given["path"]).blur_length is None


def _still_raft(seed: int = 0):
    """RAFT-large with random weights whose flow head predicts no update: refinement must return its start."""
    from cpgd_core.models.raft import RAFT

    torch.manual_seed(seed)
    net = RAFT().eval()
    with torch.no_grad():
        net.update_block.flow_head.conv2.weight.zero_()
        net.update_block.flow_head.conv2.bias.zero_()
    return net


def test_raft_refinement_starts_from_the_given_field_at_any_size():
    """The DIS field goes onto RAFT's 1/8 grid (px / 8) and comes back padded and cropped: a RAFT that adds
    nothing returns the start, whatever the frame size (RAFT needs multiples of 8, at least 128)."""
    from cpgd_core.blur.velocity import RaftRefiner

    refiner = RaftRefiner(_still_raft(), iters=2)
    rng = np.random.default_rng(0)
    for h, w in ((90, 150), (136, 200)):
        a, b = (rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(2))
        start = np.zeros((h, w, 2), np.float32)
        start[..., 0], start[..., 1] = 3.0, -2.0
        out = refiner.refine(refiner.encode(a), refiner.encode(b), start)
        assert out.shape == (h, w, 2) and out.dtype == np.float32
        assert np.allclose(out, start, atol=1e-4)
    with pytest.raises(ValueError):
        RaftRefiner(_still_raft(), iters=0)


def test_raft_refined_field_runs_through_the_stream():
    """With a refiner the stream encodes each frame once, refines both fields of each pair from DIS, and uses
    RAFT's fields; it needs each frame's colour."""
    from cpgd_core.blur.velocity import RaftRefiner
    from cpgd_core.models.raft import RAFT

    class Counting(RaftRefiner):
        calls = {"encode": 0, "refine": 0}

        def encode(self, rgb):
            self.calls["encode"] += 1
            return super().encode(rgb)

        def refine(self, a, b, flow):
            self.calls["refine"] += 1
            return super().refine(a, b, flow)

    frames = _pan(4, 96, 128, 3.0, -1.5)
    plain = estimate_blur_field(frames, exposure=0.5)
    counting = Counting(_still_raft(), iters=1)
    still = estimate_blur_field(frames, exposure=0.5, raft=counting)
    assert counting.calls == {"encode": 4, "refine": 6}
    torch.manual_seed(1)
    moved = estimate_blur_field(frames, exposure=0.5, raft=RaftRefiner(RAFT().eval(), iters=2))
    assert still.trajectory.shape == moved.trajectory.shape == plain.trajectory.shape
    # (a still RAFT returns DIS's field as RAFT's 1/8 grid holds it: close to DIS on a smooth pan)
    inner = (..., slice(16, -16), slice(16, -16))
    assert float((still.trajectory - plain.trajectory)[inner].abs().median()) < 0.1
    assert float((moved.trajectory - still.trajectory)[inner].abs().max()) > 0.01
    stream = BlurFieldStream(96, 128, 0.5, raft=RaftRefiner(_still_raft(), iters=1))
    with pytest.raises(ValueError, match="RGB"):
        stream.push(grey_u8(frames[0]))
