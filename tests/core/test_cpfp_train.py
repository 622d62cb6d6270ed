"""CPFP training loop: tiny end-to-end runs (make-val, train, checkpoint, resume, export)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from cpgd_core.train.__main__ import main
from cpgd_core.weights import inspect_weights, load_cpfp, read_cpfp_metadata


TINY = ["--batch", "1", "--crop", "16", "--frames", "2", "--workers", "0", "--warmup", "1", "--log-every", "1",
        "--val-every", "2", "--ckpt-every", "2"]


def _log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_train_smoke_resume_and_export(tmp_path, capsys):
    out, val = str(tmp_path / "run"), str(tmp_path / "val.pt")
    assert main(["make-val", "--out", val, "--count", "1", "--crop", "16", "--frames", "2", "--data", "random"]) == 0
    assert main(["cpfp", "--steps", "2", "--out", out, "--val", val, "--data", "random", *TINY]) == 0
    first = _log(out)
    train = [e for e in first if e["event"] == "train"]
    assert [e["step"] for e in train] == [1, 2]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in train)
    vals = [e for e in first if e["event"] == "val"]
    assert vals and {"val_psnr", "val_ssim", "input_psnr", "input_ssim"} <= set(vals[-1])
    assert main(["cpfp", "--steps", "3", "--out", out, "--val", val, "--data", "random", "--resume", *TINY]) == 0
    second = _log(out)[len(first):]
    assert second[0] == {**second[0], "event": "resume", "step": 2}
    assert [e["step"] for e in second if e["event"] == "train"] == [3]
    final = os.path.join(out, "cpfp_final.safetensors")
    assert inspect_weights(final) == "cpfp"
    assert json.loads(read_cpfp_metadata(final)["recipe"])["steps"] == 3
    assert load_cpfp(final).config.use_priors
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert lines and all("event" in x for x in lines)


def test_train_with_synth_data(tmp_path):
    out = str(tmp_path / "run")
    assert main(["cpfp", "--steps", "1", "--out", out, "--no-priors", "--data", "synth", *TINY[:3], "32",
                 *TINY[4:]]) == 0
    assert not load_cpfp(os.path.join(out, "cpfp_final.safetensors")).config.use_priors


def test_schedule_is_step_based_across_stops_and_resumes(tmp_path):
    """--stop-at / resume follow the uninterrupted run's learning rates; the weights carry their provenance."""
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    args = ["--steps", "5", "--data", "random", "--seed", "3", *TINY[:-6], "--warmup", "2", "--log-every", "1",
            "--ckpt-every", "1"]
    assert main(["cpfp", "--out", whole, *args]) == 0
    assert main(["cpfp", "--out", parts, "--stop-at", "2", *args]) == 0
    assert main(["cpfp", "--out", parts, "--resume", "--time-limit", "1e-9", *args]) == 0  # stops after 1 step
    assert main(["cpfp", "--out", parts, "--resume", *args]) == 0
    lr = lambda out: [(e["step"], e["lr"]) for e in _log(out) if e["event"] == "train"]  # noqa: E731
    assert lr(parts) == lr(whole) and len(lr(whole)) == 5
    meta = read_cpfp_metadata(os.path.join(parts, "cpfp_final.safetensors"))
    assert meta["steps"] == "5" and meta["seed"] == "3" and meta["data"] == "random"
    assert meta["commit"] and json.loads(meta["data_manifest"])["source"] == "random"


def test_set_overrides_and_init_grows_a_shallower_network(tmp_path, capsys):
    small, big = str(tmp_path / "small"), str(tmp_path / "big")
    assert main(["cpfp", "--steps", "1", "--out", small, "--data", "random", "--set", "recon_blocks=1",
                 "--set", "num_enc_blocks=1", *TINY]) == 0
    init = os.path.join(small, "cpfp_final.safetensors")
    assert main(["cpfp", "--steps", "1", "--out", big, "--data", "random", "--init", init,
                 "--set", "recon_blocks=3", *TINY]) == 0
    grown = [e for e in _log(big) if e["event"] == "init"]
    assert grown and "grown_from" in grown[0]
    cfg = load_cpfp(os.path.join(big, "cpfp_final.safetensors")).config
    assert (cfg.recon_blocks, cfg.num_enc_blocks) == (3, 2)
    capsys.readouterr()
    assert main(["cpfp", "--steps", "1", "--out", str(tmp_path / "bad"), "--data", "random", "--set", "recon=3",
                 *TINY]) == 2
    assert capsys.readouterr().err.startswith("error: --set 'recon=3'")


def test_sharp_share_reaches_the_real_footage_sources_only(tmp_path, capsys):
    from cpgd_core.errors import CPGDInputError
    from cpgd_core.train.cpfp import SynthClips

    with pytest.raises(CPGDInputError, match="sharp-share"):
        SynthClips("synth", 16, 2, seed=0, sharp_share=0.5)
    out = str(tmp_path / "run")
    assert main(["cpfp", "--steps", "1", "--out", out, "--data", "random", "--sharp-share", "0.5", *TINY]) != 0
    assert "--sharp-share applies to the real-footage sources" in capsys.readouterr().err


def test_amp_on_cpu_trains_in_bf16(tmp_path):
    out = str(tmp_path / "amp")
    assert main(["cpfp", "--steps", "2", "--out", out, "--data", "random", "--amp", *TINY]) == 0
    log = _log(out)
    assert next(e for e in log if e["event"] == "start")["amp"] == "torch.bfloat16"
    train = [e for e in log if e["event"] == "train"]
    assert [e["step"] for e in train] == [1, 2] and all(torch.isfinite(torch.tensor(e["loss"])) for e in train)
