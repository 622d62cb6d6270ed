"""Sub-command dispatch shared by ``python -m cpgd_core`` and ``python -m cpgd_core.train``."""
from __future__ import annotations

import importlib
import sys

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
