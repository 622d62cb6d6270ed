"""The pack's networks against tensors produced by the official CPGD-Net code (random weights, no ComfyUI).

The tiny CPC set is vendored in tests/fixtures/golden_cpc; the larger sets are read from
../shared/reference/golden (beside the clone in CI) and skipped only when that folder is absent.
Acceptance as suggested by the golden README: assert_close(rtol=1e-5, atol=1e-4).
"""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from cpgd_core.models.cpcontrolnet import CPControlNet, CPControlNetConfig

HERE = os.path.dirname(os.path.abspath(__file__))
CPC_FIXTURES = os.path.join(HERE, os.pardir, "fixtures", "golden_cpc")
GOLDEN = os.path.normpath(os.path.join(HERE, os.pardir, os.pardir, os.pardir, "shared", "reference", "golden"))
TOL = dict(rtol=1e-5, atol=1e-4)


def golden_dir(name: str) -> str:
    path = os.path.join(GOLDEN, name)
    if not os.path.isdir(path):
        pytest.skip(f"official golden tensors not found at {path} (the shared reference folder is absent)")
    return path


def tiny_cpc_config() -> CPControlNetConfig:
    """The configuration the golden CPC set was generated with (golden README §6)."""
    return CPControlNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                              attention_resolutions=(1, 2), num_head_channels=16, context_dim=32, norm_groups=32)


@pytest.fixture(scope="module")
def golden_cpc_net() -> CPControlNet:
    net = CPControlNet(tiny_cpc_config()).eval()
    net.load_state_dict(load_file(os.path.join(CPC_FIXTURES, "weights.safetensors")), strict=True)
    return net


@pytest.mark.parametrize("case", ["b6_t6", "b6_t3", "b1_t1"])
def test_cpc_matches_official(golden_cpc_net: CPControlNet, case: str) -> None:
    inp = load_file(os.path.join(CPC_FIXTURES, f"inputs_{case}.safetensors"))
    want = load_file(os.path.join(CPC_FIXTURES, f"outputs_{case}.safetensors"))
    frames_per_clip = inp["cp"].shape[1]  # cp is the official 5-D (bs, t, 3, h, w), batch clip-major
    with torch.no_grad():
        outs = golden_cpc_net(inp["x"], inp["hint"], inp["timesteps"], inp["context"], inp["cp"],
                              frames_per_clip=frames_per_clip)
    assert len(outs) == len(want) == 5
    for i, out in enumerate(outs):
        torch.testing.assert_close(out, want[f"control_{i:02d}"], **TOL)


# -- official stage one (golden/cpfp) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden_cpfp():
    d = golden_dir("cpfp")
    from cpgd_core.models.cpfp_official import OfficialCPFP, config_from_state_dict
    sd = load_file(os.path.join(d, "weights.safetensors"))
    net = OfficialCPFP(config_from_state_dict(sd)).eval()
    net.load_official_state_dict(sd)  # drops the official modules forward never uses
    return net, sd


def test_official_cpfp_builds_the_official_keys(golden_cpfp):
    from cpgd_core.models.cpfp_official import UNUSED_PREFIXES
    net, sd = golden_cpfp
    assert len(sd) == 793
    used = {k for k in sd if not k.startswith(UNUSED_PREFIXES)}
    assert set(net.state_dict()) == used
    # the relative-position index is rebuilt by the constructor, and equals the checkpoint's buffer
    fresh = type(net)(net.config).state_dict()
    for k in used:
        if k.endswith("relative_position_index"):
            assert torch.equal(fresh[k], sd[k])


def _golden_set(name: str) -> tuple[dict, dict, dict]:
    """(inputs, outputs, intermediates) of a golden set."""
    d = golden_dir(name)
    return tuple(load_file(os.path.join(d, f"{part}.safetensors")) for part in ("inputs", "outputs", "intermediates"))


def _assert_intermediates(record: dict, inter: dict) -> None:
    assert set(inter) <= set(record)
    for name, value in inter.items():
        torch.testing.assert_close(record[name], value, **TOL, msg=lambda m: f"{name}: {m}")


def test_official_cpfp_matches_golden(golden_cpfp):
    net, _ = golden_cpfp
    inp, want, inter = _golden_set("cpfp")
    record: dict = {}
    with torch.no_grad():
        out = net(inp["lqs"], inp["flows_forwards_gt"], inp["flows_backwards_gt"], inp["resis"], record=record)
    torch.testing.assert_close(out, want["output"], **TOL)
    _assert_intermediates(record, inter)


# -- RAFT (golden/raft) --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden_raft():
    d = golden_dir("raft")
    from cpgd_core.models.raft import RAFT
    net = RAFT().eval()
    net.load_official_state_dict(load_file(os.path.join(d, "weights.safetensors")))
    return net


def test_raft_matches_golden(golden_raft):
    inp, want, inter = _golden_set("raft")
    record: dict = {}
    with torch.no_grad():
        flows = golden_raft(inp["image1"], inp["image2"], int(inp["iters"]), inp["flow_init"], all_iterations=True,
                            record=record)
    torch.testing.assert_close(flows, want["flow_predictions"], **TOL)
    torch.testing.assert_close(flows[-1], want["flow"], **TOL)
    _assert_intermediates(record, inter)


# -- the official stage-one path from codec priors (golden/wrapper) -------------------------------------
def test_official_path_matches_golden_wrapper(golden_cpfp, golden_raft):
    """MVs -> 1/4 grid, crude inverse, RAFT refinement, frame-0 residual, network: the official
    ``test_by_patch`` on one 256x256 patch, intermediates and output."""
    from cpgd_core.models.official_stage_one import RAFT_ITERS, official_stage_one, quarter_grid_mvs
    net, _ = golden_cpfp
    inp, want, inter = _golden_set("wrapper")
    record: dict = {}
    with torch.no_grad():
        mv = quarter_grid_mvs(inp["mv_f"])
        out = official_stage_one(net, golden_raft, inp["lq"], mv, inp["resi"], record=record)
    assert int(inter["raft_in_iters"]) == RAFT_ITERS
    torch.testing.assert_close(mv, inter["mv_f_rs"], **TOL)
    torch.testing.assert_close(mv, inter["flows_forward_to_cpfp"], **TOL)
    for name in ("mv_b_rs", "raft_in_flow_init", "raft_out_flow", "flows_backward_raft_refined", "resi0_warped"):
        torch.testing.assert_close(record[name], inter[name], **TOL, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(out, want["output"], **TOL)
