"""``python -m cpgd_core deblur``: real encode -> streamed stage one (fast: CPFP; quality: blur field + non-blind
solver) -> real encode, overwrite refusal, option checks."""
from __future__ import annotations

import io
import json
import os
from fractions import Fraction

import pytest
import torch

from cpgd_core.__main__ import main
from cpgd_core.cli import ProgressBar
from cpgd_core.codec.decode import probe
from cpgd_core.codec.encode import write_video
from cpgd_core.fileio import temporary_path
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
    rc = main(["deblur", clip, out, "--weights", weights, "--mode", "fast", "--chunk", "4", "--overlap", "1",
               "--tile", "32", "--tile-overlap", "8", "--json"])
    assert rc == 0
    info, src = probe(out), probe(clip)
    assert (info.width, info.height, info.frame_count) == (src.width, src.height, src.frame_count)
    assert info.fps == src.fps
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"event": "plan", "mode": "fast", "chunk": 4, "overlap": 1, "tile": 32, "width": 56,
                        "height": 40}
    assert [e["frames"] for e in lines if e["event"] == "progress"][-1] == 11 and lines[-1]["event"] == "done"
    # refuses to overwrite, then does with --overwrite and --max-frames
    assert main(["deblur", clip, out, "--weights", weights, "--mode", "fast"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["deblur", clip, out, "--weights", weights, "--mode", "fast", "--overwrite", "--max-frames", "5"]) == 0
    assert probe(out).frame_count == 5


def test_deblur_cli_bad_weights(clip, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nonsense")
    assert main(["deblur", clip, str(tmp_path / "o.mp4"), "--weights", str(bad), "--mode", "fast"]) == 2
    assert "bad.safetensors" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.mp4")


def test_kill_during_write_leaves_no_final_file_and_rerun_succeeds(tmp_path, weights):
    """kill -9 while ``deblur`` is writing: nothing under the output's name (only the temporary ``.part``),
    and the same command run again writes the whole video. The clip is long enough that the encoder has
    written packets (x264 holds back its look-ahead of frames) well before the end."""
    import signal
    import subprocess
    import sys
    import threading

    g = torch.Generator().manual_seed(1)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 20, 28, generator=g), size=(48, 64), mode="bilinear")[0]
    src = str(tmp_path / "long.mp4")
    write_video(src, torch.stack([torch.roll(base, i, dims=2) for i in range(120)]), Fraction(12), crf=20,
                preset="ultrafast")
    out = str(tmp_path / "out.mp4")
    part = temporary_path(out)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [sys.executable, "-m", "cpgd_core", "deblur", src, out, "--weights", weights, "--mode", "fast",
           "--chunk", "4", "--overlap", "1", "--json"]
    env = dict(os.environ, PYTHONPATH=root, OMP_WAIT_POLICY="PASSIVE")

    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(300, proc.kill)  # bounded: never wait forever on a stuck child
    watchdog.start()
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if '"event": "progress"' in line and os.path.isfile(part) and os.path.getsize(part) > 0:
                os.kill(proc.pid, signal.SIGKILL)  # mid-write: restored frames are going into the file
                break
        rc = proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        proc.stdout.close()
    assert rc == -signal.SIGKILL, f"deblur was not killed mid-run (rc {rc}): {''.join(lines)[-2000:]}"
    assert not os.path.exists(out)
    assert os.path.isfile(part), "the kill should have hit the write (a temporary file in progress)"
    print(f"killed after {lines[-1].strip()}; left {os.path.basename(part)} ({os.path.getsize(part)} bytes), "
          f"no {os.path.basename(out)}")

    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert probe(out).frame_count == 120
    assert not os.path.exists(part)


@pytest.mark.parametrize("size", [(241, 321), (40, 57)])  # (h, w): both odd; only the width odd
def test_deblur_cli_keeps_odd_sizes(size, weights, tmp_path):
    h, w = size
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(4, 3, h, w, generator=g)
    src = str(tmp_path / "odd.mkv")
    write_video(src, frames, Fraction(12), crf=20, preset="ultrafast")
    assert (probe(src).width, probe(src).height) == (w, h)
    out = str(tmp_path / "odd_out.mp4")
    assert main(["deblur", src, out, "--weights", weights, "--mode", "fast", "--chunk", "3", "--overlap", "1"]) == 0
    info = probe(out)
    assert (info.width, info.height, info.frame_count) == (w, h, 4)
    from cpgd_core.codec.decode import load_video
    x, _, _, _ = load_video(out)
    assert x.shape == (4, 3, h, w)


