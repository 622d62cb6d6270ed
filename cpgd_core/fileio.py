"""Atomic file writing: a file appears under its final name complete or not at all.

Everything the pack writes (videos, weights, checkpoints, dataset frames and priors) goes to a temporary
sibling first and is renamed over the final name once it is complete (``os.replace``: atomic on one file
system). A process killed mid-write leaves only the temporary file, which the next write of the same name
replaces. The temporary name is hidden and has no media/model extension, so ``*.png`` / ``*.npy`` globs
and ComfyUI's file lists never pick up a leftover.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not safe once threads write files.
_UMASK = _process_umask()


def temporary_path(path: str) -> str:
    """The hidden sibling ``path`` is written to before it is renamed into place: ``dir/.name.part``."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.part")


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[str]:
    """``with atomic_write(path) as tmp:`` write the whole file to ``tmp``; on leaving the block without an
    exception it replaces ``path``, otherwise it is removed. Writers that choose a format from the file
    extension must be given the format explicitly (or a file object)."""
    tmp = temporary_path(path)
    try:
        yield tmp
        # Some writers (safetensors) create their file private (0600); the result gets the permissions any new
        # file of the user gets.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    """Write a small text file (JSON metadata, an index) atomically."""
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        f.write(text)
