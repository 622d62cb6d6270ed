"""Stage-one inference driver: chunk/tile scheduling, blending exactness, seams, input checks, streaming."""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from cpgd_core.codec.priors import CodecPriors
from cpgd_core.errors import CPGDInputError
from cpgd_core.models.cpfp import CPFP, CPFPConfig
from cpgd_core.pipeline.restore import restore_stream, restore_video
from cpgd_core.pipeline.schedule import ChunkBlender, chunk_windows, feather_weights, windows_1d



def make_priors(t: int, h: int, w: int, seed: int = 0) -> CodecPriors:
    g = torch.Generator().manual_seed(seed)
    gh, gw = -(-h // 4), -(-w // 4)
    vp = torch.rand(t, 1, gh, gw, generator=g) < 0.8
    vp[0] = False
    vn = torch.rand(t, 1, gh, gw, generator=g) < 0.8
    vn[-1] = False
    return CodecPriors(
        flow_to_prev=(torch.randn(t, 2, gh, gw, generator=g) * 4).half(), valid_to_prev=vp,
        flow_to_next=(torch.randn(t, 2, gh, gw, generator=g) * 4).half(), valid_to_next=vn,
        residual=(torch.randn(t, 1, h, w, generator=g) * 0.02).half(),
        frame_types=["I"] + ["P"] * (t - 1), height=h, width=w, fps=Fraction(25))


class Pointwise(torch.nn.Module):
    """Same call signature as CPFP, output a per-pixel function of the input (no spatial/temporal context)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, frames, fp, vp, fn, vn, res, check_interrupt=None):
        assert frames.shape[-1] % 4 == 0 and fp.shape[-1] * 4 == frames.shape[-1]
        return frames * 0.5 + 0.25


def blurred_pan(t: int, h: int, w: int, speed: int = 16, blur: int = 14) -> torch.Tensor:
    """(T, 3, H, W) smooth texture panning ``speed`` px per frame, each frame averaged over ``blur`` px of it:
    blur the field reads, so fast mode runs its network (it returns frames it finds sharp as they came)."""
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, h // 4, w // 4, generator=g), size=(h, w),
                                           mode="bilinear")[0]
    return torch.stack([torch.stack([torch.roll(base, speed * i + j, dims=2) for j in range(blur)]).mean(0)
                        for i in range(t)])


def identity_cpfp() -> CPFP:
    """A real CPFP whose last conv is zero: the output is the input through the global skip."""
    torch.manual_seed(0)
    m = CPFP(CPFPConfig.lite()).eval()
    with torch.no_grad():
        m.conv_out.weight.zero_()
    return m


@pytest.mark.parametrize("t,cs,ov", [(1, 16, 4), (16, 16, 4), (17, 16, 4), (29, 16, 4), (100, 8, 3), (40, 5, 0)])
def test_chunk_windows_cover_with_overlap(t, cs, ov):
    wins = chunk_windows(t, cs, ov)
    assert wins[0][0] == 0 and wins[-1][1] == t
    assert all(e - s == min(cs, t) for s, e in wins)
    for (s0, e0), (s1, e1) in zip(wins, wins[1:]):
        assert s0 < s1 and e0 - s1 >= ov


def test_chunk_windows_bad_args():
    with pytest.raises(CPGDInputError, match="chunk_overlap"):
        chunk_windows(10, 4, 4)


@pytest.mark.parametrize("size,tile,ov", [(128, 48, 16), (100, 32, 8), (64, 64, 8), (200, 56, 32)])
def test_feather_weights_sum_to_one(size, tile, ov):
    tiles = windows_1d(size, tile, ov)
    assert tiles[0][0] == 0 and tiles[-1][1] == size
    assert all(s % 4 == 0 for s, _ in tiles)
    total = torch.zeros(size, dtype=torch.float64)
    for (s, e), w in zip(tiles, feather_weights(tiles, size)):
        assert (w > 0).all()
        total[s:e] += w
    torch.testing.assert_close(total, torch.ones(size, dtype=torch.float64), atol=1e-12, rtol=0)


def test_chunk_blender_weights_are_exact_linear_crossfade():
    blender = ChunkBlender()
    outs = [blender.add(0, torch.zeros(8, 1, 1, 1))]
    outs.append(blender.add(4, torch.ones(8, 1, 1, 1)))  # overlap of 4 frames: 4..7
    outs.append(blender.flush())
    y = torch.cat([o for o in outs if o is not None]).flatten()
    assert len(y) == 12
    torch.testing.assert_close(y[4:8], torch.tensor([0.2, 0.4, 0.6, 0.8]))
    assert (y[:4] == 0).all() and (y[8:] == 1).all()


def test_chunked_video_equals_pointwise_map_exactly():
    frames = torch.rand(23, 3, 20, 28)
    out = restore_video(Pointwise(), frames, make_priors(23, 20, 28), chunk_size=8, chunk_overlap=3)
    torch.testing.assert_close(out, frames * 0.5 + 0.25, atol=1e-6, rtol=0)


def test_constant_video_stays_constant_across_chunk_and_tile_seams():
    frames = torch.full((10, 3, 44, 60), 0.3)
    priors = make_priors(10, 44, 60)
    out = restore_video(identity_cpfp(), frames, priors, chunk_size=4, chunk_overlap=2, tile_size=24,
                        tile_overlap=8)
    assert out.shape == frames.shape
    torch.testing.assert_close(out, frames, atol=1e-6, rtol=0)
    # a per-pixel map must be unchanged by tiling whatever the content
    frames = torch.rand(5, 3, 37, 50)  # odd sizes: padded to multiples of 4 inside, cropped back
    out = restore_video(Pointwise(), frames, make_priors(5, 37, 50), tile_size=16, tile_overlap=8)
    torch.testing.assert_close(out, frames * 0.5 + 0.25, atol=1e-6, rtol=0)


def test_real_model_tiled_close_to_untiled_away_from_seams():
    torch.manual_seed(3)
    m = CPFP(CPFPConfig.lite()).eval()
    frames, priors = torch.rand(3, 3, 32, 64), make_priors(3, 32, 64)
    full = restore_video(m, frames, priors)
    tiled = restore_video(m, frames, priors, tile_size=48, tile_overlap=32)
    assert full.shape == tiled.shape == frames.shape
    assert torch.isfinite(tiled).all()
    assert (full - tiled).abs().mean() < 0.02


def test_auto_precision_on_cpu_follows_the_hardware_and_stays_close_to_fp32():
    from cpgd_core.precision import cpu_multiplies_bf16, resolve_dtype
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == "fp32"  # networks not validated in bf16
    assert resolve_dtype("auto", cpu, cpu_bf16=True) == ("bf16" if cpu_multiplies_bf16() else "fp32")
    torch.manual_seed(4)
    m = CPFP(CPFPConfig.lite()).eval()
    frames, priors = torch.rand(3, 3, 32, 64), make_priors(3, 32, 64)
    exact = restore_video(m, frames, priors, dtype="fp32")
    for dtype in ("auto", "bf16"):
        out = restore_video(m, frames, priors, dtype=dtype)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert (out - exact).abs().mean() < 0.005


def test_mismatched_counts_and_sizes_are_rejected():
    m = Pointwise()
    with pytest.raises(CPGDInputError, match=r"12 frames.*10 frames"):
        restore_video(m, torch.rand(12, 3, 16, 16), make_priors(10, 16, 16))
    with pytest.raises(CPGDInputError, match=r"16x16.*20x16"):
        restore_video(m, torch.rand(4, 3, 16, 16), make_priors(4, 16, 20))
    with pytest.raises(CPGDInputError, match="dtype"):
        restore_video(m, torch.rand(4, 3, 16, 16), make_priors(4, 16, 16), dtype="int8")


def test_progress_and_interrupt():
    calls = []
    frames = torch.rand(20, 3, 16, 16)
    restore_video(Pointwise(), frames, make_priors(20, 16, 16), chunk_size=8, chunk_overlap=2,
                  progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]

    class Stop(Exception):
        pass

    n = []

    def interrupt():
        n.append(1)
        if len(n) == 3:
            raise Stop

    with pytest.raises(Stop):
        restore_video(Pointwise(), frames, make_priors(20, 16, 16), chunk_size=8, chunk_overlap=2,
                      check_interrupt=interrupt)


def _chunks(frames, priors, size, overlap, with_index=False):
    s = 0
    while True:
        e = min(s + size, len(frames))
        yield (frames[s:e], priors.slice(s, e)) + ((s,) if with_index else ())
        if e == len(frames):
            return
        s = e - overlap


def test_stream_emits_every_frame_once_in_order():
    frames = torch.rand(27, 3, 16, 24)
    priors = make_priors(27, 16, 24)
    blocks = list(restore_stream(Pointwise(), _chunks(frames, priors, 8, 3), overlap=3))
    out = torch.cat(blocks)
    torch.testing.assert_close(out, frames * 0.5 + 0.25, atol=1e-6, rtol=0)
    assert max(len(b) for b in blocks) <= 8
    # (frames, priors, first_index) items, as codec.decode.iter_video_chunks yields them
    out3 = torch.cat(list(restore_stream(Pointwise(), _chunks(frames, priors, 8, 3, True))))
    torch.testing.assert_close(out3, out)


def test_stream_matches_restore_video_on_same_windows():
    torch.manual_seed(4)
    m = CPFP(CPFPConfig.lite()).eval()
    frames, priors = torch.rand(10, 3, 16, 16), make_priors(10, 16, 16)
    # 10 frames, chunk 6, overlap 2 -> windows [0,6) [4,10) in both drivers
    assert chunk_windows(10, 6, 2) == [(0, 6), (4, 10)]
    a = restore_video(m, frames, priors, chunk_size=6, chunk_overlap=2)
    b = torch.cat(list(restore_stream(m, _chunks(frames, priors, 6, 2), overlap=2)))
    torch.testing.assert_close(a, b)


def test_interrupt_reaches_inside_the_network():
    """The restore hands check_interrupt to the network: with one chunk and one tile it is still polled per
    frame, and a Cancel raised there ends the restore."""
    m = identity_cpfp()
    frames = blurred_pan(6, 48, 64)
    priors = make_priors(6, 48, 64)
    n = []
    restore_video(m, frames, priors, chunk_size=8, check_interrupt=lambda: n.append(1))
    assert len(n) >= 1 + 1 + 2 * 6  # chunk + tile + each frame of both propagation branches

    class Stop(Exception):
        pass

    def stop_mid_chunk():
        n.append(1)
        if len(n) == 8:
            raise Stop

    n.clear()
    with pytest.raises(Stop):
        restore_video(m, frames, priors, chunk_size=8, check_interrupt=stop_mid_chunk)


def _estimate(cfg, h, w, chunk, tile, ov=32, elem=4):
    from cpgd_core.pipeline.restore import HOST_BYTES_PER_PIXEL, activation_bytes_per_pixel
    th, tw = (h, w) if tile == 0 else (min(tile, h), min(tile, w))
    return chunk * (h * w * HOST_BYTES_PER_PIXEL + th * tw * activation_bytes_per_pixel(cfg, elem))


def test_memory_plan_fits_the_budget():
    from cpgd_core.models.cpfp import CPFPConfig
    from cpgd_core.pipeline.restore import GiB, plan_memory
    cfg = CPFPConfig.lite()
    # small frames: the request fits as it is
    assert plan_memory(cfg, 240, 320, 16, 4, 0, 32, 3 * GiB, 3 * GiB) == (16, 4, 0)
    # 4K on a CPU with 2.5 GiB: tiles, a shorter chunk, within the budget
    chunk, ov, tile = plan_memory(cfg, 2160, 3840, 16, 4, 0, 32, int(2.5 * GiB), 0)
    assert 0 < tile < 2160 and 1 <= chunk < 16 and 0 <= ov < chunk
    assert _estimate(cfg, 2160, 3840, chunk, tile) <= 2.5 * GiB
    # and not more reduced than needed: the next larger tile would not fit
    from cpgd_core.pipeline.restore import TILE_CANDIDATES
    bigger = [t for t in TILE_CANDIDATES if t > tile]
    if bigger:
        assert _estimate(cfg, 2160, 3840, chunk, min(bigger)) > 2.5 * GiB
    # on a GPU the activations count against the device budget, the frames against the host's
    c2, _, t2 = plan_memory(cfg, 2160, 3840, 16, 4, 0, 32, 8 * GiB, 1 * GiB, on_host=False, elem_bytes=2)
    assert c2 * 2160 * 3840 * 100 <= 8 * GiB and t2 > 0
    # an explicit tile is an upper bound that is kept when it fits; the base network needs more memory
    assert plan_memory(cfg, 2160, 3840, 4, 1, 256, 32, 8 * GiB, 0)[2] == 256
    base = plan_memory(CPFPConfig.base(), 2160, 3840, 16, 4, 0, 32, int(2.5 * GiB), 0)
    assert (base[0], base[2] or 9999) <= (chunk, tile or 9999)
