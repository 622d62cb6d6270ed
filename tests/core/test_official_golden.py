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
