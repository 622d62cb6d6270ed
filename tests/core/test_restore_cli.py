"""``python -m cpgd_core deblur``: real encode -> streamed CPFP -> real encode, overwrite refusal."""
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
    rc = main(["deblur", clip, out, "--weights", weights, "--chunk", "4", "--overlap", "1", "--tile", "32",
               "--tile-overlap", "8", "--json"])
    assert rc == 0
    info, src = probe(out), probe(clip)
    assert (info.width, info.height, info.frame_count) == (src.width, src.height, src.frame_count)
    assert info.fps == src.fps
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"event": "plan", "chunk": 4, "overlap": 1, "tile": 32, "width": 56, "height": 40}
    assert [e["frames"] for e in lines if e["event"] == "progress"][-1] == 11 and lines[-1]["event"] == "done"
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
    cmd = [sys.executable, "-m", "cpgd_core", "deblur", src, out, "--weights", weights, "--chunk", "4",
           "--overlap", "1", "--json"]
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
    assert main(["deblur", src, out, "--weights", weights, "--chunk", "3", "--overlap", "1"]) == 0
    info = probe(out)
    assert (info.width, info.height, info.frame_count) == (w, h, 4)
    from cpgd_core.codec.decode import load_video
    x, _, _, _ = load_video(out)
    assert x.shape == (4, 3, h, w)


def test_deblur_cli_without_json_prints_a_summary_not_json(clip, weights, tmp_path, capsys):
    out = str(tmp_path / "out.mp4")
    assert main(["deblur", clip, out, "--weights", weights, "--chunk", "4", "--overlap", "1"]) == 0
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
    assert main(["deblur", clip, out, "--weights", weights, "--chunk", "8", "--overlap", "2",
                 "--memory-budget", "0.0006", "--json", "--tile-overlap", "8"]) == 0
    plan = json.loads(capsys.readouterr().out.splitlines()[0])
    assert plan["event"] == "plan" and plan["chunk"] < 8 and plan["overlap"] < plan["chunk"]
    assert probe(out).frame_count == 11
