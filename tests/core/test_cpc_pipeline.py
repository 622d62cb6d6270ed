"""Video-sampler scheduling/blending/noise and colour fix (no ComfyUI)."""
from __future__ import annotations

import pytest
import torch

from cpgd_core.errors import CPGDInputError
from cpgd_core.pipeline import colorfix
from cpgd_core.pipeline.schedule import ChunkBlender, chunk_windows, gaussian_weights
from cpgd_core.pipeline.video_sampler import make_noise, plan_windows, sample_windows, tile_grid


@pytest.mark.parametrize("n,size,ov", [(1, 6, 0), (6, 6, 2), (7, 6, 0), (11, 6, 2), (48, 6, 0), (23, 8, 3)])
def test_chunks_cover_and_weights_sum_to_one(n, size, ov):
    ranges = chunk_windows(n, size, ov)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(b - a == min(size, n) for a, b in ranges)
    blender = ChunkBlender()  # the cross-fade weights of every frame sum to one: ones blend to ones
    parts = [blender.add(a, torch.ones(b - a, 1, 1, 1)) for a, b in ranges] + [blender.flush()]
    torch.testing.assert_close(torch.cat([p for p in parts if p is not None]).flatten(), torch.ones(n))
    for (a0, b0), (a1, b1) in zip(ranges, ranges[1:]):
        assert b0 - a1 >= ov  # requested overlap is honoured


def test_chunk_and_tile_input_errors():
    with pytest.raises(CPGDInputError):
        chunk_windows(10, 4, 4)
    with pytest.raises(CPGDInputError):
        tile_grid(100, 100, 64, 64)


def test_tile_grid_official_layout():
    tiles = tile_grid(90, 160, 64, 32)  # 720p latent
    ys = sorted({t[0] for t in tiles})
    xs = sorted({t[1] for t in tiles})
    assert ys == [0, 26] and xs == [0, 32, 64, 96]
    assert all(th == 64 and tw == 64 for _, _, th, tw in tiles)
    assert tile_grid(40, 50, 64, 32) == [(0, 0, 40, 50)]


def test_gaussian_weights_peak_in_centre():
    g = gaussian_weights(64, 64)
    assert g.shape == (64, 64)
    assert float(g[31:33, 31:33].min()) == float(g.max())
    assert float(g[0, 0]) < 0.01 * float(g.max())


def test_constant_video_is_seam_free():
    lat = torch.full((11, 4, 40, 72), 0.25)
    lat[:, 1] = -0.5
    calls = []

    def identity(win, x, noise):
        calls.append(win)
        return x.clone()

    out = sample_windows(lat, torch.zeros_like(lat), identity, chunk=6, chunk_overlap=2, tile=32, tile_overlap=16)
    torch.testing.assert_close(out, lat, rtol=0, atol=1e-6)
    assert len(calls) == len(chunk_windows(11, 6, 2)) * len(tile_grid(40, 72, 32, 16))


def test_overlap_blending_exact_where_chunks_agree():
    torch.manual_seed(0)
    lat = torch.randn(13, 4, 20, 20)
    target = torch.randn(13, 4, 20, 20)

    def oracle(win, x, noise):  # every window returns the same video content where they overlap
        return win.take(target)

    out = sample_windows(lat, torch.zeros_like(lat), oracle, chunk=5, chunk_overlap=2, tile=12, tile_overlap=4)
    torch.testing.assert_close(out, target, rtol=1e-5, atol=1e-5)

    def disagree(win, x, noise):  # chunks disagree: blended frames lie between the two chunks' values
        return torch.full_like(x, float(win.start))

    out = sample_windows(lat, torch.zeros_like(lat), disagree, chunk=5, chunk_overlap=2)
    r = chunk_windows(13, 5, 2)
    assert float(out[r[1][0], 0, 0, 0]) > r[0][0] and float(out[r[1][0], 0, 0, 0]) < r[1][0]


def test_progress_and_interrupt():
    lat = torch.zeros(4, 4, 8, 8)
    seen = []

    def stop():
        if len(seen) >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample_windows(lat, lat, lambda w, x, n: x, chunk=2, tile=4, tile_overlap=0,
                       progress=lambda v, t: seen.append((v, t)), check_interrupt=stop)
    assert seen == [(1, 8), (2, 8)]
    assert len(plan_windows(4, 8, 8, 2, 0, 4, 0)) == 8


