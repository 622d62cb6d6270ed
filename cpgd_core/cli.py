"""Sub-command dispatch shared by ``python -m cpgd_core`` and ``python -m cpgd_core.train``."""
from __future__ import annotations

import importlib
import sys
import time
from typing import TextIO

from .errors import CPGDInputError

# What pip installs for a module whose name differs from its package's (the optional ones first: the sample's
# photos, the batch command, NIQE's data file). A command that hits a missing module says which package to
# install, with this very interpreter's pip, instead of a traceback.
PIP_NAMES = {"skimage": "scikit-image", "ray": "ray==2.60.0", "skvideo": "scikit-video",
             "cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "PyYAML"}


def dispatch(commands: dict[str, tuple[str, str, str]], argv: list[str], prog: str, package: str) -> int:
    """Run ``commands[argv[0]]`` = (module relative to ``package``, function taking argv, summary).

    Bad input (:class:`CPGDInputError`) and a missing third-party package are reported as one ``error:`` line and
    exit code 2, not a traceback."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(f"usage: {prog} <command> [args]\n\ncommands:")
        width = max(len(n) for n in commands) + 2
        for name, (_, _, summary) in commands.items():
            print(f"  {name:{width}s} {summary}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, func, _ = commands[argv[0]]
    try:
        mod = importlib.import_module(f"{package}.{module}")
        return int(getattr(mod, func)(argv[1:]) or 0)
    except CPGDInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if not missing or missing == package.split(".")[0]:
            raise  # a module of this pack itself: a bug, keep the traceback
        print(f"error: {missing_package_message(f'{prog} {argv[0]}', missing)}", file=sys.stderr)
        return 2


def missing_package_message(what: str, module: str) -> str:
    """``what`` needs ``module``: which package provides it and the command that installs it here."""
    pip_name = PIP_NAMES.get(module, module)
    return (f"`{what}` needs the Python package {pip_name} (module {module!r}), which is not installed for "
            f"{sys.executable}; install it with: {sys.executable} -m pip install {pip_name}")


class ProgressBar:
    """``[#####-----]  40/100 frames  2.1 fps  ETA 0:28`` redrawn in place on a terminal; silent otherwise
    (logs and pipes get the final summary only)."""

    def __init__(self, total: int, unit: str = "frames", stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.unit, self.width = max(int(total), 0), unit, width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self.shown = False

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        frac = min(done / self.total, 1.0) if self.total else 0.0
        fill = int(round(frac * self.width))
        eta = _clock((self.total - done) / rate) if rate > 0 and self.total else "?"
        self.stream.write(f"\r[{'#' * fill}{'-' * (self.width - fill)}] {done}/{self.total} {self.unit}  "
                          f"{rate:.2f} fps  ETA {eta}  ")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
