"""CPFP weight files: round trip, metadata, format detection, clear errors for wrong/corrupt files."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from cpgd_core.errors import CPGDInputError
from cpgd_core.models.cpfp import CPFP, CPFPConfig
from cpgd_core.weights import (default_cpfp_path, inspect_weights, load_cpfp, read_cpfp_metadata,
                               save_cpfp)


def _tiny() -> CPFP:
    torch.manual_seed(0)
    return CPFP(CPFPConfig.lite(enc_channels=8, mid_channels=16, use_priors=False))


def test_round_trip(tmp_path):
    m = _tiny()
    path = str(tmp_path / "w.safetensors")
    save_cpfp(m, path, {"steps": 12, "note": "test"})
    assert inspect_weights(path) == "cpfp"
    meta = read_cpfp_metadata(path)
    assert meta["steps"] == "12" and meta["cpgd_format"] == "cpfp"
    loaded = load_cpfp(path)
    assert loaded.config == m.config and not loaded.training
    for (k, a), (k2, b) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_default_path_location():
    assert default_cpfp_path().endswith("cpgd_core/weights/cpfp_lite.safetensors".replace("/", __import__("os").sep))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CPGDInputError, match="not found"):
        load_cpfp(str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}garbage")
    with pytest.raises(CPGDInputError, match="bad.safetensors"):
        load_cpfp(str(bad))
    with pytest.raises(CPGDInputError, match="bad.safetensors"):
        inspect_weights(str(bad))


def test_wrong_kinds(tmp_path):
    unknown = str(tmp_path / "other.safetensors")
    save_file({"foo.weight": torch.zeros(2)}, unknown)
    assert inspect_weights(unknown) == "unknown"
    with pytest.raises(CPGDInputError, match=r"other\.safetensors.*not CPFP"):
        load_cpfp(unknown)
    cpc = str(tmp_path / "cpc.safetensors")
    save_file({"input_blocks.0.0.weight": torch.zeros(1), "middle_block_out.0.weight": torch.zeros(1),
               "zero_convs.0.0.weight": torch.zeros(1)}, cpc)
    assert inspect_weights(cpc) == "cpcontrolnet"
    with pytest.raises(CPGDInputError, match="cpcontrolnet"):
        load_cpfp(cpc)
    official = str(tmp_path / "net_g.pth")
    torch.save({"params": {"concat.0.weight": torch.zeros(1), "deform_align.backward_1.weight": torch.zeros(1),
                           "backbone.backward_1.0.weight": torch.zeros(1)}}, official)
    assert inspect_weights(official) == "cpfp_official"
    with pytest.raises(CPGDInputError, match="official"):
        load_cpfp(official)


def test_config_mismatch(tmp_path):
    m = _tiny()
    path = str(tmp_path / "w.safetensors")
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    wrong = CPFPConfig.lite(enc_channels=8, mid_channels=16, num_branches=4)
    save_file(sd, path, metadata={"cpgd_format": "cpfp", "config": wrong.to_json()})
    with pytest.raises(CPGDInputError, match="does not match its CPFP config"):
        load_cpfp(path)
    save_file(sd, path, metadata={"cpgd_format": "cpfp"})
    with pytest.raises(CPGDInputError, match="no 'config'"):
        load_cpfp(path)
