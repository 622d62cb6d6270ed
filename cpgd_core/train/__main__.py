"""``python -m cpgd_core.train {cpfp,make-val,prior,deblur,cpcontrolnet} [args]``."""
from __future__ import annotations

import sys

from ..cli import dispatch

# command -> (module relative to cpgd_core.train, function taking argv, summary)
COMMANDS = {
    "cpfp": ("cpfp", "main", "train the stage-one CPFP network"),
    "make-val": ("cpfp", "make_val_main", "write the fixed CPFP validation set (held-out images)"),
    "prior": ("prior", "main", "pre-train the learned prior (noise-conditioned denoiser) of the non-blind stage one"),
    "deblur": ("deblur", "main", "train the non-blind stage one (unrolled solver with the learned prior) end to end"),
    "export-deblur": ("deblur", "export_main", "write the shipped solver at a chosen iteration count"),
    "cpcontrolnet": ("cpcontrolnet", "main", "train the stage-two CPControlNet"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(COMMANDS, list(sys.argv[1:] if argv is None else argv), "python -m cpgd_core.train", __package__ or "cpgd_core.train")


if __name__ == "__main__":
    sys.exit(main())
