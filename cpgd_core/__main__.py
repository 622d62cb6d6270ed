"""Command line: ``python -m cpgd_core <command> [args]`` (``--help`` on each command)."""
from __future__ import annotations

import importlib
import sys

# command -> (module relative to cpgd_core, function taking argv and returning an exit code, summary)
COMMANDS = {
    "sample": ("data.sample", "main", "generate the bundled blurry sample clip (deterministic)"),
    "priors": ("codec.cli", "main", "extract codec priors from a video and write visualisations"),
    "dataset": ("data.dataset_tool", "main", "encode GoPro/DVD-style frame folders and write priors"),
    "deblur": ("pipeline.cli", "main", "stage one (CPFP) deblurring of a video file"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m cpgd_core <command> [args]\n\ncommands:")
        for name, (_, _, summary) in COMMANDS.items():
            print(f"  {name:10s} {summary}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, func, _ = COMMANDS[argv[0]]
    mod = importlib.import_module(f"{__package__ or 'cpgd_core'}.{module}")
    return int(getattr(mod, func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
