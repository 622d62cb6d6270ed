"""Command line: ``python -m cpgd_core <command> [args]`` (``--help`` on each command)."""
from __future__ import annotations

import sys

from .cli import dispatch

# command -> (module relative to cpgd_core, function taking argv and returning an exit code, summary)
COMMANDS = {
    "sample": ("data.sample", "main", "generate the bundled blurry sample clip (deterministic)"),
    "priors": ("codec.cli", "main", "extract codec priors from a video and write visualisations"),
    "dataset": ("data.dataset_tool", "main", "encode GoPro/DVD-style frame folders and write priors"),
    "deblur": ("pipeline.cli", "main", "stage one (CPFP) deblurring of a video file"),
    "batch": ("pipeline.batch", "main", "stage one on many videos with Ray (local or a cluster), resumable"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(COMMANDS, list(sys.argv[1:] if argv is None else argv), "python -m cpgd_core", __package__ or "cpgd_core")


if __name__ == "__main__":
    sys.exit(main())
