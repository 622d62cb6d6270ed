"""``python -m cpgd_core priors``: visualisation videos and summary, run as a real subprocess."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from cpgd_core.codec.decode import load_video, probe
from cpgd_core.codec.encode import write_video
from cpgd_core.data.synth import load_photo, pan_zoom_path, render_path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pan_clip(tmp_path) -> str:
    """A 160x96 H.264 clip of 10 frames panning about 3 px per frame."""
    img = load_photo("astronaut")
    frames, _ = render_path(img, pan_zoom_path(img.shape, (160, 96), 10, 3.0, 0.0), (160, 96))
    src = str(tmp_path / "in.mp4")
    write_video(src, torch.from_numpy(frames), 20, x264_params="bframes=0:ref=1")
    return src


def test_priors_cli_writes_visualisations(tmp_path):
    src = _pan_clip(tmp_path)
    out = str(tmp_path / "viz")
    r = subprocess.run([sys.executable, "-m", "cpgd_core", "priors", src, "--out", out, "--cap", "8"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "priors from bitstream:h264: 8 frames, I/P/B = 1/7/0" in r.stdout
    mv, res = os.path.join(out, "in_mv.mp4"), os.path.join(out, "in_residual.mp4")
    for p in (mv, res):
        info = probe(p)
        assert (info.width, info.height, info.frame_count, float(info.fps)) == (160, 96, 8, 20.0)
    pic, _, _, _ = load_video(mv, export_mvs=False)
    # Frame 0 has no motion (black); a rightward pan is drawn in red.
    assert float(pic[0].mean()) < 0.05
    centre = pic[4, :, 30:60, 60:100].mean(dim=(1, 2))
    assert centre[0] > 0.6 and centre[1] < 0.3 and centre[2] < 0.3
    # Existing outputs are not replaced without --overwrite; bad input gives a clean error.
    r2 = subprocess.run([sys.executable, "-m", "cpgd_core", "priors", src, "--out", out], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
    assert r2.returncode == 2 and "already exists" in r2.stderr
    r3 = subprocess.run([sys.executable, "-m", "cpgd_core", "priors", str(tmp_path / "nope.mp4"), "--out", out],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r3.returncode == 2 and "not found" in r3.stderr


def test_priors_cli_exports_the_blur_field(tmp_path):
    import numpy as np

    src = _pan_clip(tmp_path)
    out = str(tmp_path / "viz")
    r = subprocess.run([sys.executable, "-m", "cpgd_core", "priors", src, "--out", out, "--cap", "8", "--blur-field",
                        "--exposure", "0.5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "in_blur_field.npz: 8 frames 160x96, exposure 0.50" in r.stdout
    with np.load(os.path.join(out, "in_blur_field.npz")) as z:
        assert z["trajectory"].dtype == np.float32 and z["trajectory"].shape == (8, 2, 96, 160)
        assert z["exposure"].dtype == np.float32 and np.allclose(z["exposure"], 0.5)
        # the pan moves about 3 px per frame: half an interval sweeps about 1.5 px
        med = float(np.median(np.linalg.norm(z["trajectory"][:, :, 16:-16, 16:-16], axis=1)))
        assert 0.8 < med < 2.5
    assert not [f for f in os.listdir(out) if f.endswith(".part")]
    r2 = subprocess.run([sys.executable, "-m", "cpgd_core", "priors", src, "--out", out, "--blur-field",
                         "--exposure", "2", "--overwrite"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 2 and "exposure must be" in r2.stderr


def test_priors_cli_refines_the_blur_field_with_raft_weights(tmp_path):
    """--raft loads raft-things.pth (the official layout, 'module.' prefixes) and refines the exported motion;
    weights that are not RAFT, a missing file, or --raft without --blur-field are refused by name."""
    import numpy as np
    import torch

    from cpgd_core.models.raft import RAFT

    src = _pan_clip(tmp_path)
    torch.manual_seed(3)
    raft = tmp_path / "raft-things.pth"
    torch.save({"module." + k: v for k, v in RAFT().state_dict().items()}, str(raft))
    run = lambda *extra: subprocess.run([sys.executable, "-m", "cpgd_core", "priors", src, "--cap", "4",  # noqa: E731
                                         *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
    plain = run("--out", str(tmp_path / "a"), "--blur-field", "--exposure", "0.5")
    refined = run("--out", str(tmp_path / "b"), "--blur-field", "--exposure", "0.5", "--raft", str(raft))
    assert plain.returncode == 0 and refined.returncode == 0, refined.stderr
    assert "motion refined by RAFT" in refined.stdout and "RAFT" not in plain.stdout
    with np.load(str(tmp_path / "a" / "in_blur_field.npz")) as za, np.load(str(tmp_path / "b" / "in_blur_field.npz")) as zb:
        assert za["trajectory"].shape == zb["trajectory"].shape == (4, 2, 96, 160)
        assert not np.allclose(za["trajectory"], zb["trajectory"], atol=0.05)   # random RAFT weights move it
    torch.save({"weight": torch.zeros(3)}, str(tmp_path / "other.pth"))
    wrong = run("--out", str(tmp_path / "c"), "--blur-field", "--raft", str(tmp_path / "other.pth"))
    assert wrong.returncode == 2 and "other.pth" in wrong.stderr and "RAFT" in wrong.stderr
    missing = run("--out", str(tmp_path / "d"), "--blur-field", "--raft", str(tmp_path / "nope.pth"))
    assert missing.returncode == 2 and "nope.pth" in missing.stderr
    alone = run("--out", str(tmp_path / "e"), "--raft", str(raft))
    assert alone.returncode == 2 and "--blur-field" in alone.stderr
