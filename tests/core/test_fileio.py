"""Atomic writes: the final name holds the old file or the whole new one, never a part."""
from __future__ import annotations

import os

import pytest

from cpgd_core.fileio import atomic_write, temporary_path, write_text


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = str(tmp_path / "clip.json")
    write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as tmp:
            assert tmp == temporary_path(path) and os.path.basename(tmp) == ".clip.json.part"
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed mid-write")
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["clip.json"]
    write_text(path, "new")
    assert open(path).read() == "new" and os.listdir(tmp_path) == ["clip.json"]


def test_written_files_get_the_users_usual_permissions(tmp_path):
    """safetensors writes its file private (0600); what the pack writes is readable as any new file of the user."""
    from cpgd_core.models.prior_denoiser import PriorDenoiser
    from cpgd_core.weights import save_network

    path = str(tmp_path / "prior.safetensors")
    save_network(PriorDenoiser(), path, "prior_denoiser")
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask
