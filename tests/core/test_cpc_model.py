"""CPControlNet architecture, coding-prior attention and weight formats (tiny configs; no ComfyUI)."""
from __future__ import annotations

import os
import re
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from cpgd_core.codec.priors import CodecPriors
from cpgd_core.errors import CPGDInputError
from cpgd_core.models.cpcontrolnet import (CPControlNet, CPControlNetConfig, count_parameters, prior_map)
from cpgd_core.models.sd_unet import SDUNet
from cpgd_core.weights import cpc as cpc_weights

KEYS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures",
                    "official_checkpoint_keys", "cpc_controlnet_keys.txt")


def official_shapes() -> dict[str, tuple[int, ...]]:
    out = {}
    with open(KEYS) as f:
        for line in f:
            if line.strip():
                key, shape = line.strip().split(" ", 1)
                out[key] = tuple(int(s) for s in re.findall(r"\d+", shape))
    return out


def tiny_net(seed: int = 0, randomise_zero: bool = True) -> CPControlNet:
    torch.manual_seed(seed)
    net = CPControlNet(CPControlNetConfig.tiny())
    if randomise_zero:  # zero convs would hide every difference we test for
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.startswith(("zero_convs", "middle_block_out")):
                    p.normal_(0, 0.2)
    return net.eval()


