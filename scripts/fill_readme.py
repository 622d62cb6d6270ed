"""Fill the generated blocks of README.md and docs/MODEL_CARD.md from the committed bench output.

A block is the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; it is replaced by
``docs/bench/NAME.md`` without its first heading line. ``make bench`` runs this last, so every figure in
those blocks comes from a bench script. ``--check`` exits 1 when a block is out of date (nothing written).
"""
from __future__ import annotations

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ("README.md", os.path.join("docs", "MODEL_CARD.md"))
BLOCK = re.compile(r"(<!-- bench:([\w.-]+) -->\n)(.*?)(<!-- /bench:\2 -->)", re.S)


def _body(name: str) -> str:
    path = os.path.join(ROOT, "docs", "bench", name + ".md")
    if not os.path.isfile(path):
        raise SystemExit(f"fill_readme: {path} not found (run its bench script first)")
    with open(path) as f:
        lines = f.read().strip("\n").split("\n")
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    # image links in docs/bench/*.md are relative to docs/bench/; make them relative to the target file
    return "\n".join(lines).strip("\n") + "\n"


def fill(text: str, target: str) -> str:
    def repl(m: re.Match) -> str:
        body = _body(m.group(2))
        rel = os.path.relpath(os.path.join(ROOT, "docs", "bench"), os.path.dirname(os.path.join(ROOT, target)))
        body = re.sub(r"\]\((?!https?:)([^)]+)\)", lambda k: f"]({os.path.normpath(os.path.join(rel, k.group(1)))})",
                      body)
        return m.group(1) + body + m.group(4)
    return BLOCK.sub(repl, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only report whether the blocks are up to date")
    a = ap.parse_args(argv)
    stale = []
    for target in TARGETS:
        path = os.path.join(ROOT, target)
        with open(path) as f:
            old = f.read()
        new = fill(old, target)
        if new != old:
            stale.append(target)
            if not a.check:
                with open(path + ".part", "w") as f:
                    f.write(new)
                os.replace(path + ".part", path)
    if stale:
        print(("out of date: " if a.check else "updated: ") + ", ".join(stale))
    return 1 if (a.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
