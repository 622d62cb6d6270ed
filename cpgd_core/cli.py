"""Sub-command dispatch shared by ``python -m cpgd_core`` and ``python -m cpgd_core.train``."""
from __future__ import annotations

import importlib
import sys
import time
from typing import TextIO

from .errors import CPGDInputError


def dispatch(commands: dict[str, tuple[str, str, str]], argv: list[str], prog: str, package: str) -> int:
    """Run ``commands[argv[0]]`` = (module relative to ``package``, function taking argv, summary).

    Bad input (:class:`CPGDInputError`) is reported as one ``error:`` line and exit code 2, not a traceback."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(f"usage: {prog} <command> [args]\n\ncommands:")
        width = max(len(n) for n in commands) + 2
        for name, (_, _, summary) in commands.items():
            print(f"  {name:{width}s} {summary}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, func, _ = commands[argv[0]]
    mod = importlib.import_module(f"{package}.{module}")
    try:
        return int(getattr(mod, func)(argv[1:]) or 0)
    except CPGDInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


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
