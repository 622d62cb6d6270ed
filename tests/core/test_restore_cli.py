"""``python -m cpgd_core deblur``: real encode -> streamed CPFP -> real encode, overwrite refusal."""
from __future__ import annotations

import os
from fractions import Fraction

import pytest
import torch

from cpgd_core.__main__ import main
from cpgd_core.codec.decode import probe
from cpgd_core.codec.encode import write_video
from cpgd_core.models.cpfp import CPFP, CPFPConfig
from cpgd_core.weights import save_cpfp


@pytest.fixture()
def clip(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 20, 28, generator=g), size=(40, 56), mode="bilinear")[0]
    frames = torch.stack([torch.roll(base, 2 * i, dims=2) for i in range(11)])
    path = str(tmp_path / "in.mp4")
    write_video(path, frames, Fraction(12), crf=20, preset="ultrafast")
    return path


@pytest.fixture()
def weights(tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "w.safetensors")
    save_cpfp(CPFP(CPFPConfig.lite(enc_channels=8, mid_channels=16)), path)
    return path


def test_deblur_cli_streams_and_keeps_fps(clip, weights, tmp_path, capsys):
    out = str(tmp_path / "out.mp4")
    rc = main(["deblur", clip, out, "--weights", weights, "--chunk", "4", "--overlap", "1", "--tile", "32",
               "--tile-overlap", "8"])
    assert rc == 0
    info, src = probe(out), probe(clip)
    assert (info.width, info.height, info.frame_count) == (src.width, src.height, src.frame_count)
    assert info.fps == src.fps
    assert '"event": "done"' in capsys.readouterr().out
    # refuses to overwrite, then does with --overwrite and --max-frames
    assert main(["deblur", clip, out, "--weights", weights]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["deblur", clip, out, "--weights", weights, "--overwrite", "--max-frames", "5"]) == 0
    assert probe(out).frame_count == 5


def test_deblur_cli_bad_weights(clip, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nonsense")
    assert main(["deblur", clip, str(tmp_path / "o.mp4"), "--weights", str(bad)]) == 2
    assert "bad.safetensors" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.mp4")
