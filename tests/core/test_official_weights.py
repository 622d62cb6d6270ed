"""Official CPGD-Net stage-one checkpoints (BasicSR .pth) and raft-things weights: detection, loading with
weights_only=True, RAFT discovery, and running through the restore driver and the CLI (small random nets)."""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from cpgd_core.__main__ import main
from cpgd_core.codec.decode import probe
from cpgd_core.codec.encode import write_video
from cpgd_core.codec.priors import CodecPriors
from cpgd_core.errors import CPGDInputError
from cpgd_core.models.cpfp_official import OfficialCPFP, OfficialCPFPConfig
from cpgd_core.models.raft import RAFT
from cpgd_core.models.official_stage_one import OfficialStageOne
from cpgd_core.pipeline.restore import restore_video
from cpgd_core.weights import inspect_weights, load_cpfp, load_raft

SMALL = OfficialCPFPConfig(channels=16, mid_channels=48)


def random_official(seed: int = 0) -> OfficialCPFP:
    """A small official-layout network with every parameter random (the zero-initialised ones included)."""
    torch.manual_seed(seed)
    net = OfficialCPFP(SMALL)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() > 1:
                p.normal_(0, p[0].numel() ** -0.5)
            else:
                p.normal_(0, 0.1).add_(1.0 if name.endswith("norm.weight") else 0.0)
    return net.eval()


def save_basicsr(net: OfficialCPFP, path, key: str = "params") -> dict:
    """As BasicSR writes it, plus one of the official modules forward never uses."""
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    sd["feat_extract.0.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save({key: sd}, str(path))
    return sd


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    net = random_official()
    save_basicsr(net, d / "net_g_small.pth")
    return net, str(d / "net_g_small.pth")


def test_detects_and_loads_basicsr_checkpoint(official_pth, tmp_path):
    net, path = official_pth
    assert inspect_weights(path) == "cpfp_official"
    model = load_cpfp(path)
    assert isinstance(model, OfficialStageOne) and model.raft is None
    assert model.config == SMALL and "no RAFT" in model.describe()
    for k, v in net.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v)
    # params_ema wrapper and DataParallel "module." prefixes
    ema = tmp_path / "ema.pth"
    torch.save({"params_ema": {"module." + k: v for k, v in net.state_dict().items()}}, str(ema))
    assert isinstance(load_cpfp(str(ema)), OfficialStageOne)


def test_incomplete_checkpoint_and_pickles_are_refused(official_pth, tmp_path):
    net, _ = official_pth
    sd = net.state_dict()
    broken = tmp_path / "broken.pth"
    torch.save({"params": {k: v for k, v in sd.items() if not k.startswith("cabattn.")}}, str(broken))
    with pytest.raises(CPGDInputError, match=r"broken\.pth.*official"):
        load_cpfp(str(broken))
    evil = tmp_path / "evil.pth"
    torch.save({"params": {"concat.0.weight": sd["concat.0.weight"]}, "hook": CodecPriors}, str(evil))
    with pytest.raises(CPGDInputError, match=r"evil\.pth"):
        load_cpfp(str(evil))


def test_raft_beside_the_checkpoint_is_used(official_pth, tmp_path):
    net, _ = official_pth
    save_basicsr(net, tmp_path / "net_g.pth")
    torch.manual_seed(1)
    raft = RAFT().eval()
    torch.save({"module." + k: v for k, v in raft.state_dict().items()}, str(tmp_path / "raft-things.pth"))
    assert inspect_weights(str(tmp_path / "raft-things.pth")) == "raft"
    model = load_cpfp(str(tmp_path / "net_g.pth"))
    assert model.raft is not None and "RAFT refinement" in model.describe()
    assert model.min_size == 256 and model.size_multiple == 16
    for k, v in raft.state_dict().items():
        assert torch.equal(model.raft.state_dict()[k], v)
    assert load_cpfp(str(tmp_path / "net_g.pth"), raft=None).raft is None
    with pytest.raises(CPGDInputError, match="not RAFT"):
        load_raft(str(tmp_path / "net_g.pth"))


def _clip(n: int, h: int, w: int) -> tuple[torch.Tensor, CodecPriors]:
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, h // 4, w // 4 + n, generator=g), scale_factor=4,
                                           mode="bilinear")[0]
    frames = torch.stack([base[..., 4 * i:4 * i + w] for i in range(n)])
    flow = torch.zeros(n, 2, h // 4, w // 4)
    flow[1:, 0] = 4.0  # frame t's content is 4 px to the right in frame t-1
    valid = torch.ones(n, 1, h // 4, w // 4, dtype=torch.bool)
    valid[0] = False
    resid = 0.02 * torch.randn(n, 1, h, w, generator=g)
    pri = CodecPriors(flow_to_prev=flow.half(), valid_to_prev=valid, flow_to_next=-flow.half(),
                      valid_to_next=valid, residual=resid.half(), frame_types=["I"] + ["P"] * (n - 1),
                      height=h, width=w)
    return frames, pri


def test_restore_pads_to_16_and_crops_back(official_pth):
    _, path = official_pth
    model = load_cpfp(path, raft=None)
    frames, pri = _clip(5, 68, 92)  # neither a multiple of 16
    out = restore_video(model, frames, pri, chunk_size=4, chunk_overlap=1, tile_size=64, tile_overlap=16)
    assert out.shape == frames.shape and torch.isfinite(out).all()
    assert float((out - frames).abs().mean()) > 1e-3, "the network must change the frames"


def test_deblur_cli_with_official_checkpoint(official_pth, tmp_path, capsys):
    _, path = official_pth
    frames, _ = _clip(6, 64, 80)
    clip = str(tmp_path / "in.mp4")
    write_video(clip, frames, Fraction(12), crf=20, preset="ultrafast")
    out = str(tmp_path / "out.mp4")
    rc = main(["deblur", clip, out, "--mode", "fast", "--weights", path, "--raft", "none", "--chunk", "4",
               "--overlap", "1", "--tile", "64", "--tile-overlap", "16", "--json"])
    assert rc == 0
    text = capsys.readouterr().out
    assert '"event": "model"' in text and "no RAFT" in text and '"event": "done"' in text
    info = probe(out)
    assert (info.width, info.height, info.frame_count) == (80, 64, 6)


def test_cancel_reaches_inside_the_official_network(official_pth):
    _, path = official_pth
    model = load_cpfp(path, raft=None)
    frames, pri = _clip(3, 64, 64)
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        restore_video(model, frames, pri, chunk_size=3, chunk_overlap=1, check_interrupt=check)
    # the driver polls before the chunk and the tile; the fourth poll came from a convolution inside the network
    assert len(calls) == 4
    # the hooks are gone afterwards: a run without the callback is unaffected
    out = restore_video(model, frames, pri, chunk_size=3, chunk_overlap=1)
    assert out.shape == frames.shape
