"""``python -m cpgd_core.train {cpfp,make-val,cpcontrolnet} [args]``."""
from __future__ import annotations

import importlib
import sys

# command -> (module relative to cpgd_core.train, function taking argv, summary)
COMMANDS = {
    "cpfp": ("cpfp", "main", "train the stage-one CPFP network"),
    "make-val": ("cpfp", "make_val_main", "write the fixed CPFP validation set (held-out images)"),
    "cpcontrolnet": ("cpcontrolnet", "main", "train the stage-two CPControlNet"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m cpgd_core.train <command> [args]\n\ncommands:")
        for name, (_, _, summary) in COMMANDS.items():
            print(f"  {name:13s} {summary}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, func, _ = COMMANDS[argv[0]]
    pkg = __package__ or "cpgd_core.train"
    mod = importlib.import_module(f"{pkg}.{module}")
    return int(getattr(mod, func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