def test_noise_modes():
    ind = make_noise((3, 4, 8, 8), seed=7)
    assert not torch.equal(ind[0], ind[1])
    torch.testing.assert_close(make_noise((5, 4, 8, 8), seed=7)[:3], ind)  # independent of clip length
    sh = make_noise((3, 4, 8, 8), seed=7, mode="shared")
    assert torch.equal(sh[0], sh[2]) and torch.equal(sh[0], ind[0])
    # content moving 8 px (= 1 latent px) right: frame t(p) = frame t-1(p - 8), i.e. flow_to_prev x = -8
    flow = torch.zeros(3, 2, 64, 64)
    flow[:, 0] = -8.0
    valid = torch.ones(3, 1, 64, 64, dtype=torch.bool)
    valid[0] = False
    mv = make_noise((3, 4, 8, 8), seed=7, mode="mv-warped", flow_to_prev=flow, valid_to_prev=valid)
    torch.testing.assert_close(mv[1][:, :, 1:], mv[0][:, :, :-1])
    torch.testing.assert_close(mv[1][:, :, 0], ind[1][:, :, 0])  # entered from outside: fresh noise
    torch.testing.assert_close(mv[0], ind[0])
    with pytest.raises(CPGDInputError, match="mv-warped"):
        make_noise((3, 4, 8, 8), seed=7, mode="mv-warped")
    with pytest.raises(CPGDInputError, match="noise mode"):
        make_noise((3, 4, 8, 8), seed=7, mode="pink")


def test_wavelet_colour_fix_takes_low_frequencies_from_reference():
    torch.manual_seed(0)
    ref = torch.rand(2, 3, 64, 64)
    img = torch.rand(2, 3, 64, 64)
    out = colorfix.wavelet_color_fix(img, ref)
    hi_o, lo_o = colorfix.wavelet_decompose(out)
    hi_i, _ = colorfix.wavelet_decompose(img)
    _, lo_r = colorfix.wavelet_decompose(ref)
    # the decomposition is exact and the output's content is reference-low + image-high by construction
    torch.testing.assert_close(hi_i + lo_r, out)
    # a constant image in => the reference's low frequencies out (its colour)
    const = torch.full((2, 3, 64, 64), 0.8)
    fixed = colorfix.wavelet_color_fix(const, ref)
    torch.testing.assert_close(fixed, lo_r, rtol=0, atol=1e-6)
    flat_ref = torch.full((1, 3, 64, 64), 0.3)
    flat_ref[:, 0] = 0.9
    fixed = colorfix.wavelet_color_fix(const, flat_ref)
    torch.testing.assert_close(fixed, flat_ref.expand(2, -1, -1, -1), rtol=0, atol=1e-6)
    assert hi_o.shape == lo_o.shape


def test_adain_colour_fix():
    torch.manual_seed(0)
    ref = torch.rand(2, 3, 32, 32) * 0.2 + 0.6
    img = torch.rand(2, 3, 32, 32)
    out = colorfix.adain_color_fix(img, ref)
    torch.testing.assert_close(out.mean((2, 3)), ref.mean((2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.std((2, 3)), ref.std((2, 3)), rtol=1e-3, atol=1e-4)
    with pytest.raises(CPGDInputError, match="method"):
        colorfix.color_fix(img, ref, "lab")
    with pytest.raises(CPGDInputError, match="frames"):
        colorfix.color_fix(img, torch.rand(3, 3, 32, 32))


def test_video_sampler_windows_fit_the_gpu_budget():
    from cpgd_core.pipeline.video_sampler import CONTROL_OVERHEAD, fit_windows

    def unet_bytes(batch, th, tw):  # ComfyUI's formula for SD 2.x without flash attention (factor 1.0)
        return batch * th * tw * 0.15 * 1024 * 1024

    # 4K video (latent 270 x 480): the request (6 frames, 64 tiles) fits 24 GB and is kept
    assert fit_windows(270, 480, 6, 0, 64, 32, unet_bytes, 24e9) == (6, 0, 64)
    # 4 GB: smaller tiles first, then fewer frames; the chosen window fits
    chunk, ov, tile = fit_windows(270, 480, 6, 2, 64, 16, unet_bytes, 4e9)
    assert unet_bytes(chunk, tile, tile) * CONTROL_OVERHEAD <= 4e9
    assert (chunk, tile) == (6, 48) and ov == 2
    # no tiling requested but the whole latent does not fit: tiles are introduced
    assert fit_windows(270, 480, 6, 0, 0, 16, unet_bytes, 8e9)[2] > 0