def test_deblur_cli_without_json_prints_a_summary_not_json(clip, weights, tmp_path, capsys):
    out = str(tmp_path / "out.mp4")
    assert main(["deblur", clip, out, "--weights", weights, "--mode", "fast", "--chunk", "4", "--overlap", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"wrote {out}: 11 frames in " + captured.out.split(" in ")[-1].strip()
    assert "{" not in captured.out and "{" not in captured.err  # capsys is no terminal: no bar either


def test_progress_bar_on_a_terminal_shows_count_and_eta():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    bar = ProgressBar(20, stream=term)
    for done in (5, 10, 20):
        bar.update(done)
    bar.close()
    text = term.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n")
    assert "5/20 frames" in text and "20/20 frames" in text and "ETA 0:00" in text
    assert "[" + "#" * 30 + "]" in text
    piped = io.StringIO()
    ProgressBar(20, stream=piped).update(5)
    assert piped.getvalue() == ""


def test_deblur_cli_memory_budget_lowers_chunk_and_tiles(clip, weights, tmp_path, capsys):
    out = str(tmp_path / "out.mp4")
    # 40x56 frames (no tile is smaller): a 0.0006 GiB budget (0.64 MB) cannot hold 8 frames' buffers and
    # activations, so the chunk (and its overlap) shrink
    assert main(["deblur", clip, out, "--weights", weights, "--mode", "fast", "--chunk", "8", "--overlap", "2",
                 "--memory-budget", "0.0006", "--json", "--tile-overlap", "8"]) == 0
    plan = json.loads(capsys.readouterr().out.splitlines()[0])
    assert plan["event"] == "plan" and plan["chunk"] < 8 and plan["overlap"] < plan["chunk"]
    assert probe(out).frame_count == 11


# -- quality mode (the default) ----------------------------------------------------------------------------------
@pytest.fixture()
def shaky(tmp_path):
    """8 frames of 64x48 shaking blur (a photo moved along a camera path) with a sine tone, 12 fps."""
    from cpgd_core.data.synth import load_photo, make_blur_clip

    clip = make_blur_clip(load_photo("chelsea"), 8, (64, 48), subframes=9, seed=1, motion=2.5)
    t = torch.arange(int(48000 * 8 / 12)) / 48000
    sound = {"waveform": (0.3 * torch.sin(2 * torch.pi * 440 * t)).view(1, 1, -1), "sample_rate": 48000}
    path = str(tmp_path / "shaky.mp4")
    write_video(path, clip["blurry"], Fraction(12), audio=sound, crf=20, preset="ultrafast")
    return path


@pytest.mark.parametrize("mode", ["quality", "fast"])
def test_deblur_cli_modes_keep_frames_fps_and_audio(shaky, tmp_path, capsys, mode):
    from cpgd_core.codec.decode import load_video

    out = str(tmp_path / f"{mode}.mp4")
    args = ["deblur", shaky, out, "--json"] + (["--mode", mode] if mode == "fast" else [])  # quality: the default
    assert main(args + ["--iterations", "1"]) == 0
    info, src = probe(out), probe(shaky)
    assert (info.width, info.height, info.frame_count, info.fps) == (src.width, src.height, 8, src.fps)
    assert info.has_audio and src.has_audio
    x, _, audio, _ = load_video(out, export_mvs=False)
    y, _, _, _ = load_video(shaky, export_mvs=False)
    assert x.shape == y.shape == (8, 3, 48, 64) and audio is not None
    assert float((x - y).abs().mean()) > 1e-3, "the frames must be deblurred"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["event"] == "plan" and lines[0]["mode"] == mode
    progress = [e["frames"] for e in lines if e["event"] == "progress"]
    assert progress[-1] == 8
    if mode == "quality":
        assert lines[0]["iterations"] == 1 and lines[0]["exposure"] == "auto"
        assert progress == list(range(1, 9))  # one event per frame
    assert lines[-1]["event"] == "done" and lines[-1]["mode"] == mode and lines[-1]["frames"] == 8


def test_deblur_cli_quality_with_fixed_exposure_and_summary(shaky, tmp_path, capsys):
    out = str(tmp_path / "out.mp4")
    assert main(["deblur", shaky, out, "--exposure", "0.6", "--iterations", "1", "--max-frames", "5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"wrote {out}: 5 frames in ") and captured.out.strip().endswith("(quality mode)")
    assert "quality mode: blur field + non-blind solver, 1 iterations, exposure 0.6" in captured.err
    assert probe(out).frame_count == 5


@pytest.mark.parametrize("value", ["1.5", "-0.1", "often"])
def test_deblur_cli_rejects_a_bad_exposure(shaky, tmp_path, capsys, value):
    out = tmp_path / "o.mp4"
    assert main(["deblur", shaky, str(out), f"--exposure={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: exposure must be") and "[0, 1]" in err and value in err, err
    assert not out.exists()


def test_deblur_cli_rejects_bad_iterations_and_mode(shaky, tmp_path, capsys):
    assert main(["deblur", shaky, str(tmp_path / "o.mp4"), "--iterations", "-2"]) == 2
    assert "iterations must be in [0, 64]" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: invalid choice
        main(["deblur", shaky, str(tmp_path / "o.mp4"), "--mode", "slow"])
    assert "invalid choice: 'slow'" in capsys.readouterr().err


def test_deblur_cli_quality_on_one_frame_runs_fast_mode(shaky, tmp_path, capsys):
    out = str(tmp_path / "one.mp4")
    assert main(["deblur", shaky, out, "--max-frames", "1", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["event"] == "note" and "ran fast mode" in lines[0]["message"]
    assert lines[1]["event"] == "plan" and lines[1]["mode"] == "fast" and lines[-1]["mode"] == "fast"
    assert probe(out).frame_count == 1
