"""CPFP network: shapes, global skip, priors ablation, validity gating, prior conversion."""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from cpgd_core.codec.priors import CodecPriors
from cpgd_core.errors import CPGDInputError
from cpgd_core.models.cpfp import CPFP, CPFPConfig, priors_to_model_inputs


N, T, H, W = 1, 4, 32, 48


def _inputs(seed: int = 0, valid_p: float = 0.7):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(N, T, 3, H, W, generator=g)
    fp = torch.randn(N, T, 2, H // 4, W // 4, generator=g) * 2
    fn = torch.randn(N, T, 2, H // 4, W // 4, generator=g) * 2
    vp = torch.rand(N, T, 1, H // 4, W // 4, generator=g) < valid_p
    vn = torch.rand(N, T, 1, H // 4, W // 4, generator=g) < valid_p
    vp[:, 0] = False
    vn[:, -1] = False
    res = torch.randn(N, T, 1, H, W, generator=g) * 0.05
    return frames, fp, vp, fn, vn, res


def _model(**kw) -> CPFP:
    torch.manual_seed(1)
    m = CPFP(CPFPConfig.lite(**kw)).eval()
    # zero-initialised offset heads would hide the prior-free paths: give them weights
    with torch.no_grad():
        for cpfa in m.deform_align.values():
            cpfa.conv_offset[-1].weight.normal_(0, 0.02)
    return m


@pytest.mark.parametrize("branches", [2, 4])
def test_output_shape_and_finite(branches):
    m = _model(num_branches=branches)
    with torch.no_grad():
        y = m(*_inputs())
    assert y.shape == (N, T, 3, H, W)
    assert torch.isfinite(y).all()
    assert not torch.allclose(y, _inputs()[0])


def test_batch_items_are_independent():
    m = _model()
    a, b = _inputs(0), _inputs(1)
    both = [torch.cat([x, y], 0) for x, y in zip(a, b)]
    with torch.no_grad():
        y2 = m(*both)
        y0 = m(*a)
    torch.testing.assert_close(y2[:1], y0, atol=1e-5, rtol=1e-4)


def test_global_skip_zero_last_conv_is_identity():
    m = _model()
    with torch.no_grad():
        m.conv_out.weight.zero_()
        m.conv_out.bias.zero_()
        inp = _inputs()
        y = m(*inp)
    torch.testing.assert_close(y, inp[0], atol=0, rtol=0)


def test_priors_ablation_same_shapes_and_ignores_priors():
    with_p, without = _model(), _model(use_priors=False)
    assert [p.shape for p in with_p.parameters()] == [p.shape for p in without.parameters()]
    without.load_state_dict(with_p.state_dict())
    frames, fp, vp, fn, vn, res = _inputs()
    with torch.no_grad():
        a = without(frames, fp, vp, fn, vn, res)
        b = without(frames, fp * 7, ~vp, -fn, ~vn, res * 3)
        c = with_p(frames, fp, vp, fn, vn, res)
    assert a.shape == c.shape
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_invalid_motion_is_ignored_and_valid_motion_is_used():
    m = _model()
    frames, fp, vp, fn, vn, res = _inputs()
    none_p, none_n = torch.zeros_like(vp), torch.zeros_like(vn)
    with torch.no_grad():
        a = m(frames, fp, none_p, fn, none_n, res)
        b = m(frames, torch.randn_like(fp) * 30, none_p, torch.full_like(fn, float("nan")), none_n, res)
        c = m(frames, fp, vp, fn, vn, res)
        d = m(frames, fp * 2, vp, fn, vn, res)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(c, d)  # with valid = 1 the flow values matter


def test_validity_enters_predictor_not_only_as_zero_flow():
    # valid = 1 with zero flow differs from valid = 0: the mask is an explicit input
    m = _model()
    frames, fp, vp, fn, vn, res = _inputs()
    z = torch.zeros_like(fp)
    with torch.no_grad():
        a = m(frames, z, torch.ones_like(vp), z, torch.ones_like(vn), res)
        b = m(frames, z, torch.zeros_like(vp), z, torch.zeros_like(vn), res)
    assert not torch.allclose(a, b)


def test_bad_shapes_rejected():
    m = _model()
    frames, fp, vp, fn, vn, res = _inputs()
    with pytest.raises(CPGDInputError, match="multiples of 4"):
        m(frames[..., :30, :], fp, vp, fn, vn, res)
    with pytest.raises(CPGDInputError, match="flow_to_next"):
        m(frames, fp, vp, fn[:, :2], vn, res)


def test_config_json_round_trip_and_validation():
    cfg = CPFPConfig.base(use_priors=False)
    assert CPFPConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(CPGDInputError):
        CPFPConfig(num_branches=3)
    with pytest.raises(CPGDInputError):
        CPFPConfig.from_name("huge")


def test_gated_blocks_and_configs_written_before_the_block_field():
    import json

    m = _model(block="gated", mid_channels=16)
    out = m(*_inputs())
    assert out.shape == _inputs()[0].shape and torch.isfinite(out).all()
    assert any(type(b).__name__ == "CAB1" for b in m.recon)
    with pytest.raises(CPGDInputError, match="block"):
        CPFPConfig(block="transformer")
    # weights and checkpoints saved before `block` existed carry no such field: they are residual-block networks
    old = {k: v for k, v in json.loads(CPFPConfig.lite().to_json()).items() if k != "block"}
    assert CPFPConfig.from_json(json.dumps(old)) == CPFPConfig.lite()


def _priors(t: int, h: int, w: int, stride: int = 4) -> CodecPriors:
    gh, gw = -(-h // stride), -(-w // stride)
    fp = torch.full((t, 2, gh, gw), 8.0, dtype=torch.float16)
    fp[:, 1] = -4.0
    vp = torch.ones(t, 1, gh, gw, dtype=torch.bool)
    vp[0] = False
    vn = torch.ones(t, 1, gh, gw, dtype=torch.bool)
    vn[-1] = False
    return CodecPriors(flow_to_prev=fp, valid_to_prev=vp, flow_to_next=-fp, valid_to_next=vn,
                       residual=torch.full((t, 1, h, w), -0.01, dtype=torch.float16),
                       frame_types=["I"] + ["P"] * (t - 1), height=h, width=w, fps=Fraction(25), flow_stride=stride)


def test_priors_to_model_inputs_units_and_padding():
    p = _priors(3, 30, 42)  # not multiples of 4: grid 8x11, model size 32x44
    inp = priors_to_model_inputs(p)
    assert inp["flow_to_prev"].shape == (1, 3, 2, 8, 11)
    assert inp["residual"].shape == (1, 3, 1, 32, 44)
    assert inp["flow_to_prev"][0, 1, 0].unique().tolist() == [2.0]  # 8 full-res px = 2 quarter-grid px
    assert inp["flow_to_prev"][0, 1, 1].unique().tolist() == [-1.0]
    assert not inp["valid_to_prev"][0, 0].any() and inp["valid_to_prev"][0, 1].all()
    assert inp["residual"].dtype == torch.float32
    p8 = _priors(3, 32, 48, stride=8)
    assert priors_to_model_inputs(p8)["valid_to_next"].shape == (1, 3, 1, 8, 12)
    with pytest.raises(CPGDInputError):
        priors_to_model_inputs(p, size=(30, 44))


def test_grow_from_keeps_the_function_and_refuses_other_changes():
    small = _model(num_enc_blocks=1, backbone_blocks=1, recon_blocks=2)
    with torch.no_grad():  # trained-looking blocks: a zero last conv would make any growth look exact
        for p in small.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    big = CPFP(CPFPConfig.lite(num_enc_blocks=2, backbone_blocks=3, recon_blocks=4)).grow_from(small).eval()
    assert sum(p.numel() for p in big.parameters()) > sum(p.numel() for p in small.parameters())
    with torch.no_grad():
        torch.testing.assert_close(big(*_inputs()), small(*_inputs()), atol=1e-6, rtol=1e-5)
    # the appended blocks are trainable, not frozen at zero: one step moves the output
    loss = big(*_inputs()).square().mean()
    loss.backward()
    assert big.recon[3].conv2.weight.grad.abs().sum() > 0
    # gated blocks grow the same way (their residual scale starts at zero)
    small_g = _model(block="gated", recon_blocks=2)
    with torch.no_grad():
        for p in small_g.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    big_g = CPFP(CPFPConfig.lite(block="gated", recon_blocks=3)).grow_from(small_g).eval()
    with torch.no_grad():
        torch.testing.assert_close(big_g(*_inputs()), small_g(*_inputs()), atol=1e-6, rtol=1e-5)
    for bad in (dict(mid_channels=64), dict(recon_blocks=1), dict(num_branches=4), dict(block="gated")):
        with pytest.raises(CPGDInputError, match="cannot grow"):
            CPFP(CPFPConfig.lite(**bad)).grow_from(small)


@pytest.mark.parametrize("branches", [2, 4])
def test_check_interrupt_polled_per_op_and_result_unchanged(branches, monkeypatch):
    """Cancel is polled before every convolution and deformable convolution; neither the callback nor the
    per-frame grouping of the full-resolution stages changes the output; raising from the callback stops
    the forward wherever it is, and no polling hook is left behind."""
    import cpgd_core.models.cpfp as cpfp_mod

    m = _model(num_branches=branches)
    inp = _inputs()
    convs = sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())
    with torch.no_grad():
        whole = m(*inp)
        calls = []
        assert torch.equal(m(*inp, check_interrupt=lambda: calls.append(1)), whole)
        one_group = len(calls)
        assert one_group >= convs + branches * T  # every conv at least once, one deformable conv per step
        # one frame per group (what a 720p clip gets): the full-resolution convolutions run once per frame
        monkeypatch.setattr(cpfp_mod, "FRAME_GROUP_PIXELS", H * W)
        calls.clear()
        grouped = m(*inp, check_interrupt=lambda: calls.append(1))
        total = len(calls)
        assert total > one_group
        torch.testing.assert_close(grouped, whole, atol=1e-6, rtol=0)

        class Cancelled(Exception):
            pass

        def cancel_at(k: int):
            seen = []

            def check() -> None:
                seen.append(1)
                if len(seen) == k:
                    raise Cancelled
            return check

        for k in (1, total // 2, total):  # in the encoder, the propagation, the last decoder convolution
            with pytest.raises(Cancelled):
                m(*inp, check_interrupt=cancel_at(k))
        assert all(not x._forward_pre_hooks for x in m.modules())
        assert torch.equal(m(*inp), grouped)


def test_bf16_autocast_keeps_deformable_offsets_float32(monkeypatch):
    """CPU bf16 training (--amp): convolutions in bf16, but sampling positions must not be rounded to bf16
    (a 40 px offset would land on a 0.25 px lattice)."""
    import cpgd_core.ops as ops
    seen = []
    real = ops.deform_conv2d

    def spy(x, offset, *a, mask=None, **k):
        seen.append((x.dtype, offset.dtype, mask.dtype))
        return real(x, offset, *a, mask=mask, **k)

    monkeypatch.setattr(ops, "deform_conv2d", spy)
    m = _model()
    with torch.no_grad():
        ref = m(*_inputs())
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(*_inputs())
    assert seen and all(x == torch.bfloat16 and o == mk == torch.float32 for x, o, mk in seen)
    assert (y.float() - ref).abs().mean() < 0.01
