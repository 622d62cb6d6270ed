"""CPControlNet training loop on a tiny random SD-like configuration (CPU)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cpgd_core.train.cpcontrolnet import build_parser, train
from cpgd_core.weights.cpc import load_cpcontrolnet


def _args(out, steps):
    return build_parser().parse_args(["--tiny", "--out", str(out), "--steps", str(steps), "--lr", "1e-3",
                                      "--size", "64", "--frames", "3", "--examples", "2", "--device", "cpu",
                                      "--log-every", "20", "--save-every", "100", "--seed", "0"])


@pytest.fixture
def one_thread():
    # tiny ops: intra-op threads only spin against the other processes sharing this machine's 2 cores
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_loss_falls_and_training_resumes(tmp_path, one_thread):
    losses = train(_args(tmp_path, 300))
    first, last = np.mean(losses[:40]), np.mean(losses[-40:])
    assert last < 0.7 * first, (first, last)
    net = load_cpcontrolnet(str(tmp_path / "cpcontrolnet.safetensors"))
    assert any(float(p.detach().abs().max()) > 0 for n, p in net.named_parameters() if n.endswith("attn1.mask.weight"))
    # resume: the next run continues from step 300 and only runs the missing steps
    more = train(_args(tmp_path, 320))
    assert len(more) == 20
    steps = [json.loads(line)["step"] for line in open(tmp_path / "log.jsonl")]
    assert steps[-1] == 320 and os.path.isfile(tmp_path / "last.pt")
