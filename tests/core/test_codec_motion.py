"""Block rasteriser and grid-flow arithmetic against straightforward references."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import cpgd_core.codec.residual as residual_mod
from cpgd_core.codec.decode import PIPELINE_CV_THREADS, pipeline_cv_threads
from cpgd_core.codec.motion import compose_grid, invert_grid, mvs_to_flow, mvs_to_flows, remap_points, resize_grid
from cpgd_core.codec.residual import mc_residual, pick_references, residual_of, warp_cells

MV_DTYPE = np.dtype({"names": ["source", "w", "h", "src_x", "src_y", "dst_x", "dst_y", "flags", "motion_x",
                               "motion_y", "motion_scale"],
                     "formats": ["<i4", "u1", "u1", "<i2", "<i2", "<i2", "<i2", "<u8", "<i4", "<i4", "<u2"],
                     "offsets": [0, 4, 5, 6, 8, 10, 12, 16, 24, 28, 32], "itemsize": 40, "aligned": True})


def _random_partition(rng, height, width, hole_p=0.1):
    """H.264-like macroblock partitions (16x16, 16x8, 8x16, 8x8), both directions, with intra holes."""
    rows = []
    for my in range(0, height, 16):
        for mx in range(0, width, 16):
            if rng.random() < hole_p:
                continue
            shape = [(16, 16), (16, 8), (8, 16), (8, 8)][rng.integers(4)]
            for oy in range(0, 16, shape[1]):
                for ox in range(0, 16, shape[0]):
                    for src in ([-1], [1], [-1, 1])[rng.integers(3)]:
                        w, h = shape
                        rows.append((src, w, h, 0, 0, mx + ox + w // 2, my + oy + h // 2, 0,
                                     int(rng.integers(-64, 64)), int(rng.integers(-64, 64)), 4))
    return np.array(rows, dtype=MV_DTYPE)


def _naive(mvs, height, width, source, stride):
    gh, gw = -(-height // stride), -(-width // stride)
    flow = np.zeros((2, gh, gw), np.float32)
    valid = np.zeros((1, gh, gw), bool)
    for m in mvs:
        if m["source"] != source:
            continue
        x0, y0 = m["dst_x"] - m["w"] // 2, m["dst_y"] - m["h"] // 2
        for y in range(max(0, y0), min(height, y0 + m["h"])):
            for x in range(max(0, x0), min(width, x0 + m["w"])):
                flow[:, y // stride, x // stride] = (m["motion_x"] / m["motion_scale"], m["motion_y"] / m["motion_scale"])
                valid[0, y // stride, x // stride] = True
    return flow, valid


def test_rasteriser_matches_naive_loop():
    rng = np.random.default_rng(3)
    height, width = 72, 104  # not multiples of 16: edge blocks hang off the frame
    mvs = _random_partition(rng, height, width)
    for source in (-1, 1):
        f, v = mvs_to_flow(mvs, height, width, source, stride=4)
        nf, nv = _naive(mvs, height, width, source, 4)
        assert f.shape == (2, 18, 26) and v.shape == (1, 18, 26)
        assert np.array_equal(v, nv) and np.array_equal(f, nf)
        assert 0.3 < v.mean() < 0.95


def test_no_vectors_is_invalid_not_zero_motion():
    f, v = mvs_to_flow(None, 64, 64)
    assert not v.any() and f.shape == (2, 16, 16)
    zeros = np.zeros(4, MV_DTYPE)
    zeros["source"], zeros["w"], zeros["h"], zeros["motion_scale"] = -1, 16, 16, 2
    zeros["dst_x"], zeros["dst_y"] = [8, 24, 8, 24], [8, 8, 24, 24]
    assert mvs_to_flow(zeros, 32, 32)[1].all()  # genuine zero motion on a P-frame
    assert not mvs_to_flow(zeros, 32, 32, zero_means_missing=True)[1].any()  # MPEG-4 B direct-mode zeros


def test_compose_and_invert_constant_fields():
    f1 = torch.zeros(1, 2, 10, 12)
    f1[:, 0], f1[:, 1] = 6.0, -2.0
    f2 = torch.zeros(1, 2, 10, 12)
    f2[:, 0], f2[:, 1] = 2.0, 4.0
    ones = torch.ones(1, 1, 10, 12, dtype=torch.bool)
    c, cv = compose_grid(f1, ones, f2, ones, stride=4)
    assert torch.allclose(c[0, :, 5, 5], torch.tensor([8.0, 2.0]))
    # 6 px = 1.5 cells to the right: the last columns land outside and become invalid.
    assert cv[0, 0, 5, :10].all() and not cv[0, 0, 5, -1]
    g, gv = invert_grid(f1, ones, stride=4)
    assert torch.allclose(g[0, :, 5, 5], torch.tensor([-6.0, 2.0]))
    half = ones.clone()
    half[..., 6:] = False
    _, hv = invert_grid(f1, half, stride=4)
    assert hv[0, 0, 5, 2] and not hv[0, 0, 5, 8]


def test_resize_grid_scales_vectors():
    f = torch.ones(1, 2, 8, 10) * torch.tensor([4.0, 2.0]).view(1, 2, 1, 1)
    v = torch.ones(1, 1, 8, 10, dtype=torch.bool)
    r, rv = resize_grid(f, v, (16, 20), (32, 40))
    assert r.shape == (1, 2, 4, 5) and torch.allclose(r[0, :, 0, 0], torch.tensor([2.0, 1.0])) and rv.all()


def test_residual_of_exact_shift_is_zero():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (32, 48)).astype(np.uint8)
    cur = np.roll(ref, -3, axis=1)  # cur(x) = ref(x + 3)
    flow = np.zeros((2, 8, 12), np.float32)
    flow[0] = 3.0
    valid = np.ones((1, 8, 12), bool)
    res, comp = mc_residual(cur, ref, flow, valid)
    assert res.shape == (1, 32, 48) and comp.all()
    assert np.abs(res[0, :, :44]).max() == 0.0
    valid[:, :, :6] = False
    res2, comp2 = mc_residual(cur, ref, flow, valid, signed=False)
    assert not comp2[:, :24].any() and comp2[:, 24:].all()
    assert np.allclose(res2[0, :, :24], np.abs(cur[:, :24].astype(np.float32) - ref[:, :24]) / 255.0, rtol=1e-4)
    rgb, _ = mc_residual(np.dstack([cur] * 3), np.dstack([ref] * 3), flow, np.ones((1, 8, 12), bool))
    assert rgb.shape == (3, 32, 48) and np.abs(rgb[:, :, :44]).max() == 0.0


def test_pick_references_finds_the_farther_reference_and_rescales():
    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (72, 88)).astype(np.float32), (0, 0), 1.5)
    v = (4.0, -2.0)  # current pixel p shows ref2 at p + v
    cur = cv2.warpAffine(tex, np.float32([[1, 0, v[0]], [0, 1, v[1]]]), (88, 72), flags=cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    unrelated = cv2.GaussianBlur(rng.uniform(0, 255, (72, 88)).astype(np.float32), (0, 0), 1.5)
    gh, gw = 18, 22
    flow = np.stack([np.full((gh, gw), v[0]), np.full((gh, gw), v[1])]).astype(np.float32)
    valid = np.ones((1, gh, gw), bool)
    valid[0, :, :3] = False
    out, dist = pick_references(cur, [(unrelated, 1), (tex, 2)], flow, valid)
    inner = (slice(2, -2), slice(5, -2))
    assert (dist[inner] == 2).all() and (dist[:, :3] == 1).all()  # cells without a vector are left alone
    assert np.allclose(out[0][inner], v[0] / 2) and np.allclose(out[1][inner], v[1] / 2)
    # A flat picture fits every reference: the nearest is kept and the vectors are unchanged.
    flat = np.full((72, 88), 128, np.float32)
    out, dist = pick_references(flat, [(flat, 1), (flat, 2)], flow, valid)
    assert (dist == 1).all() and np.array_equal(out, flow)


def test_rasteriser_fast_and_general_paths_agree_with_naive_loop():
    rng = np.random.default_rng(5)
    height, width = 72, 104
    mvs = _random_partition(rng, height, width)
    # Off the partition lattice (a 16-wide block at x = 4, one hanging off the left edge): the general path.
    odd = np.array([(-1, 16, 16, 0, 0, 4 + 8, 8, 0, 5, -3, 4), (-1, 16, 8, 0, 0, -4 + 8, 36, 0, 7, 1, 4)], MV_DTYPE)
    for case in (mvs, odd[:1], odd, np.concatenate([mvs[mvs["source"] == 1], odd])):
        (fp, vp), (fn, vn) = mvs_to_flows(case, height, width, stride=4)
        for source, (f, v) in ((-1, (fp, vp)), (1, (fn, vn))):
            nf, nv = _naive(case, height, width, source, 4)
            assert np.array_equal(v, nv) and np.array_equal(f, nf)
            single = mvs_to_flow(case, height, width, source, stride=4)
            assert np.array_equal(single[0], f) and np.array_equal(single[1], v)


def test_remap_points_equals_a_whole_frame_remap():
    """Point-wise remap (the multi-reference check's gathered cells), also for more points than one OpenCV map
    row or column takes."""
    rng = np.random.default_rng(1)
    img = rng.random((540, 960), dtype=np.float32)
    ys, xs = np.mgrid[0:540, 0:960].astype(np.float32)
    mx = xs + rng.normal(0, 5, xs.shape).astype(np.float32)
    my = ys + rng.normal(0, 5, ys.shape).astype(np.float32)
    whole = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    pick = rng.choice(mx.size, 40000, replace=False)
    got = remap_points(img, mx.ravel()[pick], my.ravel()[pick])
    assert np.array_equal(got, whole.ravel()[pick])
    rgb = np.dstack([img] * 3)
    assert remap_points(rgb, mx.ravel()[:10], my.ravel()[:10]).shape == (10, 3)
    assert remap_points(img, np.zeros(0, np.float32), np.zeros(0, np.float32)).shape == (0,)


def test_bi_prediction_averages_both_references():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (32, 48)).astype(np.uint8)
    b = rng.integers(0, 256, (32, 48)).astype(np.uint8)
    # cur(x) = (a(x + 2) + b(x - 1) + 1) >> 1 where both vectors exist (the codecs' rounding), b(x - 1) where only
    # the future one does
    pa, pb = np.roll(a, -2, axis=1).astype(np.int32), np.roll(b, 1, axis=1).astype(np.int32)
    cur = ((pa + pb + 1) // 2).astype(np.uint8)
    cur[:, 24:] = pb[:, 24:]
    fa = np.zeros((2, 8, 12), np.float32)
    fa[0] = 2.0
    fb = np.zeros((2, 8, 12), np.float32)
    fb[0] = -1.0
    va = np.ones((1, 8, 12), bool)
    va[..., 6:] = False
    vb = np.ones((1, 8, 12), bool)
    res, comp = mc_residual(cur, a, fa, va, b, fb, vb)
    assert comp.all()
    assert not res[0, :, 2:-2].any()
    # no vector at all: the previous frame at zero motion
    res0, comp0 = mc_residual(cur, a, fa, np.zeros_like(va), b, fb, np.zeros_like(vb))
    assert not comp0.any() and np.allclose(res0[0], (cur.astype(np.float32) - a) / 255.0, rtol=1e-4, atol=1e-6)


def test_reference_check_gathers_cells_exactly_as_whole_frames(monkeypatch):
    from cpgd_core.codec import residual

    rng = np.random.default_rng(4)
    ref1 = cv2.GaussianBlur(rng.uniform(0, 255, (72, 88)).astype(np.float32), (0, 0), 1.0)
    ref2 = cv2.GaussianBlur(rng.uniform(0, 255, (72, 88)).astype(np.float32), (0, 0), 1.0)
    cur = np.where(np.arange(88)[None] < 40, ref1, np.roll(ref2, -3, axis=1)).astype(np.float32)
    flow = np.zeros((2, 18, 22), np.float32)
    flow[0, :, 10:] = 3.0
    valid = np.ones((1, 18, 22), bool)
    out = {}
    for share in (0.0, 1.0):  # every candidate warped as a whole frame / every candidate gathered
        monkeypatch.setattr(residual, "_SPARSE_SHARE", share)
        out[share] = pick_references(cur, [(ref1, 1), (ref2, 2)], flow, valid)
    assert np.array_equal(out[0.0][0], out[1.0][0]) and np.array_equal(out[0.0][1], out[1.0][1])
    assert (out[0.0][1][:, 13:-1] == 2).any()


def test_smooth_field_keeps_uniform_motion_and_edges_and_removes_noise():
    from cpgd_core.codec.motion import smooth_field
    rng = np.random.default_rng(0)
    h, w = 40, 64
    valid = np.ones((1, h, w), bool)
    uniform = np.broadcast_to(np.array([3.25, -1.5], np.float32)[:, None, None], (2, h, w)).copy()
    assert np.array_equal(smooth_field(uniform, valid), uniform)
    # a lattice translation with a few blocks a quarter-pel off: the others stay exact
    near = uniform.copy()
    near[:, 8:10, 8:10] += 0.25
    near[:, 24:26, 40:42] -= 0.25
    out = smooth_field(near, valid)
    assert np.array_equal(out[:, 12:, :36], uniform[:, 12:, :36]) and np.abs(out - uniform).max() <= 0.25
    # two motions meeting at a vertical edge on the 8 px grid, vectors off by 1/4-pel noise and a few outliers
    true = np.zeros((2, h, w), np.float32)
    true[0, :, :32], true[0, :, 32:] = 2.0, -3.0
    noisy = np.repeat(np.repeat(true[:, ::2, ::2] + rng.choice([-0.25, 0, 0.25], (2, h // 2, w // 2)), 2, 1), 2, 2)
    noisy[:, 10:12, 10:12] += 4.0
    valid[0, 30:34, 40:44] = False
    out = smooth_field(noisy.astype(np.float32), valid)
    err = np.abs(out - true)[:, valid[0]]
    assert err.mean() < 0.5 * np.abs(noisy - true)[:, valid[0]].mean()
    assert np.abs(out - true)[:, :, 28:36].max() < 0.3  # the edge stays where it was, not blurred over 40 px
    assert np.array_equal(out[:, ~valid[0]], noisy[:, ~valid[0]])


def test_rasteriser_units_of_other_sizes_agree_with_naive_loop():
    """Blocks on a 16 px lattice (MPEG-2: one unit is 4 cells) and 8 px blocks at 4 px offsets (one cell)."""
    rng = np.random.default_rng(11)
    height, width = 70, 100  # not multiples of the units: the last units are cropped

    def blocks(size, step, shift):
        return np.array([(-1, size, size, 0, 0, x + shift + size // 2, y + shift + size // 2, 0,
                          int(rng.integers(-64, 64)), int(rng.integers(-64, 64)), 4)
                         for y in range(0, height, step) for x in range(0, width, step) if rng.random() > 0.2],
                        MV_DTYPE)

    for mvs in (blocks(16, 16, 0), blocks(8, 8, 4)):
        f, v = mvs_to_flow(mvs, height, width, -1, stride=4)
        nf, nv = _naive(mvs, height, width, -1, 4)
        assert np.array_equal(v, nv) and np.array_equal(f, nf)


def _whole_frame_prediction(ref_p, fp, vp, ref_n, fn, vn, stride):
    """The prediction of a uint8 frame from whole-frame warps (residual.warp_cells) and a per-pixel choice:
    a reference for the banded computation."""
    pred = warp_cells(ref_p, fp, vp, stride).astype(np.int32)
    if vn is not None and vn.any():
        pn = warp_cells(ref_n, fn, vn, stride).astype(np.int32)
        share = np.where(vn[0], np.where(vp[0], 1, 2), 0).astype(np.uint8)  # 1: both, 2: the future alone
        share = cv2.resize(share, (share.shape[1] * stride, share.shape[0] * stride),
                           interpolation=cv2.INTER_NEAREST)[:pred.shape[0], :pred.shape[1]]
        if pred.ndim == 3:
            share = share[..., None]
        pred = np.where(share == 2, pn, np.where(share == 1, (pred + pn + 1) // 2, pred))
    return pred.astype(np.uint8)


@pytest.mark.parametrize("rgb", [False, True])
@pytest.mark.parametrize("opencv5", [True, False])
def test_banded_residual_equals_whole_frame_warps(rgb, opencv5, monkeypatch):
    """Bands (the last one short), a width off the cell grid, B-blocks with one or two references, float16
    output written by OpenCV 5 or, with OpenCV 4.x (no float16 arithmetic, absolute maps before 4.10), cast by
    numpy; exact zeros where the prediction is the frame."""
    if not opencv5:
        monkeypatch.setattr(residual_mod, "_CV_DEPTH", {np.dtype(np.float32): cv2.CV_32F})
        monkeypatch.setattr(residual_mod, "_RELATIVE", None)
    rng = np.random.default_rng(4)
    h, w, s = 300, 206, 4
    gh, gw = -(-h // s), -(-w // s)
    shape = (h, w, 3) if rgb else (h, w)
    cur, a, b = (rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(3))
    fp = rng.integers(-40, 40, (2, gh, gw)).astype(np.float32) / 4
    fn = rng.integers(-40, 40, (2, gh, gw)).astype(np.float32) / 4
    vp = rng.random((1, gh, gw)) > 0.2
    vn = rng.random((1, gh, gw)) > 0.5
    for args in ((fp, vp, None, None), (fp, vp, fn, vn)):
        pred = _whole_frame_prediction(a, *args[:2], b, *args[2:], s)
        want = (cur.astype(np.float64) - pred) / 255.0
        want = want[None] if want.ndim == 2 else np.moveaxis(want, -1, 0)
        for dtype in (np.float32, np.float16):
            got = residual_of(cur, a, args[0], args[1], b, args[2], args[3], s, True, dtype)
            assert got.dtype == dtype and got.shape == want.shape
            tol = 1e-4 if dtype == np.float32 else 1e-3
            assert np.abs(got.astype(np.float64) - want).max() < tol
            assert not residual_of(pred, a, args[0], args[1], b, args[2], args[3], s, True, dtype).any()
        mag = residual_of(cur, a, args[0], args[1], b, args[2], args[3], s, False, np.float16)
        assert np.abs(mag.astype(np.float64) - np.abs(want)).max() < 1e-3


def test_pipeline_limits_opencv_threads_and_restores_them():
    before = cv2.getNumThreads()
    with pipeline_cv_threads():
        inside = cv2.getNumThreads()
        with pipeline_cv_threads():  # nested (the re-encode fallback inside a decode)
            assert cv2.getNumThreads() == inside
        assert cv2.getNumThreads() == inside
    assert inside == min(PIPELINE_CV_THREADS, before)
    assert cv2.getNumThreads() == before