def inputs(b: int = 2, h: int = 16, w: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, h, w, generator=g)
    hint = torch.randn(b, 4, h, w, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    ctx = torch.randn(b, 7, 64, generator=g)
    cp = torch.randn(b, 3, h, w, generator=g)
    return x, hint, t, ctx, cp


def test_official_key_list_loads_strictly_into_default_config():
    shapes = official_shapes()
    with torch.device("meta"):
        net = CPControlNet()
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert own == shapes
    assert count_parameters(net) == 363_187_840
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    net.load_state_dict(sd, strict=True, assign=True)
    # and the same state dict wrapped the way ControlLDM saves it is recognised with the right config
    cfg = cpc_weights.infer_config(sd)
    assert cfg == CPControlNetConfig()


def test_sd_unet_matches_sd21_size():
    with torch.device("meta"):
        unet = SDUNet()
    assert count_parameters(unet) == 865_910_724  # SD 2.1 UNet
    assert not any(k.endswith("mask.weight") for k in unet.state_dict())


def test_output_shapes_and_zero_init():
    net = CPControlNet(CPControlNetConfig.tiny()).eval()
    x, hint, t, ctx, cp = inputs()
    with torch.no_grad():
        outs = net(x, hint, t, ctx, cp)
    assert len(outs) == 5  # tiny: 4 input blocks + middle (the default config gives 13)
    assert [tuple(o.shape[1:]) for o in outs] == [(32, 16, 16), (32, 16, 16), (32, 8, 8), (64, 8, 8), (64, 8, 8)]
    assert all(float(o.abs().max()) == 0.0 for o in outs)  # zero convs
    assert all(float(m.weight.detach().abs().max()) == 0.0 for n, m in net.named_modules() if n.endswith(".mask"))


def test_zero_mask_equals_no_modulation():
    net = tiny_net()
    x, hint, t, ctx, cp = inputs()
    with torch.no_grad():
        a = net(x, hint, t, ctx, cp, frames_per_clip=2)
        b = net(x, hint, t, ctx, None, frames_per_clip=2)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert float(a[-1].abs().max()) > 0


def test_nonzero_mask_matches_reference_query_modulation():
    net = tiny_net()
    with torch.no_grad():
        for name, m in net.named_modules():
            if name.endswith("attn1.mask"):
                m.weight.normal_(0, 0.5)
    x, hint, t, ctx, cp = inputs()
    captured = {}
    attn = net.input_blocks[1][1].transformer_blocks[0].attn1

    def hook(mod, args, kwargs, out):
        captured["u"], captured["prior"], captured["out"] = args[0], kwargs["prior"], out

    handle = attn.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        net(x, hint, t, ctx, cp, frames_per_clip=1)
        handle.remove()
        u = captured["u"]
        # the prior tokens are cp resized bilinearly (align_corners False) to this block's grid (16x16 here)
        ref_prior = F.interpolate(cp, size=(16, 16), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        torch.testing.assert_close(captured["prior"], ref_prior)
        A = ref_prior @ attn.mask.weight.T
        q = (u * (1 + A)) @ attn.to_q.weight.T
        k, v = u @ attn.to_k.weight.T, u @ attn.to_v.weight.T
        heads = attn.heads
        qh, kh, vh = (z.unflatten(-1, (heads, -1)).transpose(1, 2) for z in (q, k, v))
        w = torch.softmax(qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1)
        ref = (w @ vh).transpose(1, 2).flatten(2) @ attn.to_out[0].weight.T + attn.to_out[0].bias
        torch.testing.assert_close(captured["out"], ref, rtol=1e-4, atol=1e-5)
        # and the modulation changes the control output
        plain = net(x, hint, t, ctx, None)
        mod = net(x, hint, t, ctx, cp)
    assert float((plain[-1] - mod[-1]).abs().max()) > 1e-4


def test_per_frame_independence_without_joint_attention():
    net = tiny_net()
    with torch.no_grad():
        for name, m in net.named_modules():
            if name.endswith("attn1.mask"):
                m.weight.normal_(0, 0.5)
    x, hint, t, ctx, cp = inputs(b=3)
    t = torch.full((3,), 400)
    hint2, cp2 = hint.clone(), cp.clone()
    hint2[2] += 1.0
    cp2[2] -= 1.0
    with torch.no_grad():
        a = net(x, hint, t, ctx, cp, frames_per_clip=1)
        b = net(x, hint2, t, ctx, cp2, frames_per_clip=1)
        # frame i alone gives the same result as frame i inside the batch
        single = net(x[1:2], hint[1:2], t[1:2], ctx[1:2], cp[1:2])
        ja = net(x, hint, t, ctx, cp, frames_per_clip=3)
        jb = net(x, hint2, t, ctx, cp2, frames_per_clip=3)
    for u, v, s in zip(a, b, single):
        torch.testing.assert_close(u[:2], v[:2], rtol=0, atol=1e-6)
        assert float((u[2] - v[2]).abs().max()) > 1e-4
        torch.testing.assert_close(u[1:2], s, rtol=1e-4, atol=1e-5)
    # with joint attention, changing frame 2 reaches frames 0 and 1
    assert float((ja[-1][0] - jb[-1][0]).abs().max()) > 1e-5


def test_joint_attention_requires_whole_clips():
    net = tiny_net()
    x, hint, t, ctx, cp = inputs(b=3)
    with pytest.raises(ValueError, match="multiple of frames_per_clip"):
        net(x, hint, t, ctx, cp, frames_per_clip=2)


def _priors(t: int = 4, h: int = 32, w: int = 48) -> CodecPriors:
    s = 4
    g = torch.Generator().manual_seed(3)
    fp = (torch.randn(t, 2, h // s, w // s, generator=g) * 3).half()
    vp = torch.ones(t, 1, h // s, w // s, dtype=torch.bool)
    vp[0] = False
    vp[1, :, :2, :2] = False  # an intra block
    return CodecPriors(flow_to_prev=fp, valid_to_prev=vp, flow_to_next=torch.zeros_like(fp),
                       valid_to_next=torch.zeros_like(vp), residual=(torch.randn(t, 1, h, w, generator=g) * .05).half(),
                       frame_types=["I"] + ["P"] * (t - 1), height=h, width=w, fps=Fraction(25), flow_stride=s)


def test_prior_map_normalisation_and_frame0():
    pr = _priors()
    cp = prior_map(pr, size=(8, 12))
    assert cp.shape == (4, 3, 8, 12)
    full = prior_map(pr)
    assert full.shape == (4, 3, 32, 48)
    assert float(full[:, :2].abs().max()) == pytest.approx(1.0)
    torch.testing.assert_close(full[0], full[1])  # frame 0 copies frame 1
    assert float(full[1, :2, :8, :8].abs().max()) == 0.0  # intra block: no motion
    assert float(full[:, 2].min()) >= 0.0
    shared = prior_map(pr, max_motion=100.0)
    assert float(shared[:, :2].abs().max()) < 0.2


def test_save_load_roundtrip_and_official_pt(tmp_path):
    net = tiny_net()
    path = str(tmp_path / "cpc.safetensors")
    cpc_weights.save_cpcontrolnet(net, path)
    back = cpc_weights.load_cpcontrolnet(path)
    assert back.config == net.config
    for (k, v), (k2, v2) in zip(net.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    # an official-style .pt: raw state dict under a "control_model." prefix, read with weights_only=True
    pt = str(tmp_path / "cpc_official.pt")
    torch.save({"control_model." + k: v for k, v in net.state_dict().items()}, pt)
    off = cpc_weights.load_cpcontrolnet(pt)
    x, hint, t, ctx, cp = inputs()
    with torch.no_grad():
        for u, v in zip(net(x, hint, t, ctx, cp), off(x, hint, t, ctx, cp)):
            torch.testing.assert_close(u, v)
    conv = str(tmp_path / "conv.safetensors")
    cpc_weights.convert_official(pt, conv, dtype=torch.float16)
    assert cpc_weights.load_cpcontrolnet(conv).config == net.config


def test_not_a_cpcontrolnet_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file
    bad = str(tmp_path / "canny.safetensors")
    save_file({"input_hint_block.0.weight": torch.zeros(16, 3, 3, 3), "zero_convs.0.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(CPGDInputError, match="not a CPControlNet.*hint encoder"):
        cpc_weights.load_cpcontrolnet(bad)
    junk = str(tmp_path / "junk.pt")
    with open(junk, "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(CPGDInputError, match="junk.pt"):
        cpc_weights.load_cpcontrolnet(junk)
    with pytest.raises(CPGDInputError, match="not found"):
        cpc_weights.load_cpcontrolnet(str(tmp_path / "missing.safetensors"))


def test_init_from_sd_checkpoint_copies_encoder():
    cfg = CPControlNetConfig.tiny()
    torch.manual_seed(0)
    unet = SDUNet(cfg)
    sd = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    sd["first_stage_model.encoder.conv_in.weight"] = torch.zeros(1)
    net = cpc_weights.init_from_sd(sd, cfg)
    w = net.input_blocks[0][0].weight
    torch.testing.assert_close(w[:, :4], unet.input_blocks[0][0].weight)
    assert float(w[:, 4:].detach().abs().max()) == 0.0
    torch.testing.assert_close(net.middle_block[1].proj_in.weight, unet.middle_block[1].proj_in.weight)
    assert all(float(p.detach().abs().max()) == 0 for n, p in net.named_parameters()
               if n.startswith(("zero_convs", "middle_block_out")) or n.endswith("mask.weight"))
    with pytest.raises(CPGDInputError, match="model.diffusion_model"):
        cpc_weights.init_from_sd({"foo": torch.zeros(1)}, cfg)


def test_uneven_joint_clips_equal_separate_calls():
    net = tiny_net()
    x, hint, t, ctx, cp = inputs(b=3)
    with torch.no_grad():
        both = net(x, hint, t, ctx, cp, frames_per_clip=[2, 1])
        first = net(x[:2], hint[:2], t[:2], ctx[:2], cp[:2], frames_per_clip=2)
        last = net(x[2:], hint[2:], t[2:], ctx[2:], cp[2:], frames_per_clip=1)
    for u, a, b in zip(both, first, last):
        torch.testing.assert_close(u, torch.cat([a, b]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="partition"):
        net(x, hint, t, ctx, cp, frames_per_clip=[2, 2])
