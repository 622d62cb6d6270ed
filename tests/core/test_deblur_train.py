"""Training of quality mode: the prior's pre-training and the unrolled solver end to end (tiny real runs)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from cpgd_core.blur.solver import UnrolledDeblur
from cpgd_core.data import realblur
from cpgd_core.errors import CPGDInputError
from cpgd_core.models.prior_denoiser import PriorDenoiser
from cpgd_core.train.__main__ import main
from cpgd_core.weights import inspect_weights, load_network

needs_real = pytest.mark.skipif(not os.path.isdir(realblur.default_dir()), reason="real training clips not present")


def _log(out: str) -> list[dict]:
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_prior_denoiser_keeps_size_and_starts_as_identity():
    net = PriorDenoiser()
    x = torch.rand(2, 3, 21, 30)
    out = net(x, torch.tensor([0.0, 0.1]))
    assert out.shape == x.shape
    assert torch.equal(out, x)   # zero-initialised last layer: training starts from the identity


@needs_real
def test_prior_pretraining_runs_resumes_and_exports(tmp_path):
    out = str(tmp_path / "prior")
    args = ["prior", "--out", out, "--steps", "3", "--batch", "2", "--crop", "32", "--log-every", "1",
            "--val-every", "2", "--ckpt-every", "2", "--warmup", "1"]
    assert main([*args, "--stop-at", "2"]) == 0
    assert main([*args, "--resume"]) == 0
    log = _log(out)
    assert [e["step"] for e in log if e.get("event") == "train"] == [1, 2, 3]
    assert {"event": "resume", "step": 2}.items() <= next(e for e in log if e.get("event") == "resume").items()
    final = os.path.join(out, "prior_denoiser.safetensors")
    assert inspect_weights(final) == "prior_denoiser"
    assert isinstance(load_network(final, "prior_denoiser"), PriorDenoiser)


@needs_real
def test_solver_trains_end_to_end_from_the_prior(tmp_path):
    prior_out, out = str(tmp_path / "prior"), str(tmp_path / "solver")
    assert main(["prior", "--out", prior_out, "--steps", "1", "--batch", "1", "--crop", "32",
                 "--val-every", "100"]) == 0
    init = os.path.join(prior_out, "prior_denoiser.safetensors")
    assert main(["deblur", "--out", out, "--init", init, "--steps", "2", "--batch", "2", "--crop", "48", "--size", "64",
                 "--crops-per-example", "2", "--workers", "0", "--val-count", "1", "--val-crop", "64",
                 "--log-every", "1", "--val-every", "2", "--ckpt-every", "1", "--iterations", "2",
                 "--cg-steps", "1"]) == 0
    log = _log(out)
    train = [e for e in log if e.get("event") == "train"]
    assert [e["step"] for e in train] == [1, 2] and all(torch.isfinite(torch.tensor(e["loss"])) for e in train)
    assert len(train[-1]["sigma"]) == 2
    vals = [e for e in log if e.get("event") == "val"]
    assert vals[-1]["step"] == 2 and {"val_psnr", "input_psnr"} <= set(vals[-1])
    model = load_network(os.path.join(out, "deblur_final.safetensors"), "unrolled_deblur")
    assert isinstance(model, UnrolledDeblur) and model.config.iterations == 2
    shipped = str(tmp_path / "deblur.safetensors")
    assert main(["export-deblur", os.path.join(out, "deblur_final.safetensors"), shipped, "--iterations", "1",
                 "--cg-steps", "2"]) == 0
    small = load_network(shipped, "unrolled_deblur")
    assert (small.config.iterations, small.config.cg_steps) == (1, 2)
    assert torch.equal(small.log_sigma, model.log_sigma[:1])
    # a trained solver as --init: fine-tuned at another iteration count from its own prior and schedule (on blur
    # rendered along the straight paths, --line-share, its data steps in linear light)
    tuned = str(tmp_path / "tuned")
    assert main(["deblur", "--out", tuned, "--init", os.path.join(out, "deblur_final.safetensors"), "--steps", "1",
                 "--batch", "1", "--crop", "48", "--size", "64", "--workers", "0", "--val-count", "1", "--val-crop",
                 "64", "--val-every", "100", "--iterations", "1", "--cg-steps", "1", "--lr", "0", "--lr-schedule",
                 "0", "--line-share", "1", "--data-space", "linear"]) == 0
    tuned_model = load_network(os.path.join(tuned, "deblur_final.safetensors"), "unrolled_deblur")
    assert torch.equal(tuned_model.log_sigma, model.log_sigma[:1]) and tuned_model.config.data_space == "linear"
    prior = load_network(init, "prior_denoiser")
    # the solver's prior started from the pre-trained one and moved with training
    assert any(not torch.equal(a, b) for a, b in zip(model.denoiser.state_dict().values(),
                                                     prior.state_dict().values()))


def test_load_network_refuses_another_format(tmp_path):
    from cpgd_core.weights import default_cpfp_path, save_network

    with pytest.raises(CPGDInputError, match="is not prior_denoiser weights"):
        load_network(default_cpfp_path(), "prior_denoiser")
    path = str(tmp_path / "p.safetensors")
    save_network(PriorDenoiser(), path, "prior_denoiser")
    with pytest.raises(CPGDInputError, match="is not unrolled_deblur weights"):
        load_network(path, "unrolled_deblur")


def test_guided_prior_starts_as_the_trained_unguided_solver(tmp_path):
    """--guide adds the blurry frame and the trajectory as inputs of the prior; started from a trained solver it
    gives that solver's output exactly, and the guide then changes the output once its weights move."""
    from cpgd_core.train.deblur import build_model, build_parser
    from cpgd_core.weights import save_network

    torch.manual_seed(0)
    plain = UnrolledDeblur()
    for p in plain.denoiser.tail.parameters():   # a prior that does something (the zero tail is the identity)
        p.data.normal_(0, 0.01)
    init = str(tmp_path / "plain.safetensors")
    save_network(plain, init, "unrolled_deblur")
    guided = build_model(build_parser().parse_args(["--init", init, "--guide", "--out", str(tmp_path)])).eval()
    assert guided.config.denoiser.guide == 5
    y, traj = torch.rand(1, 3, 40, 48), torch.randn(1, 2, 40, 48) * 4
    with torch.no_grad():
        assert torch.allclose(guided(y, traj), plain.eval()(y, traj), atol=1e-5)
        guided.denoiser.head.weight[:, 16:].normal_(0, 0.05)
        assert not torch.allclose(guided(y, traj), plain(y, traj), atol=1e-3)
    path = str(tmp_path / "guided.safetensors")
    save_network(guided, path, "unrolled_deblur")
    with torch.no_grad():
        assert torch.equal(load_network(path, "unrolled_deblur")(y, traj), guided(y, traj))
    with pytest.raises(ValueError, match="guide channels"):
        guided.denoiser(y, 0.1)


@needs_real
def test_a_wider_prior_is_pretrained_and_sets_the_solver_prior_size(tmp_path):
    prior_out, out = str(tmp_path / "prior"), str(tmp_path / "solver")
    assert main(["prior", "--out", prior_out, "--steps", "1", "--batch", "1", "--crop", "32", "--val-every", "100",
                 "--channels", "8,16,24", "--blocks", "1,2,1"]) == 0
    init = os.path.join(prior_out, "prior_denoiser.safetensors")
    assert load_network(init, "prior_denoiser").config.channels == (8, 16, 24)
    assert main(["deblur", "--out", out, "--init", init, "--guide", "--steps", "1", "--batch", "1", "--crop", "48",
                 "--size", "64", "--workers", "0", "--val-count", "1", "--val-crop", "64", "--val-every", "100",
                 "--iterations", "1", "--cg-steps", "1"]) == 0
    cfg = load_network(os.path.join(out, "deblur_final.safetensors"), "unrolled_deblur").config.denoiser
    assert (cfg.channels, cfg.blocks, cfg.guide) == ((8, 16, 24), (1, 2, 1), 5)
    with pytest.raises(SystemExit):
        main(["prior", "--out", prior_out, "--channels", "8,16"])
