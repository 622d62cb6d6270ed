"""Bad files get one sentence naming the file and the reason: no torch advice to disable its safety check, no
mmap/zipfile talk, no raw errno numbers, the path once."""
from __future__ import annotations

import os
import pickle

import av
import pytest
import torch

from cpgd_core.codec.decode import load_video, probe
from cpgd_core.errors import CPGDInputError
from cpgd_core.weights import inspect_weights, load_cpfp
from cpgd_core.weights.cpc import load_cpcontrolnet

BANNED = ("weights_only", "mmap", "_use_new_zipfile", "will likely succeed", "Errno", "Traceback", "\n")


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_sentence(message: str, path: str) -> None:
    assert message.count(path) == 1, message
    for word in BANNED:
        assert word not in message, f"{word!r} in {message!r}"


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_pickle_that_runs_code_is_refused_by_every_loader(tmp_path, writer):
    marker = str(tmp_path / "ran")
    path = str(tmp_path / "evil.pt")
    if writer == "pickle":
        with open(path, "wb") as f:
            pickle.dump({"weight": _Payload(marker)}, f)
    else:
        torch.save({"weight": _Payload(marker)}, path)
    expected = (f"refused: {path} contains code (pickle global os.system); only safetensors or plain tensor "
                f"state dicts are loaded")
    for load in (load_cpfp, inspect_weights, load_cpcontrolnet):
        with pytest.raises(CPGDInputError) as e:
            load(path)
        assert str(e.value) == expected
        _one_sentence(str(e.value), path)
    assert not os.path.exists(marker)


def test_unreadable_and_empty_weight_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint" * 10)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}garbage")
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, str(empty))
    for path, reason in ((junk, "neither a safetensors file nor a torch state dict"),
                         (bad, "not a valid safetensors file"), (empty, "no state dict of tensors")):
        for load in (load_cpfp, load_cpcontrolnet):
            with pytest.raises(CPGDInputError, match=reason) as e:
                load(str(path))
            _one_sentence(str(e.value), str(path))


def _zero_frame_video(path: str) -> None:
    c = av.open(path, "w")
    s = c.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    c.start_encoding()
    for p in s.encode(None):
        c.mux(p)
    c.close()


def test_zero_frame_video(tmp_path):
    path = str(tmp_path / "zero.mkv")
    _zero_frame_video(path)
    for f in (probe, load_video):
        with pytest.raises(CPGDInputError) as e:
            f(path)
        assert str(e.value) == f"no video frames in {path}"


def test_media_errors_have_no_errno_and_name_the_path_once(tmp_path):
    txt = tmp_path / "notes.mp4"
    txt.write_text("this is not a video\n" * 50)
    with pytest.raises(CPGDInputError) as e:
        load_video(str(txt))
    assert "invalid data" in str(e.value)
    _one_sentence(str(e.value), str(txt))
